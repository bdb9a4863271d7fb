"""Tiled SD upscale's tiling: grid, redraw order, seams-fix regions, compositing, cancel between tiles."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from extensions.base import ExtensionContext
from extensions.tiled_upscale import TiledSettings, cost, grid, seam_boxes, tiled_redraw

pytestmark = pytest.mark.unit  # pure Python, no model


class Stop(BaseException):
    pass


class Hooks:
    def __init__(self, stop_after=None, skip_after=None):
        self.checks, self.progress_calls, self.stop_after, self.skip_after = 0, [], stop_after, skip_after

    def stop_requested(self):
        return self.skip_after is not None and self.checks > self.skip_after

    def check(self):
        if self.stop_after is not None and self.checks >= self.stop_after:
            raise Stop()
        self.checks += 1

    def progress(self, step, total, label=None):
        self.progress_calls.append((step, total, label))

    def preview(self, image, step=None):
        pass


def context(hooks=None):
    calls = []

    def redraw(image, mask, seed, strength):
        calls.append({"size": image.size, "mask": mask, "seed": seed, "strength": strength})
        return ImageOps.invert(image)  # a visible, checkable "redraw"

    return ExtensionContext(device="cpu", dtype=None, hooks=hooks or Hooks(), redraw=redraw), calls


def test_grid_counts_and_sizes():
    s = TiledSettings()
    assert len(grid(1024, 1024, s)) == 4 and cost(1024, 1024, s) == {"tiles": 4, "seams": 0}
    tiles = grid(1100, 600, s)  # 3 x 2, edge tiles cut to the image
    assert len(tiles) == 6 and tiles[-1] == (1024, 512, 1100, 600)
    assert {b for box in tiles for b in (box[2],)} <= {512, 1024, 1100}


def test_chess_order_does_whites_first():
    tiles = grid(1536, 1024, TiledSettings(redraw_order="chess"))
    cols = [(t[0] // 512 + t[1] // 512) % 2 for t in tiles]
    assert cols == [0, 0, 0, 1, 1, 1]


def test_seams_fix_regions():
    w = h = 1024
    assert len(seam_boxes(w, h, TiledSettings(seams_fix="band pass"))) == 2  # one vertical, one horizontal
    assert len(seam_boxes(w, h, TiledSettings(seams_fix="half tile"))) == 4
    assert len(seam_boxes(w, h, TiledSettings(seams_fix="half tile + intersections"))) == 5
    band = seam_boxes(w, h, TiledSettings(seams_fix="band pass", seams_width=64))[0]
    assert band == (480, 0, 544, 1024)


def test_every_tile_is_redrawn_with_padding_and_pasted_back():
    image = Image.new("RGB", (256, 192), (10, 200, 30))
    ctx, calls = context()
    s = TiledSettings(tile_width=128, tile_height=128, padding=16, mask_blur=0)
    out = tiled_redraw(image, s, ctx, seed=5)
    assert out.size == image.size and len(calls) == len(grid(256, 192, s)) == 4
    assert calls[0]["size"] == (144, 144) and [c["seed"] for c in calls] == [5, 6, 7, 8]
    assert (np.asarray(out) == [245, 55, 225]).all()  # every pixel went through exactly one redraw


def test_seams_pass_runs_with_its_own_strength():
    ctx, calls = context()
    s = TiledSettings(tile_width=128, tile_height=128, seams_fix="half tile + intersections", seams_denoise=0.3)
    tiled_redraw(Image.new("RGB", (256, 256)), s, ctx, seed=0)
    assert len(calls) == 4 + 5
    assert [c["strength"] for c in calls[4:]] == [0.3] * 5 and calls[0]["strength"] is None


def test_cancel_stops_between_tiles_without_a_result():
    hooks = Hooks(stop_after=2)
    ctx, calls = context(hooks)
    with pytest.raises(Stop):
        tiled_redraw(Image.new("RGB", (256, 256)), TiledSettings(tile_width=128, tile_height=128), ctx, seed=0)
    assert len(calls) == 2


def test_skip_stops_between_tiles_and_returns_what_was_redrawn():
    hooks = Hooks(skip_after=2)
    ctx, calls = context(hooks)
    image = Image.new("RGB", (256, 256), (10, 20, 30))
    out = np.asarray(tiled_redraw(image, TiledSettings(tile_width=128, tile_height=128, padding=0, mask_blur=0),
                                  ctx, seed=0))
    assert len(calls) == 2  # the first two tiles (top row), then the stop
    assert (out[:128] == 255 - np.array([10, 20, 30])).all() and (out[128:] == [10, 20, 30]).all()


def test_bad_settings():
    with pytest.raises(ValueError, match="redraw order"):
        TiledSettings(redraw_order="spiral")
    with pytest.raises(ValueError, match="seams fix"):
        TiledSettings(seams_fix="glue")
