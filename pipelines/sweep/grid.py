"""Labelled image grids of a sweep (the X/Y/Z plot), drawn with PIL the way A1111 lays them out.

One grid per Z value: cells in X columns and Y rows, X labels in a band on top, Y labels in a band on the left.
With several Z values the Z grids also go side by side under their Z titles (`combine`). Cells of different
sizes (a Size axis) are centered in the largest cell; a missing cell (a cancelled sweep, a skipped cell) is a
neutral grey placeholder. Text uses Pillow's scalable default font (FreeType), sized from the cell size and
wrapped to its band. Pure PIL: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
PLACEHOLDER = (200, 200, 200)
PLACEHOLDER_EDGE = (150, 150, 150)


def font_size(cell: tuple[int, int]) -> int:
    """A1111 uses (w + h) / 25 (40 px for 512x512 cells); kept readable for tiny cells and bounded for huge ones."""
    return max(12, min(64, (cell[0] + cell[1]) // 25))


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # FreeType: scalable
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _width(text: str, fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> float:
    return fnt.getlength(text)


def wrap(text: str, fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Lines of `text` no wider than `width` (words kept whole where they fit; longer ones are cut)."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if _width(candidate, fnt) <= width or not line and _width(word, fnt) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while _width(word, fnt) > width and len(word) > 1:  # a word wider than the band: cut it
                cut = max(1, next((i for i in range(len(word), 0, -1) if _width(word[:i], fnt) <= width), 1))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


@dataclass(frozen=True)
class Layout:
    cell: tuple[int, int]
    cols: int
    rows: int
    left: int  # width of the row-label band
    top: int  # height of the column-label band
    margin: int
    font_size: int

    @property
    def size(self) -> tuple[int, int]:
        w = self.left + self.cols * self.cell[0] + (self.cols - 1) * self.margin
        h = self.top + self.rows * self.cell[1] + (self.rows - 1) * self.margin
        return w, h

    def origin(self, col: int, row: int) -> tuple[int, int]:
        """Top-left corner of the cell box at (col, row)."""
        return (self.left + col * (self.cell[0] + self.margin), self.top + row * (self.cell[1] + self.margin))


def _line_height(size: int) -> int:
    return size + size // 4


def layout(cell: tuple[int, int], cols: int, rows: int, col_labels: Sequence[str] = (),
           row_labels: Sequence[str] = (), *, margin: int = 0, legend: bool = True) -> Layout:
    size = font_size(cell)
    fnt, pad = font(size), size // 2
    top = left = 0
    if legend and any(col_labels):
        lines = max(len(wrap(t, fnt, cell[0] - pad)) for t in col_labels)
        top = lines * _line_height(size) + 2 * pad
    if legend and any(row_labels):
        left = max(cell[0] * 3 // 4, size * 6)
    return Layout(cell, cols, rows, left, top, margin, size)


def cell_size(images: Sequence[Image.Image | None], fallback: tuple[int, int] = (512, 512)) -> tuple[int, int]:
    present = [im for im in images if im is not None]
    if not present:
        return fallback
    return max(im.width for im in present), max(im.height for im in present)


def _text_block(draw: ImageDraw.ImageDraw, lines: list[str], box: tuple[int, int, int, int], size: int) -> None:
    """Lines centered in box (x0, y0, x1, y1)."""
    fnt, lh = font(size), _line_height(size)
    x0, y0, x1, y1 = box
    y = y0 + max(0, (y1 - y0 - lh * len(lines)) // 2)
    for line in lines:
        draw.text(((x0 + x1) / 2, y + size // 8), line, fill=TEXT, font=fnt, anchor="ma")
        y += lh


def placeholder(size: tuple[int, int]) -> Image.Image:
    """What a cell that has no image (cancelled or skipped) shows."""
    im = Image.new("RGB", size, PLACEHOLDER)
    edge = max(1, size[0] // 64)
    ImageDraw.Draw(im).rectangle([0, 0, size[0] - 1, size[1] - 1], outline=PLACEHOLDER_EDGE, width=edge)
    return im


def draw_grid(images: Sequence[Image.Image | None], cols: int, rows: int, *, col_labels: Sequence[str] = (),
              row_labels: Sequence[str] = (), cell: tuple[int, int] | None = None, margin: int = 0,
              legend: bool = True) -> Image.Image:
    """`images` row by row (cols x rows, None = missing) under their column labels, right of their row labels."""
    if len(images) != cols * rows:
        raise ValueError(f"{len(images)} images for a {cols}x{rows} grid")
    cell = cell or cell_size(images)
    lay = layout(cell, cols, rows, col_labels, row_labels, margin=margin, legend=legend)
    grid = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    fnt, pad = font(lay.font_size), lay.font_size // 2
    for i, im in enumerate(images):
        x, y = lay.origin(i % cols, i // cols)
        im = placeholder(cell) if im is None else im.convert("RGB")
        grid.paste(im, (x + (cell[0] - im.width) // 2, y + (cell[1] - im.height) // 2))
    if lay.top:
        for c, text in enumerate(col_labels):
            x, _ = lay.origin(c, 0)
            _text_block(draw, wrap(text, fnt, cell[0] - pad), (x, 0, x + cell[0], lay.top), lay.font_size)
    if lay.left:
        for r, text in enumerate(row_labels):
            _, y = lay.origin(0, r)
            _text_block(draw, wrap(text, fnt, lay.left - pad), (0, y, lay.left, y + cell[1]), lay.font_size)
    return grid


def combine(grids: Sequence[Image.Image], titles: Sequence[str], *, margin: int = 0,
            legend: bool = True) -> Image.Image:
    """Several grids side by side, each under its title (the Z values), centered in the largest grid's box."""
    box = cell_size(grids)
    size = font_size((box[0] // 2, box[1] // 2))  # titles sized from the grids they head
    fnt, pad = font(size), size // 2
    top = 0
    if legend and any(titles):
        top = max(len(wrap(t, fnt, box[0] - pad)) for t in titles) * _line_height(size) + 2 * pad
    out = Image.new("RGB", (len(grids) * box[0] + (len(grids) - 1) * margin, top + box[1]), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for i, (g, title) in enumerate(zip(grids, titles)):
        x = i * (box[0] + margin)
        out.paste(g, (x + (box[0] - g.width) // 2, top + (box[1] - g.height) // 2))
        if top:
            _text_block(draw, wrap(title, fnt, box[0] - pad), (x, 0, x + box[0], top), size)
    return out
