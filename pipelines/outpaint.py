"""Outpainting's canvas work (torch-free, PIL/numpy): extend an image beyond its borders, the way A1111's
"Outpainting mk2" and "Poor man's outpainting" img2img scripts do.

Reads in the order the work happens (pipelines/engine/outpaint.py runs it, one inpaint pass per step):
1. `plan_steps`: the extension split into steps of at most `max_step` px per side (0: one step).
2. `expand`: the canvas of a step: the previous image pasted at its offset, the new area pre-filled
   ("matched noise": noise with the image's colour statistics, as mk2; anything else: the edge pixels stretched
   outwards, which the inpaint's own masked content, fill / original / latent noise / latent nothing, then
   replaces or keeps), the inpaint mask (new area + `overlap` px into the old canvas) and the composite mask.
3. `composite_step`: the generated pixels over the canvas through the composite mask: the blurred inpaint mask
   limited to the new area and the overlap band, so the old canvas outside the band is byte-identical.
4. `restore_original`: the input pasted back over its box in the final image (exactly equal), blended
   outwards over `mask_blur` px into the generated border so the seam stays soft.
`seam_jump` measures the seam (tests report it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

SIDES = ("left", "right", "up", "down")
MATCHED_NOISE = "matched noise"
FILLS = ("fill", "original", "latent noise", "latent nothing", MATCHED_NOISE)
MAX_SIDE = 4096  # an extended canvas larger than this is refused


@dataclass(frozen=True)
class Step:
    """One step's extension per side (px)."""

    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0

    @property
    def any(self) -> bool:
        return bool(self.left or self.right or self.up or self.down)


def check_amounts(size: tuple[int, int], left: int, right: int, up: int, down: int) -> tuple[int, int]:
    """The final canvas size; ValueError naming the field for a negative amount, none at all, or a too-large
    canvas."""
    for name, v in zip(SIDES, (left, right, up, down)):
        if int(v) < 0:
            raise ValueError(f"outpaint_{name}: must be 0 or more, got {v}")
    if not (left or right or up or down):
        raise ValueError("outpaint_left/right/up/down: extend at least one side by 8 px or more")
    w, h = size[0] + left + right, size[1] + up + down
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"outpaint: the extended image would be {w}x{h}; the limit is {MAX_SIDE} px a side")
    return w, h


def plan_steps(left: int, right: int, up: int, down: int, max_step: int = 0) -> list[Step]:
    """The extension as steps of at most `max_step` px per side (0 or less: all in one step). Every step extends
    each still-unfinished side, so the canvas grows evenly."""
    if max_step <= 0:
        return [Step(left, right, up, down)] if (left or right or up or down) else []
    n = max(math.ceil(v / max_step) for v in (left, right, up, down))
    steps = []
    for i in range(n):
        def part(v: int) -> int:
            return min(max_step, max(0, v - i * max_step))
        steps.append(Step(part(left), part(right), part(up), part(down)))
    return [s for s in steps if s.any]


def stretch_edges(image: Image.Image, step: Step) -> Image.Image:
    """The canvas with the new area filled by the border pixels stretched outwards (A1111 "original")."""
    a = np.asarray(image.convert("RGB"))
    a = np.pad(a, ((step.up, step.down), (step.left, step.right), (0, 0)), mode="edge")
    return Image.fromarray(a, "RGB")


