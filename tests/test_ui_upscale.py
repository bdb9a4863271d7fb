"""Browser tests of the Upscale tab (neural upscaler, tiled SD upscale with its cost shown) and Hires. fix in
txt2img, against the real server (tiny SD 1.5 and a tiny real-layout ESRGAN model, CPU)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from tests import test_ui as ui
from tests.conftest import Server
from tests.test_ui import GENERATION_TIMEOUT, browser, expect, page  # noqa: F401  (shared fixtures)
from tests.tiny_upscalers import esrgan_state_dict, save_pth
from tests.waiting import wait_for

pytestmark = pytest.mark.browser  # the real app in chromium


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-upscale")
    models = root / "models"
    shutil.copytree(tiny_store / "tiny-sd15", models / "Stable-diffusion" / "tiny-sd15")
    save_pth(esrgan_state_dict(scale=4), models / "ESRGAN" / "4x-tiny.pth")
    with Server(models, root / "outputs") as server:
        yield server


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(path)
    return path


def set_number(page, elem_id: str, value) -> None:
    prefix, field = elem_id.split("-", 1)
    ui.set_number(page, field, value, prefix=prefix)


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def open_upscale(page, picture) -> None:
    page.get_by_role("tab", name="Upscale", exact=True).click()
    page.locator("#upscale-image input[type=file]").set_input_files(str(picture))
    expect(page.locator("#upscale-image img")).to_be_visible()


def newest(folder):
    return sorted(folder.rglob("*.png"), key=lambda p: p.stat().st_mtime)


def test_upscale_with_a_model_upscaler(page, server, picture):
    open_upscale(page, picture)
    choose(page, "upscale-upscaler-1", "4x-tiny")
    set_number(page, "upscale-upscaling-resize", 2)
    page.locator("#upscale-generate").click()
    expect(page.locator("#upscale-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(page.locator("#upscale-gallery img").first).to_be_visible()
    saved = newest(server.outputs_dir / "extras")[-1]
    assert Image.open(saved).size == (192, 128)
    expect(page.locator("#upscale-info textarea")).to_have_value(re.compile("Postprocess upscaler: 4x-tiny"))
    page.screenshot(path="/tmp/ui-upscale.png", full_page=True)


def test_tiled_sd_upscale_shows_its_cost_and_runs(page, server, picture):
    open_upscale(page, picture)
    page.locator("#upscale-mode").get_by_text("SD tiled upscale").click()
    set_number(page, "upscale-tile-width", 64)
    set_number(page, "upscale-tile-height", 64)
    set_number(page, "upscale-steps", 4)
    set_number(page, "upscale-denoising-strength", 0.5)
    expect(page.locator("#upscale-cost")).to_contain_text("6 tiles × 2 steps = 12 denoising steps")
    expect(page.locator("#upscale-tile-width-hint [data-verdict]")).to_have_attribute("data-verdict", "caution")
    page.locator("#upscale-prompt textarea").fill("a detailed city")
    page.locator("#upscale-generate").click()
    expect(page.locator("#upscale-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    saved = newest(server.outputs_dir / "extras")[-1]
    assert Image.open(saved).size == (192, 128)
    expect(page.locator("#upscale-info textarea")).to_have_value(re.compile("Tile width: 64"))


def test_bad_tile_is_refused_with_a_message(page, picture):
    open_upscale(page, picture)
    page.locator("#upscale-mode").get_by_text("SD tiled upscale").click()
    set_number(page, "upscale-tile-width", 512)
    page.locator("#upscale-generate").click()
    expect(page.locator("#upscale-message")).to_contain_text("larger than the 192x128 result")


def test_hires_fix_in_txt2img_and_send_to_upscale(page, server):
    page.locator("#txt2img-hires").get_by_text("Hires. fix").first.click()
    page.locator("#txt2img-enable-hr input[type=checkbox]").check()
    expect(page.locator("#txt2img-hr-scale-hint [data-verdict]")).to_have_attribute("data-verdict", "best")
    page.locator("#txt2img-prompt textarea").fill("a castle")
    set_number(page, "txt2img-steps", 3)
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(page.locator("#txt2img-info textarea")).to_have_value(re.compile("Hires upscale: 2"))
    assert Image.open(newest(server.outputs_dir / "txt2img")[-1]).size == (128, 128)
    page.locator("#txt2img-send-upscale").click()
    expect(page.locator("#upscale-image img")).to_be_visible()


def test_skip_during_a_tiled_sd_upscale_keeps_the_tiles_done_and_the_next_job_runs(page, server, picture):
    """Skip once killed the device worker during a tiled upscale: now it drops the tile in progress, stops, saves the
    image with the tiles redrawn so far, and the next job runs. The button's tooltip says so."""
    open_upscale(page, picture)
    expect(page.locator("#upscale-skip")).to_have_attribute("title", re.compile("drops the tile in progress, stops"))
    page.locator("#upscale-mode").get_by_text("SD tiled upscale").click()
    set_number(page, "upscale-tile-width", 64)
    set_number(page, "upscale-tile-height", 64)
    set_number(page, "upscale-steps", 40)
    set_number(page, "upscale-denoising-strength", 0.5)
    page.locator("#upscale-prompt textarea").fill("a skipped city")
    before = len(newest(server.outputs_dir / "extras"))
    page.locator("#upscale-generate").click()
    # a tile or more done (the page shows the label of its latest update: a fast tile may go by between two)
    expect(page.locator("#upscale-progress")).to_contain_text(re.compile(r"tile [2-4]/"), timeout=GENERATION_TIMEOUT)
    page.locator("#upscale-skip").click(no_wait_after=True)
    expect(page.locator("#upscale-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(page.locator("#upscale-info textarea")).to_have_value(re.compile("stopped after"))
    saved = newest(server.outputs_dir / "extras")
    assert len(saved) == before + 1 and Image.open(saved[-1]).size == (192, 128)
    # the worker is alive: a plain upscale runs next
    page.locator("#upscale-mode").get_by_text("Upscaler only", exact=True).click()
    page.locator("#upscale-generate").click()
    wait_for(lambda: len(newest(server.outputs_dir / "extras")) == before + 2, timeout=GENERATION_TIMEOUT / 1000,
             what="the next upscale's image")
