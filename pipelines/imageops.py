"""Pixel-side operations of the img2img and inpainting modes (A1111 semantics), pure PIL + numpy.

The engine calls these around the diffusers pipelines:

- sizes: `snap8`, `default_size` (keep the input's aspect at about the model's native area);
- init image: `resize_image` with the four A1111 resize modes (`RESIZE_MODES`, index order 0..3);
- mask: `prepare_mask` (any mode -> binary "L", resized, inverted, blurred), `mask_is_empty`, `mask_is_full`;
- masked content "fill": `fill_masked` (normalized convolution, coarse to fine);
- "only masked" (A1111 inpaint_full_res): `masked_region`, `crop_for_region`, `paste_region`;
- final overlay: `composite` (outside the mask the output is byte-identical to the original);
- diagnostics: `changed_pixels`.

Semantic choices:

- Images with transparency are flattened onto white (A1111's default img2img background colour).
- Mask blur: A1111 blurs with a Gaussian of sigma = mask_blur (cv2 kernel 2*round(2.5*blur)+1); PIL's
  `GaussianBlur(radius)` takes the same sigma, so `blur` is passed through unchanged. The 50 % level stays on
  the stroke's edge and the soft fringe reaches about 2.5 * blur px on each side.
- RGBA masks: when the alpha channel carries transparency (a browser editor's stroke layer) the alpha is the
  mask, whatever the stroke colour; an opaque RGBA (or any other mode) uses luminance. This is A1111's
  `create_binary_mask` rule, and it covers "uniform RGB -> alpha". Any value > 0 counts as painted.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST

Box = tuple[int, int, int, int]


# -- sizes ---------------------------------------------------------------------------------------------------

def snap8(x: float) -> int:
    """Round to the nearest multiple of 8 (halves up), at least 64."""
    return max(64, int(math.floor(x / 8 + 0.5)) * 8)


def default_size(image_size: tuple[int, int], native: int) -> tuple[int, int]:
    """(width, height) with the input's aspect ratio and an area of about native * native, multiples of 8."""
    w, h = image_size
    scale = native / math.sqrt(w * h)
    return snap8(w * scale), snap8(h * scale)


# -- init image ----------------------------------------------------------------------------------------------

def scaled_size(size: tuple[int, int], scale: float, width: int = 0, height: int = 0, *,
                snap: bool = True) -> tuple[int, int]:
    """Resize-to beats scale-by: both sides given are used as they are, one side given keeps the aspect
    ratio, none scales by `scale`. `snap` rounds to multiples of 8 (what the models need)."""
    iw, ih = size
    r = snap8 if snap else round
    if width and height:
        return r(width), r(height)
    if width:
        return r(width), r(width * ih / iw)
    if height:
        return r(height * iw / ih), r(height)
    return r(iw * scale), r(ih * scale)


def output_size(image_size: tuple[int, int], width: int | None, height: int | None, scale_by: float | None,
                native: int) -> tuple[int, int]:
    """img2img's result size: "resize by", else width/height, else the input's aspect near the native size."""
    if scale_by:
        return scaled_size(image_size, scale_by)
    if width or height:
        return scaled_size(image_size, 1, width or 0, height or 0)
    return default_size(image_size, native)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy; transparency is flattened onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")


