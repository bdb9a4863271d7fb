"""wait_for: the one way tests wait for something to happen (never a bare sleep, never a loop without a deadline)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 60, interval: float = 0.02, what: str = "the condition") -> T:
    """Call `predicate` every `interval` s until it returns something truthy, and return that value. At the deadline
    (`timeout` s, measured with a monotonic clock) raise AssertionError naming `what` and the last value seen.

    The timeout is a bound on a hang, not a speed requirement: pick it generously (a busy 2-core CI machine).
    An exception raised by `predicate` propagates at once (a server that died is an error, not a wait)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
