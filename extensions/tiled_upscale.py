"""Tiled SD upscale ("Ultimate SD Upscale" style): redraw an already enlarged image tile by tile.

Memory stays bounded by the tile size whatever the image size. Each tile is redrawn with its padding as
context and pasted back through a blurred mask; an optional seams-fix pass then redraws the borders
between tiles (bands along the seams, or half-tile offsets, plus their intersections). The redraw itself
(an img2img pass with the user's prompt, sampler, steps and denoising strength) comes from
`ctx.redraw(image, mask, seed)`, so this module knows nothing about pipelines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

from extensions.base import ExtensionContext

REDRAW_ORDERS = ("linear", "chess")
SEAMS_FIXES = ("none", "band pass", "half tile", "half tile + intersections")


@dataclass(frozen=True)
class TiledSettings:
    tile_width: int = 512
    tile_height: int = 512
    padding: int = 32
    mask_blur: int = 8
    redraw_order: str = "linear"
    seams_fix: str = "none"
    seams_width: int = 64
    seams_padding: int = 16
    seams_mask_blur: int = 4
    seams_denoise: float = 0.35

    def __post_init__(self) -> None:
        if self.redraw_order not in REDRAW_ORDERS:
            raise ValueError(f"Unknown redraw order {self.redraw_order!r}: choose {', '.join(REDRAW_ORDERS)}")
        if self.seams_fix not in SEAMS_FIXES:
            raise ValueError(f"Unknown seams fix {self.seams_fix!r}: choose {', '.join(SEAMS_FIXES)}")
        if self.tile_width < 64 or self.tile_height < 64:
            raise ValueError("Tiles must be at least 64x64 px")


Box = tuple[int, int, int, int]  # left, top, right, bottom


def grid(width: int, height: int, s: TiledSettings) -> list[Box]:
    """The tiles in redraw order: a grid of ceil(W/tw) x ceil(H/th), linear or chess (a checkerboard's
    white squares first, then the black ones)."""
    cols, rows = math.ceil(width / s.tile_width), math.ceil(height / s.tile_height)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    if s.redraw_order == "chess":
        cells = [rc for rc in cells if sum(rc) % 2 == 0] + [rc for rc in cells if sum(rc) % 2 == 1]
    return [(c * s.tile_width, r * s.tile_height, min((c + 1) * s.tile_width, width),
             min((r + 1) * s.tile_height, height)) for r, c in cells]


def seam_boxes(width: int, height: int, s: TiledSettings) -> list[Box]:
    """Regions the seams-fix pass redraws."""
    if s.seams_fix == "none":
        return []
    cols, rows = math.ceil(width / s.tile_width), math.ceil(height / s.tile_height)
    if s.seams_fix == "band pass":
        half = s.seams_width // 2
        bands = [(c * s.tile_width - half, 0, c * s.tile_width + half, height) for c in range(1, cols)]
        bands += [(0, r * s.tile_height - half, width, r * s.tile_height + half) for r in range(1, rows)]
        return bands
    hw, hh = s.tile_width // 2, s.tile_height // 2  # tiles shifted by half a tile cover the old seams
    boxes = [(c * s.tile_width - hw, r * s.tile_height, c * s.tile_width + hw, (r + 1) * s.tile_height)
             for r in range(rows) for c in range(1, cols)]
    boxes += [(c * s.tile_width, r * s.tile_height - hh, (c + 1) * s.tile_width, r * s.tile_height + hh)
              for r in range(1, rows) for c in range(cols)]
    if s.seams_fix == "half tile + intersections":
        boxes += [(c * s.tile_width - hw, r * s.tile_height - hh, c * s.tile_width + hw, r * s.tile_height + hh)
                  for r in range(1, rows) for c in range(1, cols)]
    return [(max(0, l), max(0, t), min(width, r), min(height, b)) for l, t, r, b in boxes]


def cost(width: int, height: int, s: TiledSettings) -> dict[str, int]:
    """How many redraws the job will run (shown before starting: each is a full img2img pass)."""
    return {"tiles": len(grid(width, height, s)), "seams": len(seam_boxes(width, height, s))}


def _redraw_region(ctx: ExtensionContext, image: Image.Image, box: Box, padding: int, blur: int,
                   seed: int, strength: float | None = None) -> Image.Image:
    """Redraw `box` of `image` with `padding` px of context, paste it back through a blurred mask."""
    w, h = image.size
    l, t, r, b = box
    crop = (max(0, l - padding), max(0, t - padding), min(w, r + padding), min(h, b + padding))
    region = image.crop(crop)
    mask = Image.new("L", region.size, 0)
    ImageDraw.Draw(mask).rectangle((l - crop[0], t - crop[1], r - crop[0] - 1, b - crop[1] - 1), fill=255)
    redrawn = ctx.redraw(region, mask, seed, strength)
    if redrawn.size != region.size:
        redrawn = redrawn.resize(region.size, Image.Resampling.LANCZOS)
    soft = mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask
    out = image.copy()
    out.paste(Image.composite(redrawn.convert("RGB"), region, soft), crop[:2])
    return out


def tiled_redraw(image: Image.Image, s: TiledSettings, ctx: ExtensionContext, seed: int) -> Image.Image:
    """Redraw every tile (then the seams). Calls ctx.hooks.check() before each redraw: a cancel raises there,
    so a cancelled result never leaves this function. When `ctx.hooks.stop_requested()` turns true (the user's
    Skip), the remaining regions are left as they are and the image redrawn so far is returned."""
    if ctx.redraw is None:
        raise ValueError("tiled upscale needs a redraw function in its context")
    w, h = image.size
    tiles, seams = grid(w, h, s), seam_boxes(w, h, s)
    total = len(tiles) + len(seams)
    out = image.convert("RGB")
    for i, box in enumerate(tiles):
        ctx.hooks.check()
        if ctx.hooks.stop_requested():
            return out
        ctx.hooks.progress(i, total, f"tile {i + 1}/{len(tiles)}")
        out = _redraw_region(ctx, out, box, s.padding, s.mask_blur, seed + i)
        ctx.hooks.preview(out)
    for j, box in enumerate(seams):
        ctx.hooks.check()
        if ctx.hooks.stop_requested():
            return out
        ctx.hooks.progress(len(tiles) + j, total, f"seam {j + 1}/{len(seams)}")
        out = _redraw_region(ctx, out, box, s.seams_padding, s.seams_mask_blur, seed + len(tiles) + j,
                             s.seams_denoise)
    ctx.hooks.progress(total, total, "done")
    return out