def resize_image(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Resize `image` to width x height with one of `RESIZE_MODES` (A1111 `images.resize_image`)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    im = to_rgb(image)
    if mode in (RESIZE_MODES[0], RESIZE_MODES[3]):  # the latent part of mode 3 is the engine's job
        return im.resize((width, height), LANCZOS)

    ratio, src_ratio = width / height, im.width / im.height
    cover = mode == RESIZE_MODES[1]
    if (ratio > src_ratio) == cover:  # the width is the binding side
        src_w, src_h = width, max(1, round(im.height * width / im.width))
    else:
        src_w, src_h = max(1, round(im.width * height / im.height)), height
    resized = im.resize((src_w, src_h), LANCZOS)
    left, top = (width - src_w) // 2, (height - src_h) // 2
    if cover:
        return resized.crop((-left, -top, -left + width, -top + height))

    res = Image.new("RGB", (width, height))
    res.paste(resized, (left, top))
    bottom, right = height - top - src_h, width - left - src_w
    if top > 0:  # stretch the first/last row outward
        res.paste(resized.crop((0, 0, src_w, 1)).resize((src_w, top)), (left, 0))
    if bottom > 0:
        res.paste(resized.crop((0, src_h - 1, src_w, src_h)).resize((src_w, bottom)), (left, top + src_h))
    if left > 0:  # stretch the first/last column outward
        res.paste(resized.crop((0, 0, 1, src_h)).resize((left, src_h)), (0, top))
    if right > 0:
        res.paste(resized.crop((src_w - 1, 0, src_w, src_h)).resize((right, src_h)), (left + src_w, top))
    return res


# -- masks ---------------------------------------------------------------------------------------------------

def _mask_l(mask: Image.Image) -> Image.Image:
    """Any mode -> "L" (alpha when the image has transparency, else luminance), not yet binarised."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
        return mask.convert("RGBA").convert("L")
    return mask.convert("L")


def _binary(mask: Image.Image) -> Image.Image:
    return _mask_l(mask).point(lambda v: 255 if v > 0 else 0)


def prepare_mask(mask: Image.Image, size: tuple[int, int], *, invert: bool, blur: int
                 ) -> tuple[Image.Image, list[str]]:
    """Binary "L" mask of `size` (painted = any value > 0), optionally inverted, then Gaussian-blurred."""
    warnings: list[str] = []
    m = _binary(mask)
    if m.size != tuple(size):
        warnings.append(f"mask was {m.width}x{m.height}, resized to the image's {size[0]}x{size[1]}")
        m = m.resize(tuple(size), NEAREST)
    if invert:
        m = m.point(lambda v: 255 - v)
    if blur > 0:
        m = m.filter(ImageFilter.GaussianBlur(radius=blur))
    return m, warnings


def mask_is_empty(mask: Image.Image) -> bool:
    return _mask_l(mask).getextrema()[1] == 0


def mask_is_full(mask: Image.Image) -> bool:
    return _mask_l(mask).getextrema()[0] == 255


# -- masked content: fill ------------------------------------------------------------------------------------

def _box_blur(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Mean over a window of 2r+1 along `axis` with zero padding."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad), axis=axis)
    c = np.moveaxis(c, axis, 0)
    return np.moveaxis(c[2 * r + 1:] - c[:-2 * r - 1], 0, axis) / (2 * r + 1)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Approximate Gaussian of `sigma` (three box passes per axis) with zero padding."""
    r = max(1, round((math.sqrt(4 * sigma * sigma + 1) - 1) / 2))
    for axis in (0, 1):
        for _ in range(3):
            a = _box_blur(a, r, axis)
    return a


def _resize_f(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize an H x W x C float32 array channel by channel (PIL "F" images)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), "F").resize(size, resample))
                     for c in range(a.shape[-1])], axis=-1)


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """`_blur`, with large sigmas run on a box-downscaled copy (sigma >= 8 there) and scaled back bilinearly."""
    k = max(1, int(sigma // 8))
    if k == 1:
        return _blur(a, sigma)
    h, w = a.shape[:2]
    small = _resize_f(a, (-(-w // k), -(-h // k)), Image.Resampling.BOX)
    return _resize_f(_blur(small, sigma / k), (w, h), Image.Resampling.BILINEAR)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 "fill": masked pixels become a smooth blend of the surrounding unmasked colours.

    Normalized convolution, coarse to fine: at each sigma the estimate blur(img * known) / blur(known) is laid
    over the previous result with weight blur(known) (how much known colour is nearby), so far from the edge
    the coarse average shows and near it the local colours. Unmasked pixels are copied back unchanged.
    """
    rgb = to_rgb(image)
    img = np.asarray(rgb, dtype=np.float64)
    m = _binary(mask)
    if m.size != rgb.size:
        m = m.resize(rgb.size, NEAREST)
    known = np.asarray(m) == 0
    if known.all():
        return rgb
    if not known.any():
        return Image.new("RGB", rgb.size, tuple(int(round(v)) for v in img.reshape(-1, 3).mean(0)))

    out = np.broadcast_to(img[known].mean(0), img.shape).copy()
    w = known.astype(np.float32)[..., None]
    stack = np.concatenate([img * w, w], axis=-1).astype(np.float32)  # premultiplied colour + weight
    for sigma in (256, 64, 16, 4, 2):
        blurred = _smooth(stack, sigma)
        num, den = blurred[..., :3], blurred[..., 3:]
        est = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)
        a = np.clip(den, 0.0, 1.0)
        out = out * (1 - a) + est * a
    out[known] = img[known]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


# -- only masked (inpaint_full_res) --------------------------------------------------------------------------

def _grow(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to length `want` around its centre, shifted to stay inside [0, limit), then clipped."""
    diff = want - (hi - lo)
    if diff > 0:
        lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return max(lo, 0), min(hi, limit)


def masked_region(mask: Image.Image, padding: int, target: tuple[int, int], image_size: tuple[int, int]) -> Box:
    """(left, top, right, bottom) of mask > 0, padded, grown to the aspect of `target`, kept inside the image.

    Like A1111 `get_crop_region` + `expand_crop_region`: a box that hits a border is shifted back inside and
    only clipped when it is larger than the image. An empty mask gives the whole image.
    """
    iw, ih = image_size
    m = _binary(mask)
    if m.size != (iw, ih):
        m = m.resize((iw, ih), NEAREST)
    bbox = m.getbbox()
    if bbox is None:
        return 0, 0, iw, ih
    l, t, r, b = bbox
    l, t, r, b = max(l - padding, 0), max(t - padding, 0), min(r + padding, iw), min(b + padding, ih)
    ratio = target[0] / target[1]
    w, h = r - l, b - t
    if w / h > ratio:
        t, b = _grow(t, b, math.ceil(w / ratio), ih)
    else:
        l, r = _grow(l, r, math.ceil(h * ratio), iw)
    return l, t, r, b


def crop_for_region(image: Image.Image, box: Box, target: tuple[int, int]) -> Image.Image:
    """Crop `box` out of `image` and resize it to `target` (LANCZOS)."""
    return to_rgb(image).crop(box).resize(tuple(target), LANCZOS)


def paste_region(base: Image.Image, generated: Image.Image, box: Box) -> Image.Image:
    """Resize `generated` back to the box's size and paste it into a copy of `base` at the box."""
    l, t, r, b = box
    out = to_rgb(base)
    out.paste(to_rgb(generated).resize((r - l, b - t), LANCZOS), (l, t))
    return out


# -- overlay -------------------------------------------------------------------------------------------------

def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """`generated` where the mask is painted, `original` elsewhere (mask values blend; 0 keeps the original)."""
    base = to_rgb(original)
    gen = to_rgb(generated)
    if gen.size != base.size:
        gen = gen.resize(base.size, LANCZOS)
    m = _mask_l(mask)
    if m.size != base.size:
        m = m.resize(base.size, NEAREST)
    return Image.composite(gen, base, m)


def changed_pixels(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Boolean H x W array: True where any RGB channel differs."""
    if a.size != b.size:
        raise ValueError(f"sizes differ: {a.size} vs {b.size}")
    return np.any(np.asarray(to_rgb(a)) != np.asarray(to_rgb(b)), axis=-1)


# -- ControlNet maps -------------------------------------------------------------------------------
def fit_control_map(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Fit a control map to the generation size: "Just resize" stretches, "Crop and resize" covers and crops,
    "Resize and fill" fits inside and pads with the map's median border colour (black for edge and pose maps).

    Maps are resized the way their content needs: black/white maps (canny edges) are re-binarised after the
    resize so thin edges stay crisp instead of fading to grey; maps of few flat colours (skeletons) use nearest
    neighbour; continuous maps (depth, normals) use Lanczos."""
    im = to_rgb(image)
    a = np.asarray(im)
    colours = np.unique(a.reshape(-1, 3)[:: max(1, a.size // 3 // 65536)], axis=0)  # sampled on big maps
    binary = len(colours) == 2 and a.min() < 16 and a.max() > 240
    resample = Image.Resampling.NEAREST if 2 < len(colours) < 200 else LANCZOS

    def resized(w: int, h: int) -> Image.Image:
        if not binary:
            return im.resize((w, h), resample)
        grey = np.asarray(im.convert("L").resize((w, h), Image.Resampling.BOX if w * h < im.width * im.height
                                                  else LANCZOS), dtype=np.float32)
        return Image.fromarray(np.where(grey > _otsu(grey), 255, 0).astype(np.uint8)).convert("RGB")

    if mode == "Just resize":
        return resized(width, height)
    k = (max if mode != "Resize and fill" else min)(width / im.width, height / im.height)
    inner = resized(max(1, round(im.width * k)), max(1, round(im.height * k)))
    left, top = (width - inner.width) // 2, (height - inner.height) // 2
    if mode != "Resize and fill":
        return inner.crop((-left, -top, -left + width, -top + height))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    out = Image.new("RGB", (width, height), tuple(int(v) for v in np.median(border, axis=0)))
    out.paste(inner, (left, top))
    return out


def _otsu(grey: np.ndarray) -> float:
    """Otsu's threshold of a greyscale array (the level that best splits it into two classes)."""
    hist = np.bincount(grey.clip(0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(np.argmax(w0 * w1 * (mu0 - mu1) ** 2))


def pixel_perfect_resolution(image_size: tuple[int, int], width: int, height: int, mode: str) -> int:
    """The preprocessor resolution at which the map needs no rescaling for this target (A1111 "Pixel Perfect")."""
    raw_w, raw_h = image_size
    k_h, k_w = height / raw_h, width / raw_w
    k = min(k_h, k_w) if mode == "Resize and fill" else max(k_h, k_w)
    return int(round(k * min(raw_w, raw_h)))
