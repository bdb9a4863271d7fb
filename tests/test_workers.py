"""Several device workers in one process (`--device cpu,cpu`): one queue, one engine and cache per worker.

Two CPU workers stand in for two GPUs: jobs of two clients run at the same time, a job goes to the worker that
already holds its checkpoint, a seed gives the same image on either worker, interrupt reaches the right job, and a
job that fails on one worker leaves the other running.
"""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from pipelines.jobs import EventKind, JobRunner
from tests.conftest import tiny_engine
from tests.waiting import wait_for

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def two(tiny_store, tmp_path_factory):
    """Two engines (each with its own model cache) on the test device, and a runner with a worker for each."""
    from pipelines import discovery
    from pipelines.outputs import OutputWriter

    root = tmp_path_factory.mktemp("workers")
    for name in ("tiny-sd15", "tiny-sdxl"):
        shutil.copytree(tiny_store / name, root / "models" / "Stable-diffusion" / name)
    infos = {i.name: i for i in discovery.scan(root / "models")}
    writer, load_lock = OutputWriter(root / "outputs"), threading.Lock()
    engines = [tiny_engine(root, writer, load_lock=load_lock) for _ in range(2)]
    runner = JobRunner(workers=["cpu:a", "cpu:b"], holds=lambda i, info: engines[i].holds(info)).start()
    yield {"engines": engines, "runner": runner, "infos": infos, "root": root}
    runner.stop()


def txt2img(two, owner: str | None = None, model: str = "tiny-sd15", gate: threading.Event | None = None,
            **params):
    """Submit a txt2img job that records its running interval (and waits for `gate` before it starts)."""
    from pipelines.params.specs import Txt2ImgParams

    p = Txt2ImgParams(**{"prompt": "a red cube", "steps": 3, "seed": 11, "width": 64, "height": 64, **params})
    info = two["infos"][model]
    span: dict[str, float] = {}

    def fn(ctx):
        if gate is not None:
            gate.wait(30)
        span["start"] = time.monotonic()
        try:
            return two["engines"][ctx.worker].txt2img(ctx, p, info)
        finally:
            span["end"] = time.monotonic()

    job = two["runner"].submit(fn, kind="txt2img", owner=owner, affinity=info)
    job.span = span
    return job


def pixels(result):
    return np.asarray(result.images[0], dtype=np.int16)


def test_two_clients_run_at_the_same_time_and_a_seed_is_the_same_image_on_either_worker(two):
    gate = threading.Event()
    a, b = txt2img(two, "a", gate=gate, steps=6), txt2img(two, "b", gate=gate, steps=6)
    wait_for(lambda: a.status == b.status == "running", timeout=30, what="both jobs to start")
    assert {a.worker, b.worker} == {0, 1} and two["runner"].position(a) == two["runner"].position(b) == 0
    gate.set()
    ra, rb = a.wait(120), b.wait(120)
    assert a.span["start"] < b.span["end"] and b.span["start"] < a.span["end"]  # their running intervals overlap
    assert np.array_equal(pixels(ra), pixels(rb))  # same seed and settings, different worker: the same image
    assert ra.infotexts[0] == rb.infotexts[0]


def test_a_job_goes_to_the_idle_worker_that_holds_its_checkpoint(two):
    engines = two["engines"]
    # make worker 1 hold the SDXL model and worker 0 not: run an SDXL job on whichever, then check
    first = txt2img(two, model="tiny-sdxl")
    first.wait(120)
    holder = first.worker
    assert engines[holder].holds(two["infos"]["tiny-sdxl"])
    engines[1 - holder].manager.free(drop=True)  # the other worker holds nothing
    for _ in range(3):  # whichever worker wakes first, the job lands where its model is
        job = txt2img(two, model="tiny-sdxl", seed=5)
        job.wait(120)
        assert job.worker == holder


def test_interrupt_reaches_the_callers_job_only(two):
    gate = threading.Event()
    a, b = txt2img(two, "a", gate=gate, steps=8), txt2img(two, "b", gate=gate, steps=8)
    wait_for(lambda: a.status == b.status == "running", timeout=30, what="both jobs to start")
    assert two["runner"].interrupt(owner="b")
    gate.set()
    assert list(b.events(timeout=120))[-1].kind is EventKind.CANCELLED
    assert a.wait(120).images and a.status == "finished"


def test_a_failing_job_on_one_worker_leaves_the_other_running(two):
    runner, gate = two["runner"], threading.Event()
    good = txt2img(two, "a", gate=gate, steps=6)

    def boom(ctx):
        gate.set()
        raise RuntimeError("injected fault on this worker")

    bad = runner.submit(boom, kind="job", owner="b")
    assert list(bad.events(timeout=60))[-1].kind is EventKind.FAILED and "injected fault" in bad.error
    assert good.wait(120).images and good.worker != bad.worker
    again = [txt2img(two, owner, seed=3) for owner in ("a", "b")]  # both workers still serve
    assert all(j.wait(120).images for j in again) and runner.restarts() == 0


