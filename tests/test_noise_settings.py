"""The noise settings (A1111's randn_source and eta_noise_seed_delta): specs, --rng, the studio's options,
override_settings, the infotext (RNG / ENSD) and PNG Info's "what reproduces exactly" report. No model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.jobs import JobRunner
from pipelines.params import reproduce
from pipelines.params.infotext import build_infotext, parse_infotext, uses_ensd
from pipelines.params.specs import (
    IMG2IMG_FIELDS,
    PARAMS,
    SD_UPSCALE_FIELDS,
    TXT2IMG_FIELDS,
    ZOOM_FIELDS,
    Txt2ImgParams,
)
from pipelines.settings import Settings, canonical_rng, parse_args
from pipelines.studio import BadRequest, Studio

pytestmark = pytest.mark.unit

A1111_NO_RNG = ("1girl, solo\nNegative prompt: lowres\nSteps: 28, Sampler: Euler a, Schedule type: Automatic, "
                "CFG scale: 7, Seed: 12345, Size: 512x768, Model hash: 7f96a1a9ca, Model: anything-v5, "
                "Clip skip: 2, ENSD: 31337, Version: v1.10.1")


@pytest.fixture
def studio(tmp_path: Path):
    s = Studio(Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", hub_endpoint=None,
                        styles_file=tmp_path / "styles.csv", rng="NV"), JobRunner(), engine=None)
    yield s


# -- specs ---------------------------------------------------------------------------------------------------------

def test_specs_nullable_with_bands_and_infotext_keys():
    rng, ensd = PARAMS["randn_source"], PARAMS["eta_noise_seed_delta"]
    assert (rng.infotext_key, ensd.infotext_key) == ("RNG", "ENSD")
    assert rng.choices() == ["CPU", "GPU", "NV"] and rng.nullable and ensd.nullable
    assert rng.modes == PARAMS["sd_vae"].modes and ensd.modes == PARAMS["sd_vae"].modes
    assert (ensd.minimum, ensd.maximum) == (0, 2**32 - 1)
    assert "NV" in rng.description and "31337" in ensd.description
    for fields in (TXT2IMG_FIELDS, IMG2IMG_FIELDS, SD_UPSCALE_FIELDS, ZOOM_FIELDS):
        assert "randn_source" in fields and "eta_noise_seed_delta" in fields
    assert rng.hint("CPU").verdict == "best" and rng.hint("NV").verdict in ("best", "ok")
    assert rng.hint("GPU").verdict == "caution" and rng.hint(None).verdict == "best"
    assert ensd.hint(0).verdict == "best" and ensd.hint(31337).verdict == "ok" and ensd.hint(None).verdict == "best"


def test_params_accept_any_case_and_reject_unknown_sources():
    assert Txt2ImgParams(randn_source="nv").randn_source == "NV"
    assert Txt2ImgParams(randn_source="").randn_source is None
    assert Txt2ImgParams().randn_source is None and Txt2ImgParams().eta_noise_seed_delta is None
    with pytest.raises(ValueError, match="CPU, GPU, NV"):
        Txt2ImgParams(randn_source="TPU")
    with pytest.raises(ValueError):
        Txt2ImgParams(eta_noise_seed_delta=-1)


# -- --rng and --round-pixels ---------------------------------------------------------------------------------------

def test_rng_flag_choices_and_old_spellings():
    assert parse_args([]).rng == "CPU" and Settings().rng == "CPU"
    assert [parse_args(["--rng", v]).rng for v in ("cpu", "device", "GPU", "nv", "NV")] == ["CPU", "GPU", "GPU",
                                                                                        "NV", "NV"]
    with pytest.raises(SystemExit):
        parse_args(["--rng", "tpu"])
    assert canonical_rng("Device") == "GPU"
    assert parse_args([]).round_pixels is False and parse_args(["--round-pixels"]).round_pixels is True


# -- the studio's options ----------------------------------------------------------------------------------------

def test_options_default_from_rng_and_fill_requests(studio):
    opts = studio.options()
    assert (opts["randn_source"], opts["eta_noise_seed_delta"]) == ("NV", 0)
    filled = studio.job_options(Txt2ImgParams())
    assert (filled.randn_source, filled.eta_noise_seed_delta) == ("NV", 0)
    studio.set_options({"randn_source": "cpu", "eta_noise_seed_delta": 31337})
    assert (studio.options()["randn_source"], studio.options()["eta_noise_seed_delta"]) == ("CPU", 31337)
    filled = studio.job_options(Txt2ImgParams())
    assert (filled.randn_source, filled.eta_noise_seed_delta) == ("CPU", 31337)
    own = studio.job_options(Txt2ImgParams(randn_source="GPU", eta_noise_seed_delta=0))  # the request's own wins
    assert (own.randn_source, own.eta_noise_seed_delta) == ("GPU", 0)


def test_options_are_validated(studio):
    with pytest.raises(BadRequest, match="CPU, GPU, NV"):
        studio.set_options({"randn_source": "TPU"})
    with pytest.raises(BadRequest, match="eta_noise_seed_delta"):
        studio.set_options({"eta_noise_seed_delta": -5})
    assert studio.options()["randn_source"] == "NV"  # nothing changed


def test_options_endpoint_reads_and_sets(studio):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ui.api import build_api

    app = FastAPI()
    app.include_router(build_api(studio))
    client = TestClient(app)
    assert client.get("/sdapi/v1/options").json()["randn_source"] == "NV"
    assert client.post("/sdapi/v1/options", json={"randn_source": "GPU", "eta_noise_seed_delta": 7}).status_code == 200
    opts = client.get("/sdapi/v1/options").json()
    assert (opts["randn_source"], opts["eta_noise_seed_delta"]) == ("GPU", 7)
    r = client.post("/sdapi/v1/options", json={"randn_source": "quantum"})
    assert r.status_code == 422 and "CPU, GPU, NV" in r.text
    assert client.get("/sdapi/v1/options").json()["randn_source"] == "GPU"


# -- override_settings -------------------------------------------------------------------------------------------

def test_override_settings_apply_and_the_request_field_wins():
    from ui.api import ApiError, parse_request

    req, _, warnings = parse_request({"prompt": "x", "override_settings": {"randn_source": "nv",
                                                                           "eta_noise_seed_delta": 31337}})
    assert (req.randn_source, req.eta_noise_seed_delta) == ("NV", 31337) and warnings == []
    req, _, _ = parse_request({"randn_source": "CPU", "eta_noise_seed_delta": 1,
                               "override_settings": {"randn_source": "GPU", "eta_noise_seed_delta": 2}}, "img2img")
    assert (req.randn_source, req.eta_noise_seed_delta) == ("CPU", 1)
    with pytest.raises(ApiError) as e:
        parse_request({"override_settings": {"randn_source": "TPU"}})
    assert e.value.status == 422 and "CPU, GPU, NV" in e.value.detail


# -- the infotext ---------------------------------------------------------------------------------------------------

def _text(**values) -> str:
    return build_infotext(Txt2ImgParams(prompt="a cat", steps=20, **values).model_dump(), seed=1, model_name="m",
                          model_hash=None)


def test_infotext_writes_rng_unless_gpu_and_ensd_only_where_it_counts():
    assert ", RNG: CPU" in _text(randn_source="CPU") and ", RNG: NV" in _text(randn_source="NV")
    assert "RNG" not in _text(randn_source="GPU")
    assert "ENSD: 31337" in _text(sampler_name="Euler a", eta_noise_seed_delta=31337, randn_source="NV")
    assert "ENSD" not in _text(sampler_name="Euler a", eta_noise_seed_delta=0)
    assert "ENSD" not in _text(sampler_name="DPM++ 2M", eta_noise_seed_delta=31337)
    assert [uses_ensd(s) for s in ("Euler a", "DPM2 a", "DPM++ 2S a", "Euler", "DPM++ 2M SDE", "k_euler_a")] == [
        True, True, True, False, False, True]


def test_infotext_round_trip_and_absent_rng_is_nv():
    p = parse_infotext(_text(sampler_name="DPM2 a", randn_source="CPU", eta_noise_seed_delta=31337))
    assert (p["randn_source"], p["eta_noise_seed_delta"]) == ("CPU", 31337) and "RNG" not in p["extra"]
    p = parse_infotext(A1111_NO_RNG)  # A1111's default GPU noise on NVIDIA: NV reproduces it anywhere
    assert (p["randn_source"], p["eta_noise_seed_delta"]) == ("NV", 31337)
    p = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 3, RNG: cpu, Version: v1.10.1")
    assert (p["randn_source"], p["eta_noise_seed_delta"]) == ("CPU", 0)
    p = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 3, RNG: weird")
    assert "randn_source" not in p and p["extra"]["RNG"] == "weird"
    ours = parse_infotext(_text(randn_source="GPU"))  # ours without RNG: the option decides
    assert "randn_source" not in ours
    assert parse_infotext("just a prompt") == {"prompt": "just a prompt"}


def test_send_to_txt2img_sets_nv_for_an_a1111_infotext_without_rng():
    from ui.pnginfo_tab import txt2img_values

    values = dict(zip(TXT2IMG_FIELDS, txt2img_values(parse_infotext(A1111_NO_RNG))))
    assert (values["randn_source"], values["eta_noise_seed_delta"], values["seed"]) == ("NV", 31337, 12345)
    values = dict(zip(TXT2IMG_FIELDS, txt2img_values(parse_infotext("x\nSteps: 9, Sampler: Euler, Seed: 1"))))
    assert (values["randn_source"], values["eta_noise_seed_delta"]) == ("NV", 0)


# -- PNG Info: what reproduces exactly ----------------------------------------------------------------------------

def test_reproduce_report_splits_exact_and_not():
    text = A1111_NO_RNG.replace("Version", 'Lora hashes: "detail: 7c6bad76eb54, gone: 0123456789ab", '
                                           "Token merging ratio: 0.5, Version")
    local = reproduce.Local(checkpoints={"anything-v5": "7f96a1a9ca" + "0" * 54},
                            loras={"detail": "7c6bad76eb54" + "1" * 52})
    checks = {c.label: c for c in reproduce.report(parse_infotext(text), local)}
    for label in ("Seed", "Steps", "CFG scale", "Size", "Clip skip", "Sampler", "RNG", "ENSD", "Model hash",
                  "LoRA detail", "Prompt"):
        assert checks[label].status == "exact", (label, checks.get(label))
    assert "no RNG field" in checks["RNG"].why and checks["RNG"].value == "NV"
    assert checks["LoRA gone"].status == "not" and checks["Token merging ratio"].status == "not"
    assert "Version" not in checks and "Model" not in checks
    elsewhere = {c.label: c for c in reproduce.report(parse_infotext(text))}  # nothing local
    assert elsewhere["Model hash"].status == "not" and "no local checkpoint" in elsewhere["Model hash"].why
    md = reproduce.markdown(reproduce.report(parse_infotext(text), local))
    assert md.index("Reproduced exactly") < md.index("Not reproduced") and "Token merging ratio" in md
    assert reproduce.report(parse_infotext("just a prompt")) == [] and reproduce.markdown([]) == ""


@pytest.mark.parametrize("sampler", ["DPM fast", "DPM adaptive", "Restart", "DDIM CFG++"])
def test_reproduce_report_names_samplers_we_lack(sampler):
    checks = {c.label: c for c in reproduce.report(parse_infotext(f"x\nSteps: 20, Sampler: {sampler}, Seed: 1"))}
    assert checks["Sampler"].status == "not" and "not available here" in checks["Sampler"].why


def test_reproduce_gpu_noise_is_not_exact_and_the_studio_reports(studio):
    checks = {c.label: c for c in studio.reproduce(parse_infotext(_text(randn_source="CPU")))}
    assert checks["RNG"].status == "exact"
    checks = {c.label: c for c in reproduce.report({**parse_infotext(_text()), "randn_source": "GPU"})}
    assert checks["RNG"].status == "not"


def test_png_info_shows_the_report(studio):
    from ui.pnginfo_tab import reproduce_text

    md = reproduce_text(studio, parse_infotext(A1111_NO_RNG))
    assert "Reproduced exactly" in md and "| RNG | NV |" in md and "| ENSD | 31337 |" in md
    assert "no local checkpoint has this hash" in md  # anything-v5 is not here
    assert reproduce_text(studio, parse_infotext("just a prompt")) == ""
