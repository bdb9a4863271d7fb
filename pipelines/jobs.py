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
    """Raised inside a job to abandon the current image/batch and go on with the next one."""


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


class Job:
    def __init__(self, job_id: int, fn: Callable[["JobContext"], Any], kind: str, owner: str | None):
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

    @property
    def done(self) -> bool:
        return self._done.is_set()

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
                ev = self._events.get(timeout=timeout)
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
            group = [self._events.get()]
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
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still running after {timeout} s")
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
        if self.job._cancel.is_set():
            raise Cancelled("interrupted")

    def skip_requested(self) -> bool:
        return self.job._skip.is_set()

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
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="device-worker", daemon=True)
            self._thread.start()
        return self

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
            job = Job(next(self._ids), fn, kind, owner)
            self._pending.append(job)
            self._announce_positions()
            self._lock.notify_all()
        log.info("job %d (%s) queued at position %d", job.id, kind, job._position)
        return job

    def current(self) -> Job | None:
        return self._current

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
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._pending:
                    return
                job = self._pending.popleft()
                self._current = job
                self._announce_positions()
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current = None

    def _run(self, job: Job) -> None:
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
        except Exception as e:  # a failing job must never take the worker down
            log.exception("job %d (%s) failed", job.id, job.kind)
            job.exception = e
            self._end(job, "failed", EventKind.FAILED, message=_describe(e))
        else:
            log.info("job %d (%s) finished in %.2f s", job.id, job.kind, time.perf_counter() - t0)
            self._end(job, "finished", EventKind.FINISHED, result=job.result)

    @staticmethod
    def _end(job: Job, status: str, kind: EventKind, message: str | None = None, result: Any = None) -> None:
        job.status = status
        if message:
            job.error = message
        job.emit(JobEvent(kind, job.id, message=message, result=result))
        job._done.set()


def _describe(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, (ValueError, RuntimeError, FileNotFoundError)) else f"{type(e).__name__}: {text}"
