"""Speed, memory and model switching: the app's txt2img path against a plain diffusers call on the same model.

Reports (JSON, then a table):
- per-step seconds from device timers: CUDA events recorded at each step's end (perf_counter after a
  synchronize on the CPU); the median over the steps between the first and the last of each run, so the
  first step (prompt encoding, compile warm-up) is not in it;
- end-to-end seconds per image (app: submit -> result, PNG saved; plain: the pipeline call, PIL out), the
  median of --runs, app and plain interleaved, both in the job worker thread (as bench_txt2img.py explains,
  that is where the app runs its pipelines, and a thread's first torch calls cost more);
- the UNet's FLOPs per step (one forward at the latent size, batch 2 for CFG, counted by
  torch.utils.flop_counter on the meta device) and the achieved TFLOP/s, against the GPU's dense fp16/bf16
  tensor-core peak when the GPU is in PEAK_TFLOPS (GFLOP/s only on the CPU);
- cold load (first load from disk), cache hit, load of a second checkpoint and the switch back to the first
  (on a GPU the manager's device budget holds one checkpoint and its CPU budget the other, so switching back
  is a RAM -> VRAM copy; on the CPU, RAM is the device and the switch back is a cache hit);
- peak memory per section: torch.cuda.max_memory_allocated on a GPU, peak RSS (VmHWM, reset through
  /proc/self/clear_refs) on the CPU.

    python bench/bench_speed.py                                            # tiny model, CPU
    python bench/bench_speed.py --arch sd15 --size 256 --steps 4 --runs 1  # SD 1.5 architecture on the CPU
    python bench/bench_speed.py --arch sd15 --size 512 --steps 20 --device cuda [--compile]
    python bench/bench_speed.py --arch sdxl --size 1024 --steps 20 --device cuda [--compile]

Full-size archs use random weights from the shipped configs (they time the same as real ones).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ARCHS, build_model  # noqa: E402
from pipelines import discovery
from pipelines.engine import devices  # noqa: E402
from pipelines.engine.generate import Engine  # noqa: E402
from pipelines.engine.manager import ModelManager, nbytes  # noqa: E402
from pipelines.jobs import JobRunner  # noqa: E402
from pipelines.outputs import OutputWriter  # noqa: E402
from pipelines.params.specs import Txt2ImgParams  # noqa: E402

PROMPT, NEGATIVE, CFG, SEED = "a red cube on a wooden table, studio light", "blurry, low quality", 7.0, 1

# Dense (no 2:4 sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, with FP32 accumulation (what PyTorch's fp16
# and bf16 matmuls and convolutions use). Matched in order against torch.cuda.get_device_name().
PEAK_TFLOPS: list[tuple[tuple[str, ...], float, str]] = [
    (("H200 NVL",), 835.0, "NVIDIA H200 NVL datasheet: 1,671 TFLOPS FP16/BF16 with sparsity"),
    (("H200",), 989.4, "NVIDIA H200 SXM datasheet: 1,979 TFLOPS FP16/BF16 with sparsity"),
    (("H100 PCIe",), 756.5, "NVIDIA H100 PCIe datasheet: 1,513 TFLOPS FP16/BF16 with sparsity"),
    (("H100 NVL",), 835.0, "NVIDIA H100 NVL datasheet: 1,671 TFLOPS FP16/BF16 with sparsity"),
    (("H100",), 989.4, "NVIDIA H100 SXM5 datasheet: 1,979 TFLOPS FP16/BF16 with sparsity"),
    (("A100",), 312.0, "NVIDIA A100 datasheet: 312 TFLOPS FP16/BF16 tensor core (624 with sparsity)"),
    (("L40S",), 362.05, "NVIDIA L40S datasheet: 733 TFLOPS FP16/BF16 with sparsity"),
    (("L4",), 121.0, "NVIDIA L4 datasheet: 242 TFLOPS FP16/BF16 with sparsity"),
    (("A10G", "A10"), 125.0, "NVIDIA A10 datasheet: 125 TFLOPS FP16/BF16 tensor core (250 with sparsity)"),
    (("RTX 4090",), 165.2, "Ada (AD102) whitepaper: RTX 4090 FP16 tensor with FP32 accumulate 165.2 (330.4 sparse)"),
    (("RTX 3090",), 71.0, "Ampere (GA102) whitepaper: RTX 3090 FP16 tensor with FP32 accumulate 71 (142 sparse)"),
]


def device_peak(hw: devices.Hardware) -> tuple[float | None, str]:
    """The GPU's dense half-precision peak (TFLOP/s) and where the figure comes from; None off the table/CPU."""
    if hw.device.type != "cuda":
        return None, "CPU: no tensor-core peak; achieved GFLOP/s only"
    if hw.dtype not in (torch.float16, torch.bfloat16):
        return None, f"{hw.dtype} run: the table has fp16/bf16 peaks only"
    name = torch.cuda.get_device_name(hw.device)
    for keys, peak, source in PEAK_TFLOPS:
        if any(k in name for k in keys):
            return peak, source
    return None, f"{name} is not in PEAK_TFLOPS"


