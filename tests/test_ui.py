"""Browser tests of the web UI against the real server (tiny SD 1.5 model, CPU).

One server and one Chromium for the module; each test gets a fresh page (a fresh Gradio session).
Selectors are the elem_ids the UI sets: `txt2img-<field>` for inputs, `txt2img-<field>-hint` for verdicts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import Server

pytestmark = pytest.mark.browser  # the real app in chromium

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
expect.set_options(timeout=15_000)  # a loaded 2-core machine renders the page slowly; conditions, not sleeps

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
GENERATION_TIMEOUT = 90_000  # ms; the tiny model on a busy 2-core CPU


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    """The real app (same launcher as conftest's start_server), shared by the browser tests of this module."""
    root = tmp_path_factory.mktemp("ui")
    models = root / "models"
    shutil.copytree(tiny_store / "tiny-sd15", models / "Stable-diffusion" / "tiny-sd15")
    with Server(models, root / "outputs", "--hub-model", "example/offline-model") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium at /usr/bin/chromium")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(server, browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.goto(server.url)
    expect(pg.locator("#txt2img-generate")).to_be_visible(timeout=60_000)
    expect(pg.locator("#checkpoint input")).to_have_value(re.compile("tiny-sd15"))
    yield pg
    context.close()


# -- helpers ----------------------------------------------------------------------------------------


def set_number(page, field: str, value, prefix: str = "txt2img") -> None:
    """Type into a slider's / number's box and commit it (Enter + blur), like a user would."""
    box = page.locator(f"#{prefix}-{field} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def verdict(page, field: str):
    return page.locator(f"#txt2img-{field}-hint [data-verdict]")


def generate(page, prompt: str = "a red apple on a wooden table", steps: int = 3, prefix: str = "txt2img") -> str:
    """Generate one image in the tab `prefix`; returns the generation info text."""
    page.locator(f"#{prefix}-prompt textarea").fill(prompt)
    set_number(page, "steps", steps, prefix=prefix)
    page.locator(f"#{prefix}-generate").click()
    expect(page.locator(f"#{prefix}-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(page.locator(f"#{prefix}-gallery img").first).to_be_visible()
    info = page.locator(f"#{prefix}-info textarea")
    expect(info).to_have_value(re.compile(r"Steps: \d+.*Seed: \d+", re.S))
    return info.input_value()


# -- tests ------------------------------------------------------------------------------------------


def test_generate_streams_into_gallery_and_seed_buttons(page, server):
    text = generate(page, steps=3)
    assert text.startswith("a red apple on a wooden table")
    assert "Steps: 3" in text and "Model: tiny-sd15" in text
    pngs = list((server.outputs_dir / "txt2img").rglob("*.png"))
    assert pngs, "no PNG saved under outputs/txt2img"
    expect(page.locator("#txt2img-progress")).to_contain_text("Done: 1 image")
    expect(page.locator("#txt2img-saved")).to_contain_text(".png")
    page.screenshot(path="/tmp/ui-txt2img.png", full_page=True)

    seed = re.search(r"Seed: (\d+)", text).group(1)
    seed_box = page.locator("#txt2img-seed input")
    page.locator("#txt2img-reuse-seed").click()
    expect(seed_box).to_have_value(seed)
    expect(verdict(page, "seed")).to_have_attribute("data-verdict", "best")  # fixed seed: reproducible
    page.locator("#txt2img-random-seed").click()
    expect(seed_box).to_have_value("-1")
    expect(verdict(page, "seed")).to_have_attribute("data-verdict", "ok")


def test_live_verdicts_follow_every_change(page):
    steps = verdict(page, "steps")
    expect(steps).to_have_attribute("data-verdict", "best")
    expect(page.locator("#txt2img-steps-hint")).to_contain_text("Recommended: 20-35")
    set_number(page, "steps", 5)
    expect(steps).to_have_attribute("data-verdict", "avoid")
    set_number(page, "steps", 25)
    expect(steps).to_have_attribute("data-verdict", "best")

    set_number(page, "cfg-scale", 20)
    expect(verdict(page, "cfg-scale")).to_have_attribute("data-verdict", "avoid")

    # size verdicts use the model's native size (64 px for the tiny model) and look at both sides
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("64")
    set_number(page, "width", 128)
    expect(verdict(page, "width")).to_have_attribute("data-verdict", "caution")
    set_number(page, "height", 128)  # both sides well above native: both verdicts turn to avoid
    expect(verdict(page, "height")).to_have_attribute("data-verdict", "avoid")
    expect(verdict(page, "width")).to_have_attribute("data-verdict", "avoid")
    expect(page.locator("#txt2img-width-hint")).to_contain_text("both sides")

    page.locator("#txt2img-prompt textarea").fill("a cat, oil painting")
    expect(verdict(page, "prompt")).to_have_attribute("data-verdict", "best")
    expect(page.locator("#txt2img-prompt-hint")).to_contain_text("tokens")


def test_invalid_request_shows_message_and_page_keeps_working(page):
    page.locator("#txt2img-prompt textarea").fill("a lighthouse at dusk")
    set_number(page, "width", 2048)
    set_number(page, "height", 2048)
    set_number(page, "batch-size", 8)
    expect(verdict(page, "width")).to_have_attribute("data-verdict", "avoid")
    page.locator("#txt2img-generate").click()
    message = page.locator("#txt2img-message")
    expect(message).to_contain_text("too large")
    expect(message).to_contain_text("2048x2048")
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a lighthouse at dusk")  # nothing lost

    for field, value in (("width", 64), ("height", 64), ("batch-size", 1)):
        set_number(page, field, value)
    text = generate(page, prompt="a lighthouse at dusk", steps=2)
    assert "Size: 64x64" in text
    expect(message).to_be_hidden()


def test_interrupt_keeps_finished_images(page):
    page.locator("#txt2img-prompt textarea").fill("a small boat")
    # long enough (40 images) that the interrupt lands mid-job even on a fast machine
    set_number(page, "steps", 20)
    set_number(page, "n-iter", 40)
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-preview img")).to_be_visible(timeout=GENERATION_TIMEOUT)  # live preview
    expect(page.locator("#txt2img-progress")).to_contain_text(re.compile(r"Step \d+/800"))
    expect(page.locator("#txt2img-gallery img").first).to_be_visible(timeout=GENERATION_TIMEOUT)
    page.locator("#txt2img-interrupt").click(no_wait_after=True)  # a busy page: no navigation to wait for
    progress = page.locator("#txt2img-progress [data-state=failed]")
    expect(progress).to_contain_text(re.compile(r"Interrupted .*: \d+ image\(s\) kept"), timeout=30_000)
    kept = int(re.search(r"(\d+) image\(s\) kept", progress.inner_text()).group(1))
    assert 1 <= kept < 40
    assert page.locator("#txt2img-gallery img").count() >= 1
    expect(page.locator("#txt2img-info textarea")).to_have_value(re.compile("Seed: "))


def test_png_info_sends_parameters_to_txt2img(page, server):
    pngs = sorted((server.outputs_dir / "txt2img").rglob("*.png"))
    if not pngs:  # run on its own: make one first
        generate(page, steps=2)
        pngs = sorted((server.outputs_dir / "txt2img").rglob("*.png"))
    png = pngs[-1]
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(png))
    params = page.locator("#pnginfo-text textarea")
    expect(params).to_have_value(re.compile(r"Steps: \d+.*Seed: \d+", re.S))
    stored = params.input_value()
    prompt = stored.split("\n")[0]
    expect(page.locator("#pnginfo-fields")).to_contain_text("Sampling steps")

    page.locator("#pnginfo-send").click()
    expect(page.locator("#txt2img-generate")).to_be_visible()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value(prompt)
    steps = re.search(r"Steps: (\d+)", stored).group(1)
    seed = re.search(r"Seed: (\d+)", stored).group(1)
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value(steps)
    expect(page.locator("#txt2img-seed input")).to_have_value(seed)


def test_parameters_tab_and_model_errors(page):
    page.get_by_role("tab", name="Parameters").click()
    ref = page.locator("#params-reference")
    expect(ref).to_contain_text("Sampling steps")
    expect(ref).to_contain_text("best quality per second")
    expect(ref).to_contain_text("native 64 px")

    # a hub model cannot be fetched offline: the load job's error comes back as a warning toast
    page.locator("#checkpoint input").click()
    page.get_by_role("option").filter(has_text="offline-model").click()
    expect(page.locator(".toast-body").filter(has_text="offline-model")).to_be_visible(timeout=60_000)
    expect(page.locator("#status-line")).to_contain_text("failed")
    page.locator("#checkpoint input").click()  # the current model is shared: give it back
    page.get_by_role("option").filter(has_text="tiny-sd15").click()
    expect(page.locator("#status-line")).to_contain_text("loaded", timeout=60_000)


def test_mission_tabs_are_top_level_and_open(page):
    """txt2img · img2img · Inpaint · ControlNet · Upscale, then PNG Info and Parameters, each opening its tab."""
    names = ["txt2img", "img2img", "Inpaint", "ControlNet", "Upscale", "PNG Info", "Parameters"]
    top = page.locator("#tabs [role=tablist]").first.locator("button[role=tab]")  # nested tab bars come later
    expect(top).to_have_count(len(names))
    assert [t.strip() for t in top.all_inner_texts()] == names
    shown = {"txt2img": "#txt2img-generate", "img2img": "#img2img-image", "Inpaint": "#inpaint-editor",
             "ControlNet": "#controlnet-cn0-image", "Upscale": "#tab-upscale", "PNG Info": "#pnginfo-image",
             "Parameters": "#tab-params"}
    for name in names:
        top.filter(has_text=re.compile(f"^{re.escape(name)}$")).click()
        expect(page.locator(shown[name]).first).to_be_visible()
        if name in ("img2img", "Inpaint", "ControlNet"):
            page.screenshot(path=f"/tmp/tabs-{name.lower()}.png")
