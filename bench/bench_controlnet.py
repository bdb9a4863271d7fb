"""Benchmark txt2img with ControlNet units: the app's path against plain diffusers on the very same modules.

Variants (each run by the app and by plain diffusers, interleaved round by round, median of --runs):

    none        no ControlNet (the baseline the per-step ControlNet cost is taken from)
    1u          one canny unit, a ready-made edge map (module "none": the annotator is not timed)
    2u          two units (multi-ControlNet): the canny unit and a second ControlNet model
    1u-end0.5   one unit with guidance_end=0.5
    2u-end0.5   two units, the second with guidance_end=0.5
    1u+canny    app only: one unit with module "canny" (detection and the saved map included)

App: `Engine.txt2img(ctx, params, info, controls)` submitted to the job queue and waited for: prompt
encoding, the per-job pipeline view, `ControlStack`, the step callbacks (progress, cancel, live previews
every --preview-every steps as the app's default) and the PNG writes. Plain: a
`StableDiffusionControlNetPipeline` (with a `MultiControlNetModel` for two units) built once over the app's
own cached UNet / VAE / text encoder and the app's own loaded `ControlNetModel`s, same size, steps, CFG,
sampler (Euler), weights and guidance windows. Plain diffusers runs every ControlNet at every step (a net
outside its window runs with scale 0); the app's `ControlStack` skips a net whose scale is 0 at a step, and
when no unit is active it hands the UNet zero residuals of the shapes it saw before.

The canny preprocessor is timed on its own: `detect_map` on a 512x512 source image at the generation size
(pixel perfect) and at the default processor resolution 512.

Each run records wall time and the CPU time of the whole process. On a shared machine, the medians of
either move with other processes' load; the per-round ratios (app and plain of one variant run back to
back) and per-round differences are what to read. Run with OMP_WAIT_POLICY=PASSIVE (or --threads 1) there:
otherwise OpenMP threads spin while they wait for a descheduled sibling and the CPU time measures that.
The sd15 default runs only 1u, 2u and 2u-end0.5 (what the three questions need); --variants picks others.

    python bench/bench_controlnet.py                                           # tiny model, CPU, 64x64 x 20
    OMP_WAIT_POLICY=PASSIVE python bench/bench_controlnet.py --arch sd15       # SD1.5 + SD1.5 ControlNet, 256 x 10
    python bench/bench_controlnet.py --arch sd15 --size 512 --steps 20 --runs 5 --device cuda \\
        --variants none,1u,2u,1u-end0.5,2u-end0.5
    python bench/bench_controlnet.py --summarize result.json                   # the tables of a saved --json run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import controlnets, discovery
from pipelines.engine import (
    control,  # noqa: E402
    devices,
)
from pipelines.engine.control import ControlRequest  # noqa: E402
from pipelines.engine.generate import Engine  # noqa: E402
from pipelines.engine.manager import ModelManager  # noqa: E402
from pipelines.jobs import JobRunner  # noqa: E402
from pipelines.outputs import OutputWriter  # noqa: E402
from pipelines.params.control import ControlUnit  # noqa: E402
from pipelines.params.specs import Txt2ImgParams  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

CONFIGS = ROOT / "pipelines" / "configs"
PROMPT, NEGATIVE, CFG = "a red cube on a table", "blurry", 7.0
ALL_VARIANTS = ("none", "1u", "2u", "1u-end0.5", "2u-end0.5", "1u+canny")
# (module, guidance_end) per unit; unit 0 uses the first ControlNet model, unit 1 the second
LAYOUT = {
    "none": [], "1u": [("none", 1.0)], "2u": [("none", 1.0), ("none", 1.0)],
    "1u-end0.5": [("none", 0.5)], "2u-end0.5": [("none", 1.0), ("none", 0.5)], "1u+canny": [("canny", 1.0)],
}
APP_ONLY = {"1u+canny"}
SD15_VARIANTS = ("1u", "2u", "2u-end0.5")  # what the three questions need, at a CPU-friendly total time


# -- models -----------------------------------------------------------------------------------------------
ZERO_CONVS = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out")


def _randomize_zero_convs(net: torch.nn.Module, seed: int) -> None:
    """Small random weights in the 'zero convolutions' so the net really steers (as a trained one does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(ZERO_CONVS):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_models(arch: str, models: Path) -> tuple[str, list[str]]:
    """The checkpoint folder under models/Stable-diffusion and two ControlNet folders under models/ControlNet."""
    ckpt, cn_dir = models / "Stable-diffusion" / f"{arch}-model", models / "ControlNet"
    cn_dir.mkdir(parents=True)
    names = [f"{arch}_canny_a", f"{arch}_canny_b"]
    if arch == "tiny":
        from tests.tiny_models import build_controlnet, build_sd15

        build_sd15(ckpt)
        for seed, name in enumerate(names):
            build_controlnet(ckpt, cn_dir / name, seed=seed)
        return ckpt.name, names
    from diffusers import ControlNetModel

    from bench.bench_txt2img import build_sd15_random

    build_sd15_random(ckpt)
    config = ControlNetModel.load_config(CONFIGS / "controlnet-sd15")
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        net = ControlNetModel.from_config(config)  # real SD1.5 ControlNet size (361 M parameters), random
        _randomize_zero_convs(net, seed)
        net.save_pretrained(cn_dir / name, safe_serialization=True)
        del net
    return ckpt.name, names


def source_image(size: int = 512) -> Image.Image:
    """A deterministic 'photo' with shapes and texture, for the canny preprocessor."""
    rng = np.random.default_rng(0)
    im = Image.fromarray((rng.random((size, size, 3)) * 60 + 90).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 3, 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x0 + w, y0 + h], fill=colour)
    return im


