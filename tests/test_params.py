"""The single source of truth: every parameter is described and banded, and everything reads it."""

from pathlib import Path

import pytest

from pipelines.params.doc import render_markdown
from pipelines.params.specs import PARAMS, TXT2IMG_FIELDS, HintContext, Txt2ImgParams, defaults
from pipelines.studio import BadRequest, Studio

pytestmark = pytest.mark.unit  # pure Python, no model

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height", "seed",
            "batch_size", "n_iter", "clip_skip", "subseed", "subseed_strength"]


@pytest.mark.parametrize("name", list(PARAMS))
def test_every_parameter_has_description_and_bands(name):
    p = PARAMS[name]
    assert len(p.description) > 20, f"{name} needs a description"
    bands = p.bands_for(HintContext())
    assert bands, f"{name} needs recommended bands"
    assert any(b.verdict == "best" for b in bands), f"{name} needs a recommended (best) band"
    assert all(b.why for b in bands), f"{name}: every band needs its reason"
    assert p.label


def test_txt2img_has_every_issue_parameter():
    assert set(REQUIRED) <= set(TXT2IMG_FIELDS)


@pytest.mark.parametrize("name", [n for n in PARAMS if PARAMS[n].default is not None])
def test_defaults_are_within_limits_and_recommended(name):
    p = PARAMS[name]
    if p.minimum is not None:
        assert p.minimum <= p.default <= p.maximum
    if p.choices is not None:
        assert p.default in p.choices()
    # empty / random are fine defaults; the best upscalers are models the user may not have downloaded
    if name not in ("prompt", "negative_prompt", "seed", "subseed", "denoising_strength", "hr_upscaler", "upscaler_1"):
        assert p.hint(p.default).verdict == "best", name


def test_verdicts_follow_recommendations():
    steps, cfg, den = PARAMS["steps"], PARAMS["cfg_scale"], PARAMS["denoising_strength"]
    assert [steps.hint(v).verdict for v in (5, 15, 25, 60)] == ["avoid", "ok", "best", "caution"]
    assert [cfg.hint(v).verdict for v in (3, 7, 12, 18, 25)] == ["caution", "best", "caution", "avoid", "avoid"]
    assert [den.hint(v).verdict for v in (0.1, 0.3, 0.6, 0.9)] == ["caution", "best", "ok", "avoid"]
    turbo = HintContext(distilled=True)
    assert steps.hint(4, turbo).verdict == "best" and cfg.hint(1.5, turbo).verdict == "best"
    assert PARAMS["sampler_name"].hint("LCM").verdict == "avoid"
    assert PARAMS["sampler_name"].hint("LCM", turbo).verdict == "best"


def test_size_hint_follows_family():
    w = PARAMS["width"]
    sd15, sdxl = HintContext("sd15", 512), HintContext("sdxl", 1024)
    assert w.hint(512, sd15, {"height": 512}).verdict == "best"
    assert w.hint(768, sd15, {"height": 512}).verdict == "best"  # landscape, one side native
    assert w.hint(1024, sd15, {"height": 1024}).verdict == "avoid"  # SD1.x at 1024x1024
    assert w.hint(512, sdxl, {"height": 512}).verdict == "avoid"  # SDXL at 512
    assert w.hint(1024, sdxl, {"height": 1024}).verdict == "best"
    assert "1024" in w.hint(512, sdxl).why


def test_validation_limits_come_from_specs():
    ok = Txt2ImgParams(prompt="x")
    assert ok.model_dump() == {**defaults("txt2img"), "prompt": "x", "controlnet": []}
    for bad in ({"steps": 0}, {"steps": 151}, {"cfg_scale": 31}, {"width": 65}, {"batch_size": 9},
                {"seed": -2}, {"clip_skip": 13}, {"subseed_strength": 1.5}, {"bogus": 1}):
        with pytest.raises(ValueError):
            Txt2ImgParams(**bad)


def test_sampler_names_combined_and_unknown():
    p = Txt2ImgParams(sampler_name="DPM++ 2M Karras")
    assert (p.sampler_name, p.scheduler) == ("DPM++ 2M", "Karras")
    with pytest.raises(ValueError, match="Unknown sampler 'Nope'.*Euler"):
        Txt2ImgParams(sampler_name="Nope")


def test_readable_error_messages():
    with pytest.raises(BadRequest, match=r"steps: .*less than or equal to 150"):
        Studio.parse_txt2img({"steps": 500})
    with pytest.raises(BadRequest, match=r"width: .*multiple of 8"):
        Studio.parse_txt2img({"width": 100})


def test_generated_docs_are_current():
    doc = (ROOT / "docs" / "parameters.md").read_text()
    assert doc == render_markdown(), "run: python -m pipelines.params.doc > docs/parameters.md"
    for p in PARAMS.values():
        assert f"(`{p.name}`)" in doc