# -- memory ----------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Peak:
    """Peak memory over a section: CUDA allocator peak on a GPU, peak RSS on the CPU (Linux)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> "Peak":
        devices.free_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
            self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _status_kib("VmHWM") * 1024

    def report(self) -> dict[str, float]:
        kind = "cuda_allocated" if self.cuda else "rss"
        return {f"{kind}_before_gib": round(self.base / 2**30, 3), f"{kind}_peak_gib": round(self.peak / 2**30, 3)}


# -- timers ------------------------------------------------------------------------------------------------------

class StepClock:
    """Stamps each denoising step's end: CUDA events on a GPU (read after the run), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stamps: list[Any] = []

    def stamp(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.stamps.append(ev)
        else:
            self.stamps.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        """Seconds of each step after the first (the first one also holds the set-up before the loop)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.stamps, self.stamps[1:])]
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


class TimedContext:
    """A JobContext that stamps a StepClock whenever the engine reports a new denoising step."""

    def __init__(self, ctx: Any, clock: StepClock):
        self._ctx, self._clock, self._last = ctx, clock, 0

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        if step > self._last:
            self._clock.stamp()
            self._last = step
        self._ctx.progress(step, total, label=label)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def in_worker(runner: JobRunner, fn: Callable[[], Any]) -> Any:
    return runner.submit(lambda ctx: fn()).wait()


# -- FLOPs -------------------------------------------------------------------------------------------------------

def unet_flops(unet: torch.nn.Module, size: int, batch: int = 2, tokens: int = 77) -> int:
    """FLOPs of one UNet forward (batch 2 = CFG's conditional + unconditional) at `size` px, counted on the meta
    device from the module's config (no memory, no compute; attention is counted through its matmuls)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = unet.config
    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(cfg).eval()
        latent = size // 8
        args = [torch.zeros(batch, cfg.in_channels, latent, latent), torch.full((batch,), 500.0),
                torch.zeros(batch, tokens, cfg.cross_attention_dim)]
        kwargs: dict[str, Any] = {}
        if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embeds + 6 size/crop ids
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled), "time_ids": torch.zeros(batch, 6)}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops()