def _match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel quantile mapping of `values` (N x C) onto `reference` (M x C)."""
    out = np.empty_like(values)
    for c in range(values.shape[1]):
        order = np.argsort(values[:, c], kind="stable")
        q = (np.arange(len(order)) + 0.5) / len(order)
        ref = np.sort(reference[:, c])
        out[order, c] = np.interp(q, (np.arange(len(ref)) + 0.5) / len(ref), ref)
    return out


def matched_noise(canvas: Image.Image, new_area: np.ndarray, seed: int, noise_q: float = 1.0,
                  color_variation: float = 0.05) -> Image.Image:
    """mk2's pre-fill: noise whose spectrum falls off as 1/f^noise_q (lower = finer detail) and whose colours
    follow the known pixels' histogram; `color_variation` is how colourful the noise is before matching."""
    a = np.asarray(canvas.convert("RGB"), dtype=np.float64) / 255.0
    h, w = a.shape[:2]
    rng = np.random.default_rng(seed)
    noise = rng.random((h, w, 3))
    grey = noise.mean(axis=2, keepdims=True)
    noise = noise * color_variation + grey * (1 - color_variation)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    falloff = 1.0 / np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / max(h, w)) ** noise_q
    shaped = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(0, 1)) * falloff[..., None], axes=(0, 1)))
    known = a[~new_area]
    if known.size and new_area.any():
        a = a.copy()
        a[new_area] = _match_histogram(shaped[new_area], known)
    return Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


@dataclass
class Canvas:
    """One step's canvas: `image` (pre-filled), `mask` (L, 255 = inpaint: new area + overlap band, not blurred),
    `keep` (L, 255 = the old canvas outside the overlap band: never changed), `box` (the old image's place)."""

    image: Image.Image
    mask: Image.Image
    keep: Image.Image
    box: tuple[int, int, int, int]


