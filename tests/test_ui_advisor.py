"""Browser tests of the advisor panel (real server, tiny SD 1.5 model whose native size is 64 px, Chromium)."""

from __future__ import annotations

import re

import pytest

from tests.test_ui import browser, expect, page, server, set_number, verdict  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser  # the real app in chromium


def advice(page, rule: str, prefix: str = "txt2img"):
    return page.locator(f"#{prefix}-advisor [data-rule='{rule}']")


def fix_button_of(page, rule: str, prefix: str = "txt2img"):
    row = page.locator(f"#{prefix}-advisor .advice-row").filter(has=page.locator(f"[data-rule='{rule}']"))
    return row.locator("button")


def test_cfg_20_warning_and_its_fix(page):
    page.locator("#txt2img-prompt textarea").fill("a lighthouse on a cliff at sunset")
    summary = page.locator("#txt2img-advisor-summary")
    expect(summary).to_contain_text("follow the recommendations")

    set_number(page, "cfg-scale", 20)
    finding = advice(page, "band:cfg_scale")
    expect(finding).to_be_visible()
    expect(finding).to_have_attribute("data-severity", "warning")
    expect(finding).to_contain_text("CFG scale 20")
    expect(summary).to_contain_text("1 warning")
    button = fix_button_of(page, "band:cfg_scale")
    expect(button).to_have_text(re.compile("Set CFG scale to 7"))
    page.screenshot(path="/tmp/ui-advisor-warning.png", full_page=False)
    button.click()

    expect(page.locator("#txt2img-cfg-scale input[type=number]")).to_have_value("7")
    expect(verdict(page, "cfg-scale")).to_have_attribute("data-verdict", "best")
    expect(finding).to_have_count(0)
    expect(summary).to_contain_text("follow the recommendations")
    page.screenshot(path="/tmp/ui-advisor.png", full_page=False)


def test_cross_field_findings_and_fix_all(page):
    page.locator("#txt2img-prompt textarea").fill("portrait of a man in a denim jacket")
    page.locator("#txt2img-negative-prompt textarea").fill("blue jacket, lowres")
    expect(advice(page, "prompt-contradiction")).to_contain_text("blue jacket")
    set_number(page, "width", 256)
    set_number(page, "height", 256)
    expect(advice(page, "size-native")).to_contain_text("256x256")
    set_number(page, "steps", 5)
    expect(advice(page, "band:steps")).to_be_visible()
    page.locator("#txt2img-advice-fix-all").click()

    expect(page.locator("#txt2img-negative-prompt textarea")).to_have_value("lowres")
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("64")
    expect(page.locator("#txt2img-height input[type=number]")).to_have_value("64")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("25")
    expect(page.locator("#txt2img-advisor-summary")).to_contain_text("follow the recommendations")


def test_img2img_and_inpaint_advice_judge_by_their_own_bands(page):
    page.get_by_role("tab", name="img2img").first.click()
    page.locator("#img2img-prompt textarea").fill("a castle in the mountains")
    set_number(page, "denoising-strength", 0.9, prefix="img2img")
    finding = advice(page, "band:denoising_strength", "img2img")
    expect(finding).to_contain_text("use txt2img")
    page.locator("#tabs button[role=tab]").filter(has_text=re.compile("^Inpaint$")).click()
    page.locator("#inpaint-prompt textarea").fill("a castle in the mountains")
    set_number(page, "denoising-strength", 0.9, prefix="inpaint")
    # inpaint judges denoising by its own bands: 0.9 is fine for new content
    expect(page.locator("#inpaint-advisor-summary")).to_contain_text("Advisor")  # it has judged
    expect(advice(page, "band:denoising_strength", "inpaint")).to_have_count(0)
    page.locator("#inpaint-modes button[role=tab]").filter(has_text=re.compile("^Inpaint upload$")).click()
    expect(advice(page, "band:denoising_strength", "inpaint")).to_have_count(0)


def test_parameters_tab_documents_the_rules_and_the_workflow(page):
    page.get_by_role("tab", name="Parameters").click()
    ref = page.locator("#params-reference")
    expect(ref).to_contain_text("Advisor rules")
    expect(ref).to_contain_text("prompt-contradiction")
    expect(ref).to_contain_text("denim jacket")
    expect(ref).to_contain_text("Guided workflow")
    # generated for the selected model: the tiny model's native 64 px is in the size rule's example finding
    expect(ref).to_contain_text("trained at 64x64")
