"""The advisor's rules: each fires on the case built for it, stays silent on the recommended defaults, and its
fix silences it. The long-prompt rule counts with the shipped CLIP tokenizer, as the studio does."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.advisor import rules as advisor
from pipelines.advisor.prompt_builder import NEGATIVE_PRESETS
from pipelines.advisor.rules import RULES, apply_fixes, check, contradictions
from pipelines.params.spec import HintContext
from pipelines.params.specs import PARAMS

pytestmark = pytest.mark.unit  # pure Python, no model

SD15 = HintContext(family="sd15", native=512)
SDXL = HintContext(family="sdxl", native=1024)
TURBO = HintContext(family="sdxl", native=512, distilled=True)
PROMPT = "a lighthouse on a cliff at sunset, oil painting, highly detailed, golden hour"


@pytest.fixture(scope="module")
def clip_count():
    from pipelines.advisor.prompt_rules import clip_token_counter

    return clip_token_counter()


def rules_fired(values, ctx=SD15, count=None) -> dict[str, advisor.Finding]:
    return {f.rule: f for f in check(values, ctx, count)}


def example_of(rule: advisor.Rule) -> tuple[dict, HintContext]:
    values = dict(rule.example)
    mode = values.pop("_mode", "txt2img")
    return values, dataclasses.replace(rule.example_ctx, mode=mode)


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_each_rule_fires_on_its_case_and_its_fix_silences_it(rule, clip_count):
    values, ctx = example_of(rule)
    fired = rules_fired(values, ctx, clip_count)
    assert rule.id in fired, f"{rule.id} did not fire on {values}"
    finding = fired[rule.id]
    # a tag naming a LoRA that is missing or of another family: the job would be refused
    refused = rule.id in ("lora-missing", "lora-family")
    assert finding.message and finding.severity in (("error",) if refused else ("warning", "info"))
    if rule.id == "band:prompt":  # an empty prompt: only the user can write one
        assert finding.fix == {}
        return
    assert finding.fix and finding.fix_label, f"{rule.id} has no fix"
    assert rule.id not in rules_fired(apply_fixes(values, [finding]), ctx, clip_count)


@pytest.mark.parametrize("mode", advisor.MODES)
@pytest.mark.parametrize("ctx", [SD15, SDXL, TURBO], ids=["sd15", "sdxl", "turbo"])
def test_recommended_defaults_are_silent(mode, ctx, clip_count):
    values = {"prompt": PROMPT}
    if ctx.distilled:  # the distilled exception: few steps, low CFG, its own sampler
        values.update(steps=4, cfg_scale=1.5, sampler_name="LCM")
    assert check(values, dataclasses.replace(ctx, mode=mode), clip_count) == []


def test_distilled_models_reverse_the_step_and_cfg_advice():
    regular = rules_fired({"prompt": PROMPT, "steps": 4, "cfg_scale": 1.5})
    assert regular["band:steps"].severity == "warning" and regular["band:steps"].fix == {"steps": 25}
    assert "band:cfg_scale" in regular
    turbo = rules_fired({"prompt": PROMPT, "steps": 25, "cfg_scale": 7}, TURBO)
    assert turbo["band:steps"].fix == {"steps": 8}
    assert turbo["band:cfg_scale"].severity == "warning" and turbo["band:cfg_scale"].fix == {"cfg_scale": 2}
    assert rules_fired({"prompt": PROMPT, "sampler_name": "LCM"})["band:sampler_name"].fix == \
        {"sampler_name": PARAMS["sampler_name"].default}


def test_size_against_each_family_native_size():
    sdxl_small = rules_fired({"prompt": PROMPT, "width": 512, "height": 512}, SDXL)["size-native"]
    assert sdxl_small.severity == "warning" and sdxl_small.fix == {"width": 1024, "height": 1024}
    sd_big = rules_fired({"prompt": PROMPT, "width": 1024, "height": 1024})["size-native"]
    assert sd_big.fix == {"width": 512, "height": 512} and "upscale" in sd_big.message
    tall = rules_fired({"prompt": PROMPT, "width": 768, "height": 1536})["size-native"]
    assert tall.fix == {"width": 512, "height": 768}  # at most 2:3, the short side native
    assert "size-native" not in rules_fired({"prompt": PROMPT, "width": 512, "height": 768})
    assert "size-native" not in rules_fired({"prompt": PROMPT, "width": 832, "height": 1216}, SDXL)
    assert "size-native" not in rules_fired({"prompt": PROMPT}, dataclasses.replace(SD15, mode="img2img")), \
        "img2img without a size takes the input's: nothing to judge"


def test_hires_target_and_exploring_rules():
    fixed_seed = {"prompt": PROMPT, "seed": 42, "enable_hr": True}
    assert "hires-target" not in rules_fired({**fixed_seed, "hr_scale": 2})
    past = rules_fired({**fixed_seed, "hr_scale": 2.5})["hires-target"]
    assert past.fix == {"hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0} and "1280x1280" in past.message
    assert rules_fired({**fixed_seed, "hr_resize_x": 1600})["hires-target"].fix["hr_resize_x"] == 0
    at_limit = rules_fired({**fixed_seed, "width": 1024, "height": 1024, "hr_scale": 1.5})["hires-target"]
    assert at_limit.fix == {"enable_hr": False}
    assert "hires-target" not in rules_fired({"prompt": PROMPT, "hr_scale": 4})  # hires off: nothing to judge

    exploring = rules_fired({"prompt": PROMPT, "enable_hr": True, "n_iter": 3})["hires-while-exploring"]
    assert exploring.severity == "warning" and "3 random-seed" in exploring.message
    assert "hires-while-exploring" not in rules_fired(fixed_seed)


def test_ancestral_sampler_only_matters_for_a_fixed_seed():
    assert "ancestral-fixed-seed" not in rules_fired({"prompt": PROMPT, "sampler_name": "Euler a"})
    for sampler, target in (("Euler a", "Euler"), ("DPM++ SDE", "DPM++ 2M"), ("DPM++ 2M SDE Karras", "DPM++ 2M")):
        f = rules_fired({"prompt": PROMPT, "sampler_name": sampler, "seed": 7})["ancestral-fixed-seed"]
        assert f.fix == {"sampler_name": target}
    assert "ancestral-fixed-seed" not in rules_fired({"prompt": PROMPT, "sampler_name": "Euler", "seed": 7})


def test_img2img_denoise_above_075_says_use_txt2img():
    f = rules_fired({"prompt": PROMPT, "denoising_strength": 0.9},
                    dataclasses.replace(SD15, mode="img2img"))["band:denoising_strength"]
    assert f.severity == "warning" and "txt2img" in f.message and f.fix == {"denoising_strength": 0.4}
    inpaint = dataclasses.replace(SD15, mode="inpaint")  # new content in a mask: high denoising is fine
    assert "band:denoising_strength" not in rules_fired({"prompt": PROMPT, "denoising_strength": 0.9}, inpaint)


@pytest.mark.parametrize("prompt, negative, expected", [
    ("a man in a denim jacket", "blue jacket", [("blue jacket", "a man in a denim jacket")]),
    ("a woman in red dresses", "green dress", [("green dress", "a woman in red dresses")]),
    ("a sign with text, street", "watermark, text", [("text", "text")]),
    ("((a cat:1.3)), sunny garden", "(cat:1.2)", [("(cat:1.2)", "cat")]),
    ("portrait of a woman, detailed face, best quality", NEGATIVE_PRESETS["people"], []),
    ("a man in a denim jacket", "lowres, bad hands", []),
    ("a mountain lake", "", []),
])
def test_contradictions(prompt, negative, expected):
    assert contradictions(prompt, negative) == expected


def test_contradiction_fix_keeps_the_rest_of_the_negative():
    f = rules_fired({"prompt": "a man in a denim jacket", "negative_prompt": "lowres, blue jacket, blurry"})
    assert f["prompt-contradiction"].fix == {"negative_prompt": "lowres, blurry"}


def test_people_without_anatomy_guards():
    f = rules_fired({"prompt": "two girls dancing in the rain"})["people-negative"]
    assert f.fix == {"negative_prompt": NEGATIVE_PRESETS["people"]}
    assert "people-negative" not in rules_fired({"prompt": "a misty pine forest"})
    assert "people-negative" not in rules_fired({"prompt": "a knight", "negative_prompt": "blurry"})


def test_long_prompt_counts_clip_tokens_and_trims_at_a_comma(clip_count):
    long = ", ".join(f"ornate golden detail number {i}" for i in range(20))
    f = rules_fired({"prompt": long}, count=clip_count)["prompt-long"]
    assert "chunks of 75" in f.message
    trimmed = f.fix["prompt"]
    kept = trimmed.count(",") + 1
    assert long.startswith(trimmed) and clip_count(trimmed) <= 75  # whole phrases, as many as fit
    assert clip_count(f"{trimmed}, ornate golden detail number {kept}") > 75
    assert "prompt-long" not in rules_fired({"prompt": PROMPT}, count=clip_count)
    weighted = "(" + ", ".join(f"tree {i}" for i in range(30)) + ":1.3)"  # weights are not tokens
    assert clip_count(weighted) == clip_count(weighted[1:-5])


def test_hard_limits_are_errors_with_the_nearest_valid_value():
    found = check({"prompt": PROMPT, "cfg_scale": 45, "width": 515, "steps": "many", "sampler_name": "Nope"}, SD15)
    errors = {f.field: f for f in found if f.severity == "error"}
    assert set(errors) == {"cfg_scale", "width", "steps", "sampler_name"}
    assert errors["cfg_scale"].fix == {"cfg_scale": 30.0} and errors["width"].fix == {"width": 512}
    assert errors["steps"].fix == {}
    assert found[0].severity == "error"  # errors first
    assert not any(f.rule == "band:cfg_scale" for f in found), "no band advice on a value that is refused anyway"
