"""Fast paths for the denoising models (UNet, ControlNet): channels-last memory format and an opt-in
`torch.compile`, with the compile warm-up measured and reported instead of looking like a hang.

1. `prepare_unet` runs once per module, when it enters the component cache (idempotent: a module that is
   already prepared is left alone). Channels-last stores conv weights and activations as NHWC, which CUDA's
   tensor-core convolutions prefer (diffusers' speed guide recommends it for the UNet). `torch.compile` goes
   through `nn.Module.compile`, which compiles the module's call in place: the object the cache, the
   pipelines and `from_pipe` hold stays the same module, so `unet.config`, `.to()`, `.dtype`, attention
   processors and state dicts keep working, and only calling it runs the compiled code.
2. A compiled module compiles again for every new input shape (image size, batch, prompt length). `Warmup`
   keeps, on the module itself, the shapes it has already run, so the job can say "compiling UNet (first
   step)" before the first step at a new shape, and afterwards how long that step took against the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

_PREPARED = "_studio_fastpath"  # attribute set on a prepared module: {"channels_last": bool, "compiled": bool}
_WARM = "_studio_warm_shapes"  # attribute on a compiled module: the shape keys it has run with


def prepare_unet(model: torch.nn.Module, *, channels_last: bool, compile: bool,
                 backend: str = "inductor") -> torch.nn.Module:
    """Channels-last and/or torch.compile for a UNet or ControlNet, in place; returns the same module."""
    if getattr(model, _PREPARED, None) is not None:
        return model
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(backend=backend)  # compiles model._call_impl on first call; the module object stays
        setattr(model, _WARM, set())
    setattr(model, _PREPARED, {"channels_last": channels_last, "compiled": compile})
    return model


def is_compiled(model: Any) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


@dataclass
class Warmup:
    """One pipeline call of compiled models at a shape some of them have not run yet: the first step pays for
    compiling. `step()` is called from the step callback; `report()` says how long the first step took."""

    models: list[torch.nn.Module]
    key: tuple
    start: float = field(default_factory=time.perf_counter)
    stamps: list[float] = field(default_factory=list)

    @classmethod
    def begin(cls, models: Sequence[Any], key: tuple) -> "Warmup | None":
        """A Warmup when a compiled module in `models` has not run at `key` (e.g. (w, h, batch, tokens)), else
        None (nothing compiled, or all warm)."""
        cold = [m for m in models if is_compiled(m) and key not in getattr(m, _WARM, set())]
        return cls(cold, key) if cold else None

    def step(self) -> None:
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == 1:  # the first step ran: the compiled code exists for this shape now
            for m in self.models:
                getattr(m, _WARM, set()).add(self.key)

    def report(self, size: tuple[int, int]) -> str | None:
        """"torch.compile warm-up: 38.2 s on the first step at 512x512 (later steps 0.09 s)", or None when no
        step ran (cancelled or failed before the first one)."""
        if not self.stamps:
            return None
        first = self.stamps[0] - self.start
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        later = f"later steps {sum(gaps) / len(gaps):.2f} s" if gaps else "no later steps to compare"
        return f"torch.compile warm-up: {first:.1f} s on the first step at {size[0]}x{size[1]} ({later})"
