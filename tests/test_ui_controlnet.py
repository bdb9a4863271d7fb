"""Browser tests of the ControlNet panel (txt2img and img2img) against the real server: tiny SD 1.5 model and two
tiny ControlNets made from its UNet (CPU). Same Chromium / fresh page per test as tests/test_ui.py (its `browser`
and `page` fixtures are reused); this module's own `server` has the ControlNet models. Selectors are the elem_ids
the panel sets: `txt2img-cn<i>-<field>` for unit inputs, `...-hint` for their verdicts.
"""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from tests import test_ui as ui
from tests.conftest import Server
from tests.test_ui import expect

pytestmark = pytest.mark.browser  # the real app in chromium

browser, page = ui.browser, ui.page  # tests/test_ui.py's fixtures; `server` below is this module's own

SEND = 20_000  # ms: a send-to updates ~150 components, slow in a software-rendered browser on a busy CPU
POSE = {"canvas_width": 256, "canvas_height": 256, "people": [{"pose_keypoints_2d": [
    128, 40, 1, 128, 80, 1, 98, 80, 1, 80, 120, 1, 70, 160, 1, 158, 80, 1, 176, 120, 1, 186, 160, 1,
    110, 150, 1, 105, 200, 1, 100, 245, 1, 146, 150, 1, 151, 200, 1, 156, 245, 1, 120, 34, 1, 136, 34, 1,
    112, 40, 1, 144, 40, 1]}]}


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    """The real app with the tiny SD 1.5 model and two tiny ControlNets (OpenPose and Canny by name)."""
    from tests.tiny_models import build_controlnet

    root = tmp_path_factory.mktemp("ui-controlnet")
    models = root / "models"
    shutil.copytree(tiny_store / "tiny-sd15", models / "Stable-diffusion" / "tiny-sd15")
    build_controlnet(tiny_store / "tiny-sd15", models / "ControlNet" / "tiny_sd15_openpose")
    build_controlnet(tiny_store / "tiny-sd15", models / "ControlNet" / "tiny_sd15_canny", seed=1)
    with Server(models, root / "outputs") as server:
        yield server


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A pose JSON, a broken one, and a photo-like PNG (a bright disc on a soft gradient)."""
    d = tmp_path_factory.mktemp("cn-inputs")
    (d / "pose.json").write_text(json.dumps(POSE))
    (d / "broken.json").write_text('{"people": "nobody"}')
    y, x = np.mgrid[0:128, 0:128]
    rgb = np.stack([60 + x // 4, 70 + y // 4, np.full_like(x, 90)], -1).astype(np.uint8)
    im = Image.fromarray(rgb)
    ImageDraw.Draw(im).ellipse((32, 32, 96, 96), fill=(235, 220, 60))
    im.save(d / "disc.png")
    return d


# -- helpers ----------------------------------------------------------------------------------------


def open_panel(page, prefix: str = "txt2img") -> None:
    acc = page.locator(f"#{prefix}-controlnet")
    if not acc.locator(f"#{prefix}-cn0-enabled").is_visible():
        acc.locator(".label-wrap").first.click()
    expect(page.locator(f"#{prefix}-cn0-enabled")).to_be_visible()


def cn(page, field: str, unit: int = 0, prefix: str = "txt2img"):
    return page.locator(f"#{prefix}-cn{unit}-{field}")


def cn_verdict(page, field: str, unit: int = 0, prefix: str = "txt2img"):
    return page.locator(f"#{prefix}-cn{unit}-{field}-hint [data-verdict]")


def set_cn_number(page, field: str, value, unit: int = 0, prefix: str = "txt2img") -> None:
    ui.set_number(page, f"cn{unit}-{field}", value, prefix=prefix)


def pick(page, field: str, option: str, unit: int = 0, prefix: str = "txt2img") -> None:
    cn(page, field, unit, prefix).locator("input").click()
    page.get_by_role("option", name=option, exact=True).click()


def control_type(page, name: str, unit: int = 0, prefix: str = "txt2img") -> None:
    cn(page, "control-type", unit, prefix).get_by_text(name, exact=True).click()


def upload_pose(page, path, unit: int = 0, prefix: str = "txt2img") -> None:
    with page.expect_file_chooser() as chooser:
        cn(page, "pose-json", unit, prefix).click()
    chooser.value.set_files(str(path))


def shown_image(page, locator) -> np.ndarray:
    """The pixels of the <img> a Gradio image component shows (fetched from its src)."""
    img = locator.locator("img").first
    expect(img).to_be_visible()
    src = img.get_attribute("src")
    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)


def saved(server) -> list:
    return sorted(server.outputs_dir.rglob("*.png")) if server.outputs_dir.exists() else []


# -- tests ------------------------------------------------------------------------------------------


def test_pose_json_preview_and_generate(page, server, files):
    open_panel(page)
    upload_pose(page, files / "pose.json")
    expect(cn(page, "module").locator("input")).to_have_value("none")
    expect(cn(page, "control-type").locator("input:checked")).to_have_value("OpenPose")
    expect(cn(page, "model").locator("input")).to_have_value(re.compile("^tiny_sd15_openpose"))  # matching model
    expect(cn(page, "threshold-a")).to_be_hidden()
    expect(cn_verdict(page, "model")).to_have_attribute("data-verdict", "best")

    pose = shown_image(page, cn(page, "image"))  # the skeleton: coloured limbs on black
    assert pose.shape[:2] == (256, 256)
    lit = pose.max(axis=-1) > 60
    assert 0.01 < lit.mean() < 0.3, lit.mean()
    assert (pose[lit].max(axis=-1) - pose[lit].min(axis=-1)).mean() > 80, "the limbs are not coloured"

    page.locator("#txt2img-cn0-preview-button").click()  # module none: the map is the image itself
    shown = shown_image(page, cn(page, "map"))
    assert shown.shape == pose.shape and np.abs(shown - pose).mean() < 2

    upload_pose(page, files / "broken.json")  # bad JSON: a warning, nothing else changes
    expect(page.locator(".toast-body").filter(has_text="not OpenPose JSON")).to_be_visible()
    expect(cn(page, "module").locator("input")).to_have_value("none")
    assert np.abs(shown_image(page, cn(page, "image")) - pose).mean() < 2

    before = len(saved(server))
    cn(page, "enabled").locator("input").check()
    text = ui.generate(page, prompt="a dancer on a stage", steps=2)
    page.screenshot(path="/tmp/ui-controlnet-pose.png", full_page=True)
    assert "ControlNet 0: " in text and "Module: none" in text and "tiny_sd15_openpose" in text
    assert len(saved(server)) == before + 1  # module none: no detected map saved beside the image


def test_canny_preview_shows_edges_and_thresholds_follow_the_preprocessor(page, files):
    open_panel(page)
    cn(page, "image").locator("input[type=file]").set_input_files(str(files / "disc.png"))
    expect(cn(page, "image").locator("img")).to_be_visible()
    control_type(page, "Canny")
    expect(cn(page, "module").locator("input")).to_have_value("canny")
    expect(cn(page, "model").locator("input")).to_have_value(re.compile("^tiny_sd15_canny"))
    expect(cn_verdict(page, "model")).to_have_attribute("data-verdict", "best")
    expect(cn(page, "threshold-a")).to_be_visible()
    expect(cn(page, "threshold-a")).to_contain_text("Canny low threshold")
    expect(cn(page, "threshold-b")).to_contain_text("Canny high threshold")
    expect(cn(page, "threshold-a").locator("input[type=number]")).to_have_value("100")
    expect(cn(page, "threshold-b").locator("input[type=number]")).to_have_value("200")
    expect(cn_verdict(page, "threshold-a")).to_have_attribute("data-verdict", "best")
    set_cn_number(page, "threshold-a", 20)
    expect(cn_verdict(page, "threshold-a")).to_have_attribute("data-verdict", "caution")
    set_cn_number(page, "threshold-a", 100)
    set_cn_number(page, "processor-res", 128)

    page.locator("#txt2img-cn0-preview-button").click()
    edges = shown_image(page, cn(page, "map"))
    page.locator("#txt2img-controlnet").screenshot(path="/tmp/ui-controlnet-canny.png")
    assert edges.shape[:2] == (128, 128)  # processor res = the short side
    assert (edges.max(axis=-1) - edges.min(axis=-1)).max() < 8, "a Canny map is grey"
    white = edges[..., 0] > 200
    assert ((edges[..., 0] < 30) | white).mean() > 0.97, "white edges on black"
    assert 0.01 < white.mean() < 0.2, white.mean()
    yy, xx = np.nonzero(white)  # the edges lie on the disc's outline (radius 32 around the centre)
    radius = np.hypot(xx + 0.5 - 64, yy + 0.5 - 64)
    assert np.mean(np.abs(radius - 32) < 4) > 0.9

    pick(page, "module", "none")  # no thresholds for "none": hidden
    expect(cn(page, "threshold-a")).to_be_hidden()
    expect(cn(page, "threshold-b")).to_be_hidden()


def test_bad_unit_is_reported_and_weight_verdict_follows(page, server):
    open_panel(page)
    expect(cn_verdict(page, "weight")).to_have_attribute("data-verdict", "best")
    expect(cn_verdict(page, "model")).to_have_attribute("data-verdict", "avoid")  # no model selected
    set_cn_number(page, "weight", 1.8)
    expect(cn_verdict(page, "weight")).to_have_attribute("data-verdict", "avoid")
    set_cn_number(page, "weight", 1)
    expect(cn_verdict(page, "weight")).to_have_attribute("data-verdict", "best")

    before = len(saved(server))
    cn(page, "enabled").locator("input").check()
    page.locator("#txt2img-prompt textarea").fill("a quiet harbour")
    page.locator("#txt2img-generate").click()
    message = page.locator("#txt2img-message")
    expect(message).to_contain_text("ControlNet unit 0")
    expect(message).to_contain_text("no control image")
    expect(page.locator("#txt2img-progress")).to_contain_text("Not started")  # refused before any job was queued
    assert len(saved(server)) == before  # nothing ran

    page.locator("#txt2img-cn0-preview-button").click()  # Preview without an image: a message, no crash
    expect(cn(page, "message")).to_contain_text("no control image")


def test_png_info_restores_units(page, tmp_path):
    text = ("a castle on a hill\nSteps: 4, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 64x64, Model: tiny-sd15, "
            'ControlNet 0: "Module: canny, Model: tiny_sd15_canny, Weight: 0.65, Resize Mode: Just resize, '
            'Processor Res: 256, Threshold A: 80, Threshold B: 180, Guidance Start: 0.1, Guidance End: 0.9, '
            'Pixel Perfect: True, Control Mode: My prompt is more important"')
    meta = PngInfo()
    meta.add_text("parameters", text)
    png = tmp_path / "with-controlnet.png"
    Image.new("RGB", (64, 64), (120, 80, 40)).save(png, pnginfo=meta)

    open_panel(page)
    page.locator("#txt2img-cn-units button[role=tab]").filter(has_text="Unit 1").click()
    cn(page, "enabled", 1).locator("input").check()  # not in the infotext: disabled by the restore

    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(png))
    expect(page.locator("#pnginfo-fields")).to_contain_text("ControlNet 0")
    page.locator("#pnginfo-send").click()
    expect(page.locator(".toast-body").filter(has_text="ControlNet units restored")).to_be_visible(timeout=SEND)
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a castle on a hill", timeout=SEND)
    page.locator("#txt2img-cn-units button[role=tab]").filter(has_text="Unit 0").click()
    expect(cn(page, "enabled").locator("input")).to_be_checked()
    expect(cn(page, "message")).to_contain_text("upload its control image")  # images are not in the infotext
    expect(cn(page, "module").locator("input")).to_have_value("canny")
    expect(cn(page, "control-type").locator("input:checked")).to_have_value("Canny")
    expect(cn(page, "model").locator("input")).to_have_value(re.compile("^tiny_sd15_canny"))
    expect(cn(page, "weight").locator("input[type=number]")).to_have_value("0.65")
    expect(cn(page, "threshold-a").locator("input[type=number]")).to_have_value("80")
    expect(cn(page, "threshold-b").locator("input[type=number]")).to_have_value("180")
    expect(cn(page, "processor-res").locator("input[type=number]")).to_have_value("256")
    expect(cn(page, "guidance-start").locator("input[type=number]")).to_have_value("0.1")
    expect(cn(page, "pixel-perfect").locator("input")).to_be_checked()
    expect(cn(page, "control-mode").locator("input")).to_have_value("My prompt is more important")
    expect(cn(page, "resize-mode").locator("input")).to_have_value("Just resize")
    expect(cn_verdict(page, "resize-mode")).to_have_attribute("data-verdict", "caution")
    page.locator("#txt2img-controlnet").screenshot(path="/tmp/ui-controlnet-restored.png")
    page.locator("#txt2img-cn-units button[role=tab]").filter(has_text="Unit 1").click()
    expect(cn(page, "enabled", 1).locator("input")).not_to_be_checked()

    page.get_by_role("tab", name="PNG Info").click()  # img2img too (the panel opens itself)
    page.locator("#pnginfo-send-img2img").click()
    expect(page.locator(".toast-body").filter(has_text="empty = the img2img input")).to_be_visible(timeout=SEND)
    expect(page.locator("#img2img-image img")).to_be_visible(timeout=SEND)
    expect(cn(page, "enabled", prefix="img2img").locator("input")).to_be_checked()
    expect(cn(page, "module", prefix="img2img").locator("input")).to_have_value("canny")
    expect(cn(page, "weight", prefix="img2img").locator("input[type=number]")).to_have_value("0.65")


def test_img2img_unit_uses_the_input_image(page, files):
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.locator("#img2img-image input[type=file]").set_input_files(str(files / "disc.png"))
    expect(page.locator("#img2img-image img")).to_be_visible()
    open_panel(page, "img2img")
    expect(cn(page, "image", prefix="img2img")).to_contain_text("empty = the img2img input")
    control_type(page, "Canny", prefix="img2img")
    expect(cn(page, "model", prefix="img2img").locator("input")).to_have_value(re.compile("^tiny_sd15_canny"))
    page.locator("#img2img-cn0-preview-button").click()  # no control image: the img2img input is detected
    edges = shown_image(page, cn(page, "map", prefix="img2img"))
    assert edges.shape[:2] == (512, 512)  # the default preprocessor resolution
    white = edges[..., 0] > 200
    assert 0.002 < white.mean() < 0.05 and ((edges[..., 0] < 30) | white).mean() > 0.97, white.mean()

    cn(page, "enabled", prefix="img2img").locator("input").check()
    text = ui.generate(page, prompt="a golden coin", steps=2, prefix="img2img")
    page.screenshot(path="/tmp/ui-controlnet-img2img.png", full_page=True)
    assert "ControlNet 0: " in text and "Module: canny" in text
    used = shown_image(page, cn(page, "map", prefix="img2img"))  # after the job: the map it used, at its size
    assert used.shape[:2] == (64, 64) and used[..., 0].max() > 200


def test_controlnet_tab_detect_generate_and_send_to_a_unit(page, server, files):
    """The ControlNet tab: reference -> Canny -> detected map beside it -> generate -> "→ txt2img Unit 1"."""
    ws = "controlnet"  # the workspace's unit: `controlnet-cn0-*`
    page.locator("#tabs button[role=tab]").filter(has_text=re.compile("^ControlNet$")).click()
    expect(cn(page, "enabled", prefix=ws)).to_be_hidden()  # always on: the tab is the unit
    cn(page, "image", prefix=ws).locator("input[type=file]").set_input_files(str(files / "disc.png"))
    expect(cn(page, "image", prefix=ws).locator("img")).to_be_visible()
    control_type(page, "Canny", prefix=ws)
    expect(cn(page, "module", prefix=ws).locator("input")).to_have_value("canny")
    expect(cn(page, "model", prefix=ws).locator("input")).to_have_value(re.compile("^tiny_sd15_canny"))
    set_cn_number(page, "weight", 0.8, prefix=ws)

    page.locator("#controlnet-cn0-preview-button").click()  # "Detect"
    edges = shown_image(page, cn(page, "map", prefix=ws))
    assert edges.shape[:2] == (512, 512)  # the default preprocessor resolution
    white = edges[..., 0] > 200
    assert 0.002 < white.mean() < 0.05 and ((edges[..., 0] < 30) | white).mean() > 0.97, white.mean()
    ref, shown = (page.locator(f"#controlnet-cn0-{k}").bounding_box() for k in ("image", "map"))
    assert abs(ref["y"] - shown["y"]) < 5 and shown["x"] > ref["x"] + ref["width"] / 2  # side by side

    images = lambda: [p for p in saved(server) if "controlnet" not in p.stem]  # noqa: E731  (not the maps saved)
    before = len(images())
    text = ui.generate(page, prompt="a golden coin", steps=2, prefix=ws)
    assert "ControlNet 0: " in text and "Module: canny" in text and "Weight: 0.8" in text
    assert len(images()) == before + 1
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path="/tmp/tabs-controlnet.png", full_page=True)
    sent = shown_image(page, cn(page, "map", prefix=ws))  # after the job: the map it used

    page.locator("#controlnet-send-txt2img-cn1").click()
    expect(cn(page, "enabled", 1).locator("input")).to_be_checked(timeout=SEND)  # txt2img, unit 1, panel open
    expect(cn(page, "module", 1).locator("input")).to_have_value("none")  # the map is a map already
    expect(cn(page, "model", 1).locator("input")).to_have_value(re.compile("^tiny_sd15_canny"))
    expect(cn(page, "weight", 1).locator("input[type=number]")).to_have_value("0.8")
    held = shown_image(page, cn(page, "image", 1))
    assert held.shape == sent.shape and np.abs(held - sent).mean() < 2
