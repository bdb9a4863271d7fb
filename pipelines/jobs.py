"""One worker thread owns the device and runs jobs from a FIFO queue.

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
from typing import Any, Callable, Iterator

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
                 watch: Callable[[], None] = lambda: None):
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

    def __init__(self, job: Job):
        self.job = job
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


class JobRunner:
    """FIFO queue served by a single device worker thread."""

    def __init__(self, max_queued_per_owner: int | None = None):
        self.max_queued_per_owner = max_queued_per_owner
        self._ids = itertools.count(1)
        self._pending: deque[Job] = deque()
        self._lock = threading.Condition()
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0  # worker threads started so far (the current one's number)
        self._last: Job | None = None  # the job that ended last on the worker
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        with self._lock:
            if self._thread is None:
                self._spawn()
        return self

    def _spawn(self) -> None:
        """Start a worker thread (caller holds the lock)."""
        self._generation += 1
        self._thread = threading.Thread(target=self._serve, args=(self._generation,),
                                        name=f"device-worker-{self._generation}", daemon=True)
        self._thread.start()

    def restarts(self) -> int:
        """How many times a dead worker was replaced (0 while the first one serves)."""
        return max(self._generation - 1, 0)

    def check_worker(self) -> None:
        """Replace the worker thread if it died without replacing itself, failing the job it held. Called by
        consumers waiting on a job, so nobody waits forever on a worker that is gone."""
        with self._lock:
            thread, generation = self._thread, self._generation  # read together: a later generation is alive
            if thread is None or thread.is_alive() or self._stopping:
                return
        self._worker_died(generation)

    def stop(self, timeout: float = 10) -> None:
        with self._lock:
            self._stopping = True
            for job in self._pending:
                job._cancel.set()
            self._lock.notify_all()
        if self._current is not None:
            self._current._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- submitting and controlling ------------------------------------------------------------
    def submit(self, fn: Callable[[JobContext], Any], *, kind: str = "job", owner: str | None = None) -> Job:
        with self._lock:
            if owner is not None and self.max_queued_per_owner is not None:
                waiting = sum(1 for j in self._pending if j.owner == owner)
                if waiting >= self.max_queued_per_owner:
                    raise QueueFull(f"{waiting} jobs already waiting for this client; wait for them to finish")
            job = Job(next(self._ids), fn, kind, owner, watch=self.check_worker)
            self._pending.append(job)
            self._announce_positions()
            self._lock.notify_all()
        log.info("job %d (%s) queued at position %d", job.id, kind, job._position)
        return job

    def current(self) -> Job | None:
        return self._current

    def last(self) -> Job | None:
        """The job that ended last on the worker (None before the first)."""
        return self._last

    def pending(self) -> list[Job]:
        with self._lock:
            return list(self._pending)

    def position(self, job: Job) -> int | None:
        with self._lock:
            if job is self._current:
                return 0
            try:
                return self._pending.index(job) + (1 if self._current is not None else 0)
            except ValueError:
                return None

    def queue(self) -> list[tuple[Job, int]]:
        """One consistent snapshot of every job the worker still holds and that has not ended, in running order,
        with its position (0 = running, or next when the worker is idle; a queued job's position = the jobs
        ahead of it, counted as `_announce_positions` counts them). A running job that has just ended, while
        the worker clears up, is left out (its position still counts for the others)."""
        with self._lock:
            head = [self._current] if self._current is not None else []
            return [(job, i) for i, job in enumerate([*head, *self._pending]) if not job.done]

    def _announce_positions(self) -> None:
        """Send each waiting job its position when it changed (caller holds the lock). A job's positions thus
        start at the number of jobs ahead of it at submit and go down by one as each of those ends or is
        cancelled, never repeated and never up (a job starting ahead keeps the count: it is still ahead)."""
        ahead = 1 if self._current is not None else 0
        for i, waiting in enumerate(self._pending):
            if waiting._position != i + ahead:
                waiting._position = i + ahead
                waiting.emit(JobEvent(EventKind.QUEUED, waiting.id, position=i + ahead))

    def interrupt(self, job: Job | None = None, owner: str | None = None) -> bool:
        """Cancel `job` (queued or running; if `owner` is given, only when it is that owner's). Without `job`:
        the running job; or, given `owner`, that owner's running job, else the first of its queued jobs (the one
        the owner has waited for longest). False when there is nothing of that owner's to cancel."""
        target = job
        if target is None:
            mine = [j for j, _ in self.queue() if owner is None or j.owner == owner]
            target = mine[0] if mine and (owner is not None or mine[0] is self._current) else None
        if target is None or target.done or (owner is not None and target.owner != owner):
            return False
        target._cancel.set()
        with self._lock:
            queued = target in self._pending
            if queued:  # never started: end it now instead of when it reaches the worker
                self._pending.remove(target)
                self._announce_positions()
        if queued:
            self._end(target, "cancelled", EventKind.CANCELLED, message="cancelled while queued")
        return True

    def skip(self, job: Job | None = None, owner: str | None = None) -> bool:
        target = job or self._current
        if target is None or target.done or (owner is not None and target.owner != owner):
            return False
        target._skip.set()
        return True

    # -- worker ----------------------------------------------------------------------------
    def _serve(self, generation: int) -> None:
        """The worker thread. Nothing a job does ends it (`_run` handles every exception); should anything escape
        the loop anyway (a bug here, an exception injected into the thread), the thread replaces itself on the way
        out and the job it held fails with a message."""
        try:
            self._work(generation)
        except BaseException:
            log.exception("device worker %d: an exception escaped the worker loop", generation)
        finally:
            if not self._stopping:
                self._worker_died(generation)

    def _worker_died(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._stopping:
                return  # already replaced
            job, self._current = self._current, None
            log.error("device worker %d died%s; starting a new one", generation,
                      f" while running job {job.id}" if job is not None else "")
            self._spawn()
            self._announce_positions()
        if job is not None and not job.done:
            self._end(job, "failed", EventKind.FAILED,
                      message="The device worker stopped unexpectedly during this job; a new worker has taken over. "
                              "Images saved before are kept; run the job again.")

    def _work(self, generation: int) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping and generation == self._generation:
                    self._lock.wait(WATCH_EVERY)
                if (self._stopping and not self._pending) or generation != self._generation:
                    return  # stopped, or replaced (a thread declared dead must not serve next to its successor)
                job = self._pending.popleft()
                self._current = job
                self._announce_positions()
            self._run(job)
            with self._lock:
                self._last = job
                if self._current is job:
                    self._current = None

    def _run(self, job: Job) -> None:
        """Run one job. Every exception ends here, BaseExceptions included: the worker outlives any job."""
        ctx = JobContext(job)
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
