"""Benchmark the guided workflow (draft -> refine -> finalize) against the naive way, and the advisor's latency.

The guided path runs through the app's engine and job queue: 4 drafts at draft steps, one refine of the third
draft's seed at full steps, then Hires. fix's second pass over the refined image (no first pass again). The
naive path renders the same 4 candidates at full steps with Hires. fix on, twice: through the app, and as plain
diffusers calls (StableDiffusionPipeline, then StableDiffusionImg2ImgPipeline over each Lanczos-upscaled image,
the same second pass) measured in the same run, in the same job worker thread as the app's jobs. Reports wall
seconds and denoising steps of each, and the ratios; the median of --runs, interleaved.

    python bench/bench_workflow.py                                  # tiny model, CPU
    python bench/bench_workflow.py --arch sd15 --size 256 --runs 1  # SD1.5 architecture, random weights
    python bench/bench_workflow.py --arch sd15 --device cuda --runs 3
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_txt2img import build_sd15_random  # noqa: E402
from pipelines import discovery
from pipelines.advisor import rules as advisor  # noqa: E402
from pipelines.advisor import workflow
from pipelines.advisor.prompt_rules import clip_token_counter  # noqa: E402
from pipelines.engine import devices
from pipelines.engine.generate import Engine  # noqa: E402
from pipelines.engine.manager import ModelManager  # noqa: E402
from pipelines.jobs import JobRunner  # noqa: E402
from pipelines.outputs import OutputWriter  # noqa: E402
from pipelines.params.infotext import parse_infotext  # noqa: E402
from pipelines.params.spec import HintContext  # noqa: E402
from pipelines.params.specs import Txt2ImgParams, defaults  # noqa: E402

PROMPT, NEGATIVE = "a lighthouse on a cliff at sunset, oil painting", "blurry, low quality"
HIRES = {"hr_upscaler": "Lanczos", "hr_scale": 2.0, "denoising_strength": workflow.FINAL_DENOISE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--size", type=int, default=None, help="first-pass pixels per side (default: native)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    hw = devices.resolve(args.device, args.precision)
    work = Path(tempfile.mkdtemp(prefix="bench-workflow-"))
    folder = work / "models" / "Stable-diffusion" / f"{args.arch}-model"
    folder.parent.mkdir(parents=True)
    if args.arch == "tiny":
        from tests.tiny_models import build_sd15

        build_sd15(folder)
    else:
        build_sd15_random(folder)
    info = next(i for i in discovery.scan(work / "models") if i.name == folder.name)
    size = args.size or info.native
    ctx = HintContext(family=info.family, native=size)  # the bench's size plays the native size
    manager = ModelManager(device=hw.device, device_budget=hw.total_memory, cpu_budget=0)
    engine = Engine(hw, manager, OutputWriter(work / "outputs"), config_root=work / "models" / ".cache" / "configs",
                    hash_cache=work / "models" / ".cache" / "hashes.json", preview_every=0)
    runner = JobRunner().start()
    base = {**defaults(), "prompt": PROMPT, "negative_prompt": NEGATIVE, "width": size, "height": size,
            "sampler_name": "Euler"}
    print(f"device {hw.describe()}; model {args.arch}, first pass {size}x{size}, final {2 * size}x{2 * size}",
          flush=True)

    def job(fn):
        return runner.submit(fn).wait()

    def guided() -> tuple[float, int]:
        t = time.perf_counter()
        draft = {**base, **workflow.draft_settings(base, ctx)}
        d = job(lambda c: engine.txt2img(c, Txt2ImgParams(**draft), info))
        refine = {**draft, **workflow.refine_settings(draft, d.seeds[2], ctx)}
        r = job(lambda c: engine.txt2img(c, Txt2ImgParams(**refine), info))
        chosen = Image.open(r.paths[0])
        final = workflow.finalize_hires(parse_infotext(chosen.info["parameters"]), HIRES, ctx, [])
        f = job(lambda c: engine.hires_fix(c, Txt2ImgParams(**final), info, chosen))
        return time.perf_counter() - t, d.denoising_steps + r.denoising_steps + f.denoising_steps

    def naive_app() -> tuple[float, int]:
        t = time.perf_counter()
        p = {**base, **HIRES, "steps": workflow.refine_steps(ctx), "batch_size": 4, "seed": 1, "enable_hr": True}
        n = job(lambda c: engine.txt2img(c, Txt2ImgParams(**p), info))
        return time.perf_counter() - t, n.denoising_steps

    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(folder, dtype=hw.dtype, safety_checker=None,
                                                    requires_safety_checker=False, local_files_only=True).to(hw.device)
    plain.scheduler = EulerDiscreteScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(plain)
    img2img.set_progress_bar_config(disable=True)

    def naive_plain() -> tuple[float, int]:  # in the job worker thread, as the app's jobs (docs/benchmarks.md)
        return job(lambda c: plain_calls())

    def plain_calls() -> tuple[float, int]:
        devices.synchronize(hw.device)
        t = time.perf_counter()
        steps = workflow.refine_steps(ctx)
        gen = [torch.Generator("cpu").manual_seed(1 + i) for i in range(4)]
        images = plain(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7, width=size,
                       height=size, num_images_per_prompt=4, generator=gen).images
        for im in images:
            big = im.resize((2 * size, 2 * size), Image.Resampling.LANCZOS)
            img2img(PROMPT, negative_prompt=NEGATIVE, image=big, strength=workflow.FINAL_DENOISE,
                    num_inference_steps=steps, guidance_scale=7, generator=torch.Generator("cpu").manual_seed(2))
        devices.synchronize(hw.device)
        second = int(steps * workflow.FINAL_DENOISE)
        return time.perf_counter() - t, 4 * (steps + second)

    # warm-up: load the app's components and run one short job each way (first-call overheads)
    job(lambda c: engine.txt2img(c, Txt2ImgParams(**{**base, "steps": 2, "enable_hr": True, **HIRES}), info))
    plain(PROMPT, num_inference_steps=2, width=size, height=size)
    runs: dict[str, list[tuple[float, int]]] = {"guided": [], "naive_app": [], "naive_plain": []}
    for _ in range(args.runs):
        runs["guided"].append(guided())
        runs["naive_app"].append(naive_app())
        runs["naive_plain"].append(naive_plain())
    runner.stop()

    # the advisor on every field change: median latency of a full check with the CLIP token count
    count = clip_token_counter()
    settings = {**base, "cfg_scale": 20, "negative_prompt": "blue jacket", "prompt": "a man in a denim jacket"}
    lat = []
    for _ in range(200):
        t = time.perf_counter()
        advisor.check(settings, HintContext(), count)
        lat.append(time.perf_counter() - t)

    med = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
    steps = {k: v[0][1] for k, v in runs.items()}
    result = {
        "device": hw.describe(), "arch": args.arch, "first_pass": size, "runs": args.runs,
        "seconds": {k: round(v, 3) for k, v in med.items()}, "denoising_steps": steps,
        "guided_over_naive_app": round(med["guided"] / med["naive_app"], 3),
        "guided_over_naive_plain": round(med["guided"] / med["naive_plain"], 3),
        "naive_app_over_plain": round(med["naive_app"] / med["naive_plain"], 3),
        "steps_guided_over_naive": round(steps["guided"] / steps["naive_app"], 3),
        "advisor_check_ms": round(statistics.median(lat) * 1000, 2),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
