"""Small typed interfaces that extensions implement, and the context object they receive.

Extensions (upscalers, preprocessors, hires fix, tiled upscale) never import `pipelines`: everything they
may use from the running job comes in through `ExtensionContext` (device, dtype, progress/cancel hooks,
the component cache, and a ready-made img2img call for extensions that redraw images). They never patch
diffusers or torch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from PIL import Image


class Hooks(Protocol):
    """Progress and cooperative cancellation of the job an extension runs in."""

    def check(self) -> None: ...  # raises the job's cancel exception when the user interrupted
    def stop_requested(self) -> bool: ...  # the user asked to stop early and keep what is done (Skip)

    def progress(self, step: int, total: int, label: str | None = None) -> None: ...

    def preview(self, image: Any, step: int | None = None) -> None: ...


class NoHooks:
    """For work outside a job (tests, scripts): never cancelled, reports nowhere."""

    def check(self) -> None:
        return None

    def stop_requested(self) -> bool:
        return False

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        return None

    def preview(self, image: Any, step: int | None = None) -> None:
        return None


# cache(key, load) -> context manager yielding the cached object on the device (pinned while inside)
CacheFn = Callable[[str, Callable[[], Any]], AbstractContextManager[Any]]
# redraw(image, mask or None, seed, strength or None) -> image of the same size: an img2img pass configured by the
# caller (prompt, sampler, steps, denoising strength unless `strength` overrides it)
RedrawFn = Callable[[Image.Image, Image.Image | None, int, float | None], Image.Image]


@dataclass
class ExtensionContext:
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    hooks: Any = field(default_factory=NoHooks)  # Hooks
    cache: CacheFn | None = None  # the pipeline manager's component cache; None = load every time
    models_dir: Path = Path("models")
    redraw: RedrawFn | None = None
    # where annotator weights are downloaded from (e.g. "https://huggingface.co"); None = offline
    hub_endpoint: str | None = None


@runtime_checkable
class Upscaler(Protocol):
    """Turns an image into a bigger one. `scale` is the factor the caller wants (the upscaler may run at its
    own native factor and resize to the requested one)."""

    name: str

    def upscale(self, image: Image.Image, scale: float, ctx: ExtensionContext) -> Image.Image: ...
