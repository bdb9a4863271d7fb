"""Draft -> refine -> finalize: the settings each stage sets, the finalize pass over a saved image, and the steps
ledger against the naive way (tiny SD 1.5 model on the CPU for the engine parts)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.advisor import workflow
from pipelines.advisor.workflow import Ledger
from pipelines.params import cost
from pipelines.params.infotext import parse_infotext
from pipelines.params.spec import HintContext
from pipelines.params.specs import TXT2IMG_FIELDS, Txt2ImgParams, defaults

pytestmark = pytest.mark.unit  # pure Python, no model

SD15 = HintContext(family="sd15", native=512)
TINY = HintContext(family="sd15", native=64)


def test_draft_settings_explore_cheaply_at_native_size():
    d = workflow.draft_settings({**defaults(), "width": 1024, "height": 1024, "sampler_name": "Euler a",
                                 "enable_hr": True, "seed": 5}, SD15)
    assert d["steps"] == 15 and d["seed"] == -1 and d["batch_size"] == 4 and d["enable_hr"] is False
    assert (d["width"], d["height"]) == (512, 512)
    assert d["sampler_name"] == "Euler", "drafts need a deterministic sampler to predict their seed's refine"
    portrait = workflow.draft_settings({**defaults(), "width": 512, "height": 768}, SD15)
    assert (portrait["width"], portrait["height"]) == (512, 768)  # already fine: kept
    assert workflow.draft_settings(defaults(), HintContext(distilled=True))["steps"] == 4


def test_refine_settings_pin_the_seed_and_raise_the_steps():
    r = workflow.refine_settings({**defaults(), "steps": 15, "sampler_name": "DPM++ SDE"}, 1234, SD15)
    assert r == {"seed": 1234, "steps": 25, "batch_size": 1, "n_iter": 1, "enable_hr": False,
                 "sampler_name": "DPM++ 2M"}
    assert workflow.refine_settings({**defaults(), "steps": 30}, 7, SD15)["steps"] == 30  # already good: kept


def test_finalize_settings_come_from_the_image():
    parsed = {"prompt": "a fox", "steps": 25, "seed": 99, "cfg_scale": 8.0, "width": 512, "height": 768,
              "sampler_name": "Euler"}
    current = {**defaults(), "prompt": "edited since", "hr_upscaler": "Latent", "hr_scale": 3.0,
               "denoising_strength": 0.8}
    p = workflow.finalize_hires(parsed, current, SD15, ["None", "Lanczos", "Nearest", "4x-UltraSharp"])
    assert (p["prompt"], p["seed"], p["steps"], p["cfg_scale"]) == ("a fox", 99, 25, 8.0)
    assert p["hr_upscaler"] == "4x-UltraSharp" and p["enable_hr"] is True
    assert p["hr_scale"] == pytest.approx(1.35)  # 768 x 1.35 ~ 1024: the SD 1.x limit
    assert p["denoising_strength"] == workflow.FINAL_DENOISE
    Txt2ImgParams(**p)  # a valid request
    t = workflow.finalize_tiled(parsed, SD15, ["None", "Lanczos"])
    assert t["upscaler_1"] == "Lanczos" and t["tile_width"] == 512 and t["seed"] == 99
    assert workflow.tiled_steps(t, (512, 768)) == 6 * 8  # 1024x1536 in 512 tiles: 6 x (int(25 x 0.3) + 1), A1111's


def test_ledger_counts_each_stage_and_the_naive_way():
    ledger = Ledger()
    ledger.record("draft", 4, 4 * 15)
    ledger.record("refine", 1, 25)
    ledger.record("refine", 1, 25)  # a prompt edit
    ledger.record("finalize", 1, 7)
    s = ledger.summary(SD15)
    assert s["stages"]["draft"] == {"images": 4, "steps": 60} and s["spent"] == 117
    # naive: the 4 candidates and the prompt edit, each at 25 steps plus the 7-step final pass
    assert s["naive"] == 5 * (25 + 7) and s["saved"] == 160 - 117
    assert Ledger().summary(SD15)["naive"] == 0
    with pytest.raises(ValueError):
        ledger.record("sketch", 1, 1)


def run_job(world, fn):
    return world["runner"].submit(fn).wait(180)


@pytest.mark.engine  # in a module of unit tests
def test_draft_refine_finalize_on_the_tiny_model(world):
    engine, info = world["engine"], world["infos"]["tiny-sd15"]
    base = {**defaults(), "prompt": "a lighthouse at dusk", "sampler_name": "Euler a", "steps": 25}

    # 1. draft: 4 random seeds at draft steps
    draft = {**base, **workflow.draft_settings(base, TINY)}
    d = run_job(world, lambda ctx: engine.txt2img(ctx, Txt2ImgParams(**draft), info))
    assert len(d.images) == 4 and len(set(d.seeds)) == 4
    assert d.denoising_steps == 4 * 15 == cost.job_steps(draft)

    # 2. refine the third: its seed pinned
    picked = parse_infotext(d.infotexts[2])
    refine = {**draft, **workflow.refine_settings(draft, picked["seed"], TINY)}
    r = run_job(world, lambda ctx: engine.txt2img(ctx, Txt2ImgParams(**refine), info))
    assert r.seeds == [d.seeds[2]] and r.denoising_steps == 25

    # 3. finalize the refined image from its file: Hires. fix's second pass only
    chosen = Image.open(r.paths[0])
    final = workflow.finalize_hires(parse_infotext(chosen.info["parameters"]), {}, TINY, ["None", "Lanczos"])
    f = run_job(world, lambda ctx: engine.hires_fix(ctx, Txt2ImgParams(**final), info, chosen))
    assert f.images[0].size == (128, 128) and f.seeds == r.seeds
    assert f.denoising_steps == 25 == cost.hires_steps(final)  # A1111 runs all the hires steps
    text = f.infotexts[0]
    assert "Hires upscale: 2" in text and "Hires upscaler: Lanczos" in text and "Size: 64x64" in text

    # the same as txt2img + Hires. fix for that seed, which would have run the first pass again
    full = {k: v for k, v in final.items() if k in TXT2IMG_FIELDS}
    h = run_job(world, lambda ctx: engine.txt2img(ctx, Txt2ImgParams(**full), info))
    assert h.denoising_steps == 25 + f.denoising_steps
    assert np.array_equal(np.asarray(h.images[0]), np.asarray(f.images[0]))

    ledger = Ledger()
    for stage, res in (("draft", d), ("refine", r), ("finalize", f)):
        ledger.record(stage, len(res.images), res.denoising_steps)
    s = ledger.summary(TINY)
    assert s["spent"] == 60 + 25 + f.denoising_steps and s["naive"] == 4 * (25 + f.denoising_steps)
    assert s["spent"] < s["naive"]
