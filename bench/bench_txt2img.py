"""Benchmark the app's txt2img path against a plain diffusers call on the same model and arguments.

Reports (median of --runs): plain diffusers seconds/image, app seconds/image and the ratio; the app's
it/s against plain diffusers' it/s measured over the denoising loop; cold load vs cache hit; and the
bytes shared between txt2img / img2img / inpaint pipeline views (should be all of them).

    python bench/bench_txt2img.py                      # tiny model, CPU
    python bench/bench_txt2img.py --arch sd15 --size 512 --steps 20 --runs 5 --device cuda   # SD1.5 random weights
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import build_sd15_random  # noqa: E402
from pipelines import discovery
from pipelines.engine import devices  # noqa: E402
from pipelines.engine.generate import Engine, build_pipeline  # noqa: E402
from pipelines.engine.manager import ModelManager  # noqa: E402
from pipelines.jobs import JobRunner  # noqa: E402
from pipelines.outputs import OutputWriter  # noqa: E402
from pipelines.params.specs import Txt2ImgParams  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--size", type=int, default=None, help="pixels per side (default: native size)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--sampler", default="Euler")
    args = ap.parse_args()

    hw = devices.resolve(args.device, args.precision)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    models = work / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    folder = models / f"{args.arch}-model"
    if args.arch == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.tiny_models import build_sd15

        build_sd15(folder)
    else:
        build_sd15_random(folder)
    info = next(i for i in discovery.scan(work / "models") if i.name == folder.name)
    size = args.size or info.native
    print(f"device {hw.describe()}; model {args.arch} ({info.family}), {size}x{size}, {args.steps} steps, CFG 7",
          flush=True)

    # -- plain diffusers --------------------------------------------------------------------------
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    t0 = time.perf_counter()
    plain = StableDiffusionPipeline.from_pretrained(folder, dtype=hw.dtype, safety_checker=None,
                                                    requires_safety_checker=False, local_files_only=True).to(hw.device)
    plain_load = time.perf_counter() - t0
    plain.scheduler = EulerDiscreteScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)

    def plain_once() -> float:
        devices.synchronize(hw.device)
        t = time.perf_counter()
        plain("a red cube on a table", negative_prompt="blurry", num_inference_steps=args.steps, guidance_scale=7,
              width=size, height=size, generator=torch.Generator("cpu").manual_seed(1))
        devices.synchronize(hw.device)
        return time.perf_counter() - t


    # -- the app's path: job queue, prompt encoding, per-job pipeline view, PNG save -------------------
    manager = ModelManager(device=hw.device, device_budget=hw.total_memory, cpu_budget=0)
    engine = Engine(hw, manager, OutputWriter(work / "outputs"), config_root=work / "models" / ".cache" / "configs",
                    hash_cache=work / "models" / ".cache" / "hashes.json", preview_every=0)
    runner = JobRunner().start()
    params = Txt2ImgParams(prompt="a red cube on a table", negative_prompt="blurry", steps=args.steps, cfg_scale=7,
                           width=size, height=size, seed=1, sampler_name=args.sampler)

    t0 = time.perf_counter()
    runner.submit(lambda ctx: engine.warm(ctx, info)).wait()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.submit(lambda ctx: engine.warm(ctx, info)).wait()
    hit = time.perf_counter() - t0

    def app_once() -> float:
        t = time.perf_counter()
        runner.submit(lambda ctx: engine.txt2img(ctx, params, info)).wait()
        return time.perf_counter() - t

    plain_once(), app_once()  # warm-up
    plain_times, app_times = [], []
    for _ in range(args.runs):  # interleaved, so both see the same machine conditions
        plain_times.append(plain_once())
        app_times.append(app_once())
    devices.free_memory()

    # -- memory shared across modes -----------------------------------------------------------------
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    with engine.components(info) as comps:
        before = manager.usage()["device_bytes"]
        txt = build_pipeline(comps, EulerDiscreteScheduler.from_config(comps.scheduler_config))
        views = [StableDiffusionImg2ImgPipeline.from_pipe(txt), StableDiffusionInpaintPipeline.from_pipe(txt)]
        shared = all(v.unet is txt.unet and v.vae is txt.vae and v.text_encoder is txt.text_encoder for v in views)
        after = manager.usage()["device_bytes"]
    runner.stop()

    p_med, a_med = statistics.median(plain_times), statistics.median(app_times)
    result = {
        "device": hw.describe(), "arch": args.arch, "size": size, "steps": args.steps, "runs": args.runs,
        "plain_s": round(p_med, 4), "app_s": round(a_med, 4), "ratio_app_over_plain": round(a_med / p_med, 3),
        "plain_it_s": round(args.steps / p_med, 2), "app_it_s": round(args.steps / a_med, 2),
        "plain_load_s": round(plain_load, 3), "app_cold_load_s": round(cold, 3), "app_cache_hit_s": round(hit, 4),
        "views_share_modules": shared, "device_bytes_before_views": before, "device_bytes_after_views": after,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
