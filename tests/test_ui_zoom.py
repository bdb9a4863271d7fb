"""Browser test of the Inpaint tab's "Infinite zoom" section against the real server (tiny SD 1.5, CPU): the cost
shown before starting, a run that ends with a playable video (read back with PyAV) and its keyframes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pipelines import zoom
from tests import test_ui as ui
from tests.conftest import Server
from tests.test_ui import GENERATION_TIMEOUT, browser, expect, page  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser  # the real app in chromium


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-zoom")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    with Server(root / "models", root / "outputs") as server:
        yield server


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "start.png"
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_zoom_run_gives_a_playable_video_and_its_keyframes(page, server, picture):
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    page.locator("#zoom-section").get_by_text("Infinite zoom").first.click()
    page.locator("#zoom-image input[type=file]").set_input_files(str(picture))
    expect(page.locator("#zoom-image img")).to_be_visible()
    page.locator("#zoom-prompt textarea").fill("0: a forest, 2: a castle")
    for field, value in (("steps", 2), ("zoom-keyframes", 3), ("zoom-factor", 0.5), ("zoom-frames-per-keyframe", 3),
                         ("zoom-fps", 6)):
        ui.set_number(page, field, value, prefix="zoom")
    page.locator("#zoom-section").get_by_text("Sampler and size").click()
    ui.set_number(page, "width", 64, prefix="zoom")
    ui.set_number(page, "height", 64, prefix="zoom")
    expect(page.locator("#zoom-cost")).to_contain_text("= 4 denoising steps")
    expect(page.locator("#zoom-cost")).to_contain_text("7 frames")
    page.locator("#zoom-generate").click()
    expect(page.locator("#zoom-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(page.locator("#zoom-video video")).to_have_count(1)
    expect(page.locator("#zoom-keyframes img")).to_have_count(3)
    videos = sorted((server.outputs_dir / "zoom").rglob("*.mp4"))
    assert len(videos) == 1
    back = zoom.read_video(videos[0])
    assert back["frames"] == 7 and back["size"] == (64, 64)
    assert len(list((server.outputs_dir / "zoom").rglob("*-keyframe-*.png"))) == 3
    page.screenshot(path="/tmp/ui-zoom.png", full_page=True)
