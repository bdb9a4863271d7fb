"""Browser tests of the prompt helper (txt2img and img2img) against the real server: compose the prompt from
its parts, put a negative preset, save a style into styles.csv and apply it ({prompt} placeholder), delete it."""

from __future__ import annotations

import re
import shutil

import pytest

from pipelines.advisor.prompt_builder import NEGATIVE_PRESETS, Style, read_styles, write_styles
from tests import test_ui
from tests.conftest import Server
from tests.test_ui import GENERATION_TIMEOUT, expect

pytestmark = pytest.mark.browser  # the real app in chromium

browser, page = test_ui.browser, test_ui.page  # the shared fixtures (one Chromium, a fresh page per test)


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-prompt-helper")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    styles = root / "styles.csv"
    write_styles(styles, [Style("watercolor", "watercolor painting of {prompt}", "photo")])
    with Server(root / "models", root / "outputs", "--styles-file", str(styles)) as server:
        server.styles_file = styles
        yield server


def open_helper(page, prefix: str = "txt2img") -> None:
    helper = page.locator(f"#{prefix}-prompt-helper")
    helper.get_by_text("Prompt helper", exact=True).click()
    expect(page.locator(f"#{prefix}-compose")).to_be_visible()


def box(page, elem_id: str):
    return page.locator(f"#{elem_id}").get_by_role("textbox")


def close(page, elem_id: str) -> None:
    """Close a dropdown's list and leave it (a click on a focused dropdown does not open it again)."""
    page.keyboard.press("Escape")
    page.locator(f"#{elem_id} input").blur()


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    close(page, elem_id)


def toast(page, text: str):
    return page.locator(".toast-body").filter(has_text=text)


def test_compose_in_order_and_negative_preset(page):
    open_helper(page)
    for part, text in (("lighting", "golden hour, backlit,"), ("subject", " a red fox "), ("style", "oil painting")):
        box(page, f"txt2img-part-{part}").fill(text)
    page.locator("#txt2img-compose").click()
    prompt = page.locator("#txt2img-prompt textarea")
    expect(prompt).to_have_value("a red fox, oil painting, golden hour, backlit")
    expect(page.locator("#txt2img-prompt-hint [data-verdict]")).to_be_visible()  # the prompt's verdict follows

    choose(page, "txt2img-negative-preset", "landscapes")
    expect(box(page, "txt2img-negative-preset-text")).to_have_value(NEGATIVE_PRESETS["landscapes"])
    choose(page, "txt2img-negative-preset", "people")
    expect(box(page, "txt2img-negative-preset-text")).to_have_value(NEGATIVE_PRESETS["people"])
    negative = page.locator("#txt2img-negative-prompt textarea")
    negative.fill("something else")
    page.locator("#txt2img-use-preset").click()
    expect(negative).to_have_value(NEGATIVE_PRESETS["people"])

    for part in ("subject", "style", "lighting"):  # nothing to compose: a warning, the prompt is kept
        box(page, f"txt2img-part-{part}").fill("")
    page.locator("#txt2img-compose").click()
    expect(toast(page, "Fill at least the subject")).to_be_visible()
    expect(prompt).to_have_value("a red fox, oil painting, golden hour, backlit")


def test_save_apply_and_delete_a_style(page, server):
    open_helper(page)
    prompt = page.locator("#txt2img-prompt textarea")
    negative = page.locator("#txt2img-negative-prompt textarea")
    prompt.fill("cinematic still of {prompt}, film grain")
    negative.fill("cartoon, drawing")

    page.locator("#txt2img-save-style").click()  # no name yet
    expect(toast(page, "Type a name for the style")).to_be_visible()
    box(page, "txt2img-style-name").fill("cine, 35mm")
    page.locator("#txt2img-save-style").click()
    expect(toast(page, "Style 'cine, 35mm' saved")).to_be_visible()
    expect(box(page, "txt2img-style-name")).to_have_value("")
    assert read_styles(server.styles_file)[-1] == Style("cine, 35mm", "cinematic still of {prompt}, film grain",
                                                        "cartoon, drawing")

    # a new prompt, then two styles applied in order: {prompt} wraps, a style without it is appended
    prompt.fill("a lighthouse")
    negative.fill("blurry")
    choose(page, "txt2img-styles", "cine, 35mm")
    choose(page, "txt2img-styles", "watercolor")
    expect(page.locator("#txt2img-style-preview")).to_contain_text("cinematic still of {prompt}")
    page.locator("#txt2img-apply-styles").click()
    expect(prompt).to_have_value("watercolor painting of cinematic still of a lighthouse, film grain")
    expect(negative).to_have_value("blurry, cartoon, drawing, photo")
    expect(page.locator("#txt2img-style-preview")).to_be_hidden()  # applied: the choice is cleared

    # the img2img tab's list is refreshed when its helper opens
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    open_helper(page, "img2img")
    page.locator("#img2img-styles input").click()
    expect(page.get_by_role("option", name="cine, 35mm", exact=True)).to_be_visible()
    close(page, "img2img-styles")

    page.get_by_role("tab", name="txt2img", exact=True).first.click()
    choose(page, "txt2img-styles", "cine, 35mm")
    page.locator("#txt2img-delete-styles").click()
    expect(toast(page, "Deleted: cine, 35mm")).to_be_visible()
    assert [s.name for s in read_styles(server.styles_file)] == ["watercolor"]
    page.locator("#txt2img-styles input").click()
    expect(page.get_by_role("option", name="watercolor", exact=True)).to_be_visible()
    expect(page.get_by_role("option", name="cine, 35mm", exact=True)).to_have_count(0)
    close(page, "txt2img-styles")


def test_styled_prompt_generates(page, server):
    """The styled prompt is what the job runs with: it is the first line of the generation info."""
    open_helper(page)
    page.locator("#txt2img-prompt textarea").fill("a small boat")
    choose(page, "txt2img-styles", "watercolor")
    page.locator("#txt2img-apply-styles").click()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("watercolor painting of a small boat")
    steps = page.locator("#txt2img-steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    expect(page.locator("#txt2img-info textarea")).to_have_value(
        re.compile(r"^watercolor painting of a small boat\nNegative prompt: photo\n"))
    page.screenshot(path="/tmp/ui-prompt-helper.png", full_page=True)
