"""Browser test of the guided workflow: ① Draft, pick one, ② Refine, ③ Finalize, and the steps ledger
(real server, tiny SD 1.5 model with a 64 px native size, Chromium)."""

from __future__ import annotations

import re

import pytest

from tests.test_ui import GENERATION_TIMEOUT, browser, expect, page, server, set_number  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser  # the real app in chromium


def wait_done(page):
    expect(page.locator("#txt2img-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)


def number(page, field: str):
    return page.locator(f"#txt2img-{field} input[type=number]")


def test_draft_refine_finalize_shows_the_steps_saved(page, server):
    page.locator("#txt2img-prompt textarea").fill("a lighthouse on a cliff at sunset")
    set_number(page, "width", 128)  # off native: the draft puts it back

    # refine before anything exists: a clear message, nothing starts
    page.locator("#txt2img-refine").click()
    expect(page.locator(".toast-body").filter(has_text="Pick an image first")).to_be_visible()

    page.locator("#txt2img-draft").click()
    wait_done(page)
    expect(page.locator("#txt2img-progress")).to_contain_text("Done: 4 image")
    expect(number(page, "steps")).to_have_value("15")
    expect(number(page, "width")).to_have_value("64")
    report = page.locator("#txt2img-workflow-report [data-spent]")
    expect(report).to_have_attribute("data-spent", "60")

    page.locator("#txt2img-gallery .thumbnail-item").nth(2).click()  # pick the third draft
    info = page.locator("#txt2img-info textarea")
    seed = re.search(r"Seed: (\d+)", info.input_value()).group(1)
    page.locator("#txt2img-refine").click()
    expect(page.locator("#txt2img-seed input")).to_have_value(seed)
    expect(number(page, "steps")).to_have_value("25")
    expect(info).to_have_value(re.compile(f"Steps: 25.*Seed: {seed}", re.S), timeout=GENERATION_TIMEOUT)
    wait_done(page)
    expect(report).to_have_attribute("data-spent", "85")

    page.locator("#txt2img-finalize").click()
    expect(info).to_have_value(re.compile(f"Seed: {seed}.*Size: 64x64.*Hires upscale: 2", re.S),
                               timeout=GENERATION_TIMEOUT)
    wait_done(page)
    final = sorted((server.outputs_dir / "txt2img").rglob(f"*-{seed}.png"))[-1]
    from PIL import Image

    assert Image.open(final).size == (128, 128)
    expect(report).not_to_have_attribute("data-spent", "85")  # the finalize pass is booked
    spent, naive = int(report.get_attribute("data-spent")), int(report.get_attribute("data-naive"))
    assert 85 < spent < naive == 4 * (25 + spent - 85)
    expect(page.locator("#txt2img-workflow-report")).to_contain_text("saved")
    page.locator("#txt2img-workflow").screenshot(path="/tmp/ui-workflow.png")
