"""Upscalers: PIL resamplers and super-resolution models (ESRGAN, Real-ESRGAN, SwinIR, DAT...) via spandrel.

- `all_upscalers(models_dir)` lists "None", "Lanczos", "Nearest" and one `ModelUpscaler` per model file found
  by `find_model_upscalers` in `models/ESRGAN` (and the `RealESRGAN`, `SwinIR`, `DAT` siblings, as A1111).
- `ModelUpscaler.upscale` loads its file safely (safetensors, or `torch.load(weights_only=True)`: pickles that
  hold code are refused), keeps it resident through the app's component cache, and runs it tile by tile
  (`upscale_tiled`) so memory stays bounded; the result is resized to the requested scale.

Importing this module does not import torch or spandrel (the UI lists upscaler names without torch).
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from extensions.base import ExtensionContext, NoHooks, Upscaler
from extensions.weights import read_weights

MODEL_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
MAX_PASSES = 3  # like A1111: a 2x model asked for 8x runs three times at most, then resizes


def _target_size(image: Image.Image, scale: float) -> tuple[int, int]:
    if not scale > 0:
        raise ValueError(f"Upscale factor must be positive, got {scale}")
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


# -- pixel upscalers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoneUpscaler:
    """A1111's "None": returns the image unchanged (the caller skips the upscale step)."""

    name: str = "None"

    def upscale(self, image: Image.Image, scale: float, ctx: ExtensionContext) -> Image.Image:
        return image


@dataclass(frozen=True)
class ResampleUpscaler:
    """A plain PIL resize by `scale` with the given resampling filter."""

    name: str
    resample: int

    def upscale(self, image: Image.Image, scale: float, ctx: ExtensionContext) -> Image.Image:
        size = _target_size(image, scale)
        return image if size == image.size else image.resize(size, self.resample)


def builtin_upscalers() -> list[Upscaler]:
    return [NoneUpscaler(), ResampleUpscaler("Lanczos", Image.LANCZOS), ResampleUpscaler("Nearest", Image.NEAREST)]


# -- model files: discovery and safe loading ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelUpscaler:
    """A super-resolution model file; `name` is the file stem. Tiles: `tile` input px, overlapping by `overlap`."""

    name: str
    path: Path
    tile: int = 192
    overlap: int = 16

    def cache_key(self) -> str:
        return f"upscaler::{self.path}@{os.stat(self.path).st_mtime_ns}"

    def load(self) -> Any:
        """The model as an `nn.Module` holder (`.descriptor` = the spandrel descriptor), on the CPU."""
        import torch

        holder = torch.nn.Module()  # a module, so the component cache can size it and move it between devices
        descriptor = load_descriptor(self.path)
        holder.net = descriptor.model  # registered submodule: moved with the holder
        holder.descriptor = descriptor  # plain attribute: shares `net`, so it follows the moves
        return holder

    def upscale(self, image: Image.Image, scale: float, ctx: ExtensionContext) -> Image.Image:
        size = _target_size(image, scale)
        cached = ctx.cache(self.cache_key(), self.load) if ctx.cache else nullcontext(self.load())
        with cached as holder:
            descriptor = holder.descriptor
            for _ in range(MAX_PASSES):
                if image.width >= size[0] and image.height >= size[1]:
                    break
                image = upscale_tiled(descriptor, image, tile=self.tile, overlap=self.overlap,
                                      device=ctx.device, dtype=ctx.dtype, hooks=ctx.hooks)
        return image if image.size == size else image.resize(size, Image.LANCZOS)


def find_model_upscalers(models_dir: Path, esrgan_dir: Path | None = None) -> list[ModelUpscaler]:
    """Model files under `models_dir/{ESRGAN,RealESRGAN,SwinIR,DAT}` (subfolders and the owner's symlinks too;
    `esrgan_dir`: A1111's --esrgan-models-path in place of ESRGAN), sorted by name.
    When two files share a stem, the first folder in that order wins."""
    found: dict[str, ModelUpscaler] = {}
    for folder in MODEL_FOLDERS:
        root = Path(esrgan_dir) if esrgan_dir and folder == "ESRGAN" else Path(models_dir) / folder
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                if path.suffix.lower() in MODEL_SUFFIXES and path.is_file() and not fn.startswith("."):
                    found.setdefault(path.stem, ModelUpscaler(path.stem, path))
    return sorted(found.values(), key=lambda u: u.name.lower())


class NotAnUpscaler(ValueError):
    """A model file that cannot be used as an upscaler (code in its pickle, unreadable, another kind of model):
    the user's file is at fault, not the app (the API answers 422, not 500)."""