# -- the benchmark -----------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--size", type=int, default=None, help="pixels per side (default: the model's native size)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--sampler", default="Euler")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet on both sides")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend on both sides (inductor; 'eager'/'aot_eager' skip code generation)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a diffusers folder of --arch built before (bench/common.py: build_model), used instead "
                         "of building one (bench/gpu_check.py builds each arch once for several runs)")
    ap.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                    help="UNet in channels-last on both sides (auto: on for CUDA, as the app does)")
    ap.add_argument("--memory-mode", default="high", help="the app's memory mode (pipelines/engine/memory.py)")
    ap.add_argument("--preview-every", type=int, default=0, help="the app's live previews (0: off, like plain)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()

    hw = devices.resolve(args.device, args.precision)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and hw.device.type == "cuda")
    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    try:
        result = run(args, hw, channels_last, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def run(args: argparse.Namespace, hw: devices.Hardware, channels_last: bool, work: Path) -> dict[str, Any]:
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    models = work / "models" / "Stable-diffusion"
    t0 = time.perf_counter()
    folder_a = models / f"{args.arch}-a"
    if args.model:  # hard links (a copy across file systems): the cache's identity is the path
        shutil.copytree(args.model, folder_a, copy_function=link_or_copy)
    else:
        build_model(args.arch, folder_a, device="cuda" if hw.device.type == "cuda" else "cpu")
    build_s = time.perf_counter() - t0
    folder_b = models / f"{args.arch}-b"  # same files (hard links), another checkpoint to the cache
    shutil.copytree(folder_a, folder_b, copy_function=link_or_copy)
    infos = {i.name: i for i in discovery.scan(work / "models")}
    info_a, info_b = infos[folder_a.name], infos[folder_b.name]
    size = args.size or info_a.native
    print(f"device {hw.describe()}; {args.arch} ({info_a.family}) {size}x{size}, {args.steps} steps, CFG {CFG}, "
          f"compile {args.compile} ({args.compile_backend}), channels-last {channels_last}; model "
          f"{'linked from ' + str(args.model) if args.model else 'built'} in {build_s:.0f} s", flush=True)
    runner = JobRunner().start()
    out: dict[str, Any] = {
        "device": hw.describe(), "torch": torch.__version__, "arch": args.arch, "family": info_a.family,
        "size": size, "steps": args.steps, "cfg": CFG, "runs": args.runs, "sampler": args.sampler,
        "compile": args.compile, "compile_backend": args.compile_backend if args.compile else None,
        "channels_last": channels_last, "memory_mode": args.memory_mode,
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        # -- plain diffusers ---------------------------------------------------------------------------------
        with Peak(hw.device) as peak_plain_load:
            t0 = time.perf_counter()
            plain = in_worker(runner, lambda: DiffusionPipeline.from_pretrained(
                folder_a, dtype=hw.dtype, safety_checker=None, requires_safety_checker=False,
                local_files_only=True).to(hw.device))
            plain_load = time.perf_counter() - t0
        plain.scheduler = EulerDiscreteScheduler.from_config(plain.scheduler.config)
        plain.set_progress_bar_config(disable=True)
        checkpoint = sum(nbytes(m) for m in (plain.unet, plain.vae, plain.text_encoder,
                                             getattr(plain, "text_encoder_2", None)))
        flops = unet_flops(plain.unet, size)
        if channels_last:
            plain.unet.to(memory_format=torch.channels_last)
        if args.compile:
            plain.unet.compile(backend=args.compile_backend)  # nn.Module.compile, in place, as the app's fastpath
        pipes = {"plain": plain}  # dropped before the switching section (frees its memory)
        del plain

        def plain_once() -> tuple[float, list[float]]:
            clock = StepClock(hw.device)

            def on_step(pipe: Any, i: int, t: Any, kw: dict) -> dict:
                clock.stamp()
                return kw

            devices.synchronize(hw.device)
            t = time.perf_counter()
            pipes["plain"](PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=CFG,
                  width=size, height=size, generator=torch.Generator("cpu").manual_seed(SEED),
                  callback_on_step_end=on_step)
            devices.synchronize(hw.device)
            return time.perf_counter() - t, clock.step_seconds()

        # -- the app: Engine + ModelManager + JobRunner, as app.py builds them ---------------------------------
        if hw.device.type == "cuda":  # the device holds one checkpoint, CPU RAM the other
            manager = ModelManager(device=hw.device, device_budget=int(1.5 * checkpoint),
                                   cpu_budget=int(1.5 * checkpoint))
        else:  # RAM is the device: room for both
            manager = ModelManager(device=hw.device, device_budget=int(2.5 * checkpoint), cpu_budget=0)
        engine = Engine(hw, manager, OutputWriter(work / "outputs"), config_root=work / "models" / ".cache" / "configs",
                        hash_cache=work / "models" / ".cache" / "hashes.json", preview_every=args.preview_every,
                        memory_mode=args.memory_mode, channels_last=channels_last, compile_unet=args.compile,
                        compile_backend=args.compile_backend)
        params = Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=args.steps, cfg_scale=CFG, width=size,
                               height=size, seed=SEED, sampler_name=args.sampler)
        warnings: list[str] = []

        def warm(info: Any) -> float:
            t = time.perf_counter()
            runner.submit(lambda ctx: engine.warm(ctx, info)).wait()
            return time.perf_counter() - t

        def app_once() -> tuple[float, list[float]]:
            clock = StepClock(hw.device)
            t = time.perf_counter()
            res = runner.submit(lambda ctx: engine.txt2img(TimedContext(ctx, clock), params, info_a)).wait()
            seconds = time.perf_counter() - t
            warnings.extend(w for w in res.warnings if w not in warnings)
            return seconds, clock.step_seconds()

        with Peak(hw.device) as peak_app_load:
            cold = warm(info_a)
        hit = warm(info_a)

        # -- generation: warm-up (compiles when asked), then interleaved runs ---------------------------------
        # the app first: with --compile, whichever side compiles first pays the whole compile and the other
        # reuses dynamo's and inductor's caches (inductor's FX graph cache also persists across processes)
        with Peak(hw.device) as peak_app_first:
            app_first, _ = app_once()
        with Peak(hw.device) as peak_plain_first:
            plain_first, _ = in_worker(runner, plain_once)
        plain_e2e, app_e2e, plain_steps, app_steps = [], [], [], []
        with Peak(hw.device) as peak_gen:
            for _ in range(args.runs):
                s, steps = in_worker(runner, plain_once)
                plain_e2e.append(s)
                plain_steps += steps
                s, steps = app_once()
                app_e2e.append(s)
                app_steps += steps
        pipes.clear()
        devices.free_memory()

        # -- switching: A -> B -> A -> B ------------------------------------------------------------------------
        with Peak(hw.device) as peak_switch:
            load_b = warm(info_b)
            mark = len(manager.history)
            back_a = warm(info_a)
            how_a = sorted({h["action"] for h in list(manager.history)[mark:]})
            back_b = warm(info_b)
        runner.stop()
    except BaseException:
        runner.stop()
        raise

    med = statistics.median
    p_step, a_step = med(plain_steps), med(app_steps)
    peak, peak_source = device_peak(hw)
    out.update({
        "checkpoint_gib": round(checkpoint / 2**30, 3),
        "unet_gflop_per_step": round(flops / 1e9, 3),
        "plain": {"e2e_s": round(med(plain_e2e), 4), "step_s": round(p_step, 5), "first_call_s": round(plain_first, 3),
                  "load_s": round(plain_load, 3), "it_s": round(1 / p_step, 3)},
        "app": {"e2e_s": round(med(app_e2e), 4), "step_s": round(a_step, 5), "first_call_s": round(app_first, 3),
                "it_s": round(1 / a_step, 3), "warnings": warnings},
        "ratio_app_over_plain": {"e2e": round(med(app_e2e) / med(plain_e2e), 3), "step": round(a_step / p_step, 3)},
        "achieved_tflop_s": {"plain": round(flops / p_step / 1e12, 5), "app": round(flops / a_step / 1e12, 5)},
        "device_peak_tflop_s": peak, "peak_source": peak_source,
        "load": {"cold_s": round(cold, 3), "hit_s": round(hit, 4), "second_checkpoint_s": round(load_b, 3),
                 "switch_back_s": round(back_a, 4), "switch_back_again_s": round(back_b, 4),
                 "switch_back_actions": how_a},
        "memory": {"plain_load": peak_plain_load.report(), "app_cold_load": peak_app_load.report(),
                   "app_first_call": peak_app_first.report(), "plain_first_call": peak_plain_first.report(),
                   "generate_runs": peak_gen.report(), "switching": peak_switch.report()},
    })
    if peak:
        out["mfu"] = {k: round(v / peak, 4) for k, v in out["achieved_tflop_s"].items()}
    return out


def table(r: dict[str, Any]) -> str:
    """The result as a readable table."""
    p, a, ld = r["plain"], r["app"], r["load"]
    tf = r["achieved_tflop_s"]
    unit, scale = ("TFLOP/s", 1) if r["device_peak_tflop_s"] else ("GFLOP/s", 1000)
    rows = [
        ("", "plain diffusers", "app", "app/plain"),
        ("seconds per image (end to end)", f"{p['e2e_s']:.3f}", f"{a['e2e_s']:.3f}", f"{r['ratio_app_over_plain']['e2e']:.3f}"),
        ("seconds per step (device timer)", f"{p['step_s']:.4f}", f"{a['step_s']:.4f}", f"{r['ratio_app_over_plain']['step']:.3f}"),
        ("first call (warm-up/compile) s", f"{p['first_call_s']:.2f}", f"{a['first_call_s']:.2f}", ""),
        (f"UNet {unit} achieved", f"{tf['plain'] * scale:.2f}", f"{tf['app'] * scale:.2f}", ""),
    ]
    if r.get("mfu"):
        rows.append((f"of peak {r['device_peak_tflop_s']} TFLOP/s", f"{r['mfu']['plain']:.1%}", f"{r['mfu']['app']:.1%}", ""))
    rows += [
        ("load from disk s (cold)", f"{p['load_s']:.2f}", f"{ld['cold_s']:.2f}", ""),
        ("cache hit s", "", f"{ld['hit_s']:.4f}", ""),
        ("second checkpoint load s", "", f"{ld['second_checkpoint_s']:.2f}", ""),
        ("switch back s (" + "+".join(ld["switch_back_actions"]) + ")", "", f"{ld['switch_back_s']:.4f}", ""),
    ]
    mem = r["memory"]
    kind = next(iter(mem["generate_runs"])).rsplit("_before", 1)[0]
    for name, m in mem.items():  # plain_* sections under plain, the others under app
        cell = f"{m[kind + '_peak_gib']:.2f} (from {m[kind + '_before_gib']:.2f})"
        section = name.removeprefix("plain_").removeprefix("app_")
        rows.append((f"peak {kind} GiB: {section}", *((cell, "") if name.startswith("plain_") else ("", cell)), ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    head = (f"{r['arch']} ({r['family']}) {r['size']}x{r['size']}, {r['steps']} steps, CFG {r['cfg']}, "
            f"compile {r['compile']}, channels-last {r['channels_last']}, {r['device']}; "
            f"UNet {r['unet_gflop_per_step']} GFLOP/step")
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if a["warnings"]:
        lines.append("app warnings: " + " | ".join(a["warnings"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
