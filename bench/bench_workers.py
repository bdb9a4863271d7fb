"""Throughput of several device workers: images/minute on the tiny model with one in-process worker, two
(`--device cpu,cpu`) and, when Ray Serve is installed, the Ray backend with one and two replicas (`--ray auto
--ray-replicas N`), each as a ratio against one worker; plus the overhead per job with Ray against a local worker
(median latency of an empty job, Ray minus local; and of a one-step job).

    python bench/bench_workers.py                 # tiny model, CPU: 8 jobs of 8 steps at 64x64
    python bench/bench_workers.py --jobs 16 --steps 20 --no-ray
    python bench/bench_workers.py --arch sd15 --size 256 --jobs 4 --steps 4 --warmup 1   # SD 1.5 architecture
    python bench/bench_workers.py --device cuda --arch sd15 --size 512 --jobs 16 --steps 20 --threads 0 --no-ray
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import discovery  # noqa: E402
from pipelines.jobs import JobRunner  # noqa: E402
from pipelines.outputs import OutputWriter  # noqa: E402
from pipelines.params.specs import Txt2ImgParams  # noqa: E402
from pipelines.settings import Settings  # noqa: E402


def local_engines(settings: Settings, writer: OutputWriter, n: int) -> list:
    from pipelines.engine import devices
    from pipelines.engine.setup import make_engine

    lock = threading.Lock()
    return [make_engine(settings, devices.resolve(settings.device, "auto"), writer, device_budget=2**35, ram_budget=0,
                        load_lock=lock) for _ in range(n)]


def throughput(engines: list, info, jobs: int, steps: int, size: int = 64, warmup: int = 4) -> float:
    """Images per minute for `jobs` single-image jobs spread over the engines' workers (after a warm-up)."""
    runner = JobRunner(workers=[f"w{i}" for i in range(len(engines))]).start()
    try:
        def submit(seed: int, s: int):
            p = Txt2ImgParams(prompt="a red cube", steps=s, seed=seed, width=size, height=size)
            return runner.submit(lambda ctx: engines[ctx.worker].txt2img(ctx, p, info))

        # every worker (every Ray replica) loads the model first: Serve routes a checkpoint's jobs to the replicas
        # that hold it and only falls back to another after a second, so one cold replica would skew the figure
        warm = [submit(i, steps) for i in range(warmup * len(engines))]
        for job in warm:
            job.wait(600)
        t0 = time.perf_counter()
        for job in [submit(i, steps) for i in range(jobs)]:
            job.wait(600)
        return jobs / (time.perf_counter() - t0) * 60
    finally:
        runner.stop()


def latency(engine, info, runs: int, size: int = 64) -> dict:
    """Median seconds, on one worker with the model loaded, of a one-step job and of a job that only checks the model
    is loaded (Engine.warm: no compute, so through Ray it is the head's and Serve's cost of a job alone)."""
    runner = JobRunner(workers=["w"]).start()
    p = Txt2ImgParams(prompt="a red cube", steps=1, seed=1, width=size, height=size)
    try:
        out = {}
        for name, fn in (("one_step_job", lambda ctx: engine.txt2img(ctx, p, info)),
                         ("empty_job", lambda ctx: engine.warm(ctx, info))):
            times = []
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                runner.submit(fn).wait(600)
                times.append(time.perf_counter() - t0)
            out[name] = round(statistics.median(times[1:]), 4)
        return out
    finally:
        runner.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5, help="one-step jobs timed for the overhead")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in this process (default 1: what Ray gives a one-CPU replica, so a local "
                         "worker and a replica compute alike; 0 = torch's default)")
    ap.add_argument("--arch", choices=("tiny", "sd15"), default="tiny",
                    help="the tests' tiny SD 1.5, or the full SD 1.5 architecture with random weights")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--warmup", type=int, default=4, help="warm-up jobs per worker before timing")
    ap.add_argument("--device", default="cpu",
                    help="every local worker's device: with cuda, two workers share one GPU (their decoding and PNG "
                         "writes overlap the other's denoising)")
    ap.add_argument("--no-ray", action="store_true")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from bench.common import build_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_model(a.arch, root / "models" / "Stable-diffusion" / f"bench-{a.arch}")
        settings = Settings(models_dir=root / "models", outputs_dir=root / "outputs", preview_every=0,
                            hub_endpoint=None, device=a.device)
        info = next(i for i in discovery.scan(settings.models_dir) if i.name == f"bench-{a.arch}")
        writer = OutputWriter(settings.outputs_dir)
        out: dict = {"arch": a.arch, "jobs": a.jobs, "steps": a.steps, "size": a.size, "threads": a.threads}
        run = dict(jobs=a.jobs, steps=a.steps, size=a.size, warmup=a.warmup)
        one = throughput(local_engines(settings, writer, 1), info, **run)
        out["local_1"] = {"images_per_min": round(one, 1), "ratio": 1.0}
        gc.collect()
        two = throughput(local_engines(settings, writer, 2), info, **run)
        out["local_2"] = {"images_per_min": round(two, 1), "ratio": round(two / one, 2)}
        gc.collect()
        local_latency = latency(local_engines(settings, writer, 1)[0], info, a.runs, a.size)
        gc.collect()
        if not a.no_ray:
            from ray import serve

            from pipelines.cluster import APP, start_cluster

            for n in (1, 2):
                cluster = start_cluster(dataclasses.replace(settings, ray="auto", ray_replicas=n), writer)
                rate = throughput(cluster.engines, info, **run)
                out[f"ray_{n}"] = {"images_per_min": round(rate, 1), "ratio": round(rate / one, 2)}
                if n == 1:
                    ray_latency = latency(cluster.engines[0], info, a.runs, a.size)
                    out["latency_s"] = {"local": local_latency, "ray": ray_latency,
                                        "ray_overhead_per_job": round(ray_latency["empty_job"]
                                                                      - local_latency["empty_job"], 4)}
                    serve.delete(APP)
                else:
                    cluster.stop()
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