def test_positions_count_the_running_jobs_of_every_worker(two):
    runner, gate = two["runner"], threading.Event()
    running = [txt2img(two, "a", gate=gate), txt2img(two, "b", gate=gate)]
    wait_for(lambda: all(j.status == "running" for j in running), timeout=30, what="both workers busy")
    waiting = txt2img(two, "c")
    assert runner.position(waiting) == 2 and [pos for _, pos in runner.queue()] == [0, 0, 2]
    gate.set()
    assert waiting.wait(120).images and all(j.wait(120) for j in running)


def test_a_batch_count_spreads_over_idle_workers_and_keeps_order_and_seeds(two):
    """Through the studio, as a Generate click: batch count 4 runs on both workers; every image is the one a single
    worker makes for its seed, in seed order, and the job's progress ends at its total."""
    from pipelines.settings import Settings
    from pipelines.studio import Studio

    settings = Settings(models_dir=two["root"] / "models", outputs_dir=two["root"] / "outputs", hub_models=(),
                        ckpt="tiny-sd15", hub_endpoint=None)
    studio = Studio(settings, two["runner"], two["engines"])
    values = {"prompt": "a red cube", "steps": 3, "seed": 40, "width": 64, "height": 64, "n_iter": 4,
              "sampler_name": "Euler a"}
    job = studio.submit_txt2img(values)
    events = list(job.events(timeout=300))
    result = job.result
    assert events[-1].kind is EventKind.FINISHED and result.seeds == [40, 41, 42, 43]
    assert result.parameters["n_iter"] == 4 and result.parameters["seed"] == 40
    assert job.details["workers"] == [0, 1]  # both workers took part
    progress = [e for e in events if e.kind is EventKind.PROGRESS and e.total]
    assert progress[-1].step == progress[-1].total == 12
    single = txt2img(two, seed=40, n_iter=4, sampler_name="Euler a").wait(300)  # one worker, four batches
    assert single.seeds == result.seeds
    for a, b in zip(single.images, result.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert [t.split("Seed: ")[1].split(",")[0] for t in result.infotexts] == ["40", "41", "42", "43"]


def studio_of(two):
    from pipelines.settings import Settings
    from pipelines.studio import Studio

    settings = Settings(models_dir=two["root"] / "models", outputs_dir=two["root"] / "outputs", hub_models=(),
                        ckpt="tiny-sd15", hub_endpoint=None)
    return Studio(settings, two["runner"], two["engines"])


def test_a_sweep_spreads_its_cells_over_idle_workers_and_each_cell_is_the_one_worker_image(two):
    """An X/Y/Z plot (seeds x steps): the cells run on both workers, the progress counts every cell's steps once,
    and each cell's image is the one a single worker makes with that cell's parameters."""
    studio = studio_of(two)
    base = {"prompt": "a red cube", "steps": 3, "seed": 7, "width": 64, "height": 64, "sampler_name": "Euler"}
    job = studio.submit_sweep(base, [("Seed", "7, 8, 9"), ("Steps", "2, 4")])
    events = list(job.events(timeout=300))
    assert events[-1].kind is EventKind.FINISHED, events[-1]
    result = job.result
    assert job.details["workers"] == [0, 1]
    progress = [e for e in events if e.kind is EventKind.PROGRESS and e.total]
    assert {e.total for e in progress} == {3 * (2 + 4)} and progress[-1].step == 18
    assert [e.step for e in progress] == sorted(e.step for e in progress)  # never goes back
    assert len(result.grids) == 1 and result.grids[0].path.exists()
    for out in result.cells:
        seed, steps = out.cell.params["seed"], out.cell.params["steps"]
        single = txt2img(two, seed=seed, steps=steps, sampler_name="Euler").wait(300)
        assert np.array_equal(np.asarray(out.images[0]), pixels(single)), (seed, steps)


def test_guided_drafts_are_a_batch_count_the_workers_share(two):
    """With two workers, ① Draft's 4 random seeds run as 2 batches of 2 (one per worker), seeds in order."""
    from pipelines.advisor import workflow

    studio = studio_of(two)
    ctx = studio.hint_context()
    assert ctx.workers == 2 and workflow.draft_split(1) == (4, 1) and workflow.draft_split(3) == (2, 2)
    changes = workflow.draft_settings({"prompt": "a red cube", "width": 64, "height": 64}, ctx)
    assert (changes["batch_size"], changes["n_iter"]) == (2, 2)
    values = {"prompt": "a red cube", **changes, "seed": 300, "steps": 3, "width": 64, "height": 64}
    job = studio.submit_txt2img(values)
    result = job.wait(300)
    assert job.details["workers"] == [0, 1] and result.seeds == [300, 301, 302, 303]
    single = txt2img(two, seed=300, steps=3, batch_size=2, n_iter=2, sampler_name=changes["sampler_name"]).wait(300)
    for a, b in zip(single.images, result.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
