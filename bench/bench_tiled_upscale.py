"""Tiled SD upscale vs one untiled img2img pass at the same output size: time and peak memory.

Each variant runs in its own process so peak RSS (CPU) or peak allocated memory (CUDA) is its own.

    python bench/bench_tiled_upscale.py                            # tiny model, CPU, 1024x1024 output
    python bench/bench_tiled_upscale.py --arch sd15 --size 2048 --tile 512 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_variant(args: argparse.Namespace) -> dict:
    import torch
    from PIL import Image

    from pipelines import discovery
    from pipelines.engine import devices
    from pipelines.engine.generate import Engine
    from pipelines.engine.manager import ModelManager
    from pipelines.engine.upscale import sd_upscale
    from pipelines.jobs import JobRunner
    from pipelines.outputs import OutputWriter
    from pipelines.params.specs import Img2ImgParams, SdUpscaleParams

    work = Path(args.work)
    info = next(i for i in discovery.scan(work / "models") if i.name == "model")
    hw = devices.resolve(args.device, args.precision)
    engine = Engine(hw, ModelManager(device=hw.device, device_budget=hw.total_memory, cpu_budget=0),
                    OutputWriter(work / "outputs"), config_root=work / "cfg", preview_every=0,
                    models_dir=work / "models")
    runner = JobRunner().start()
    small = Image.effect_noise((args.size // 2, args.size // 2), 64).convert("RGB")
    runner.submit(lambda ctx: engine.warm(ctx, info)).wait()
    if hw.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if args.variant == "tiled":
        params = SdUpscaleParams(prompt="a city", steps=args.steps, denoising_strength=args.denoise, seed=1,
                                 upscaler_1="Lanczos", upscaling_resize=2, tile_width=args.tile,
                                 tile_height=args.tile)
        job = runner.submit(lambda ctx: sd_upscale(engine, ctx, params, info, small))
    else:
        big = small.resize((args.size, args.size), Image.Resampling.LANCZOS)
        params = Img2ImgParams(prompt="a city", steps=args.steps, denoising_strength=args.denoise, seed=1,
                               width=args.size, height=args.size)
        job = runner.submit(lambda ctx: engine.img2img(ctx, params, info, big))
    job.wait()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if hw.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    runner.stop()
    return {"variant": args.variant, "seconds": round(seconds, 2), "peak_bytes": peak,
            "peak": "device allocated" if hw.device.type == "cuda" else "process RSS", "device": hw.describe()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--size", type=int, default=1024, help="output pixels per side")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--denoise", type=float, default=0.4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--variant", choices=["tiled", "untiled"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-tiled-"))
    folder = work / "models" / "Stable-diffusion" / "model"
    if args.arch == "tiny":
        from tests.tiny_models import build_sd15

        build_sd15(folder)
    else:
        from bench.bench_txt2img import build_sd15_random

        build_sd15_random(folder)
    results = []
    for variant in ("untiled", "tiled"):
        cmd = [sys.executable, __file__, "--variant", variant, "--work", str(work), "--arch", args.arch,
               "--size", str(args.size), "--tile", str(args.tile), "--steps", str(args.steps),
               "--denoise", str(args.denoise), "--device", args.device, "--precision", args.precision]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    untiled, tiled = results
    print(json.dumps({"arch": args.arch, "size": args.size, "tile": args.tile, "steps": args.steps,
                      "denoise": args.denoise, "untiled": untiled, "tiled": tiled,
                      "time_ratio_tiled_over_untiled": round(tiled["seconds"] / untiled["seconds"], 2),
                      "peak_ratio_tiled_over_untiled": round(tiled["peak_bytes"] / untiled["peak_bytes"], 2)},
                     indent=2))


if __name__ == "__main__":
    main()
