"""The device worker cannot die: every exception a job raises ends that job only (BaseExceptions, Skipped, errors
inside callbacks); a worker thread that dies anyway is replaced and its job fails with a message; a client waiting
on a job is never left waiting. And what Skip does in every job kind, on the real engine (tiny model, CPU)."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest
from PIL import Image

from pipelines.jobs import Cancelled, EventKind, JobRunner, Skipped
from pipelines.outputs import read_png_info
from tests.test_upscale import studio  # noqa: F401  (the Upscale tests' studio: tiny model and ESRGAN)
from tests.waiting import wait_for

pytestmark = pytest.mark.engine


@pytest.fixture
def runner():
    r = JobRunner().start()
    yield r
    r.stop()


def inject(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise `exc` asynchronously inside `thread` (as an injected fault: it lands at the thread's next bytecode)."""
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))
    assert n == 1


class Boom(BaseException):
    """A BaseException no library code expects."""


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt, GeneratorExit, Boom, MemoryError])
def test_a_job_raising_any_base_exception_fails_alone(runner, exc):
    def job(ctx):
        raise exc("from the job")

    bad = runner.submit(job)
    events = list(bad.events(timeout=30))
    assert events[-1].kind is EventKind.FAILED and bad.status == "failed"
    assert exc.__name__ in events[-1].message or "from the job" in events[-1].message
    assert runner.submit(lambda ctx: "next").wait(30) == "next"
    assert runner.restarts() == 0


def test_a_skip_with_nothing_left_to_skip_ends_the_job_as_skipped(runner):
    def job(ctx):
        ctx.image("kept")
        raise Skipped()

    j = runner.submit(job)
    events = list(j.events(timeout=30))
    assert [e.kind for e in events][-2:] == [EventKind.IMAGE, EventKind.CANCELLED]
    assert events[-1].message == "skipped" and not j.skip_requested()
    with pytest.raises(Cancelled, match="skipped"):
        j.wait(1)
    assert runner.submit(lambda ctx: 7).wait(30) == 7


def test_an_error_inside_a_callback_of_a_real_generation_fails_only_that_job(world):
    engine, runner, info = world["engine"], world["runner"], world["infos"]["tiny-sd15"]
    from pipelines.params.specs import Txt2ImgParams

    params = Txt2ImgParams(prompt="a cube", steps=3, width=64, height=64, seed=1)

    class Exploding:  # the job's context, whose preview callback (called from the pipeline's step callback) fails
        def __init__(self, ctx, exc):
            self.ctx, self.exc = ctx, exc

        def __getattr__(self, name):
            return getattr(self.ctx, name)

        def preview(self, image, step=None):
            raise self.exc("preview callback failed")

    for exc in (RuntimeError, KeyboardInterrupt):
        job = runner.submit(lambda ctx: engine.txt2img(Exploding(ctx, exc), params, info))
        assert list(job.events(timeout=120))[-1].kind is EventKind.FAILED
        assert "preview callback failed" in job.error
    ok = runner.submit(lambda ctx: engine.txt2img(ctx, params, info)).wait(120)
    assert len(ok.images) == 1


def test_an_exception_injected_into_a_running_job_fails_that_job(runner):
    started = threading.Event()

    def busy(ctx):
        started.set()
        while True:  # Python bytecode: the injected exception lands here
            ctx.check()

    job = runner.submit(busy)
    assert started.wait(30)
    inject(runner._thread, SystemExit)
    assert list(job.events(timeout=30))[-1].kind is EventKind.FAILED
    assert runner.submit(lambda ctx: "alive").wait(30) == "alive" and runner.restarts() == 0


def fault_once(runner, monkeypatch):
    """The worker loop's own code fails once, outside any job (as a bug in the runner would): the next position
    announcement, which the worker makes under its lock right after taking a job, raises."""
    real = runner._announce_positions
    state = {"armed": True}

    def announce():
        if state["armed"] and threading.current_thread() is runner._thread:
            state["armed"] = False
            raise Boom("fault in the worker loop")
        real()

    monkeypatch.setattr(runner, "_announce_positions", announce)


def test_a_worker_whose_loop_fails_is_replaced_and_its_job_fails_with_a_message(runner, monkeypatch):
    first = runner._thread
    fault_once(runner, monkeypatch)
    held = runner.submit(lambda ctx: "never runs")
    after = runner.submit(lambda ctx: "served by the new worker")
    events = list(held.events(timeout=30))
    assert events[-1].kind is EventKind.FAILED and "worker stopped unexpectedly" in events[-1].message
    assert after.wait(30) == "served by the new worker"
    assert runner.restarts() == 1 and runner._thread is not first and not first.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies on purpose
