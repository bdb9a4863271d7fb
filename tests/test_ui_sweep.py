"""Browser test of the X/Y/Z plot panel in txt2img, against the real server (tiny SD 1.5, CPU): the live cost line
(and its plain-words errors), fill-in of choices, and a sweep streamed into the gallery ending with the grid."""

from __future__ import annotations

import re
import shutil

import pytest
from PIL import Image

from tests import test_ui as ui
from tests.conftest import Server
from tests.test_ui import GENERATION_TIMEOUT, expect

pytestmark = pytest.mark.browser  # the real app in chromium

browser, page = ui.browser, ui.page  # the shared browser fixtures


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-sweep")
    models = root / "models"
    shutil.copytree(tiny_store / "tiny-sd15", models / "Stable-diffusion" / "tiny-sd15")
    with Server(models, root / "outputs") as server:
        yield server


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")
    page.locator(f"#{elem_id} input").blur()


def axis(page, letter: str, kind: str, values: str | None = None) -> None:
    choose(page, f"txt2img-sweep-{letter}-type", kind)
    if values is not None:
        box = page.locator(f"#txt2img-sweep-{letter}-values textarea")
        expect(box).to_be_editable()
        box.fill(values)
        box.blur()


def cost(page):
    return page.locator("#txt2img-sweep-cost .sweep-cost")


def test_sweep_cost_line_errors_and_run_into_the_gallery(page, server):
    page.locator("#txt2img-prompt textarea").fill("a red apple on a wooden table")
    ui.set_number(page, "steps", 2)
    page.locator("#txt2img-sweep").get_by_text("X/Y/Z plot", exact=True).click()
    expect(cost(page)).to_have_attribute("data-state", "idle")

    axis(page, "x", "CFG scale", "5, 9")
    expect(cost(page)).to_contain_text("2 cells · 2 images · 4 denoising steps · 1 checkpoint")
    axis(page, "y", "Steps", "2, 3")
    expect(cost(page)).to_have_text(re.compile(r"2 x 2 = 4 cells · 4 images · 10 denoising steps · 1 checkpoint"))

    # a bad value: the reason in plain words on the cost line, no toast
    page.locator("#txt2img-sweep-y-values textarea").fill("2, 3-x")
    expect(cost(page)).to_have_attribute("data-state", "error")
    expect(cost(page)).to_contain_text("Y axis (Steps): '3-x' is not a number")
    assert page.locator(".toast-body").count() == 0
    page.locator("#txt2img-sweep-y-values textarea").fill("2, 3")
    expect(cost(page)).to_contain_text("4 cells")
    ui.set_number(page, "batch-size", 2)  # the cost follows the txt2img fields
    expect(cost(page)).to_contain_text("4 cells · 8 images · 20 denoising steps")
    ui.set_number(page, "batch-size", 1)
    expect(cost(page)).to_contain_text("4 cells · 4 images")

    # choice axes: the 📒 button fills in every choice
    fill = page.locator("#txt2img-sweep-z-fill")
    expect(fill).to_be_hidden()
    choose(page, "txt2img-sweep-z-type", "Schedule type")
    fill.click()
    expect(page.locator("#txt2img-sweep-z-values textarea")).to_have_value(re.compile(r"^Automatic, Uniform, Karras"))
    choose(page, "txt2img-sweep-z-type", "Nothing")
    expect(cost(page)).to_contain_text("2 x 2 = 4 cells")

    page.locator("#txt2img-sweep-run").click()
    done = page.locator("#txt2img-progress [data-state=done]")
    expect(done).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(done).to_contain_text("Done: 5 image(s)")  # four cells, then the grid
    expect(page.locator("#txt2img-gallery img")).to_have_count(5, timeout=15_000)
    info = page.locator("#txt2img-info textarea")  # the last image, the grid, with the sweep in its infotext
    expect(info).to_have_value(re.compile(r'X Type: CFG scale, X Values: "5, 9", Y Type: Steps, Y Values: "2, 3"'))
    saved = page.locator("#txt2img-saved")
    expect(saved).to_contain_text("txt2img-grids")
    path = re.search(r"(\S+\.png)", saved.inner_text()).group(1)
    grid = Image.open(path)
    assert grid.width > 2 * 64 and grid.height > 2 * 64 and "X/Y/Z plot" in grid.info["parameters"]
    assert len(list(server.outputs_dir.glob("txt2img/*/*.png"))) == 4
    page.screenshot(path="/tmp/ui-sweep.png", full_page=True)


def test_sweep_interrupt_keeps_finished_cells(page, server):
    page.locator("#txt2img-prompt textarea").fill("a small boat")
    ui.set_number(page, "steps", 30)
    page.locator("#txt2img-sweep").get_by_text("X/Y/Z plot", exact=True).click()
    axis(page, "x", "Seed", "1-40")  # long enough that the interrupt lands mid-grid even on a fast machine
    expect(cost(page)).to_contain_text("40 cells · 40 images · 1200 denoising steps")
    page.locator("#txt2img-sweep-run").click()
    expect(page.locator("#txt2img-progress")).to_contain_text(re.compile(r"cell \d+/40 · step \d+/30"),
                                                              timeout=GENERATION_TIMEOUT)
    expect(page.locator("#txt2img-gallery img").first).to_be_visible(timeout=GENERATION_TIMEOUT)
    page.locator("#txt2img-interrupt").click(no_wait_after=True)  # a busy page: no navigation to wait for
    failed = page.locator("#txt2img-progress [data-state=failed]")
    expect(failed).to_contain_text(re.compile(r"Interrupted .*: \d+ image\(s\) kept"), timeout=30_000)
    kept = int(re.search(r"(\d+) image\(s\) kept", failed.inner_text()).group(1))
    assert 2 <= kept < 41  # finished cells and the partial grid
    expect(page.locator("#txt2img-saved")).to_contain_text("txt2img-grids")  # the partial grid came last
