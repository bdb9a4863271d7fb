"""The device worker: FIFO order, queue positions, typed events, cooperative interrupt and skip."""

import threading
import time

import pytest

from pipelines.jobs import Cancelled, EventKind, JobRunner, QueueFull, Skipped


@pytest.fixture
def runner():
    r = JobRunner(max_queued_per_owner=2).start()
    yield r
    r.stop()


def stepper(steps=50, delay=0.01, log=None, name=None):
    def fn(ctx):
        if log is not None:
            log.append(name)
        done = 0
        for i in range(steps):
            ctx.check()
            if ctx.skip_requested():
                ctx.clear_skip()
                raise Skipped()
            time.sleep(delay)
            done += 1
            ctx.progress(i + 1, steps)
        return done
    return fn


def test_fifo_order_and_positions(runner):
    gate = threading.Event()
    log = []
    runner.submit(lambda ctx: gate.wait(5) and log.append("first"))
    deadline = time.time() + 5
    while runner.current() is None and time.time() < deadline:  # the worker holds "first": positions are fixed
        time.sleep(0.01)
    jobs = [runner.submit(stepper(2, 0, log, f"j{i}")) for i in range(3)]
    time.sleep(0.1)
    assert [runner.position(j) for j in jobs] == [1, 2, 3]
    queued = [next(iter(j.events(timeout=1))) for j in jobs]
    assert all(e.kind is EventKind.QUEUED for e in queued)
    assert [e.position for e in queued] == [1, 2, 3]
    gate.set()
    for j in jobs:
        assert j.wait(5) == 2
    assert log == ["first", "j0", "j1", "j2"]
    # positions moved up as the queue drained (its first event, position 3, was read above)
    positions = [e.position for e in jobs[2].events(timeout=5) if e.kind is EventKind.QUEUED]
    assert positions == [2, 1]


def test_progress_events_have_rate_and_eta(runner):
    job = runner.submit(stepper(10, 0.01))
    kinds = [e for e in job.events(timeout=5)]
    prog = [e for e in kinds if e.kind is EventKind.PROGRESS]
    assert [e.step for e in prog] == list(range(1, 11)) and all(e.total == 10 for e in prog)
    assert prog[-1].it_per_s and prog[-1].it_per_s > 10 and prog[-1].eta_s == 0
    assert kinds[0].kind is EventKind.QUEUED and kinds[1].kind is EventKind.STARTED
    assert kinds[-1].kind is EventKind.FINISHED and kinds[-1].result == 10


def test_batches_group_fast_events_for_a_slow_page(runner):
    job = runner.submit(stepper(60, 0.005))  # ~200 progress events a second
    t0 = time.monotonic()
    groups, times = [], []
    for group in job.batches(0.1):
        groups.append(group)
        times.append(time.monotonic())
    flat = [e for g in groups for e in g]
    steps = [e.step for e in flat if e.kind is EventKind.PROGRESS]
    assert steps == list(range(1, 61))  # nothing lost, order kept
    assert flat[-1].kind is EventKind.FINISHED and all(e.kind is not EventKind.FINISHED for e in flat[:-1])
    assert len(groups) < 15  # ~0.3 s of work in groups at least 0.1 s apart, not 60+ updates
    assert all(b - a >= 0.09 for a, b in zip(times, times[1:-1]))
    assert times[-1] - t0 < 2


def test_batches_do_not_hold_back_the_end(runner):
    job = runner.submit(stepper(3, 0.01))
    t0 = time.monotonic()
    groups = list(job.batches(30))  # a long interval: the job's end cuts the wait short
    assert time.monotonic() - t0 < 5
    assert groups[-1][-1].kind is EventKind.FINISHED and groups[-1][-1].result == 3


def test_interrupt_stops_within_a_step(runner):
    job = runner.submit(stepper(1000, 0.01))
    while job.last_progress is None:
        time.sleep(0.005)
    t0 = time.perf_counter()
    assert runner.interrupt(job)
    with pytest.raises(Cancelled):
        job.wait(5)
    assert time.perf_counter() - t0 < 0.5
    assert job.last_progress.step < 1000
    assert job.status == "cancelled"


def test_interrupt_only_own_job(runner):
    job = runner.submit(stepper(1000, 0.01), owner="alice")
    while job.last_progress is None:
        time.sleep(0.005)
    assert not runner.interrupt(owner="bob")
    assert runner.interrupt(owner="alice")
    with pytest.raises(Cancelled):
        job.wait(5)


def test_cancel_while_queued(runner):
    gate = threading.Event()
    runner.submit(lambda ctx: gate.wait(5))
    queued = runner.submit(stepper(5, 0))
    behind = runner.submit(stepper(1, 0))
    runner.interrupt(queued)
    assert queued.done and runner.position(behind) == 1  # ended at once, the queue moved up
    gate.set()
    events = list(queued.events(timeout=5))
    assert events[-1].kind is EventKind.CANCELLED and "queued" in events[-1].message
    assert not any(e.kind is EventKind.STARTED for e in events)


def test_cancel_is_not_swallowed_by_library_error_handling(runner):
    def job(ctx):
        try:
            stepper(1000, 0.01)(ctx)
        except Exception as e:  # what loaders and libraries do: must not turn a cancel into a failure
            raise RuntimeError(f"wrapped: {e}") from e

    j = runner.submit(job)
    while j.last_progress is None:
        time.sleep(0.005)
    runner.interrupt(j)
    with pytest.raises(Cancelled):
        j.wait(5)
    assert j.status == "cancelled"


def test_skip_moves_on_and_failure_keeps_worker_alive(runner):
    def batches(ctx):
        finished = []
        for b in range(3):
            try:
                stepper(30, 0.01)(ctx)
                finished.append(b)
            except Skipped:
                pass
        return finished
    job = runner.submit(batches)
    while job.last_progress is None:
        time.sleep(0.005)
    runner.skip(job)
    assert job.wait(10) == [1, 2]

    bad = runner.submit(lambda ctx: 1 / 0)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        bad.wait(5)
    assert isinstance(bad.exception, ZeroDivisionError)
    assert runner.submit(lambda ctx: "still alive").wait(5) == "still alive"


def test_per_owner_queue_cap(runner):
    gate = threading.Event()
    runner.submit(lambda ctx: gate.wait(5), owner="x")
    time.sleep(0.05)
    runner.submit(stepper(1, 0), owner="x")
    runner.submit(stepper(1, 0), owner="x")
    with pytest.raises(QueueFull):
        runner.submit(stepper(1, 0), owner="x")
    runner.submit(stepper(1, 0), owner="y")  # other clients are not affected
    gate.set()