def test_a_consumer_notices_a_dead_worker_and_the_queue_goes_on(monkeypatch):
    """With the worker's own replacement switched off, a client waiting on a job still notices the dead worker:
    the held job fails with a message, a new worker starts, and the next job runs."""
    runner = JobRunner()
    monkeypatch.setattr(runner, "_serve", lambda w, generation: runner._work(w, generation))  # no replacement on exit
    runner.start()
    try:
        first = runner._thread
        fault_once(runner, monkeypatch)
        held = runner.submit(lambda ctx: "never runs")
        wait_for(lambda: not first.is_alive(), what="the worker to die")
        assert runner.restarts() == 0  # nobody replaced it yet
        events = list(held.events(timeout=30))  # the wait notices, replaces the worker, fails the held job
        assert events[-1].kind is EventKind.FAILED and "worker stopped unexpectedly" in events[-1].message
        assert runner.submit(lambda ctx: "next").wait(30) == "next" and runner.restarts() == 1
    finally:
        runner.stop()


# -- Skip in every job kind, on the real engine ------------------------------------------------------


def picture(size=(64, 64)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def skipped_while_queued(studio, submit):
    """Submit behind a blocking job, press Skip on it while it waits: its first skip point acts on it."""
    gate = threading.Event()
    studio.runner.submit(lambda ctx: gate.wait(60))
    job = submit()
    assert studio.runner.skip(job)
    gate.set()
    return job


def test_skip_in_txt2img_skips_the_running_batch_and_keeps_the_rest(studio):
    job = skipped_while_queued(studio, lambda: studio.submit_txt2img(
        {"prompt": "a", "steps": 2, "width": 64, "height": 64, "n_iter": 3, "seed": 5}))
    result = job.wait(120)
    assert result.skipped == 1 and result.seeds == [6, 7] and all(p.exists() for p in result.paths)


def test_skip_in_extras_skips_the_image_being_upscaled(studio):
    job = skipped_while_queued(studio, lambda: studio.submit_extras(
        {"upscaler_1": "4x-tiny", "upscaling_resize": 2}, [("a", picture()), ("b", picture((32, 32)))]))
    result = job.wait(120)
    assert result.skipped == 1 and [i.size for i in result.images] == [(64, 64)]


def test_skip_in_a_sweep_skips_the_running_cell(studio):
    job = skipped_while_queued(studio, lambda: studio.submit_sweep(
        {"prompt": "a", "steps": 2, "width": 64, "height": 64, "seed": 1}, [("Steps", "2, 3")]))
    result = job.wait(120)
    assert result.skipped == 1 and [bool(c.images) for c in result.cells] == [False, True]
    assert result.grids  # the grid of what finished, with a placeholder for the skipped cell


def test_skip_in_controlnet_detection_keeps_the_maps_made(studio):
    job = skipped_while_queued(studio, lambda: studio.controlnet.submit_detect("canny", [picture(), picture()]))
    assert job.wait(60) == []  # skipped before the first image: the detection ends with no map
    assert studio.runner.submit(lambda ctx: "next").wait(30) == "next"


def test_skip_in_a_tiled_sd_upscale_keeps_the_tiles_done_and_saves_the_image(studio):
    params = {"prompt": "a city", "steps": 12, "denoising_strength": 0.5, "seed": 3, "upscaler_1": "Lanczos",
              "upscaling_resize": 2, "tile_width": 64, "tile_height": 64, "tile_padding": 8}
    job = studio.submit_sd_upscale(params, picture((96, 96)))  # 9 tiles of 6 steps
    pressed = False
    for ev in job.events(timeout=300):
        if not pressed and ev.kind is EventKind.PROGRESS and ev.label and ev.label.startswith("tile 2/"):
            pressed = studio.runner.skip(job)
    result = job.result
    assert pressed and job.status == "finished" and result.images[0].size == (192, 192)
    text = read_png_info(Image.open(result.paths[0]))["info"]
    assert "stopped after" in text and any("Skipped:" in w for w in result.warnings)
    assert studio.runner.submit(lambda ctx: "next").wait(30) == "next"


def test_skip_before_the_first_tile_ends_the_upscale_without_an_image(studio):
    before = set(studio.settings.outputs_dir.rglob("*.png"))
    job = skipped_while_queued(studio, lambda: studio.submit_sd_upscale(
        {"prompt": "x", "steps": 4, "denoising_strength": 0.5, "upscaler_1": "Lanczos", "upscaling_resize": 2,
         "tile_width": 64, "tile_height": 64}, picture()))
    with pytest.raises(Cancelled, match="skipped"):
        job.wait(120)
    assert set(studio.settings.outputs_dir.rglob("*.png")) == before
