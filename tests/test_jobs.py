"""The device worker: FIFO order, queue positions, typed events, cooperative interrupt and skip."""

import threading
import time

import pytest

from pipelines.jobs import Cancelled, EventKind, JobRunner, QueueFull, Skipped
from tests.waiting import wait_for

pytestmark = pytest.mark.unit


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
    runner.submit(lambda ctx: gate.wait(60) and log.append("first"))
    wait_for(runner.current, timeout=10, what="the worker to hold 'first'")  # then the positions are fixed
    jobs = [runner.submit(stepper(2, 0, log, f"j{i}")) for i in range(3)]
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
    assert prog[0].it_per_s is None and all(e.it_per_s > 0 for e in prog[1:]) and prog[-1].eta_s == 0
    assert kinds[0].kind is EventKind.QUEUED and kinds[1].kind is EventKind.STARTED
    assert kinds[-1].kind is EventKind.FINISHED and kinds[-1].result == 10


def test_batches_group_fast_events_for_a_slow_page(runner):
    """While a group's interval runs, every event that arrives joins that group (one redraw, not one per step);
    the job's end cuts the interval short. No clock is read: the test releases each step only after the last
    one was reported, and the interval (600 s) is far longer than the test's bound on a hang (60 s)."""
    permits, first = threading.Semaphore(0), threading.Event()

    def fn(ctx):
        ctx.progress(1, 10)
        first.set()
        for i in range(2, 11):
            assert permits.acquire(timeout=60)
            ctx.progress(i, 10)
        return "done"

    job = runner.submit(fn)
    wait_for(first.is_set, timeout=30, what="the first step")
    groups: list = []
    consumer = threading.Thread(target=lambda: [groups.append(g) for g in job.batches(600)], daemon=True)
    consumer.start()
    wait_for(lambda: groups, timeout=30, what="the first group")  # at once: no group was sent before it
    for i in range(2, 11):  # one step at a time, each reported before the next is allowed
        permits.release()
        wait_for(lambda: job.last_progress.step == i, timeout=30, what=f"step {i}")
    consumer.join(60)
    assert not consumer.is_alive(), "the job's end did not end the group's interval"
    flat = [e for g in groups for e in g]
    assert [e.step for e in flat if e.kind is EventKind.PROGRESS] == list(range(1, 11))  # nothing lost, in order
    assert flat[-1].kind is EventKind.FINISHED and all(e.kind is not EventKind.FINISHED for e in flat[:-1])
    assert [e.kind for e in groups[0]] == [EventKind.QUEUED, EventKind.STARTED, EventKind.PROGRESS]
    assert len(groups) == 2  # steps 2-10 and the end, all in one group
    assert [e.step for e in groups[1][:-1]] == list(range(2, 11))


def test_batches_do_not_hold_back_the_end(runner):
    job = runner.submit(stepper(3, 0))
    groups: list = []
    consumer = threading.Thread(target=lambda: [groups.append(g) for g in job.batches(600)], daemon=True)
    consumer.start()  # a 600 s interval: only the job's end can cut it short
    consumer.join(60)
    assert not consumer.is_alive(), "the job's end did not end the group's interval"
    assert groups[-1][-1].kind is EventKind.FINISHED and groups[-1][-1].result == 3


def test_interrupt_stops_within_a_step(runner):
    permits = threading.Semaphore(0)

    def fn(ctx):  # a step may start only when the test allows it
        for i in range(1000):
            ctx.check()
            assert permits.acquire(timeout=60)
            ctx.progress(i + 1, 1000)

    job = runner.submit(fn)
    for _ in range(3):
        permits.release()
    wait_for(lambda: job.last_progress and job.last_progress.step == 3, timeout=30, what="step 3")
    assert runner.interrupt(job)
    for _ in range(997):  # every remaining step may run: only the interrupt stops the job
        permits.release()
    with pytest.raises(Cancelled):
        job.wait(30)
    assert job.last_progress.step in (3, 4)  # stopped at its next check: at most the step under way finished
    assert job.status == "cancelled"


def test_interrupt_only_own_job(runner):
    job = runner.submit(stepper(1000, 0.01), owner="alice")
    wait_for(lambda: job.last_progress, timeout=30, what="the first step")
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
    wait_for(lambda: j.last_progress, timeout=30, what="the first step")
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
    wait_for(lambda: job.last_progress, timeout=30, what="the first step")
    runner.skip(job)
    assert job.wait(10) == [1, 2]

    bad = runner.submit(lambda ctx: 1 / 0)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        bad.wait(5)
    assert isinstance(bad.exception, ZeroDivisionError)
    assert runner.submit(lambda ctx: "still alive").wait(5) == "still alive"


def test_per_owner_queue_cap(runner):
    gate = threading.Event()
    runner.submit(lambda ctx: gate.wait(60), owner="x")
    wait_for(runner.current, timeout=10, what="the worker to hold the first job")  # running: not waiting
    runner.submit(stepper(1, 0), owner="x")
    runner.submit(stepper(1, 0), owner="x")
    with pytest.raises(QueueFull):
        runner.submit(stepper(1, 0), owner="x")
    runner.submit(stepper(1, 0), owner="y")  # other clients are not affected
    gate.set()


def test_spread_tasks_share_progress_and_one_skip_press_skips_one_task():
    """Tasks of a spread job: their progress adds up to the totals given, and when two tasks reach a skip point
    after one press, only one of them is skipped."""
    runner = JobRunner(workers=["a", "b"]).start()
    try:
        ready, pressed = [], threading.Event()
        outcome: dict[int, str] = {}

        def task(i: int):
            def run(ctx):
                ctx.progress(3, 3)
                ready.append(i)
                pressed.wait(30)
                try:
                    ctx.skip_point()
                    outcome[i] = "ran"
                except Skipped:
                    ctx.clear_skip()
                    outcome[i] = "skipped"
                return i
            return run

        job = runner.submit(lambda ctx: ctx.spread([task(0), task(1)], totals=[3, 5]))
        wait_for(lambda: len(ready) == 2, timeout=30, what="both tasks running, one on each worker")
        runner.skip(job)
        pressed.set()
        assert job.wait(30) == [0, 1]
        assert sorted(outcome.values()) == ["ran", "skipped"]
        progress = [e for e in job.events(timeout=5) if e.kind is EventKind.PROGRESS]
        assert {e.total for e in progress} == {8} and max(e.step for e in progress) == 6
    finally:
        runner.stop()
