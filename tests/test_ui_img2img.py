"""Browser tests of the img2img tab, the Inpaint tab (a painted mask, an uploaded mask) and the send-to buttons,
against the real server (tiny SD 1.5 model, CPU). Same shared server / Chromium / fresh page per test as
tests/test_ui.py (its fixtures are reused). Selectors are the elem_ids the UI sets: `img2img-<field>` for the
img2img tab's inputs, `inpaint-<field>` for the Inpaint tab's.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from pipelines import imageops
from tests import test_ui as ui
from tests.test_ui import GENERATION_TIMEOUT, browser, expect, page, server  # noqa: F401  (shared fixtures: one server for this module)
from tests.waiting import wait_for
from ui.img2img_tab import BRUSH_SIZE

pytestmark = pytest.mark.browser  # the real app in chromium

W, H = 192, 128  # test input; the tiny model's native size is 64
SEND = 30_000  # ms: a send-to updates a whole tab (~150 components), slow in a software-rendered browser on a busy CPU


# -- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A textured input PNG, a text file posing as an image, an oversized PNG and a mask of another size."""
    d = tmp_path_factory.mktemp("inputs")
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([40 + x * 160 // W, 40 + y * 120 // H, 90 + ((x // 8 + y // 8) % 2) * 40], -1).astype(np.uint8)
    Image.fromarray(rgb).save(d / "input.png")
    (d / "notes.png").write_text("not an image at all")
    Image.new("RGB", (4200, 4100), (90, 120, 150)).save(d / "huge.png")
    mask = Image.new("L", (W // 2, H // 2), 0)  # half size: the engine resizes it and says so
    mask.paste(255, (W // 4, H // 4, W // 4 + 24, H // 4 + 16))
    mask.save(d / "mask.png")
    return d


def set_number(page, field: str, value, prefix: str = "img2img") -> None:
    ui.set_number(page, field, value, prefix=prefix)


def open_mode(page, label: str) -> None:
    """"img2img": the img2img tab; "Inpaint" / "Inpaint upload": that sub-tab of the Inpaint tab."""
    if label == "img2img":
        page.locator("#tabs button[role=tab]").filter(has_text=re.compile("^img2img$")).click()
        return
    page.locator("#tabs button[role=tab]").filter(has_text=re.compile("^Inpaint$")).first.click()
    page.locator("#inpaint-modes button[role=tab]").filter(has_text=re.compile(f"^{label}$")).click()


def generate(page, prompt: str = "a stone bridge over a river", steps: int = 3, prefix: str = "img2img") -> str:
    return ui.generate(page, prompt, steps, prefix=prefix)


def newest(folder) -> list:
    return sorted(folder.rglob("*.png"), key=lambda p: p.stat().st_mtime)


def editor_position(page, size: tuple[int, int]) -> dict:
    """Where the editor's image of `size` lies in the canvas: it is shown centred in the canvas at the displayed
    zoom (read once the fit-to-canvas zoom has settled: it changes while the image texture loads). Offsets from the
    canvas' corner, as the page may scroll before the stroke is drawn (`paint` finds the canvas on screen then)."""
    expect(page.locator("#inpaint-editor").get_by_text("Upload or paste an image")).to_be_hidden(timeout=15_000)
    zoom = page.locator("#inpaint-editor").get_by_text(re.compile(r"^\d+%$"))
    expect(zoom).to_be_visible()
    seen: list[str] = []

    def settled() -> bool:  # the same zoom read four times in a row, 0.25 s apart
        seen.append(zoom.inner_text())
        return len(seen) >= 4 and len(set(seen[-4:])) == 1

    wait_for(settled, timeout=30, interval=0.25, what="the editor's zoom to settle")
    scale = int(seen[-1].rstrip("%")) / 100
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    return dict(left=box["width"] / 2 - size[0] * scale / 2, top=box["height"] / 2 - size[1] * scale / 2,
                scale=scale)


def load_editor(page, path) -> dict:
    """Upload into the inpaint editor; returns where the image lies on screen (see editor_position).

    The editor's canvas initialises asynchronously after its tab first shows; a file dropped in before that
    (sooner than any user could) is ignored, so the upload is repeated until the image is in."""
    editor = page.locator("#inpaint-editor")
    placeholder = editor.get_by_text("Upload or paste an image")
    expect(placeholder).to_be_visible()  # the editor is mounted and empty
    for _ in range(6):  # a loaded CI machine can take several tries
        editor.locator("input[type=file]").set_input_files(str(path))
        try:
            expect(placeholder).to_be_hidden(timeout=8_000)
            break
        except AssertionError:
            continue
    with Image.open(path) as im:
        return editor_position(page, im.size)


def paint(page, where: dict, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A brush stroke between two points in image pixels, drawn with the mouse (the editor joins the points;
    few moves, as each one re-renders the canvas, which is slow in a software-rendered headless browser)."""
    canvas = page.locator("#inpaint-editor canvas").first
    canvas.scroll_into_view_if_needed()  # mouse events land only inside the viewport
    box = canvas.bounding_box()
    to_screen = lambda x, y: (box["x"] + where["left"] + x * where["scale"],  # noqa: E731
                              box["y"] + where["top"] + y * where["scale"])
    page.mouse.move(*to_screen(*start))
    page.mouse.down()
    page.mouse.move(*to_screen((start[0] + end[0]) / 2, (start[1] + end[1]) / 2))
    page.mouse.move(*to_screen(*end))
    page.mouse.up()


def distance_to_segment(shape: tuple[int, int], a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]] + 0.5  # pixel centres
    ax, ay, bx, by = *a, *b
    t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    return np.hypot(x - (ax + t * (bx - ax)), y - (ay + t * (by - ay)))


# -- tests ------------------------------------------------------------------------------------------


def test_img2img_bad_inputs_then_generate(page, server, inputs):
    open_mode(page, "img2img")
    message = page.locator("#img2img-message")
    page.locator("#img2img-prompt textarea").fill("a stone bridge over a river")

    page.locator("#img2img-generate").click()  # nothing uploaded yet
    expect(message).to_contain_text("No input image")

    page.locator("#img2img-image input[type=file]").set_input_files(str(inputs / "notes.png"))
    expect(message).to_contain_text("'notes.png' is not an image")
    page.locator("#img2img-generate").click()
    expect(message).to_contain_text("is not an image")

    page.locator("#img2img-image input[type=file]").set_input_files(str(inputs / "huge.png"))
    expect(message).to_contain_text("4200x4100")
    page.locator("#img2img-generate").click()
    expect(message).to_contain_text("megapixels")
    expect(page.locator("#img2img-prompt textarea")).to_have_value("a stone bridge over a river")  # nothing lost

    # a real image: the size follows its aspect ratio near the model's native size, and it generates
    page.locator("#img2img-image input[type=file]").set_input_files(str(inputs / "input.png"))
    dw, dh = imageops.default_size((W, H), 64)
    expect(page.locator("#img2img-width input[type=number]")).to_have_value(str(dw))
    expect(page.locator("#img2img-height input[type=number]")).to_have_value(str(dh))
    expect(message).to_be_hidden()
    expect(page.locator("#img2img-denoising-strength-hint")).to_contain_text("keeps structure")  # img2img bands
    text = generate(page, steps=4)
    assert text.startswith("a stone bridge over a river")
    assert f"Size: {dw}x{dh}" in text and "Denoising strength: 0.4" in text
    saved = newest(server.outputs_dir / "img2img")
    assert saved, "no PNG saved under outputs/img2img"
    with Image.open(saved[-1]) as im:
        assert im.size == (dw, dh)
    expect(page.locator("#img2img-saved")).to_contain_text("img2img")

    # "Resize by": the output is the input scaled
    page.locator("#img2img-resize-choice label").filter(has_text="Resize by").click()
    set_number(page, "scale-by", 0.5)
    expect(page.locator("#img2img-size-note")).to_contain_text(f"{W // 2}×{H // 2}")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path="/tmp/ui-img2img.png", full_page=True)


def test_inpaint_changes_only_pixels_under_the_stroke(page, server, inputs):
    open_mode(page, "Inpaint")
    message = page.locator("#inpaint-message")
    where = load_editor(page, inputs / "input.png")
    dw, dh = imageops.default_size((W, H), 64)
    expect(page.locator("#inpaint-width input[type=number]")).to_have_value(str(dw))  # sized from the upload
    expect(page.locator("#inpaint-denoising-strength-hint")).to_contain_text("touch-ups")  # inpaint bands
    set_number(page, "width", W, "inpaint")  # output at the input's own size: untouched pixels compare 1:1
    set_number(page, "height", H, "inpaint")
    set_number(page, "denoising-strength", 0.75, "inpaint")

    page.locator("#inpaint-prompt textarea").fill("a red flower")
    page.locator("#inpaint-generate").click()  # nothing painted yet
    expect(message).to_contain_text("mask is empty")
    before = len(newest(server.outputs_dir / "inpaint")) if (server.outputs_dir / "inpaint").exists() else 0

    a, b = (W * 0.4, H * 0.5), (W * 0.6, H * 0.5)
    paint(page, where, a, b)
    text = generate(page, prompt="a red flower", steps=4, prefix="inpaint")
    expect(message).to_be_hidden()
    assert f"Size: {W}x{H}" in text and "Mask blur: 4" in text
    saved = newest(server.outputs_dir / "inpaint")
    assert len(saved) == before + 1, "no PNG saved under outputs/inpaint"
    page.screenshot(path="/tmp/ui-inpaint.png", full_page=True)

    with Image.open(saved[-1]) as out, Image.open(inputs / "input.png") as src:
        changed = imageops.changed_pixels(src, out)
    dist = distance_to_segment((H, W), a, b)
    reach = BRUSH_SIZE + 3 * 4 + 4  # brush radius + the blur's reach (sigma 4) + a few px for the stroke's edge
    assert changed.any(), "nothing was repainted"
    assert not changed[dist > reach].any(), (
        f"{int(changed[dist > reach].sum())} changed pixels farther than {reach}px from the stroke")
    core = dist < BRUSH_SIZE - 4
    assert changed[core].mean() > 0.5, "the stroke's own area was mostly left unchanged"


def test_inpaint_upload_with_a_mask_of_another_size(page, server, inputs):
    open_mode(page, "Inpaint upload")
    page.locator("#inpaint-upload-image input[type=file]").set_input_files(str(inputs / "input.png"))
    message = page.locator("#inpaint-message")
    page.locator("#inpaint-prompt textarea").fill("a window")
    page.locator("#inpaint-generate").click()
    expect(message).to_contain_text("No mask")

    page.locator("#inpaint-upload-mask input[type=file]").set_input_files(str(inputs / "mask.png"))
    expect(page.locator("#inpaint-width input[type=number]")).to_have_value(str(imageops.default_size((W, H), 64)[0]))
    generate(page, prompt="a window", steps=2, prefix="inpaint")
    expect(message).to_contain_text(f"mask was {W // 2}x{H // 2}, resized")  # the engine's warning, shown
    expect(message.locator("[data-kind=warning]")).to_be_visible()


def test_send_txt2img_result_to_inpaint_and_img2img(page, server):
    page.locator("#txt2img-prompt textarea").fill("a lighthouse on a cliff")
    box = page.locator("#txt2img-steps input[type=number]")
    box.fill("2")
    box.press("Enter")
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    info = page.locator("#txt2img-info textarea")
    expect(info).to_have_value(re.compile(r"Seed: \d+"))
    seed = re.search(r"Seed: (\d+)", info.input_value()).group(1)

    page.locator("#txt2img-send-inpaint").click()  # opens the Inpaint tab
    expect(page.locator("#inpaint-editor canvas").first).to_be_visible(timeout=SEND)
    expect(page.locator("#inpaint-prompt textarea")).to_have_value("a lighthouse on a cliff")
    expect(page.locator("#inpaint-seed input")).to_have_value(seed)
    expect(page.locator("#inpaint-steps input[type=number]")).to_have_value("2")
    expect(page.locator("#inpaint-width input[type=number]")).to_have_value("64")
    expect(page.locator("#inpaint-denoising-strength-hint")).to_contain_text("touch-ups")  # inpaint bands
    expect(page.locator("#inpaint-mask-settings")).to_be_visible()

    # the image really is in the editor: paint on it and inpaint at its size
    where = editor_position(page, (64, 64))
    paint(page, where, (16, 32), (48, 32))
    text = generate(page, prompt="a lighthouse on a cliff", steps=2, prefix="inpaint")
    assert f"Seed: {seed}" in text and "Size: 64x64" in text

    # and the inpaint result goes on to img2img with its parameters
    page.locator("#inpaint-send-img2img").click()
    expect(page.locator("#img2img-image img")).to_be_visible(timeout=SEND)
    expect(page.locator("#inpaint-mask-settings")).to_be_hidden()
    expect(page.locator("#img2img-denoising-strength-hint")).to_contain_text("keeps structure")
    expect(page.locator("#img2img-seed input")).to_have_value(seed)


def test_png_info_sends_image_to_img2img(page, server):
    pngs = newest(server.outputs_dir)
    if not pngs:
        pytest.skip("needs an image generated by an earlier test")
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(pngs[-1]))
    params = page.locator("#pnginfo-text textarea")
    expect(params).to_have_value(re.compile(r"Steps: \d+.*Seed: \d+", re.S))
    prompt = params.input_value().split("\n")[0]
    page.locator("#pnginfo-send-img2img").click()
    expect(page.locator("#img2img-image img")).to_be_visible()
    expect(page.locator("#img2img-prompt textarea")).to_have_value(prompt)


def test_img2img_inpaint_button_opens_the_image_in_the_inpaint_tab(page, server, inputs):
    open_mode(page, "img2img")
    page.locator("#img2img-prompt textarea").fill("a stone bridge at dusk")
    page.locator("#img2img-to-inpaint").click()  # nothing uploaded: a warning, no switch
    expect(page.locator(".toast-body").filter(has_text="Upload an image first")).to_be_visible()
    page.locator("#img2img-image input[type=file]").set_input_files(str(inputs / "input.png"))
    expect(page.locator("#img2img-image img")).to_be_visible()
    page.locator("#img2img-to-inpaint").click()
    editor = page.locator("#inpaint-editor")
    expect(editor.get_by_text("Upload or paste an image")).to_be_hidden(timeout=SEND)  # the image is in the editor
    expect(page.locator("#inpaint-prompt textarea")).to_have_value("a stone bridge at dusk")
    expect(page.locator("#inpaint-width input[type=number]")).to_have_value(str(imageops.default_size((W, H), 64)[0]))
    editor_position(page, (W, H))  # shown at its own size
