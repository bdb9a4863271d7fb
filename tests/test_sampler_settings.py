"""A1111's sampler options (eta / eta_ancestral / eta_ddim, sgm_noise_multiplier, always_discard_next_to_last_sigma):
specs, the studio's options, override_settings, the infotext and PNG Info's report; on the tiny parity model, the
engine against tests/a1111_reference.py (A1111's procedure with the same options)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.jobs import JobRunner
from pipelines.params import reproduce
from pipelines.params.infotext import build_infotext, parse_infotext, uses_ensd
from pipelines.params.specs import IMG2IMG_FIELDS, PARAMS, TXT2IMG_FIELDS, ZOOM_FIELDS, Txt2ImgParams
from pipelines.settings import Settings
from pipelines.studio import BadRequest, Studio
from tests.test_a1111_parity import CFG, MAX_ABS, MAX_MEAN, NEGATIVE, PROMPT, SIZE, parity  # noqa: F401

pytestmark = pytest.mark.unit

NAMES = ("eta", "sgm_noise_multiplier", "always_discard_next_to_last_sigma")


@pytest.fixture
def studio(tmp_path: Path):
    yield Studio(Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", hub_endpoint=None,
                          styles_file=tmp_path / "styles.csv"), JobRunner(), engine=None)


def test_specs():
    eta, sgm, discard = (PARAMS[n] for n in NAMES)
    assert (eta.kind, eta.minimum, eta.maximum, eta.nullable, eta.infotext_key) == ("float", 0, 1, True, "Eta")
    assert (sgm.kind, sgm.infotext_key, discard.kind, discard.infotext_key) == (
        "bool", "SGM noise multiplier", "bool", "Discard penultimate sigma")
    assert all(PARAMS[n].group == "advanced" and PARAMS[n].default is None for n in NAMES)
    for fields in (TXT2IMG_FIELDS, IMG2IMG_FIELDS, ZOOM_FIELDS):
        assert all(n in fields for n in NAMES)
    assert eta.hint(1.0).verdict == "best" and eta.hint(0.7).verdict == "ok" and eta.hint(0.2).verdict == "caution"
    assert eta.hint(None).verdict == "best" and eta.hint(0.3, others={"sampler_name": "DDIM"}).verdict == "best"
    assert sgm.hint(False).verdict == "best" and sgm.hint(True).verdict == "ok"
    assert discard.hint(True, others={"steps": 30}).verdict == "ok"
    assert discard.hint(True, others={"steps": 4}).verdict == "caution"
    with pytest.raises(ValueError):
        Txt2ImgParams(eta=1.5)


def test_options_fill_requests_by_sampler_kind(studio):
    opts = studio.options()
    assert (opts["eta_ancestral"], opts["eta_ddim"], opts["sgm_noise_multiplier"],
            opts["always_discard_next_to_last_sigma"]) == (1.0, 0.0, False, False)
    p = studio.job_options(Txt2ImgParams(sampler_name="Euler a"))
    assert (p.eta, p.sgm_noise_multiplier, p.always_discard_next_to_last_sigma) == (1.0, False, False)
    studio.set_options({"eta_ancestral": 0.5, "eta_ddim": "0.3", "sgm_noise_multiplier": True,
                        "always_discard_next_to_last_sigma": "true"})
    p = studio.job_options(Txt2ImgParams(sampler_name="Euler a"))
    assert (p.eta, p.sgm_noise_multiplier, p.always_discard_next_to_last_sigma) == (0.5, True, True)
    assert studio.job_options(Txt2ImgParams(sampler_name="DDIM")).eta == 0.3
    own = studio.job_options(Txt2ImgParams(sampler_name="DDIM", eta=0.9, sgm_noise_multiplier=False))
    assert (own.eta, own.sgm_noise_multiplier) == (0.9, False)
    for bad in ({"eta_ancestral": 2}, {"eta_ddim": "x"}, {"sgm_noise_multiplier": "maybe"}):
        with pytest.raises(BadRequest, match=next(iter(bad))):
            studio.set_options(bad)


def test_options_endpoint(studio):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ui.api import build_api

    app = FastAPI()
    app.include_router(build_api(studio))
    client = TestClient(app)
    body = {"eta_ancestral": 0.25, "eta_ddim": 0.1, "sgm_noise_multiplier": True,
            "always_discard_next_to_last_sigma": True}
    assert client.post("/sdapi/v1/options", json=body).status_code == 200
    opts = client.get("/sdapi/v1/options").json()
    assert {k: opts[k] for k in body} == body
    assert client.post("/sdapi/v1/options", json={"eta_ddim": 3}).status_code == 422


def test_override_settings_and_eta_field():
    from ui.api import parse_request

    req, _, warnings = parse_request({"prompt": "x", "sampler_name": "Euler a", "eta": 0.4})
    assert req.eta == 0.4 and warnings == []
    ov = {"eta_ancestral": 0.6, "eta_ddim": 0.2, "sgm_noise_multiplier": True,
          "always_discard_next_to_last_sigma": True}
    req, _, _ = parse_request({"sampler_name": "Euler a", "override_settings": ov})
    assert (req.eta, req.sgm_noise_multiplier, req.always_discard_next_to_last_sigma) == (0.6, True, True)
    req, _, _ = parse_request({"sampler_name": "DDIM", "override_settings": ov}, "img2img")
    assert req.eta == 0.2
    req, _, _ = parse_request({"sampler_name": "DDIM", "eta": 0.0, "sgm_noise_multiplier": False,
                               "override_settings": ov})
    assert (req.eta, req.sgm_noise_multiplier) == (0.0, False)  # the request's own fields win


def _text(**values) -> str:
    return build_infotext(Txt2ImgParams(prompt="a cat", steps=20, **values).model_dump(), seed=1, model_name="m",
                          model_hash=None)


def test_infotext_writes_as_a1111():
    assert "Eta: 0.5" in _text(sampler_name="Euler a", eta=0.5)
    assert "Eta" not in _text(sampler_name="Euler a", eta=1.0) and "Eta" not in _text(sampler_name="Euler", eta=0.5)
    assert "Eta: 0.3" in _text(sampler_name="DPM++ 2M SDE", eta=0.3)
    assert "Eta DDIM: 0.3" in _text(sampler_name="DDIM", eta=0.3) and "Eta" not in _text(sampler_name="DDIM", eta=0)
    assert "Eta" not in _text(sampler_name="PLMS", eta=0.3)
    # ENSD only where the effective eta is not 0 (A1111's is_sampler_using_eta_noise_seed_delta)
    assert "ENSD" not in _text(sampler_name="Euler a", eta=0.0, eta_noise_seed_delta=31337)
    assert "ENSD: 31337" in _text(sampler_name="Euler a", eta=0.5, eta_noise_seed_delta=31337)
    assert not uses_ensd("Euler a", 0) and uses_ensd("Euler a") and not uses_ensd("DDIM", 0.5)
    assert "SGM noise multiplier: True" in _text(sampler_name="Euler", sgm_noise_multiplier=True)
    assert "SGM" not in _text(sampler_name="Euler") and "SGM" not in _text(sampler_name="DDIM", sgm_noise_multiplier=True)
    assert "Discard penultimate sigma: True" in _text(sampler_name="Euler", always_discard_next_to_last_sigma=True)
    assert "Discard" not in _text(sampler_name="DPM2", always_discard_next_to_last_sigma=True)  # discards anyway
    assert "Discard penultimate sigma: True" in _text(sampler_name="DDIM", always_discard_next_to_last_sigma=True)


def test_infotext_round_trip_and_defaults():
    p = parse_infotext(_text(sampler_name="Euler a", eta=0.5, sgm_noise_multiplier=True,
                             always_discard_next_to_last_sigma=True))
    assert (p["eta"], p["sgm_noise_multiplier"], p["always_discard_next_to_last_sigma"]) == (0.5, True, True)
    p = parse_infotext(_text(sampler_name="DDIM", eta=0.3))
    assert p["eta"] == 0.3 and "Eta DDIM" not in p["extra"]
    a1111 = parse_infotext("x\nSteps: 20, Sampler: Euler a, Seed: 3, Version: v1.10.1")
    assert (a1111["eta"], a1111["sgm_noise_multiplier"], a1111["always_discard_next_to_last_sigma"]) == (
        1.0, False, False)
    assert parse_infotext("x\nSteps: 20, Sampler: DDIM, Seed: 3")["eta"] == 0.0
    assert "eta" not in parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 3")


def test_reproduce_report_counts_them_exact():
    text = ("x\nSteps: 20, Sampler: Euler a, Seed: 1, Eta: 0.5, SGM noise multiplier: True, "
            "Discard penultimate sigma: True, Version: v1.10.1")
    checks = {c.label: c for c in reproduce.report(parse_infotext(text))}
    for label in ("Eta", "SGM noise multiplier", "Discard penultimate sigma"):
        assert checks[label].status == "exact", checks[label]
    checks = {c.label: c for c in reproduce.report(parse_infotext("x\nSteps: 20, Sampler: DDIM, Seed: 1, "
                                                                  "Eta DDIM: 0.3"))}
    assert checks["Eta DDIM"].status == "exact" and checks["Eta DDIM"].value == "0.3"


# -- the engine against A1111's procedure ---------------------------------------------------------------------------

STEPS = 6


def _app(parity, sampler, **options):  # noqa: F811
    values = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 1234, "batch_size": 2, "sampler_name": sampler,
              "scheduler": "Automatic", "steps": STEPS, "cfg_scale": CFG, "width": SIZE, "height": SIZE,
              "randn_source": "CPU", "eta_noise_seed_delta": 0, **options}
    params = Txt2ImgParams(**values)
    result = parity["runner"].submit(lambda ctx: parity["engine"].txt2img(ctx, params, parity["info"])).wait(300)
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in result.paths], result.infotexts


def _ref(parity, sampler, **kw):  # noqa: F811
    from tests import a1111_reference as ref

    images = ref.a1111_txt2img(parity["folder"], prompt=PROMPT, negative_prompt=NEGATIVE, seeds=[1234, 1235],
                               sampler=sampler, schedule="Automatic", steps=STEPS, cfg_scale=CFG, width=SIZE,
                               height=SIZE, randn_source="CPU", **kw)
    return [np.asarray(i, dtype=np.int16) for i in images]


def _close(got, want) -> bool:
    return all(np.abs(g - w).mean() <= MAX_MEAN and np.abs(g - w).max() <= MAX_ABS for g, w in zip(got, want))


CASES = [
    ("Euler a", {"eta": 0.5}, {"eta": 0.5}, "Eta: 0.5"),
    ("DDIM", {"eta": 0.3}, {"eta": 0.3}, "Eta DDIM: 0.3"),
    ("Euler", {"sgm_noise_multiplier": True}, {"sgm_noise_multiplier": True}, "SGM noise multiplier: True"),
    ("Euler", {"always_discard_next_to_last_sigma": True}, {"always_discard": True},
     "Discard penultimate sigma: True"),
]


@pytest.mark.engine
@pytest.mark.parametrize(("sampler", "app_kw", "ref_kw", "written"), CASES, ids=[c[3].split(":")[0] for c in CASES])
def test_engine_matches_a1111_with_the_option(parity, sampler, app_kw, ref_kw, written):  # noqa: F811
    got, texts = _app(parity, sampler, **app_kw)
    want = _ref(parity, sampler, **ref_kw)
    assert _close(got, want), [(np.abs(g - w).mean(), np.abs(g - w).max()) for g, w in zip(got, want)]
    if "sgm_noise_multiplier" in ref_kw:  # sqrt(1 + 14.6^2) vs 14.6: below a pixel level here; the latents move
        from tests import a1111_reference as ref

        kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, seeds=[1234], sampler=sampler, steps=STEPS, cfg_scale=CFG,
                  width=SIZE, height=SIZE)
        assert not ref.a1111_latents(parity["folder"], **kw).equal(
            ref.a1111_latents(parity["folder"], sgm_noise_multiplier=True, **kw))
    else:
        assert not _close(got, _ref(parity, sampler)), "the option changed nothing"
    assert all(written in t for t in texts)
