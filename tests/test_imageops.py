"""Pixel-side img2img / inpainting operations on small synthetic images (gradients, drawn shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import imageops as io

pytestmark = pytest.mark.unit  # pure Python, no model


def gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(30, 225, w)[None, :].repeat(h, 0)
    y = np.linspace(30, 225, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8), "RGB")


def rect_mask(size, box) -> Image.Image:
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def arr(im) -> np.ndarray:
    return np.asarray(im).astype(int)


# -- sizes ---------------------------------------------------------------------------------------------------

def test_snap8():
    assert [io.snap8(v) for v in (0, 63, 99, 100, 103.9, 725)] == [64, 64, 96, 104, 104, 728]


@pytest.mark.parametrize("size,native", [((1000, 500), 512), ((500, 1000), 512), ((640, 480), 768),
                                         ((1920, 1080), 1024), ((333, 777), 512)])
def test_default_size_keeps_aspect_and_area(size, native):
    w, h = io.default_size(size, native)
    assert w % 8 == 0 and h % 8 == 0
    assert abs(w / h - size[0] / size[1]) / (size[0] / size[1]) < 0.03
    assert abs(w * h - native * native) / native**2 < 0.05


def test_default_size_square_is_native():
    assert io.default_size((300, 300), 512) == (512, 512)
    assert io.default_size((2048, 2048), 1024) == (1024, 1024)


# -- resize modes --------------------------------------------------------------------------------------------

def test_resize_modes_order():
    assert io.RESIZE_MODES == ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


@pytest.mark.parametrize("mode", io.RESIZE_MODES)
@pytest.mark.parametrize("src,dst", [((400, 200), (256, 256)), ((200, 400), (256, 128)), ((100, 100), (96, 160))])
def test_resize_output_size_and_mode(mode, src, dst):
    out = io.resize_image(gradient(*src).convert("RGBA"), *dst, mode)
    assert out.size == dst and out.mode == "RGB"


def test_resize_unknown_mode():
    with pytest.raises(ValueError, match="Just resize"):
        io.resize_image(gradient(8, 8), 8, 8, "Stretch")


def circle_ratio(im: Image.Image) -> float:
    red = arr(im)
    ys, xs = np.nonzero((red[..., 0] > 200) & (red[..., 1] < 60))
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


def test_crop_and_resize_keeps_center_and_aspect():
    im = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(im).ellipse((140, 40, 260, 160), fill=(255, 0, 0))
    out = io.resize_image(im, 256, 256, "Crop and resize")
    assert circle_ratio(out) == pytest.approx(1.0, abs=0.03)
    assert tuple(out.getpixel((128, 128))) == (255, 0, 0)
    # the crop takes the centre 200x200, scaled x1.28: the circle is ~154 px wide, centred
    assert circle_ratio(io.resize_image(im, 256, 256, "Just resize")) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("src,dst", [((400, 200), (256, 256)), ((200, 400), (256, 256)), ((300, 100), (200, 101))])
def test_resize_and_fill_extends_edges(src, dst):
    im = Image.new("RGB", src, (0, 0, 255))
    half = (0, src[1] // 2, src[0], src[1]) if src[0] > src[1] else (src[0] // 2, 0, src[0], src[1])
    ImageDraw.Draw(im).rectangle(half, fill=(0, 255, 0))  # blue top/left half, green bottom/right half
    out = arr(io.resize_image(im, *dst, "Resize and fill"))
    assert (out.sum(-1) > 100).all()  # no black bars anywhere
    if src[0] > src[1]:
        first, last = out[0], out[-1]
    else:
        first, last = out[:, 0], out[:, -1]
    assert (first[:, 2] > 200).all() and (first[:, 1] < 50).all()  # blue band
    assert (last[:, 1] > 200).all() and (last[:, 2] < 50).all()  # green band


def test_resize_and_fill_center_matches_fit():
    im = gradient(400, 200)
    out = io.resize_image(im, 256, 256, "Resize and fill")
    fit = im.resize((256, 128), Image.Resampling.LANCZOS)
    assert np.array_equal(arr(out)[64:192], arr(fit))


# -- masks ---------------------------------------------------------------------------------------------------

def test_prepare_mask_binarises_and_warns_on_resize():
    m = Image.new("L", (100, 80), 0)
    ImageDraw.Draw(m).rectangle((10, 10, 40, 40), fill=3)  # faint but painted
    out, warnings = io.prepare_mask(m, (128, 128), invert=False, blur=0)
    assert out.mode == "L" and out.size == (128, 128)
    assert set(np.unique(arr(out))) == {0, 255}
    assert warnings == ["mask was 100x80, resized to the image's 128x128"]
    _, none = io.prepare_mask(m, (100, 80), invert=False, blur=0)
    assert none == []


def test_prepare_mask_invert():
    m = rect_mask((64, 64), (16, 16, 47, 47))
    out, _ = io.prepare_mask(m, (64, 64), invert=True, blur=0)
    a = arr(out)
    assert a[32, 32] == 0 and a[0, 0] == 255 and (a == 255 - arr(m)).all()


@pytest.mark.parametrize("blur", [2, 4, 8])
def test_prepare_mask_blur_spread(blur):
    m = rect_mask((128, 128), (32, 0, 95, 127))  # vertical stroke, columns 32..95
    row = arr(io.prepare_mask(m, (128, 128), invert=False, blur=blur)[0])[64]
    nonzero = np.nonzero(row)[0]
    assert 32 - nonzero.min() <= 3 * blur + 1 and nonzero.max() - 95 <= 3 * blur + 1
    assert row[32 - blur] > 0 and row[95 + blur] > 0  # it does spread about the radius
    assert 96 < row[32] < 160 and row[64] == 255  # the edge sits at ~50 %, the middle stays painted


def test_rgba_semi_transparent_stroke_counts():
    m = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(m).rectangle((10, 10, 20, 20), fill=(30, 10, 10, 40))  # dark, faint brush
    out, _ = io.prepare_mask(m, (64, 64), invert=False, blur=0)
    a = arr(out)
    assert (a[10:21, 10:21] == 255).all() and a.sum() == 255 * 121


def test_rgba_uniform_rgb_uses_alpha():
    m = Image.new("RGBA", (64, 64), (255, 255, 255, 0))  # white everywhere, strokes live in alpha
    ImageDraw.Draw(m).rectangle((30, 0, 40, 63), fill=(255, 255, 255, 255))
    out, _ = io.prepare_mask(m, (64, 64), invert=False, blur=0)
    assert (arr(out) == arr(rect_mask((64, 64), (30, 0, 40, 63)))).all()


def test_opaque_rgba_uses_luminance():
    m = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    ImageDraw.Draw(m).rectangle((0, 0, 7, 7), fill=(255, 255, 255, 255))
    out, _ = io.prepare_mask(m, (32, 32), invert=False, blur=0)
    assert (arr(out) == arr(rect_mask((32, 32), (0, 0, 7, 7)))).all()


def test_mask_empty_full():
    assert io.mask_is_empty(Image.new("L", (8, 8), 0))
    assert not io.mask_is_empty(rect_mask((8, 8), (3, 3, 3, 3)))
    assert io.mask_is_full(Image.new("L", (8, 8), 255))
    assert not io.mask_is_full(Image.new("L", (8, 8), 254))


# -- fill ----------------------------------------------------------------------------------------------------

def test_fill_masked_red_stays_red():
    im = Image.new("RGB", (96, 96), (200, 20, 20))
    ImageDraw.Draw(im).rectangle((30, 30, 65, 65), fill=(0, 0, 255))  # content to be replaced
    m = rect_mask((96, 96), (25, 25, 70, 70))
    out = arr(io.fill_masked(im, m))
    assert (np.abs(out[25:71, 25:71] - [200, 20, 20]) <= 1).all()
    keep = arr(m) == 0
    assert (out[keep] == arr(im)[keep]).all()


def test_fill_masked_blends_surroundings():
    a = np.zeros((64, 128, 3), np.uint8)
    a[:, :64] = (0, 0, 255)
    a[:, 64:] = (255, 255, 0)
    im = Image.fromarray(a)
    m = rect_mask((128, 64), (40, 0, 87, 63))  # full-height band across the colour boundary
    out = arr(io.fill_masked(im, m))
    unmasked = arr(m) == 0
    assert (out[unmasked] == a[unmasked]).all()
    assert out[32, 42, 2] > 150 and out[32, 85, 0] > 150  # each side leans to its neighbour
    row = out[32, 40:88, 0]
    assert (np.diff(row) >= -1).all() and np.abs(np.diff(row)).max() < 40  # smooth ramp, no step


def test_fill_masked_full_mask_is_mean():
    im = gradient(40, 30)
    out = arr(io.fill_masked(im, Image.new("L", (40, 30), 255)))
    mean = np.round(arr(im).reshape(-1, 3).mean(0))
    assert (out == mean).all()


# -- only masked ---------------------------------------------------------------------------------------------

def test_masked_region_padding():
    m = rect_mask((200, 200), (90, 90, 109, 109))
    assert io.masked_region(m, 0, (64, 64), (200, 200)) == (90, 90, 110, 110)
    assert io.masked_region(m, 10, (64, 64), (200, 200)) == (80, 80, 120, 120)


def test_masked_region_expands_to_target_aspect():
    m = rect_mask((400, 400), (190, 180, 209, 219))  # 20 x 40
    l, t, r, b = io.masked_region(m, 0, (512, 256), (400, 400))
    assert (r - l) / (b - t) == pytest.approx(2.0, abs=0.05)
    assert (t, b) == (180, 220) and l <= 190 and r >= 210  # grown, never shrunk
    assert (l + r) / 2 == pytest.approx(200, abs=1)


def test_masked_region_clamps_at_borders():
    m = rect_mask((300, 200), (0, 0, 19, 9))  # top-left corner
    l, t, r, b = io.masked_region(m, 8, (128, 128), (300, 200))
    assert (l, t) == (0, 0) and r - l == b - t and r >= 28 and b >= 18  # shifted inside, still square
    wide = io.masked_region(rect_mask((300, 200), (0, 0, 299, 49)), 0, (64, 128), (300, 200))
    assert wide == (0, 0, 300, 200)  # would need 600 px of height: clipped to the image


def test_masked_region_empty_mask_is_whole_image():
    assert io.masked_region(Image.new("L", (50, 40)), 4, (64, 64), (50, 40)) == (0, 0, 50, 40)


def test_crop_paste_round_trip_puts_content_back():
    base = Image.new("RGB", (320, 240), (128, 128, 128))
    ImageDraw.Draw(base).rectangle((200, 60, 219, 79), fill=(255, 0, 0))  # the marker
    m = rect_mask((320, 240), (200, 60, 219, 79))
    box = io.masked_region(m, 16, (128, 128), base.size)
    crop = io.crop_for_region(base, box, (128, 128))
    assert crop.size == (128, 128)
    generated = Image.fromarray(arr(crop)[..., [1, 0, 2]].astype(np.uint8))  # marker turns green
    out = arr(io.paste_region(base, generated, box))
    assert (np.abs(out[62:78, 202:218] - [0, 255, 0]) <= 8).all()
    green = (out[..., 1] > 200) & (out[..., 0] < 60)
    ys, xs = np.nonzero(green)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (200, 219, 60, 79)
    outside = np.ones(out.shape[:2], bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert (out[outside] == arr(base)[outside]).all()


# -- composite -----------------------------------------------------------------------------------------------

def test_composite_outside_identical_inside_generated():
    original = gradient(128, 96)
    generated = Image.new("RGB", (128, 96), (10, 200, 30))
    mask, _ = io.prepare_mask(rect_mask((128, 96), (40, 30, 80, 60)), (128, 96), invert=False, blur=4)
    out = io.composite(original, generated, mask)
    m = arr(mask)
    assert not io.changed_pixels(out, original)[m == 0].any()
    assert (arr(out)[m == 255] == [10, 200, 30]).all()
    assert io.changed_pixels(out, original)[(m > 0) & (m < 255)].any()  # the blurred fringe blends


def test_composite_resizes_generated():
    original = gradient(100, 60)
    generated = Image.new("RGB", (64, 64), (0, 0, 0))
    mask = rect_mask((100, 60), (0, 0, 49, 59))
    out = io.composite(original, generated, mask)
    changed = io.changed_pixels(out, original)
    assert out.size == (100, 60) and changed[:, :50].all() and not changed[:, 50:].any()


def test_changed_pixels():
    a = Image.new("RGB", (4, 3), (1, 2, 3))
    b = a.copy()
    b.putpixel((2, 1), (1, 2, 4))
    diff = io.changed_pixels(a, b)
    assert diff.shape == (3, 4) and diff.sum() == 1 and diff[1, 2]
    with pytest.raises(ValueError):
        io.changed_pixels(a, Image.new("RGB", (3, 3)))


def test_fit_control_map_keeps_thin_edges_crisp_and_pads_with_the_border_colour():
    from PIL import ImageDraw

    from pipelines.imageops import fit_control_map

    edges = Image.new("RGB", (512, 512))
    ImageDraw.Draw(edges).ellipse([128, 128, 384, 384], outline="white", width=1)  # a 1-px canny-like line
    small = np.asarray(fit_control_map(edges, 64, 64, "Crop and resize"))
    assert set(np.unique(small)) == {0, 255}  # still black and white, not faded to grey
    ys, xs = np.nonzero(small[..., 0])
    radius = np.hypot(ys - 31.5, xs - 31.5)
    assert len(ys) > 60 and np.all(np.abs(radius - 16) < 2.5)  # on the circle
    wide = np.asarray(fit_control_map(edges, 96, 64, "Resize and fill"))
    assert wide.shape == (64, 96, 3) and wide[:, :10].max() == 0  # padded with the (black) border colour
    depth = Image.linear_gradient("L").convert("RGB")  # continuous map: smooth resize, many levels kept
    assert len(np.unique(np.asarray(fit_control_map(depth, 64, 64, "Just resize")))) > 50
    grey = Image.new("RGB", (64, 32), (90, 90, 90))
    assert np.asarray(fit_control_map(grey, 64, 64, "Resize and fill"))[0, 0].tolist() == [90, 90, 90]
