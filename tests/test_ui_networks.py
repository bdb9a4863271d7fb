"""The Networks panel in the browser (real server, tiny SD 1.5 model, CPU): LoRA / embedding / checkpoint cards, a
click inserting `<lora:NAME:1>` (a second click taking it out), the LoRA tags' live verdicts, items of another family
dimmed, and a generation whose infotext carries the LoRA's hash. Plus the advisor's LoRA rules over the API on the
same server (the studio hands the advisor its listing).
"""

from __future__ import annotations

import re
import shutil

import pytest
import requests

from tests.conftest import Server
from tests.test_ui import GENERATION_TIMEOUT, browser, page, set_number  # noqa: F401  (shared fixtures; `page` opens this module's server)

pytestmark = pytest.mark.browser  # the real app in chromium

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
expect.set_options(timeout=15_000)

LORA = "pixel-style"  # tiny SD 1.5 LoRA with a preview image beside it
XL_LORA = "xl-detail"  # tiny SDXL LoRA: another family, no preview (a generated card)
EMBEDDING = "tiny-neg"  # fits the tiny model's 32-wide text encoder
XL_EMBEDDING = "big-neg"  # 768 wide: skipped


def _lora(models_root, model: str, dest, **kw) -> None:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tests import tiny_loras

    folder = models_root / model
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    tes = [CLIPTextModel.from_pretrained(folder / "text_encoder")]
    if (folder / "text_encoder_2").is_dir():
        tes.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"))
    state, _ = tiny_loras.build(unet, tes, "lora", **kw)
    save_file(state, str(dest))


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ui-networks")
    models = root / "models"
    shutil.copytree(tiny_store / "tiny-sd15", models / "Stable-diffusion" / "tiny-sd15")
    (models / "Lora").mkdir(parents=True)
    _lora(tiny_store, "tiny-sd15", models / "Lora" / f"{LORA}.safetensors")
    Image.linear_gradient("L").resize((96, 128)).convert("RGB").save(models / "Lora" / f"{LORA}.preview.png")
    _lora(tiny_store, "tiny-sdxl", models / "Lora" / f"{XL_LORA}.safetensors", sdxl_names=True,
          unet_only_down_mid=True)
    (models / "embeddings").mkdir()
    g = torch.Generator().manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, str(models / "embeddings" / f"{EMBEDDING}.safetensors"))
    save_file({"emb_params": torch.randn(1, 768, generator=g)},
              str(models / "embeddings" / f"{XL_EMBEDDING}.safetensors"))
    with Server(models, root / "outputs", "--api") as server:
        yield server


def open_panel(page):
    page.locator("#txt2img-networks").get_by_text("Networks: LoRA").click()
    return page.locator("#txt2img-networks-lora .thumbnail-item")


def card(page, kind: str, name: str):
    return page.locator(f"#txt2img-networks-{kind} .thumbnail-item").filter(has_text=name)


def prompt_box(page):
    return page.locator("#txt2img-prompt textarea")


def test_lora_card_inserts_its_tag_with_a_verdict_and_generates(page, server):
    prompt_box(page).fill("a red apple")
    cards = open_panel(page)
    expect(cards).to_have_count(2)  # both LoRAs; the SDXL one dimmed
    expect(card(page, "lora", XL_LORA)).to_contain_text("not for this model")

    search = page.locator("#txt2img-networks-search").locator("input, textarea").first
    search.fill("pixel")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text(LORA)

    cards.first.click()
    expect(prompt_box(page)).to_have_value(f"a red apple <lora:{LORA}:1>")
    hint = page.locator(f"#txt2img-lora-hints [data-lora='{LORA}']")
    expect(hint).to_have_attribute("data-verdict", "best")
    expect(hint).to_contain_text("Recommended: 0.6-1")
    page.locator("#txt2img-networks").screenshot(path="/tmp/ui-networks-panel.png")
    page.screenshot(path="/tmp/ui-networks.png", full_page=True)

    cards.first.click()  # a second click takes it out again (A1111)
    expect(prompt_box(page)).to_have_value("a red apple")
    expect(hint).to_have_count(0)
    cards.first.click()
    expect(prompt_box(page)).to_have_value(f"a red apple <lora:{LORA}:1>")

    set_number(page, "steps", 2)
    page.locator("#txt2img-generate").click()
    expect(page.locator("#txt2img-progress [data-state=done]")).to_be_visible(timeout=GENERATION_TIMEOUT)
    info = page.locator("#txt2img-info textarea")
    expect(info).to_have_value(re.compile(rf"Lora hashes: \"?{LORA}: [0-9a-f]{{12}}"))
    assert info.input_value().startswith(f"a red apple <lora:{LORA}:1>")  # the saved prompt keeps the tag