def expand(image: Image.Image, step: Step, *, overlap: int = 0, fill: str = "original", seed: int = 0,
           noise_q: float = 1.0, color_variation: float = 0.05) -> Canvas:
    """The step's canvas, pre-filled, with its inpaint mask reaching `overlap` px into the old image on the
    extended sides (never further than half the old image)."""
    image = image.convert("RGB")
    w, h = image.size
    box = (step.left, step.up, step.left + w, step.up + h)
    canvas = stretch_edges(image, step)
    cw, ch = canvas.size
    new = np.ones((ch, cw), dtype=bool)
    new[box[1]:box[3], box[0]:box[2]] = False
    if fill == MATCHED_NOISE:
        canvas = matched_noise(canvas, new, seed, noise_q, color_variation)
    ox, oy = min(overlap, w // 2), min(overlap, h // 2)
    inner = [box[0] + (ox if step.left else 0), box[1] + (oy if step.up else 0),
             box[2] - (ox if step.right else 0), box[3] - (oy if step.down else 0)]
    mask = np.full((ch, cw), 255, dtype=np.uint8)
    mask[inner[1]:inner[3], inner[0]:inner[2]] = 0
    keep = np.zeros((ch, cw), dtype=np.uint8)
    keep[inner[1]:inner[3], inner[0]:inner[2]] = 255
    return Canvas(canvas, Image.fromarray(mask, "L"), Image.fromarray(keep, "L"), box)


def composite_mask(c: Canvas, mask_blur: int) -> Image.Image:
    """The inpaint mask blurred by `mask_blur`, then cut to zero on the kept old canvas (outside the band)."""
    m = c.mask
    if mask_blur > 0:
        m = m.filter(ImageFilter.GaussianBlur(radius=mask_blur))
    a = np.asarray(m, dtype=np.uint8).copy()
    a[np.asarray(c.keep) > 0] = 0
    # the new area itself is always fully generated (blur would let the pre-fill show at the canvas edge)
    new = np.ones_like(a, dtype=bool)
    x0, y0, x1, y1 = c.box
    new[y0:y1, x0:x1] = False
    a[new] = 255
    return Image.fromarray(a, "L")


def composite_step(c: Canvas, generated: Image.Image, mask_blur: int) -> Image.Image:
    """The generated pixels over the step's canvas (`generated` resized to the canvas if needed)."""
    gen = generated.convert("RGB")
    if gen.size != c.image.size:
        gen = gen.resize(c.image.size, Image.Resampling.LANCZOS)
    return Image.composite(gen, c.image, composite_mask(c, mask_blur))


def restore_original(result: Image.Image, original: Image.Image, offset: tuple[int, int], feather: int) -> Image.Image:
    """`original` pasted back at `offset` exactly, and blended outwards over `feather` px (its edges stretched)
    into the generated border, so the original area equals the input and the seam stays soft."""
    original = original.convert("RGB")
    result = result.convert("RGB")
    W, H = result.size
    ox, oy = offset
    step = Step(ox, W - ox - original.width, oy, H - oy - original.height)
    stretched = np.asarray(stretch_edges(original, step), dtype=np.float32)
    out = np.asarray(result, dtype=np.float32)
    if feather > 0:
        ys, xs = np.mgrid[0:H, 0:W]
        dx = np.maximum(np.maximum(ox - xs, xs - (ox + original.width - 1)), 0)
        dy = np.maximum(np.maximum(oy - ys, ys - (oy + original.height - 1)), 0)
        d = np.sqrt(dx.astype(np.float32) ** 2 + dy.astype(np.float32) ** 2)
        wgen = np.clip(d / (feather + 1), 0, 1)[..., None]  # 0 on the original, 1 beyond the feather
        wgen = wgen * wgen * (3 - 2 * wgen)  # smoothstep
        out = stretched * (1 - wgen) + out * wgen
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    img.paste(original, (ox, oy))
    return img


def seam_jump(image: Image.Image, box: tuple[int, int, int, int]) -> dict[str, float]:
    """How visible the old border is: the mean absolute colour difference between the two pixel columns / rows
    that straddle each extended edge of `box` (and the jump in the gradient across it), each divided by the
    median of the same statistic over the pixel pairs inside the original box. ~1 = like any other pixel pair."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    x0, y0, x1, y1 = box
    inside = a[y0:y1, x0:x1]
    col = np.abs(np.diff(inside, axis=1)).mean(axis=(0, 2))  # per adjacent column pair
    row = np.abs(np.diff(inside, axis=0)).mean(axis=(1, 2))
    gcol = np.abs(np.diff(np.diff(inside, axis=1), axis=1)).mean(axis=(0, 2))
    grow = np.abs(np.diff(np.diff(inside, axis=0), axis=0)).mean(axis=(1, 2))
    ref = max(float(np.median(np.concatenate([col, row]))), 1.0)
    gref = max(float(np.median(np.concatenate([gcol, grow]))), 1.0)
    jumps, gjumps = [], []
    H, W = a.shape[:2]
    if x0 > 1:
        jumps.append(np.abs(a[y0:y1, x0] - a[y0:y1, x0 - 1]).mean())
        gjumps.append(np.abs(a[y0:y1, x0 + 1] - 2 * a[y0:y1, x0] + a[y0:y1, x0 - 1]).mean())
    if x1 < W - 1:
        jumps.append(np.abs(a[y0:y1, x1] - a[y0:y1, x1 - 1]).mean())
        gjumps.append(np.abs(a[y0:y1, x1] - 2 * a[y0:y1, x1 - 1] + a[y0:y1, x1 - 2]).mean())
    if y0 > 1:
        jumps.append(np.abs(a[y0, x0:x1] - a[y0 - 1, x0:x1]).mean())
        gjumps.append(np.abs(a[y0 + 1, x0:x1] - 2 * a[y0, x0:x1] + a[y0 - 1, x0:x1]).mean())
    if y1 < H - 1:
        jumps.append(np.abs(a[y1, x0:x1] - a[y1 - 1, x0:x1]).mean())
        gjumps.append(np.abs(a[y1, x0:x1] - 2 * a[y1 - 1, x0:x1] + a[y1 - 2, x0:x1]).mean())
    return {"color": float(max(jumps, default=0.0)) / ref, "gradient": float(max(gjumps, default=0.0)) / gref,
            "color_px": float(max(jumps, default=0.0)), "interior_px": ref}