def _unpickle_reason(error: Exception) -> str:
    """The informative line of torch's long 'Weights only load failed' message."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boilerplate)]
    return (useful or lines or [type(error).__name__])[0]


def load_state_dict(path: Path) -> dict:
    """Tensors of a model file without running code: safetensors, or a pickle restricted to plain weights.

    (spandrel's own `load_from_file` uses a restricted unpickler too, but tries `torch.jit.load` first on
    `.pt` files; we never do.) Raises NotAnUpscaler (a ValueError) naming the file.
    """
    import pickle

    path = Path(path)
    try:
        state = read_weights(path)
    except pickle.UnpicklingError as e:
        raise NotAnUpscaler(f"{path.name} is not an upscaler model (refused to unpickle anything but plain "
                            f"weights: {_unpickle_reason(e)})") from e
    except Exception as e:
        raise NotAnUpscaler(f"{path.name} is not an upscaler model (unreadable: {_unpickle_reason(e)})") from e
    if not isinstance(state, dict):
        raise NotAnUpscaler(f"{path.name} is not an upscaler model (holds a {type(state).__name__}, not weights)")
    return state


def load_descriptor(path: Path) -> Any:
    """The spandrel `ImageModelDescriptor` of a super-resolution model file, on the CPU, in eval mode.

    Raises NotAnUpscaler("<file> is not an upscaler model (<reason>)"), a ValueError, for anything else."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    path = Path(path)
    state = load_state_dict(path)
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError as e:
        raise NotAnUpscaler(f"{path.name} is not an upscaler model (unknown architecture)") from e
    except Exception as e:  # an architecture matched the keys but the weights do not fit it
        raise NotAnUpscaler(f"{path.name} is not an upscaler model ({type(e).__name__}: {e})") from e
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        raise NotAnUpscaler(f"{path.name} is not an upscaler model ({descriptor.architecture.name} "
                            f"{descriptor.purpose} model, not super-resolution)")
    return descriptor.eval()


# -- tiled inference ----------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` px covering `length`, spread evenly, neighbours overlapping >= `overlap`."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(size: int, ramp: int, first: bool, last: bool) -> Any:
    """1-D blending weights of one tile: linear 0->1 over `ramp` px at each side that meets another tile."""
    import torch

    w = torch.ones(size)
    r = min(ramp, size)
    up = (torch.arange(r, dtype=torch.float32) + 0.5) / ramp
    if not first and r:
        w[:r] *= up
    if not last and r:
        w[-r:] *= up.flip(0)
    return w


def _run_dtype(descriptor: Any, device: Any, dtype: Any) -> Any:
    import torch

    if dtype == torch.float16 and descriptor.supports_half and torch.device(device).type != "cpu":
        return dtype
    if dtype == torch.bfloat16 and descriptor.supports_bfloat16:
        return dtype
    return torch.float32


def upscale_tiled(descriptor: Any, image: Image.Image, *, tile: int = 192, overlap: int = 16,
                  device: Any = "cpu", dtype: Any = None, hooks: Any = None) -> Image.Image:
    """One pass of `descriptor` (native scale) over `image`, in overlapping tiles blended linearly.

    Each tile's output is weighted by a separable ramp that rises over the `overlap` band on sides that meet
    another tile; weighted outputs and weights accumulate on the CPU and are divided at the end, so away from
    tile borders the result equals the untiled run. `hooks.check()` runs before each tile (cancel),
    `hooks.progress(i, n, "tile i/n")` after it. RGB(A)/grayscale in, same mode out (alpha: LANCZOS resize).
    """
    import numpy as np
    import torch

    if not 0 <= overlap < tile:
        raise ValueError(f"Need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    hooks = hooks or NoHooks()
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    gray = image.mode in ("L", "LA", "1", "I", "I;16", "F")
    run_dtype = _run_dtype(descriptor, device, dtype or torch.float32)
    descriptor.to(device=torch.device(device), dtype=run_dtype)

    source = image.convert("L" if descriptor.input_channels == 1 else "RGB")
    pixels = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255.0)
    pixels = pixels[None, None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)[None]
    s, (h, w) = descriptor.scale, pixels.shape[-2:]
    out = torch.zeros(1, descriptor.output_channels, h * s, w * s)
    weight = torch.zeros(1, 1, h * s, w * s)

    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    boxes = [(y, x) for y in ys for x in xs]
    with torch.inference_mode():
        for i, (y, x) in enumerate(boxes, 1):
            hooks.check()
            th, tw = min(tile, h), min(tile, w)
            piece = pixels[..., y:y + th, x:x + tw].to(device=device, dtype=run_dtype)
            result = descriptor(piece).float().cpu()
            wy = _ramp(th * s, overlap * s, y == ys[0], y == ys[-1])
            wx = _ramp(tw * s, overlap * s, x == xs[0], x == xs[-1])
            tw_map = (wy[:, None] * wx[None, :])[None, None]
            out[..., y * s:(y + th) * s, x * s:(x + tw) * s] += result * tw_map
            weight[..., y * s:(y + th) * s, x * s:(x + tw) * s] += tw_map
            hooks.progress(i, len(boxes), f"tile {i}/{len(boxes)}")

    array = (out / weight)[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    result_image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if gray and result_image.mode != "L":
        result_image = result_image.convert("L")
    elif not gray and result_image.mode != "RGB":
        result_image = result_image.convert("RGB")
    if alpha is not None:
        result_image.putalpha(alpha.resize(result_image.size, Image.LANCZOS))
    return result_image


# -- registry -----------------------------------------------------------------------------------------------


def all_upscalers(models_dir: Path, esrgan_dir: Path | None = None) -> list[Upscaler]:
    """None, Lanczos, Nearest, then the model upscalers found under `models_dir` (and `esrgan_dir`)."""
    return [*builtin_upscalers(), *find_model_upscalers(models_dir, esrgan_dir)]


def get_upscaler(name: str, models_dir: Path, esrgan_dir: Path | None = None) -> Upscaler:
    """The upscaler called `name` (case-insensitive); ValueError listing the available ones otherwise."""
    upscalers = all_upscalers(models_dir, esrgan_dir)
    for wanted in (lambda u: u.name == name, lambda u: u.name.lower() == str(name).lower()):
        for upscaler in upscalers:
            if wanted(upscaler):
                return upscaler
    raise ValueError(f"Unknown upscaler '{name}'. Available: {', '.join(u.name for u in upscalers)}")
