"""Two browser sessions on one server: the second sees its queue position, and its Interrupt cancels only its
own job while the first session's job runs on, keeping its images."""

from __future__ import annotations

import re

import pytest

from tests.test_ui import GENERATION_TIMEOUT, browser, expect, server, set_number  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser  # the real app in chromium


def open_page(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(server.url)
    expect(page.locator("#txt2img-generate")).to_be_visible(timeout=60_000)
    return context, page


def test_second_session_waits_in_line_and_interrupts_only_its_own_job(browser, server):  # noqa: F811
    ctx_a, a = open_page(browser, server)
    ctx_b, b = open_page(browser, server)
    try:
        a.locator("#txt2img-prompt textarea").fill("a lighthouse")
        set_number(a, "steps", 20)
        set_number(a, "n-iter", 40)  # long enough to still run on a fast machine; A interrupts it at the end
        a.locator("#txt2img-generate").click()
        expect(a.locator("#txt2img-progress")).to_contain_text(re.compile(r"Step \d+/800"),
                                                                timeout=GENERATION_TIMEOUT)

        b.locator("#txt2img-prompt textarea").fill("a small boat")
        set_number(b, "steps", 2)
        b.locator("#txt2img-generate").click()
        expect(b.locator("#txt2img-progress")).to_contain_text("Queued: 1 job(s) ahead")

        b.locator("#txt2img-interrupt").click()  # B's queued job, not A's running one
        expect(b.locator("#txt2img-progress [data-state=failed]")).to_contain_text("0 image(s) kept")
        expect(a.locator("#txt2img-gallery img").first).to_be_visible(timeout=GENERATION_TIMEOUT)  # A runs on
        expect(a.locator("#txt2img-progress")).to_contain_text(re.compile(r"Step \d+/800"))
        a.locator("#txt2img-interrupt").click(no_wait_after=True)
        expect(a.locator("#txt2img-progress [data-state=failed]")).to_contain_text(
            re.compile(r"Interrupted .*: [1-9]\d* image\(s\) kept"), timeout=30_000)

        b.locator("#txt2img-generate").click()  # the queue is free again: B's next job runs at once
        expect(b.locator("#txt2img-progress [data-state=done]")).to_contain_text(
            "Done: 1 image(s)", timeout=GENERATION_TIMEOUT)
    finally:
        ctx_a.close()
        ctx_b.close()