# -- timing ------------------------------------------------------------------------------------------------
def minor_faults() -> int:
    """Minor page faults of the process so far (fresh pages the allocator maps cost kernel time, counted in CPU)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--size", type=int, default=None, help="pixels per side (default: tiny 64, sd15 256)")
    ap.add_argument("--steps", type=int, default=None, help="default: tiny 20, sd15 10")
    ap.add_argument("--runs", type=int, default=None, help="default: tiny 7, sd15 3")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated, from {','.join(ALL_VARIANTS)} "
                         f"(default: tiny all; sd15 {','.join(SD15_VARIANTS)})")
    ap.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up call per variant")
    ap.add_argument("--canny-repeats", type=int, default=20)
    ap.add_argument("--preview-every", type=int, default=Settings.preview_every,
                    help="the app's live-preview interval (its default; 0 = off)")
    ap.add_argument("--plain-thread", choices=["worker", "main"], default="worker",
                    help="where plain diffusers runs: the app's job worker thread (same thread, same malloc arena as "
                         "the app: the fair comparison) or the main thread")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (models, outputs)")
    ap.add_argument("--summarize", type=Path, default=None, help="print the tables of a saved --json result and exit")
    args = ap.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text(encoding="utf-8"))
        print(summarize(saved["all_times"], saved["steps"], saved["runs"])[2])
        return
    tiny = args.arch == "tiny"
    size = args.size or (64 if tiny else 256)
    steps = args.steps or (20 if tiny else 10)
    runs = args.runs or (7 if tiny else 3)
    variants = [v.strip() for v in (args.variants or ",".join(ALL_VARIANTS if tiny else SD15_VARIANTS)).split(",")
                if v.strip()]
    if unknown := [v for v in variants if v not in ALL_VARIANTS]:
        ap.error(f"unknown variant(s) {unknown}; choose from {ALL_VARIANTS}")

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = devices.resolve(args.device, args.precision)
    work = Path(tempfile.mkdtemp(prefix="bench-cn-"))
    t0 = time.perf_counter()
    ckpt_name, cn_names = build_models(args.arch, work / "models")
    build_s = time.perf_counter() - t0
    info = next(i for i in discovery.scan(work / "models") if i.name == ckpt_name)
    cns = {i.name: i for i in controlnets.scan(work / "models")}
    cn_infos = [cns[n] for n in cn_names]
    assert all(i.error is None and i.family == "sd15" for i in cn_infos), cn_infos
    threads = torch.get_num_threads() if hw.device.type == "cpu" else None
    omp = os.environ.get("OMP_WAIT_POLICY", "default")
    load0 = os.getloadavg()[0]
    print(f"device {hw.describe()}" + (f", {threads} threads, OMP_WAIT_POLICY {omp}" if threads else "") +
          f"; plain diffusers in the {args.plain_thread} thread" +
          f"; {args.arch} checkpoint ({info.family}) + {args.arch} ControlNets; {size}x{size}, {steps} steps, "
          f"CFG {CFG:g}, Euler; {runs} runs; models built in {build_s:.0f} s", flush=True)

    # -- the app ---------------------------------------------------------------------------------------
    manager = ModelManager(device=hw.device, device_budget=hw.total_memory, cpu_budget=0)
    engine = Engine(hw, manager, OutputWriter(work / "outputs"), config_root=work / "models" / ".cache" / "configs",
                    hash_cache=work / "models" / ".cache" / "hashes.json", preview_every=args.preview_every,
                    models_dir=work / "models", hub_endpoint=None)
    runner = JobRunner().start()
    src = source_image(512)
    # The ready-made maps: canny edges of the source at the generation size, and a blurred copy for unit 2.
    edge = runner.submit(lambda ctx: control.detect_map(
        engine, ctx, ControlUnit.model_validate({"module": "canny", "pixel_perfect": True}), src, (size, size))).wait()
    maps = [edge, src.resize((size, size)).filter(ImageFilter.GaussianBlur(2))]

    def requests(variant: str) -> list[ControlRequest]:
        out = []
        for k, (module, end) in enumerate(LAYOUT[variant]):
            image = src if module == "canny" else maps[k]
            unit = ControlUnit.model_validate({"module": module, "model": cn_infos[k].name, "image": image,
                                               "weight": 1.0, "guidance_start": 0.0, "guidance_end": end,
                                               "pixel_perfect": module != "none"})
            out.append(ControlRequest(k, unit, cn_infos[k], unit.image))
        return out

    def app_params(n_steps: int) -> Txt2ImgParams:
        return Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=n_steps, cfg_scale=CFG, width=size,
                             height=size, seed=1, sampler_name="Euler")

    def app_once(variant: str, n_steps: int) -> tuple[float, float, int]:
        params, reqs = app_params(n_steps), requests(variant)
        devices.synchronize(hw.device)
        t, c, f = time.perf_counter(), time.process_time(), minor_faults()
        runner.submit(lambda ctx: engine.txt2img(ctx, params, info, reqs)).wait()  # raises if the job failed
        devices.synchronize(hw.device)
        return time.perf_counter() - t, time.process_time() - c, minor_faults() - f

    t0 = time.perf_counter()
    app_once("2u", 1)  # loads the checkpoint and both ControlNets into the app's cache
    cold_s = time.perf_counter() - t0

    # -- plain diffusers over the very same modules ------------------------------------------------------
    from diffusers import (
        EulerDiscreteScheduler,
        MultiControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
    )

    def not_loaded() -> None:
        raise RuntimeError("expected the app's cached ControlNet")

    held = engine.components(info)  # pins the app's cached components (no copy, no reload)
    comps = held.__enter__()
    net_ctx = [engine.cached(f"controlnet::{engine.identity(i)}", not_loaded) for i in cn_infos]
    nets = [c.__enter__() for c in net_ctx]

    def plain_pipe(variant: str):
        common = dict(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
                      scheduler=EulerDiscreteScheduler.from_config(comps.scheduler_config), safety_checker=None,
                      feature_extractor=None, requires_safety_checker=False)
        n = len(LAYOUT[variant])
        if n == 0:
            pipe = StableDiffusionPipeline(**common)
        else:
            pipe = StableDiffusionControlNetPipeline(controlnet=nets[0] if n == 1 else MultiControlNetModel(nets[:n]),
                                                     **common)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    plain_pipes = {v: plain_pipe(v) for v in variants if v not in APP_ONLY}

    def plain_once(variant: str, n_steps: int) -> tuple[float, float, int]:
        layout = LAYOUT[variant]
        kw: dict = {}
        if len(layout) == 1:
            kw = dict(image=maps[0], controlnet_conditioning_scale=1.0, control_guidance_start=0.0,
                      control_guidance_end=layout[0][1])
        elif layout:
            kw = dict(image=maps[:len(layout)], controlnet_conditioning_scale=[1.0] * len(layout),
                      control_guidance_start=[0.0] * len(layout), control_guidance_end=[e for _, e in layout])
        def call() -> None:
            plain_pipes[variant](PROMPT, negative_prompt=NEGATIVE, num_inference_steps=n_steps, guidance_scale=CFG,
                                 width=size, height=size, generator=torch.Generator("cpu").manual_seed(1), **kw)

        devices.synchronize(hw.device)
        t, c, f = time.perf_counter(), time.process_time(), minor_faults()
        if args.plain_thread == "worker":  # the thread the app's jobs run in (see --plain-thread)
            runner.submit(lambda ctx: call()).wait()
        else:
            call()
        devices.synchronize(hw.device)
        return time.perf_counter() - t, time.process_time() - c, minor_faults() - f

    # -- canny preprocessing alone ------------------------------------------------------------------------
    def canny_times(ctx, unit: ControlUnit, target: tuple[int, int] | None) -> list[float]:
        out = []
        for _ in range(args.canny_repeats):
            t = time.perf_counter()
            control.detect_map(engine, ctx, unit, src, target)
            out.append(time.perf_counter() - t)
        return out

    pp = ControlUnit.model_validate({"module": "canny", "pixel_perfect": True})
    at512 = ControlUnit.model_validate({"module": "canny", "processor_res": 512})
    canny_pp = runner.submit(lambda ctx: canny_times(ctx, pp, (size, size))).wait()
    canny_512 = runner.submit(lambda ctx: canny_times(ctx, at512, None)).wait()

    # -- warm-up, then interleaved rounds (plain/app order alternates by round) -----------------------------------
    for v in variants:
        if v not in APP_ONLY:
            plain_once(v, args.warmup_steps)
        app_once(v, args.warmup_steps)
    # times[metric][variant][side]: wall seconds, and CPU seconds of the whole process (all threads; on a
    # shared machine the CPU time is far less disturbed by other processes than the wall time)
    times = {m: {v: {"plain": [], "app": []} for v in variants} for m in ("wall", "cpu", "minflt")}
    t_all = time.perf_counter()
    for r in range(runs):
        for v in variants:
            sides = ["app"] if v in APP_ONLY else (["plain", "app"] if r % 2 == 0 else ["app", "plain"])
            for side in sides:
                for m, x in zip(("wall", "cpu", "minflt"), (plain_once if side == "plain" else app_once)(v, steps)):
                    times[m][v][side].append(x)
        print(f"round {r + 1}/{runs} done ({time.perf_counter() - t_all:.0f} s)", flush=True)
    rounds_s = time.perf_counter() - t_all
    load1 = os.getloadavg()[0]

    for c in reversed(net_ctx):
        c.__exit__(None, None, None)
    held.__exit__(None, None, None)
    runner.stop()

    # -- results -------------------------------------------------------------------------------------------
    rows, derived, text = summarize(times, steps, runs)
    print(text)
    canny = {"pixel_perfect_ms": round(statistics.median(canny_pp) * 1000, 2),
             "processor_res_512_ms": round(statistics.median(canny_512) * 1000, 2)}
    print(f"\ncanny detect_map on a 512x512 source: pixel perfect ({size}px) {canny['pixel_perfect_ms']} ms, "
          f"processor_res 512 {canny['processor_res_512_ms']} ms (median of {args.canny_repeats})")
    print(f"load average (1 min) {load0:.1f} at the start, {load1:.1f} at the end; timed rounds took {rounds_s:.0f} s")
    result = {"device": hw.describe(), "threads": threads, "omp_wait_policy": omp, "plain_thread": args.plain_thread,
              "loadavg_start_end": [round(load0, 2), round(load1, 2)], "arch": args.arch, "size": size, "steps": steps,
              "runs": runs, "cfg": CFG, "preview_every": args.preview_every, "build_s": round(build_s, 1),
              "variants": variants, "app_cold_load_s": round(cold_s, 2), "rounds_s": round(rounds_s, 1), "rows": rows,
              "derived": derived, "canny": canny,
              "all_times": {m: {v: {s: [round(x, 4) for x in t] for s, t in d.items()} for v, d in tm.items()}
                            for m, tm in times.items()}}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


# -- summary -----------------------------------------------------------------------------------------------
def summarize(times: dict, steps: int, runs: int) -> tuple[list[dict], dict, str]:
    """Rows per variant, derived per-step costs and the Markdown tables, from times[metric][variant][side].

    Ratios: of the medians, and the median of the per-round ratios (app and plain of one variant run back to
    back, so they share the machine's conditions). Derived costs: median over the rounds of the per-round
    difference between two variants, divided by the steps concerned."""
    half = sum(1 for i in range(steps) if (i + 1) / steps <= 0.5)  # steps inside a 0..0.5 window (diffusers' rule)
    passes = {  # ControlNet forward passes over the whole run: (app, plain)
        "none": (0, 0), "1u": (steps, steps), "2u": (2 * steps, 2 * steps), "1u-end0.5": (half, steps),
        "2u-end0.5": (steps + half, 2 * steps), "1u+canny": (steps, None),
    }
    rows = []
    for v in times["wall"]:
        row: dict = {"variant": v, "net_passes_app": passes[v][0], "net_passes_plain": passes[v][1]}
        for m in ("wall", "cpu"):
            app, plain = times[m][v]["app"], times[m][v]["plain"]
            pl, ap = (statistics.median(plain) if plain else None), statistics.median(app)
            paired = [a / b for a, b in zip(app, plain)]
            row[m] = {"plain_s": None if pl is None else round(pl, 4), "app_s": round(ap, 4),
                      "ratio": None if pl is None else round(ap / pl, 3),
                      "paired_ratio": round(statistics.median(paired), 3) if paired else None}
        rows.append(row)

    def per_round(a: str, b: str, m: str, side: str, per: int, ratio: bool = False) -> float | None:
        if a not in times[m] or b not in times[m] or not times[m][a][side] or not times[m][b][side]:
            return None
        xs, ys = times[m][a][side], times[m][b][side]
        if ratio:
            return round(statistics.median(x / y for x, y in zip(xs, ys)), 3)
        return round(statistics.median(x - y for x, y in zip(xs, ys)) / per * 1000, 1)

    derived: dict = {}
    for m in ("wall", "cpu"):
        for side in ("plain", "app"):
            d = derived.setdefault(f"{side}_{m}", {})
            d["first unit, ms/step (1u - none)"] = per_round("1u", "none", m, side, steps)
            d["second unit, ms/step (2u - 1u)"] = per_round("2u", "1u", m, side, steps)
            d["2u / 1u"] = per_round("2u", "1u", m, side, 1, ratio=True)
            d["end0.5 saves, ms per step past the window (2u - 2u-end0.5)"] = per_round("2u", "2u-end0.5", m, side,
                                                                                        steps - half)
            d["end0.5 saves, ms per step past the window (1u - 1u-end0.5)"] = per_round("1u", "1u-end0.5", m, side,
                                                                                        steps - half)
            d["canny module instead of a ready map, ms per image (1u+canny - 1u)"] = (
                per_round("1u+canny", "1u", m, side, 1) if side == "app" else None)

    def fmt(x: float | None, spec: str = ".3f") -> str:
        return "n/a" if x is None else format(x, spec)

    def faults(v: str) -> str:
        f = times.get("minflt", {}).get(v, {})
        return " / ".join(f"{statistics.median(f[s]) / 1e3:.1f}k" if f.get(s) else "n/a" for s in ("plain", "app"))

    lines = ["", "| variant | ControlNet passes app / plain | wall plain s | wall app s | wall app / plain (paired) "
             "| CPU plain s | CPU app s | CPU app / plain (paired) | page faults plain / app |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        w, c = row["wall"], row["cpu"]
        lines.append(f"| {row['variant']} | {row['net_passes_app']} / {fmt(row['net_passes_plain'], 'd')} | "
                     f"{fmt(w['plain_s'])} | {fmt(w['app_s'])} | {fmt(w['ratio'], '.2f')} "
                     f"({fmt(w['paired_ratio'], '.2f')}) | {fmt(c['plain_s'])} | {fmt(c['app_s'])} | "
                     f"{fmt(c['ratio'], '.2f')} ({fmt(c['paired_ratio'], '.2f')}) | {faults(row['variant'])} |")
    lines += [f"(median of {runs} runs; ratio of the medians, in brackets the median of the per-round ratios; "
              "CPU = CPU time of the whole process, all threads, user + system; page faults: minor, median)", "",
              "| derived (median of per-round differences) | plain wall | app wall | plain CPU | app CPU |",
              "|---|---|---|---|---|"]
    for key in derived["app_wall"]:
        vals = [derived[k].get(key) for k in ("plain_wall", "app_wall", "plain_cpu", "app_cpu")]
        if any(x is not None for x in vals):
            lines.append(f"| {key} | " + " | ".join(fmt(x, "g") for x in vals) + " |")
    return rows, derived, "\n".join(lines)


if __name__ == "__main__":
    main()
