"""Device workers run jobs from one FIFO queue: one worker thread per device (`--device cuda:0,cuda:1` starts
two), each owning its device, its engine and its model cache.

A job is a callable `fn(ctx: JobContext) -> result`. It reports through the context (progress, preview,
finished images) and checks for cancellation each step (`ctx.check()` raises `Cancelled`). Every report
becomes a typed `JobEvent` that the UI and API stream from `Job.events()`. Pure Python: no torch here.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterator, Sequence

log = logging.getLogger("studio.jobs")


class Cancelled(BaseException):
    """Raised inside a job when the user interrupted it. A BaseException (like asyncio.CancelledError), so
    library code's `except Exception` cannot swallow a cancel and report it as a failure."""


class Skipped(BaseException):
    """Raised inside a job when the user pressed Skip: the job abandons its current unit of work (a batch, an
    extras image, a sweep cell, the rest of a tiled upscale) and goes on with the next one. Each job kind catches
    it where its unit ends; one that reaches the job boundary ends the job as cancelled ("skipped"), keeping what
    was already saved."""


class QueueFull(Exception):
    """The owner already has as many jobs waiting as allowed."""


class EventKind(str, Enum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    PREVIEW = "preview"
    IMAGE = "image"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = {EventKind.FINISHED, EventKind.FAILED, EventKind.CANCELLED}


@dataclass
class JobEvent:
    kind: EventKind
    job_id: int
    position: int | None = None  # queued: jobs ahead of this one (0 = next)
    step: int | None = None
    total: int | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    label: str | None = None  # e.g. "image 2/4" or "loading model"
    image: Any = None  # PIL image for preview / image events
    message: str | None = None  # failed: reason
    result: Any = None  # finished: the job's return value; image: extra payload
    time: float = field(default_factory=time.time)


WATCH_EVERY = 1.0  # seconds a waiting consumer blocks before it checks that the worker is still alive


class Job:
    def __init__(self, job_id: int, fn: Callable[["JobContext"], Any], kind: str, owner: str | None,
                 watch: Callable[[], None] = lambda: None, affinity: Any = None):
        self.id = job_id
        self.kind = kind
        self.owner = owner
        self.fn = fn
        self.status = "queued"
        self.created = time.time()
        self.started: float | None = None
        self.result: Any = None
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.last_progress: JobEvent | None = None
        self.last_preview: Any = None
        self._position: int | None = None  # the last queue position announced (QUEUED event)
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._cancel = threading.Event()
        self._skip = threading.Event()
        self._done = threading.Event()
        self._ending = threading.Lock()  # a job ends once, whoever ends it (its worker, a replacement, a cancel)
        self._watch = watch  # the runner's liveness check: ends this job if its worker is gone
        self.details: dict[str, Any] = {}  # what the job's code reports about itself (e.g. "memory_mode")
        self.affinity = affinity  # what a worker should already hold to run it best (e.g. its checkpoint)
        self.worker: int | None = None  # the index of the worker that runs (or ran) it

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel_requested(self) -> bool:
        """Interrupt was pressed for this job (it stops at its next check)."""
        return self._cancel.is_set()

    def skip_requested(self) -> bool:
        """Skip was pressed and the job has not yet acted on it."""
        return self._skip.is_set()

    def _next(self, timeout: float | None) -> JobEvent:
        """The next event; while it waits, checks every WATCH_EVERY s that a worker still serves this job, so a
        consumer is never left waiting on a job whose worker died (the check ends the job with a message)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = WATCH_EVERY if deadline is None else min(WATCH_EVERY, deadline - time.monotonic())
            try:
                return self._events.get(timeout=max(wait, 0))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                self._watch()

    def emit(self, event: JobEvent) -> None:
        if event.kind is EventKind.PROGRESS:
            self.last_progress = event
        elif event.kind is EventKind.PREVIEW:
            self.last_preview = event.image
        self._events.put(event)

    def events(self, timeout: float | None = None) -> Iterator[JobEvent]:
        """Yield events until the job ends. `timeout` bounds the wait for each event (TimeoutError)."""
        while True:
            try:
                ev = self._next(timeout)
            except queue.Empty:
                raise TimeoutError(f"job {self.id}: no event for {timeout} s") from None
            yield ev
            if ev.kind in TERMINAL:
                return

    def batches(self, every: float) -> Iterator[list[JobEvent]]:
        """The events in groups, in order, at most one group per `every` seconds: for a consumer that redraws
        once per group (a browser). A fast GPU reports 20-100 steps a second; a page redrawing on each one
        falls behind until it stops answering clicks, Interrupt included. Blocks for the next event, waits out
        the rest of `every` since the previous group (cut short when the job ends), then takes everything that
        arrived meanwhile. The last group ends with the terminal event."""
        previous = float("-inf")
        while True:
            group = [self._next(None)]
            if group[-1].kind not in TERMINAL:
                rest = previous + every - time.monotonic()
                if rest > 0:
                    self._done.wait(rest)
                while group[-1].kind not in TERMINAL:
                    try:
                        group.append(self._events.get_nowait())
                    except queue.Empty:
                        break
            previous = time.monotonic()
            yield group
            if group[-1].kind in TERMINAL:
                return

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result, or raise Cancelled / RuntimeError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WATCH_EVERY if deadline is None else max(min(WATCH_EVERY, deadline - time.monotonic()), 0)
            if self._done.wait(left):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout} s")
            self._watch()  # a dead worker is replaced and this job failed: the next wait returns
        if self.status == "cancelled":
            raise Cancelled(self.error or "interrupted")
        if self.status == "failed":
            raise RuntimeError(self.error)
        return self.result


class JobContext:
    """What a running job sees: progress/preview/image reporting and cooperative cancellation."""

    def __init__(self, job: Job, worker: int = 0, runner: "JobRunner | None" = None):
        self.job = job
        self.worker = worker  # which device worker runs the job: its engine is the studio's engines[worker]
        self._runner = runner
        self._t0 = time.perf_counter()
        self._first_step_at: float | None = None
        self._first_step = 0

    def check(self) -> None:
        """A cancel point: raises Cancelled after Interrupt."""
        if self.job._cancel.is_set():
            raise Cancelled("interrupted")

    def skip_point(self) -> None:
        """A cancel and skip point: raises Cancelled after Interrupt, Skipped after Skip. Only code inside a unit of
        work calls it; whoever ends that unit catches Skipped, calls `clear_skip` and goes on with the next."""
        self.check()
        if self.job._skip.is_set():
            raise Skipped()

    def skip_requested(self) -> bool:
        return self.job._skip.is_set()

    def stop_requested(self) -> bool:
        """extensions.base.Hooks: Skip, as an extension's loop asks for it (stop early, keep what is done)."""
        return self.skip_requested()

    def clear_skip(self) -> None:
        self.job._skip.clear()

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        now = time.perf_counter()
        if self._first_step_at is None or step < self._first_step:
            self._first_step_at, self._first_step = now, step
        done = step - self._first_step
        elapsed = now - self._first_step_at
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        eta = (total - step) / rate if rate else None
        self.job.emit(JobEvent(EventKind.PROGRESS, self.job.id, step=step, total=total, it_per_s=rate,
                               eta_s=eta, label=label))

    def report(self, key: str, value: Any) -> None:
        """A fact about the running job for whoever looks at it (e.g. the memory mode in force)."""
        self.job.details[key] = value

    def preview(self, image: Any, step: int | None = None) -> None:
        self.job.emit(JobEvent(EventKind.PREVIEW, self.job.id, image=image, step=step))

    def image(self, image: Any, payload: Any = None, label: str | None = None) -> None:
        self.job.emit(JobEvent(EventKind.IMAGE, self.job.id, image=image, result=payload, label=label))

    def spread(self, tasks: Sequence[Callable[["JobContext"], Any]],
               totals: Sequence[int] | None = None) -> list[Any]:
        """Run `tasks` (each `task(ctx)`) for this job on this worker and on every worker that is idle now, and
        return their results in order. Each task gets a context whose `worker` says whose engine to use; progress
        adds up over the tasks (`totals`: each task's steps, where known before it starts). Once a task failed no
        other starts; the first error (Interrupt first) is raised once every started task ended."""
        if self._runner is None:
            share = Share(self.job, tasks, totals)
            share.drain(self.worker)
            return share.wait()
        return self._runner.spread(self, tasks, totals)


class TaskContext(JobContext):
    """The context of one task of a spread job (JobContext.spread): events go to the job, progress is the sum of
    the tasks' progress."""

    def __init__(self, share: "Share", index: int, worker: int):
        super().__init__(share.job, worker)
        self._share, self._index = share, index

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        step, total = self._share.add_progress(self._index, step, total)
        super().progress(step, total, label)

    def skip_point(self) -> None:
        """One Skip press skips one task's unit of work, even when several tasks reach a skip point at once."""
        self.check()
        if self.job._skip.is_set() and self._share.take_skip():
            raise Skipped()


class Share:
    """Tasks of one job that idle workers help with: each worker takes the next task until none is left."""

    def __init__(self, job: Job, tasks: Sequence[Callable[[JobContext], Any]], totals: Sequence[int] | None = None):
        self.job = job
        self.totals = list(totals) if totals is not None else None
        self.todo = deque(enumerate(tasks))
        self.results: list[Any] = [None] * len(tasks)
        self.error: BaseException | None = None
        self.running = 0
        self.workers: set[int] = set()  # who took part
        self._steps: dict[int, tuple[int, int]] = {}
        self._n = len(tasks)
        self._cond = threading.Condition()

    def add_progress(self, index: int, step: int, total: int) -> tuple[int, int]:
        with self._cond:
            if self.totals is not None:  # known in advance: a task's own total only bounds its step
                self._steps[index] = (min(step, self.totals[index]), self.totals[index])
                return sum(s for s, _ in self._steps.values()), sum(self.totals)
            self._steps[index] = (step, total)
            per_task = max(t for _, t in self._steps.values())  # tasks not started yet: as long as the longest
            done = sum(s for s, _ in self._steps.values())
            return done, sum(t for _, t in self._steps.values()) + per_task * (self._n - len(self._steps))

    def take_skip(self) -> bool:
        """Clear the job's Skip flag; True for the one task that cleared it."""
        with self._cond:
            if not self.job._skip.is_set():
                return False
            self.job._skip.clear()
            return True

    def drain(self, worker: int) -> None:
        """Run tasks on `worker` until none is left (or one failed). Never raises: errors go to `error`."""
        while True:
            with self._cond:
                if not self.todo or self.error is not None:
                    return
                index, task = self.todo.popleft()
                self.running += 1
                self.workers.add(worker)
            try:
                result = task(TaskContext(self, index, worker))
                with self._cond:
                    self.results[index] = result
            except BaseException as e:  # noqa: BLE001 - handed to the job's own worker, which raises it
                with self._cond:
                    if self.error is None or isinstance(e, Cancelled):
                        self.error = e
            finally:
                with self._cond:
                    self.running -= 1
                    self._cond.notify_all()

    def wait(self) -> list[Any]:
        with self._cond:
            while self.running or (self.todo and self.error is None):
                self._cond.wait(WATCH_EVERY)
        if self.error is not None:
            raise self.error
        return self.results


@dataclass(eq=False)
class Worker:
    """One device worker: its thread (replaced if it ever dies), the job it runs and the one it ran last."""

    index: int
    name: str
    share: "Share | None" = None  # another job's tasks this worker helps with (JobContext.spread)
    thread: threading.Thread | None = None
    generation: int = 0  # threads started for this worker so far (the current one's number)
    current: Job | None = None
    last: Job | None = None


class JobRunner:
    """FIFO queue served by one worker thread per device (`workers`: their names, e.g. ["cuda:0", "cuda:1"]).

    An idle worker takes the first waiting job, except one whose `affinity` (its checkpoint) another idle worker
    already holds (`holds(worker_index, affinity)`): that one is left to the worker holding it. Positions, per-client
    caps, interrupt and skip work across workers as with one."""

    def __init__(self, max_queued_per_owner: int | None = None, workers: Sequence[str] = ("device",),
                 holds: Callable[[int, Any], bool] | None = None):
        self.max_queued_per_owner = max_queued_per_owner
        self.workers = [Worker(i, name) for i, name in enumerate(workers or ("device",))]
        self._holds = holds
        self._ids = itertools.count(1)
        self._pending: deque[Job] = deque()
        self._lock = threading.Condition()
        self._last: Job | None = None  # the job that ended last on any worker
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        with self._lock:
            for w in self.workers:
                if w.thread is None:
                    self._spawn(w)
        return self

    def _spawn(self, w: Worker) -> None:
        """Start a thread for worker `w` (caller holds the lock)."""
        w.generation += 1
        suffix = f"-{w.index}" if len(self.workers) > 1 else ""
        w.thread = threading.Thread(target=self._serve, args=(w, w.generation),
                                    name=f"device-worker{suffix}-{w.generation}", daemon=True)
        w.thread.start()

    @property
    def _thread(self) -> threading.Thread | None:
        """The first worker's thread (one-device setups and their tests)."""
        return self.workers[0].thread

    def restarts(self) -> int:
        """How many times a dead worker thread was replaced (0 while the first ones serve)."""
        return sum(max(w.generation - 1, 0) for w in self.workers)

    def check_worker(self) -> None:
        """Replace any worker thread that died without replacing itself, failing the job it held. Called by
        consumers waiting on a job, so nobody waits forever on a worker that is gone."""
        for w in self.workers:
            with self._lock:
                thread, generation = w.thread, w.generation  # read together: a later generation is alive
                if thread is None or thread.is_alive() or self._stopping:
                    continue
            self._worker_died(w, generation)

    def stop(self, timeout: float = 10) -> None:
        with self._lock:
            self._stopping = True
            for job in self._pending:
                job._cancel.set()
            self._lock.notify_all()
        for w in self.workers:
            if w.current is not None:
                w.current._cancel.set()
        for w in self.workers:
            if w.thread is not None:
                w.thread.join(timeout)

    # -- submitting and controlling ------------------------------------------------------------
    def submit(self, fn: Callable[[JobContext], Any], *, kind: str = "job", owner: str | None = None,
               affinity: Any = None) -> Job:
        with self._lock:
            if owner is not None and self.max_queued_per_owner is not None:
                waiting = sum(1 for j in self._pending if j.owner == owner)
                if waiting >= self.max_queued_per_owner:
                    raise QueueFull(f"{waiting} jobs already waiting for this client; wait for them to finish")
            job = Job(next(self._ids), fn, kind, owner, watch=self.check_worker, affinity=affinity)
            self._pending.append(job)
            self._announce_positions()
            self._lock.notify_all()
        log.info("job %d (%s) queued at position %d", job.id, kind, job._position)
        return job

    def running(self) -> list[Job]:
        """The jobs the workers run now, oldest first."""
        with self._lock:
            return sorted((w.current for w in self.workers if w.current is not None), key=lambda j: j.id)

    def current(self) -> Job | None:
        """The oldest running job (the running one, with one worker)."""
        running = self.running()
        return running[0] if running else None

    def last(self) -> Job | None:
        """The job that ended last on any worker (None before the first)."""
        return self._last

    def pending(self) -> list[Job]:
        with self._lock:
            return list(self._pending)

    def position(self, job: Job) -> int | None:
        with self._lock:
            if any(job is w.current for w in self.workers):
                return 0
            try:
                return self._pending.index(job) + self._busy()
            except ValueError:
                return None

    def spread(self, ctx: JobContext, tasks: Sequence[Callable[[JobContext], Any]],
               totals: Sequence[int] | None = None) -> list[Any]:
        """JobContext.spread: the idle workers join the job's own worker on `tasks`."""
        share = Share(ctx.job, tasks, totals)
        with self._lock:
            for w in self.workers:
                if w.index != ctx.worker and w.current is None and w.share is None and w.thread is not None:
                    w.share = share
            self._lock.notify_all()
        share.drain(ctx.worker)
        results = share.wait()
        if len(share.workers) > 1:
            ctx.report("workers", sorted(share.workers))
        return results

    def _busy(self) -> int:
        return sum(1 for w in self.workers if w.current is not None)

    def queue(self) -> list[tuple[Job, int]]:
        """One consistent snapshot of every job the workers still hold and that has not ended, in running order,
        with its position (0 = running; a queued job's position = the jobs ahead of it, the running ones included,
        counted as `_announce_positions` counts them). A running job that has just ended, while its worker clears
        up, is left out (its position still counts for the others)."""
        with self._lock:
            head = sorted((w.current for w in self.workers if w.current is not None), key=lambda j: j.id)
            busy = len(head)
            return [*((j, 0) for j in head if not j.done),
                    *((j, i + busy) for i, j in enumerate(self._pending) if not j.done)]

    def _announce_positions(self) -> None:
        """Send each waiting job its position when it changed (caller holds the lock). A job's positions thus
        start at the number of jobs ahead of it at submit and go down as those end or are cancelled."""
        ahead = self._busy()
        for i, waiting in enumerate(self._pending):
            if waiting._position != i + ahead:
                waiting._position = i + ahead
                waiting.emit(JobEvent(EventKind.QUEUED, waiting.id, position=i + ahead))

    def interrupt(self, job: Job | None = None, owner: str | None = None) -> bool:
        """Cancel `job` (queued or running; if `owner` is given, only when it is that owner's). Without `job`:
        the (oldest) running job; or, given `owner`, that owner's running job, else the first of its queued jobs (the
        one the owner has waited for longest). False when there is nothing of that owner's to cancel."""
        target = job
        if target is None:
            queue = self.queue()
            mine = [j for j, _ in queue if owner is None or j.owner == owner]
            running = {j.id for j, pos in queue if pos == 0 and j.status == "running"}
            target = mine[0] if mine and (owner is not None or mine[0].id in running) else None
        if target is None or target.done or (owner is not None and target.owner != owner):
            return False
        target._cancel.set()
        with self._lock:
            queued = target in self._pending
            if queued:  # never started: end it now instead of when it reaches a worker
                self._pending.remove(target)
                self._announce_positions()
        if queued:
            self._end(target, "cancelled", EventKind.CANCELLED, message="cancelled while queued")
        return True

    def skip(self, job: Job | None = None, owner: str | None = None) -> bool:
        target = job
        if target is None:
            running = [j for j in self.running() if owner is None or j.owner == owner]
            target = running[0] if running else None
        if target is None or target.done or (owner is not None and target.owner != owner):
            return False
        target._skip.set()
        return True

    # -- workers ---------------------------------------------------------------------------
    def _serve(self, w: Worker, generation: int) -> None:
        """A worker thread. Nothing a job does ends it (`_run` handles every exception); should anything escape
        the loop anyway (a bug here, an exception injected into the thread), the thread replaces itself on the way
        out and the job it held fails with a message."""
        try:
            self._work(w, generation)
        except BaseException:
            log.exception("device worker %s (%d): an exception escaped the worker loop", w.name, generation)
        finally:
            if not self._stopping:
                self._worker_died(w, generation)

    def _worker_died(self, w: Worker, generation: int) -> None:
        with self._lock:
            if generation != w.generation or self._stopping:
                return  # already replaced
            job, w.current = w.current, None
            log.error("device worker %s (%d) died%s; starting a new one", w.name, generation,
                      f" while running job {job.id}" if job is not None else "")
            self._spawn(w)
            self._announce_positions()
        if job is not None and not job.done:
            self._end(job, "failed", EventKind.FAILED,
                      message="The device worker stopped unexpectedly during this job; a new worker has taken over. "
                              "Images saved before are kept; run the job again.")

    def _take(self, w: Worker) -> Job | None:
        """The job worker `w` runs next (caller holds the lock): the first waiting one, unless another idle worker
        already holds what it needs (its checkpoint); None when every waiting job is better left to another."""
        idle = [o for o in self.workers if o is not w and o.current is None and o.share is None and o.thread]
        for job in self._pending:
            if job.affinity is None or self._holds is None or not idle or self._holds(w.index, job.affinity):
                return job
            if not any(self._holds(o.index, job.affinity) for o in idle):
                return job
        return None

    def _work(self, w: Worker, generation: int) -> None:
        while True:
            with self._lock:
                job = share = None
                while generation == w.generation:  # a thread declared dead must not serve next to its successor
                    share = w.share
                    if share is None and self._pending:
                        job = self._take(w)
                    if job is not None or share is not None or self._stopping:
                        break  # stopping: the jobs still queued are taken and end as cancelled
                    self._lock.wait(WATCH_EVERY)
                if job is None and share is None:
                    return
                if job is not None:
                    self._pending.remove(job)
                    w.current, job.worker = job, w.index
                    self._announce_positions()
            if share is not None:  # help another worker's job with its tasks, then serve the queue again
                share.drain(w.index)
                with self._lock:
                    w.share = None
                    self._lock.notify_all()
                continue
            self._run(job, w)
            with self._lock:
                w.last = self._last = job
                if w.current is job:
                    w.current = None
                self._lock.notify_all()  # a job left to this worker's neighbour may now be this worker's

    def _run(self, job: Job, w: Worker | None = None) -> None:
        """Run one job. Every exception ends here, BaseExceptions included: the worker outlives any job."""
        ctx = JobContext(job, w.index if w is not None else 0, self)
        if job._cancel.is_set():
            return self._end(job, "cancelled", EventKind.CANCELLED, message="cancelled while queued")
        job.status, job.started = "running", time.time()
        job.emit(JobEvent(EventKind.STARTED, job.id, position=0))
        t0 = time.perf_counter()
        try:
            job.result = job.fn(ctx)
        except Cancelled as e:
            self._end(job, "cancelled", EventKind.CANCELLED, message=str(e) or "interrupted")
        except Skipped:  # a skip the job had no further unit for: it ends, keeping what it saved
            job._skip.clear()
            self._end(job, "cancelled", EventKind.CANCELLED, message="skipped")
        except Exception as e:  # a failing job must never take the worker down
            log.exception("job %d (%s) failed", job.id, job.kind)
            job.exception = e
            self._end(job, "failed", EventKind.FAILED, message=_describe(e))
        except BaseException as e:  # SystemExit, KeyboardInterrupt, GeneratorExit... from job code: the job fails
            log.exception("job %d (%s) raised %s", job.id, job.kind, type(e).__name__)
            job.exception = e
            self._end(job, "failed", EventKind.FAILED,
                      message=f"The job stopped with {type(e).__name__}{f': {e}' if str(e) else ''}")
        else:
            log.info("job %d (%s) finished in %.2f s", job.id, job.kind, time.perf_counter() - t0)
            self._end(job, "finished", EventKind.FINISHED, result=job.result)

    @staticmethod
    def _end(job: Job, status: str, kind: EventKind, message: str | None = None, result: Any = None) -> None:
        with job._ending:
            if job.done:
                return
            job.status = status
            if message:
                job.error = message
            job.emit(JobEvent(kind, job.id, message=message, result=result))
            job._done.set()


def _describe(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, (ValueError, RuntimeError, FileNotFoundError)) else f"{type(e).__name__}: {text}"
