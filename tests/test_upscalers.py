"""Upscalers on tiny random-weight ESRGAN / Real-ESRGAN compact files: detection, sizes, tiling, safety, cache."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extensions.base import ExtensionContext
from extensions.upscalers import (
    ModelUpscaler,
    all_upscalers,
    find_model_upscalers,
    get_upscaler,
    load_descriptor,
    tile_starts,
    upscale_tiled,
)
from tests import tiny_upscalers as tiny

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("upscalers") / "models"
    tiny.save_pth(tiny.esrgan_state_dict(4), d / "ESRGAN" / "tiny-esrgan-4x.pth")
    tiny.save_safetensors(tiny.esrgan_state_dict(4, seed=1), d / "ESRGAN" / "more" / "tiny-esrgan-st.safetensors")
    tiny.save_pth(tiny.compact_state_dict(2), d / "RealESRGAN" / "tiny-compact-2x.pth")
    (d / "ESRGAN" / "notes.txt").write_text("not a model")
    return d


@pytest.fixture
def ctx(models_dir) -> ExtensionContext:
    return ExtensionContext(device=torch.device("cpu"), dtype=torch.float32, models_dir=models_dir)


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    bands = len(mode) if mode != "L" else 1
    rng = np.random.default_rng(seed)
    smooth = rng.random((h // 4 + 2, w // 4 + 2, bands)) * 255
    image = Image.fromarray(smooth.astype(np.uint8)[..., 0] if bands == 1 else smooth.astype(np.uint8), mode)
    return image.resize((w, h), Image.BICUBIC)


class Recorder:
    """Hooks that record progress and raise from check() after `cancel_after` tiles."""

    def __init__(self, cancel_after: int | None = None):
        self.steps: list[tuple[int, int, str | None]] = []
        self.cancel_after = cancel_after

    def check(self) -> None:
        if self.cancel_after is not None and len(self.steps) >= self.cancel_after:
            raise KeyboardInterrupt("cancelled")

    def progress(self, step, total, label=None) -> None:
        self.steps.append((step, total, label))

    def preview(self, image, step=None) -> None:
        pass


def test_detection_reads_architecture_and_scale(models_dir):
    esrgan = load_descriptor(models_dir / "ESRGAN" / "tiny-esrgan-4x.pth")
    st = load_descriptor(models_dir / "ESRGAN" / "more" / "tiny-esrgan-st.safetensors")
    compact = load_descriptor(models_dir / "RealESRGAN" / "tiny-compact-2x.pth")
    assert (esrgan.architecture.id, esrgan.scale, esrgan.purpose) == ("ESRGAN", 4, "SR")
    assert (st.architecture.id, st.scale) == ("ESRGAN", 4)
    assert (compact.architecture.id, compact.scale) == ("Compact", 2)


def test_listing_and_lookup(models_dir):
    names = [u.name for u in all_upscalers(models_dir)]
    assert names == ["None", "Lanczos", "Nearest", "tiny-compact-2x", "tiny-esrgan-4x", "tiny-esrgan-st"]
    assert [u.name for u in find_model_upscalers(models_dir / "nowhere")] == []
    assert isinstance(get_upscaler("TINY-esrgan-4x", models_dir), ModelUpscaler)
    with pytest.raises(ValueError, match=r"Unknown upscaler 'SwinIR 4x'\. Available: None, Lanczos, .*tiny-esrgan-4x"):
        get_upscaler("SwinIR 4x", models_dir)


def test_pixel_upscalers(models_dir, ctx):
    image = noise(30, 21)
    assert get_upscaler("None", models_dir).upscale(image, 4, ctx) is image
    lanczos = get_upscaler("Lanczos", models_dir).upscale(image, 2.5, ctx)
    nearest = get_upscaler("Nearest", models_dir).upscale(image, 2, ctx)
    assert lanczos.size == (75, 52) and nearest.size == (60, 42)
    assert nearest.getpixel((1, 1)) == image.getpixel((0, 0))


@pytest.mark.parametrize("name, scale, size", [
    ("tiny-esrgan-4x", 4, (124, 84)),  # native
    ("tiny-esrgan-4x", 2, (62, 42)),  # run at 4x, LANCZOS down
    ("tiny-compact-2x", 4, (124, 84)),  # two passes
    ("tiny-compact-2x", 3, (93, 63)),  # two passes (4x), then down to 3x
    ("tiny-compact-2x", 1, (31, 21)),  # nothing to do
])
def test_model_output_sizes(models_dir, ctx, name, scale, size):
    out = get_upscaler(name, models_dir).upscale(noise(31, 21), scale, ctx)
    assert out.size == size and out.mode == "RGB"


def test_tiled_equals_untiled_away_from_borders(models_dir):
    descriptor = load_descriptor(models_dir / "ESRGAN" / "tiny-esrgan-4x.pth")
    tile, overlap, margin = 80, 8, 20  # margin >= the tiny RRDB's receptive radius (input px)
    image = noise(224, 152, seed=3)  # 3 x 2 tiles, neighbours overlapping by exactly `overlap`
    hooks = Recorder()
    tiled = np.asarray(upscale_tiled(descriptor, image, tile=tile, overlap=overlap, hooks=hooks), np.float32)
    whole = np.asarray(upscale_tiled(descriptor, image, tile=10_000, overlap=overlap), np.float32)
    assert hooks.steps == [(i, 6, f"tile {i}/6") for i in range(1, 7)]
    assert whole.std() > 10  # the random model's output is not flat

    def far_from_edges(length: int) -> np.ndarray:
        starts = tile_starts(length, tile, overlap)
        edges = [e for s in starts for e in (s, s + tile) if 0 < e < length]
        coords = np.arange(length * 4) / 4
        return np.all([np.abs(coords - e) > margin for e in edges], axis=0)

    interior = far_from_edges(152)[:, None] & far_from_edges(224)[None, :]
    assert interior.mean() > 0.2
    diff = np.abs(tiled - whole)
    assert diff[interior].max() <= 2 and diff.mean() < 0.5
    # no visible seams: feathered overlaps stay closer to the untiled run than butted tiles do
    butted = np.asarray(upscale_tiled(descriptor, image, tile=tile, overlap=0), np.float32)
    assert diff.max() <= 3 < np.abs(butted - whole).max()


def test_cancel_between_tiles(models_dir):
    descriptor = load_descriptor(models_dir / "ESRGAN" / "tiny-esrgan-4x.pth")
    hooks = Recorder(cancel_after=2)
    with pytest.raises(KeyboardInterrupt):
        upscale_tiled(descriptor, noise(100, 60), tile=32, overlap=8, hooks=hooks)
    assert [s[0] for s in hooks.steps] == [1, 2]


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA"])
def test_modes_and_small_images(models_dir, ctx, mode):
    image = noise(13, 9, mode)
    if "A" in mode:
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    out = get_upscaler("tiny-compact-2x", models_dir).upscale(image, 2, ctx)
    assert out.size == (26, 18) and out.mode == mode
    if "A" in mode:
        expected = image.getchannel("A").resize(out.size, Image.LANCZOS)
        assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(expected))


def test_non_upscaler_files_are_refused_by_name(tmp_path, ctx):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "garbage.pth").write_bytes(os.urandom(4096))
    (tmp_path / "ESRGAN" / "garbage.safetensors").write_bytes(os.urandom(4096))
    tiny.unet_safetensors(tmp_path / "ESRGAN" / "sd-unet.safetensors")
    for name in ("garbage.pth", "garbage.safetensors", "sd-unet.safetensors"):
        with pytest.raises(ValueError, match=rf"{name} is not an upscaler model \(.+\)"):
            load_descriptor(tmp_path / "ESRGAN" / name)
    with pytest.raises(ValueError, match=r"sd-unet\.safetensors is not an upscaler model \(unknown architecture\)"):
        get_upscaler("sd-unet", tmp_path).upscale(noise(8, 8), 2, ctx)


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tiny.code_pickle(tmp_path / "ESRGAN" / "evil.pth", marker)
    with pytest.raises(ValueError, match=r"evil\.pth is not an upscaler model \(refused to unpickle .*system"):
        load_descriptor(path)
    assert not marker.exists()


def test_cache_keeps_the_model_resident(models_dir, ctx):
    store: dict[str, object] = {}
    loads: list[str] = []

    @contextmanager
    def cache(key, load):
        if key not in store:
            loads.append(key)
            store[key] = load()
        yield store[key]

    ctx.cache = cache
    upscaler = get_upscaler("tiny-esrgan-4x", models_dir)
    first = upscaler.upscale(noise(20, 20), 4, ctx)
    second = upscaler.upscale(noise(20, 20), 4, ctx)
    assert len(loads) == 1 and loads[0].startswith(f"upscaler::{upscaler.path}@")
    assert isinstance(store[loads[0]], torch.nn.Module)  # so the component cache can size and move it
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_listing_does_not_import_torch(models_dir):
    code = ("import sys; from extensions.upscalers import all_upscalers; "
            f"print(len(all_upscalers({str(models_dir)!r})), 'torch' in sys.modules, 'spandrel' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["6", "False", "False"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])  # fp16 falls back to fp32 on the CPU
def test_context_dtype(models_dir, ctx, dtype):
    image = noise(24, 16)
    reference = np.asarray(get_upscaler("tiny-compact-2x", models_dir).upscale(image, 2, ctx), np.float32)
    ctx.dtype = dtype
    out = np.asarray(get_upscaler("tiny-compact-2x", models_dir).upscale(image, 2, ctx), np.float32)
    assert np.abs(out - reference).mean() < 4
