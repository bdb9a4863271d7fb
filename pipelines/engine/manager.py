"""Component cache: UNets, VAEs, text encoders (later ControlNets, upscalers, annotators) stay resident.

Entries are single components keyed by "<checkpoint identity>::<component>", so every mode (txt2img,
img2img, inpaint, ControlNet) builds its pipeline over the very same modules. Memory is governed by two
budgets in bytes: the least recently used components leave the device for CPU RAM, and leave CPU RAM
for good once that budget is spent. The keys loaded by one `load()` form a group (a checkpoint's components):
a group missing any member is read from disk whole on its next use, so dropping one member drops its unpinned
siblings too instead of leaving them to hold memory until then. Moving to CPU RAM stays per component.
A component pinned by a running job is never moved or dropped.
Every load, hit, move and drop is logged with its timing and kept in `history`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from pipelines.engine.devices import free_memory, module_device

log = logging.getLogger("studio.manager")


def nbytes(obj: Any) -> int:
    if isinstance(obj, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in [*obj.parameters(), *obj.buffers()])
    return 0


@dataclass
class _Entry:
    key: str
    obj: Any
    nbytes: int
    where: str  # "device", "cpu", or "staged" (loaded, not yet placed)
    pins: int = 0
    last_used: float = 0.0
    group: tuple[str, ...] = ()  # the keys loaded together with this one (see _drop_group)


class ModelManager:
    def __init__(self, *, device: torch.device | str, device_budget: int, cpu_budget: int,
                 two_tier: bool | None = None):
        self.device = torch.device(device)
        # On a CPU device the "device" is RAM itself, so there is no second tier (tests may force one).
        self.single_tier = not two_tier if two_tier is not None else self.device.type == "cpu"
        self.device_budget = int(device_budget)
        self.cpu_budget = 0 if self.single_tier else int(cpu_budget)
        self.history: deque[dict[str, Any]] = deque(maxlen=500)
        self._entries: dict[str, _Entry] = {}
        self._garbage = False  # something was moved or dropped since the last gc (see _collect)
        self._lock = threading.RLock()

    # -- public -------------------------------------------------------------------------------
    @contextmanager
    def use(self, keys: Sequence[str], load: Callable[[], Mapping[str, Any]],
            place: str = "device") -> Iterator[dict[str, Any]]:
        """Pin `keys` for the duration and return their objects on the device (`place="cpu"`: in CPU RAM, for
        memory modes whose offload hooks move each module to the device only while it runs; the caller puts
        every module back in RAM before leaving). With a single tier (CPU device) both places are the same.

        `load()` is called only when some key is missing; it returns objects for (at least) the missing
        keys, e.g. all components of a checkpoint read from disk.
        """
        if place not in ("device", "cpu"):
            raise ValueError(f"place must be 'device' or 'cpu', not {place!r}")
        objs = self._acquire(list(keys), load, place)
        try:
            yield objs
        finally:
            self._release(keys)

    def cached(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [k for k in self._entries if k.startswith(prefix)]

    def where(self, key: str) -> str | None:
        e = self._entries.get(key)
        return e.where if e else None

    def pinned(self) -> dict[str, int]:
        """Keys held by running jobs, with their pin counts (empty when no job holds anything)."""
        with self._lock:
            return {k: e.pins for k, e in self._entries.items() if e.pins}

    def usage(self) -> dict[str, int]:
        with self._lock:
            dev = sum(e.nbytes for e in self._entries.values() if e.where == "device")
            cpu = sum(e.nbytes for e in self._entries.values() if e.where == "cpu")
        return {"device_bytes": dev, "cpu_bytes": cpu, "device_budget": self.device_budget,
                "cpu_budget": self.cpu_budget, "entries": len(self._entries)}

    def free(self, prefix: str = "", drop: bool = False) -> int:
        """Move unpinned entries (matching `prefix`) off the device, or drop them. Returns bytes freed."""
        freed = 0
        with self._lock:
            for e in sorted(self._entries.values(), key=lambda e: e.last_used):
                if e.pins or not e.key.startswith(prefix):
                    continue
                if drop or self.single_tier or e.where == "cpu":
                    freed += e.nbytes
                    self._drop(e, "freed")
                elif e.where == "device":
                    freed += e.nbytes
                    self._to_cpu(e)
        self._garbage = True
        self._collect()
        return freed

    # -- internals ---------------------------------------------------------------------------
    def _record(self, action: str, key: str, seconds: float = 0.0, size: int = 0) -> None:
        self.history.append({"action": action, "key": key, "seconds": seconds, "bytes": size, "time": time.time()})
        log.info("%-8s %s (%.1f MiB, %.2f s)", action, key, size / 2**20, seconds)

    def _acquire(self, keys: list[str], load: Callable[[], Mapping[str, Any]], place: str = "device") -> dict[str, Any]:
        with self._lock:
            missing = [k for k in keys if k not in self._entries]
            if missing:
                t0 = time.perf_counter()
                loaded = load()
                seconds = time.perf_counter() - t0
                for k in missing:
                    if k not in loaded:
                        raise KeyError(f"loader returned no '{k}'")
                    obj = loaded[k]
                    on_cpu = module_device(obj) in (None, torch.device("cpu"))
                    # just read from disk: "staged" counts against no budget until placed below
                    e = _Entry(k, obj, nbytes(obj), "device" if self.single_tier or not on_cpu else "staged",
                               group=tuple(keys))
                    self._entries[k] = e
                    self._record("load", k, seconds, e.nbytes)
            now = time.monotonic()
            for k in keys:
                e = self._entries[k]
                if k not in missing:
                    self._record("hit", k, 0.0, e.nbytes)
                e.pins += 1
                e.last_used = now
            try:
                for k in keys:
                    e = self._entries[k]
                    if place == "cpu" and not self.single_tier:
                        self._to_ram(e)
                    elif e.where != "device":
                        e.where = "staged"  # leaving CPU RAM: its slot there can take what it displaces
                        self._make_room("device", e.nbytes)
                        t0 = time.perf_counter()
                        _move(e.obj, self.device)
                        e.where = "device"
                        self._record("to-device", k, time.perf_counter() - t0, e.nbytes)
            except BaseException:
                self._release(keys)
                raise
            if self.single_tier:
                self._make_room("device", 0)  # loads may have pushed RAM use over budget: drop old entries
            self._collect()
            return {k: self._entries[k].obj for k in keys}

    def _release(self, keys: Sequence[str]) -> None:
        with self._lock:
            for k in keys:
                e = self._entries.get(k)
                if e is not None and e.pins > 0:
                    e.pins -= 1
                    e.last_used = time.monotonic()

    def _used(self, tier: str) -> int:
        return sum(e.nbytes for e in self._entries.values() if e.where == tier)

    def _make_room(self, tier: str, need: int) -> None:
        budget = self.device_budget if tier == "device" else self.cpu_budget
        while self._used(tier) + need > budget:
            victims = [e for e in self._entries.values() if e.where == tier and not e.pins]
            if not victims:
                if need:
                    log.warning("%s budget %.1f MiB exceeded by components in use", tier, budget / 2**20)
                return
            victim = min(victims, key=lambda e: e.last_used)
            if tier == "device" and not self.single_tier and victim.nbytes <= self.cpu_budget:
                self._to_cpu(victim)
            else:
                self._drop_group(victim)
            if self._used(tier) + need > budget:
                continue
            self._collect()  # the device memory must really be free before what needs it moves in

    def _to_ram(self, e: _Entry) -> None:
        """Place a pinned entry in CPU RAM (never dropped: it is in use, so it may exceed the budget)."""
        if e.where == "cpu":
            return
        was, e.where = e.where, "staged"  # leaving the device: its slot there is free for others
        self._make_room("cpu", e.nbytes)
        t0 = time.perf_counter()
        if was == "device":
            _move(e.obj, torch.device("cpu"))
        e.where = "cpu"
        self._record("to-cpu", e.key, time.perf_counter() - t0, e.nbytes)
        if was == "device":
            self._garbage = True

    def _to_cpu(self, e: _Entry) -> None:
        self._make_room("cpu", e.nbytes)
        if self._entries.get(e.key) is not e:
            return  # making room dropped a member of its group, and so this one with it
        if e.nbytes > self.cpu_budget - self._used("cpu"):
            return self._drop_group(e)
        t0 = time.perf_counter()
        _move(e.obj, torch.device("cpu"))
        e.where = "cpu"
        self._record("to-cpu", e.key, time.perf_counter() - t0, e.nbytes)
        self._garbage = True

    def _drop_group(self, e: _Entry) -> None:
        """Evict `e` for good, with the unpinned members of its group wherever they are."""
        siblings = [s for s in self._entries.values() if s is not e and s.group == e.group and len(e.group) > 1
                    and not s.pins]
        for victim in [e, *siblings]:
            self._drop(victim, "drop")

    def _drop(self, e: _Entry, action: str) -> None:
        del self._entries[e.key]
        self._record(action, e.key, 0.0, e.nbytes)
        e.obj = None
        self._garbage = True

    def _collect(self) -> None:
        """One gc + cache release after a round of moves/drops, not one per entry: a full collection costs
        0.3-1.4 s with a UI loaded, and a switch moves or drops 5-7 components."""
        if self._garbage:
            self._garbage = False
            free_memory()


def _move(obj: Any, device: torch.device) -> None:
    if isinstance(obj, torch.nn.Module):
        obj.to(device)
