"""Browser test of the Inpaint tab's Outpainting panel (ui/outpaint_panel.py) against the real server (tiny SD 1.5
model, CPU): live verdicts on its fields, then outpainting extends the uploaded image and keeps its pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tests import test_ui as ui
from tests.test_ui import GENERATION_TIMEOUT, browser, expect, page, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser  # the real app in chromium


def newest(folder) -> list:
    return sorted(folder.rglob("*.png"), key=lambda p: p.stat().st_mtime) if folder.exists() else []


def test_outpainting_extends_the_image_and_keeps_the_original(page, server, tmp_path):
    y, x = np.mgrid[0:64, 0:64]
    src = np.stack([40 + x * 2, 60 + y * 2, 90 + ((x // 8 + y // 8) % 2) * 40], -1).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "input.png")

    page.locator("#tabs button[role=tab]").filter(has_text=re.compile("^Inpaint$")).first.click()
    page.locator("#inpaint-modes button[role=tab]").filter(has_text=re.compile("^Inpaint upload$")).click()
    page.locator("#inpaint-upload-image input[type=file]").set_input_files(str(tmp_path / "input.png"))
    page.locator("#inpaint-prompt textarea").fill("a meadow")
    ui.set_number(page, "steps", 2, prefix="inpaint")

    page.locator("#outpaint-section").get_by_text("Outpainting").first.click()
    ui.set_number(page, "outpaint-right", 16, prefix="outpaint")  # a thin strip: caution
    expect(page.locator("#outpaint-outpaint-right-hint [data-verdict=caution]")).to_be_visible()
    ui.set_number(page, "outpaint-right", 40, prefix="outpaint")
    expect(page.locator("#outpaint-outpaint-right-hint [data-verdict=caution]")).to_be_hidden()
    ui.set_number(page, "outpaint-up", 8, prefix="outpaint")

    folder = server.outputs_dir / "img2img"
    before = len(newest(folder))
    page.locator("#outpaint-generate").click()
    expect(page.locator("#outpaint-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(page.locator("#outpaint-results img").first).to_be_visible()
    expect(page.locator("#outpaint-info textarea")).to_have_value(re.compile(r"Outpaint right: 40"))
    saved = newest(folder)
    assert len(saved) == before + 1
    with Image.open(saved[-1]) as out:
        assert out.size == (104, 72)
        assert np.array_equal(np.asarray(out.convert("RGB"))[8:, :64], src)
