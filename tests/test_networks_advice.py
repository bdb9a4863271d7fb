"""LoRA tags judged from one spec, and the advisor's LoRA / embedding rules: the bands, the per-tag verdicts, each
rule's fix rewriting the prompt as described, the listing the studio hands the advisor, the card clicks' prompt
edits, and the panel's pure pieces (verdict line, notes, thumbnails). Pure Python, no model, no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipelines.advisor import rules as advisor
from pipelines.discovery import CheckpointInfo
from pipelines.networks import listing, prompt_edit
from pipelines.networks.embeddings import EmbeddingInfo
from pipelines.networks.loras import LoraInfo
from pipelines.networks.tags import loras_in
from pipelines.params.doc import render_markdown
from pipelines.params.networks import (
    LORA_TOTAL_WEIGHT,
    LORA_WEIGHT,
    NetworkItem,
    Networks,
    tag_verdicts,
    total_weight,
)
from pipelines.params.spec import HintContext

pytestmark = pytest.mark.unit

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
NETS = Networks(
    model="sd15-model",
    loras=(NetworkItem("detail", "SD 1.x", aliases=("styles/detail.safetensors", "styles/detail", "Detail Tweaker")),
           NetworkItem("grain", "SD 1.x"), NetworkItem("xl-style", "SDXL", "it is an SDXL LoRA")),
    embeddings=(NetworkItem("EasyNegative", "SD 1.x"), NetworkItem("negXL", "SDXL", "made for SDXL")),
    lora_folder="models/Lora")
CTX = HintContext(networks=NETS)


def fired(values: dict, ctx: HintContext = CTX) -> dict[str, advisor.Finding]:
    return {f.rule: f for f in advisor.check({"steps": 25, **values}, ctx)}


# -- the specs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight, verdict", [
    (-2, "caution"), (-1, "ok"), (-0.5, "ok"), (0, "caution"), (0.2, "caution"), (0.4, "ok"), (0.5, "ok"),
    (0.6, "best"), (0.8, "best"), (1, "best"), (1.2, "caution"), (1.3, "caution"), (1.31, "avoid"), (2, "avoid")])
def test_lora_weight_bands_follow_the_recommendations(weight, verdict):
    assert LORA_WEIGHT.hint(weight).verdict == verdict


def test_total_weight_bands_and_sum():
    assert [LORA_TOTAL_WEIGHT.hint(t).verdict for t in (1, 1.5, 2, 2.5, 3)] == \
        ["best", "best", "caution", "caution", "avoid"]
    assert total_weight(loras_in("<lora:a:0.8> <lora:b:-0.7> <lora:c:0.2:1.1>")) == pytest.approx(2.6)


def test_default_weight_is_best_and_specs_are_in_the_docs():
    assert LORA_WEIGHT.hint(LORA_WEIGHT.default).verdict == "best"
    doc = render_markdown()
    assert "### LoRA weight (`lora_weight`)" in doc and "### Total LoRA weight (`lora_total_weight`)" in doc
    assert "(`lora-total-weight`)" in doc and "(`lora-missing`)" in doc


def test_tag_verdicts_know_missing_and_other_family_loras():
    found, total = tag_verdicts(f"{PROMPT} <lora:detail:0.8> <lora:nope:1> <lora:xl-style:0.7>", CTX)
    by = {v.tag.name: v for v in found}
    assert by["detail"].hint.verdict == "best" and by["detail"].problem is None
    assert by["nope"].hint.verdict == "avoid" and "no LoRA named nope in models/Lora" in by["nope"].hint.why
    assert by["xl-style"].hint.verdict == "avoid" and "SDXL" in by["xl-style"].hint.why
    assert total is not None and total.verdict == "caution"  # 2.5 together
    assert tag_verdicts(f"{PROMPT} <lora:Detail Tweaker:1>", CTX)[0][0].problem is None  # the trainer's alias
    only, none_total = tag_verdicts(f"{PROMPT} <lora:anything:1.2>", HintContext())  # nothing known: weights only
    assert only[0].hint.verdict == "caution" and only[0].problem is None and none_total is None


# -- the rules and their fixes -------------------------------------------------------------------------------------


def test_weight_fix_sets_the_tag_into_the_best_band():
    f = fired({"prompt": f"{PROMPT} <lora:detail:1.8>, <lora:grain:0.2>"})["lora-weight"]
    assert f.severity == "warning" and "1.8" in f.message and "burns in" in f.message
    assert f.fix == {"prompt": f"{PROMPT} <lora:detail:1>, <lora:grain:1>"}
    split = fired({"prompt": f"{PROMPT} <lora:detail:0.9:1.8:dyn=8>"})["lora-weight"]
    assert split.fix == {"prompt": f"{PROMPT} <lora:detail:0.5:1:dyn=8>"}  # the TE keeps its ratio, dyn stays
    negative = fired({"prompt": f"{PROMPT} <lyco:detail:-2>"})["lora-weight"]
    assert negative.severity == "info" and negative.fix == {"prompt": f"{PROMPT} <lyco:detail:-1>"}
    assert "lora-weight" not in fired({"prompt": f"{PROMPT} <lora:detail:-0.6> <lora:grain:0.8>"})


def test_total_fix_scales_every_tag_down_keeping_their_shares():
    prompt = f"<lora:detail:1.2> {PROMPT} <lora:grain:0.6> <lora:xl-style:1>"
    f = fired({"prompt": prompt}, HintContext())["lora-total-weight"]  # 2.8 together: avoid
    assert f.severity == "warning" and "total weight of 2.8" in f.message
    fixed = loras_in(f.fix["prompt"])
    assert [t.name for t in fixed] == ["detail", "grain", "xl-style"]
    assert 1.45 <= total_weight(fixed) <= 1.5
    assert fixed[0].weight == pytest.approx(2 * fixed[1].weight, abs=0.02)
    assert f.fix["prompt"].replace(fixed[0].text, "").replace(fixed[1].text, "").replace(fixed[2].text, "") == \
        f" {PROMPT}  "  # only the tags changed
    assert "lora-total-weight" not in fired({"prompt": f.fix["prompt"]}, HintContext())
    assert "lora-total-weight" not in fired({"prompt": f"{PROMPT} <lora:detail:2>"})  # one LoRA: the weight rule's


def test_missing_lora_fix_removes_the_tag_from_both_prompts():
    values = {"prompt": f"<lora:nope:0.8>, {PROMPT}", "enable_hr": True, "hr_prompt": f"{PROMPT} <lora:gone:1>"}
    f = fired(values)["lora-missing"]
    assert f.severity == "error" and "would be refused" in f.message and "listed: detail, grain" in f.message
    assert f.fix == {"prompt": PROMPT, "hr_prompt": PROMPT}
    assert "lora-missing" not in fired(advisor.apply_fixes(values, [f]))
    assert "lora-missing" not in fired({"prompt": f"{PROMPT} <lora:nope:1>"}, HintContext())  # nothing known


def test_other_family_lora_and_embedding_fixes_remove_them():
    f = fired({"prompt": f"{PROMPT}, <lora:xl-style:0.7>, golden hour"})["lora-family"]
    assert f.severity == "error" and "SDXL" in f.message
    assert f.fix == {"prompt": f"{PROMPT}, golden hour"}
    e = fired({"prompt": PROMPT, "negative_prompt": "(negXL:1.2), blurry, EasyNegative"})["embedding-family"]
    assert e.severity == "warning" and "negXL" in e.message and "EasyNegative:" not in e.message
    assert e.fix == {"negative_prompt": "blurry, EasyNegative"}
    assert "embedding-family" not in fired({"prompt": PROMPT, "negative_prompt": "negXLv2, blurry"})  # whole words


# -- what the studio hands over, and the card clicks ------------------------------------------------------------


def test_listing_judges_every_item_against_the_checkpoint(tmp_path: Path):
    (tmp_path / "sd.safetensors").touch()
    Image.new("RGB", (8, 8)).save(tmp_path / "sd.preview.png")
    model = CheckpointInfo("sd.safetensors", "file", tmp_path / "sd.safetensors", family="sd15")
    sd = LoraInfo("detail", tmp_path / "detail.safetensors", "styles/detail.safetensors", alias="Detail Tweaker",
                  family="sd15", context_dim=768, formats=("lora",))
    xl = LoraInfo("xl", tmp_path / "xl.safetensors", "xl.safetensors", family="sdxl", context_dim=2048)
    broken = LoraInfo("broken", tmp_path / "broken.pt", "broken.pt", error="no LoRA weights in this file")
    emb = EmbeddingInfo("neg", tmp_path / "neg.pt", dims=(768, 1280), vectors=2)
    nets = listing.describe(model, [sd, xl, broken], 768, [emb], (768,), [model], "models/Lora")
    by = {i.name: i for i in nets.loras}
    assert by["detail"].problem is None and by["detail"].family == "SD 1.x"
    assert "SDXL" in by["xl"].problem and "cannot be read" in by["broken"].problem
    assert nets.lora("Detail Tweaker") is by["detail"] and nets.lora("styles/detail") is by["detail"]
    assert nets.lora("DETAIL") is by["detail"] and nets.lora("nope") is None
    assert nets.embeddings[0].family == "SDXL" and "768-wide" in nets.embeddings[0].problem
    assert nets.checkpoints[0].preview == str(tmp_path / "sd.preview.png")
    hash(nets)  # a HintContext holding it stays hashable
    assert listing.describe(None, [xl], None, [emb], None, [], "models/Lora").loras[0].problem is None


def test_card_clicks_toggle_like_a1111():
    p = prompt_edit.toggle_lora("a cat", "detail")
    assert p == "a cat <lora:detail:1>"
    assert prompt_edit.toggle_lora(p, "grain") == "a cat <lora:detail:1> <lora:grain:1>"
    assert prompt_edit.toggle_lora("a cat, <lora:detail:0.6>, red", "detail") == "a cat, red"  # out again
    assert prompt_edit.toggle_lora("", "detail") == "<lora:detail:1>"
    assert prompt_edit.toggle_word("blurry", "EasyNegative") == "blurry EasyNegative"
    assert prompt_edit.toggle_word("blurry, (easynegative:1.2)", "EasyNegative") == "blurry"


# -- the panel's pure pieces ---------------------------------------------------------------------------------------


def test_verdict_line_notes_and_thumbnails(tmp_path: Path):
    from ui.networks_panel import Thumbnails, notes_html, verdicts_html

    line = verdicts_html(f"{PROMPT} <lora:detail:1> <lora:nope:1.5>", CTX)
    assert 'data-lora="detail"' in line and 'data-verdict="best"' in line
    assert "no LoRA named nope" in line and 'data-lora-total="2.5"' in line
    assert verdicts_html(PROMPT, CTX) == ""
    notes = notes_html(NETS, {"lora": ["detail", "grain"]}, "", True)
    assert "LoRA: 3 (1 hidden)" in notes and 'data-name="xl-style"' in notes and "it is an SDXL LoRA" in notes

    Image.new("RGB", (300, 500), "red").save(tmp_path / "p.png")
    thumbs = Thumbnails(tmp_path / "cards")
    with_preview = thumbs.card("lora", NetworkItem("p", "SD 1.x", preview=str(tmp_path / "p.png")))
    generated = thumbs.card("lora", NetworkItem("q", "SD 1.x"))
    misfit = thumbs.card("lora", NetworkItem("q", "SD 1.x", "no"))
    assert len({with_preview, generated, misfit}) == 3
    assert thumbs.card("lora", NetworkItem("q", "SD 1.x")) == generated  # drawn once
    with Image.open(with_preview) as im:
        assert im.size == (192, 192) and im.getpixel((96, 150))[0] > 200  # the preview, fitted