def test_weights_other_families_embeddings_and_checkpoints(page, server):
    open_panel(page)
    notes = page.locator("#txt2img-networks-notes")
    expect(notes.locator(f"[data-name='{XL_LORA}']")).to_contain_text("SDXL")
    expect(notes.locator(f"[data-name='{XL_EMBEDDING}']")).to_contain_text("768-wide")
    page.locator("#txt2img-networks-hide input").check()
    expect(page.locator("#txt2img-networks-lora .thumbnail-item")).to_have_count(1)
    page.locator("#txt2img-networks-hide input").uncheck()
    expect(page.locator("#txt2img-networks-lora .thumbnail-item")).to_have_count(2)
    page.locator("#txt2img-networks").screenshot(path="/tmp/ui-networks-all.png")

    # live verdicts: an over-weighted tag, a missing LoRA, and their total
    prompt_box(page).fill(f"a cat <lora:{LORA}:1.8> <lora:nope:1>")
    hints = page.locator("#txt2img-lora-hints")
    expect(hints.locator(f"[data-lora='{LORA}']")).to_have_attribute("data-verdict", "avoid")
    expect(hints.locator("[data-lora='nope']")).to_contain_text("no LoRA named nope")
    expect(hints.locator("[data-lora-total]")).to_have_attribute("data-verdict", "avoid")
    # the advisor's fixes rewrite the prompt: the missing tag goes, the weight comes back to 1
    row = page.locator(".advice-row", has=page.locator("[data-rule='lora-missing']"))
    row.locator("button").click()
    expect(prompt_box(page)).to_have_value(f"a cat <lora:{LORA}:1.8>")
    expect(page.locator("#txt2img-advisor [data-rule='lora-missing']")).to_have_count(0)  # re-checked
    row = page.locator(".advice-row", has=page.locator("[data-rule='lora-weight']"))
    row.locator("button").click()
    expect(prompt_box(page)).to_have_value(f"a cat <lora:{LORA}:1>")
    expect(hints.locator(f"[data-lora='{LORA}']")).to_have_attribute("data-verdict", "best")

    # an embedding goes into the prompt box focused last
    page.locator("#txt2img-networks-tabs").get_by_role("tab", name="Textual Inversion").click()
    expect(card(page, "embedding", XL_EMBEDDING)).to_contain_text("not for this model")
    page.locator("#txt2img-negative-prompt textarea").click()
    card(page, "embedding", EMBEDDING).click()
    expect(page.locator("#txt2img-negative-prompt textarea")).to_have_value(EMBEDDING)

    # a checkpoint card selects the checkpoint, as the top bar's dropdown does
    page.locator("#txt2img-networks-tabs").get_by_role("tab", name="Checkpoints").click()
    card(page, "checkpoint", "tiny-sd15").click()
    expect(page.locator("#status-line")).to_contain_text("tiny-sd15 loaded", timeout=60_000)

    # the same panel in img2img
    page.get_by_role("tab", name="img2img").first.click()
    page.locator("#img2img-networks").get_by_text("Networks: LoRA").click()
    page.locator("#img2img-networks-lora .thumbnail-item").filter(has_text=LORA).click()
    expect(page.locator("#img2img-prompt textarea")).to_have_value(f"<lora:{LORA}:1>")
    expect(page.locator(f"#img2img-lora-hints [data-lora='{LORA}']")).to_have_attribute("data-verdict", "best")

    # a file saved since: the refresh button lists it
    loras = server.outputs_dir.parent / "models" / "Lora"
    shutil.copy(loras / f"{LORA}.safetensors", loras / "added-later.safetensors")
    try:
        page.locator("#img2img-networks-refresh").click()
        expect(page.locator("#img2img-networks-lora .thumbnail-item")).to_have_count(3)
        expect(page.locator("#img2img-networks-lora .thumbnail-item").filter(has_text="added-later")).to_be_visible()
    finally:
        (loras / "added-later.safetensors").unlink()
        page.locator("#img2img-networks-refresh").click()
    expect(page.locator("#img2img-networks-lora .thumbnail-item")).to_have_count(2)


def test_advisor_api_knows_the_lora_folder(server):
    body = {"prompt": f"a cat <lora:{LORA}:1.8> <lora:nope:1> <lora:{XL_LORA}:0.5>", "steps": 25}
    r = requests.post(server.url + "/advisor/check", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    found = {f["rule"]: f for f in answer["findings"]}
    assert found["lora-missing"]["severity"] == "error" and "nope" in found["lora-missing"]["message"]
    assert found["lora-family"]["severity"] == "error" and XL_LORA in found["lora-family"]["message"]
    assert found["lora-weight"]["fix"] == {"prompt": f"a cat <lora:{LORA}:1> <lora:nope:1> <lora:{XL_LORA}:0.5>"}
    assert found["lora-missing"]["fix"] == {"prompt": f"a cat <lora:{LORA}:1.8> <lora:{XL_LORA}:0.5>"}
    assert found["lora-family"]["fix"] == {"prompt": f"a cat <lora:{LORA}:1.8> <lora:nope:1>"}
