"""Guided generation over HTTP on the real server (tiny SD 1.5 and SDXL models): `POST /advisor/check`,
`GET /advisor/rules`, and finalizing a chosen image with `POST /studio/v1/hires-fix`."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import Server

pytestmark = pytest.mark.server  # the real app over HTTP

T = 60


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("advisor-api")
    ckpts = root / "models" / "Stable-diffusion"
    for name in ("tiny-sd15", "tiny-sdxl"):
        shutil.copytree(tiny_store / name, ckpts / name)
    with Server(root / "models", root / "outputs", "--api", "--nowebui", "--ckpt", "tiny-sd15") as server:
        yield server


def check(server, body):
    return requests.post(server.url + "/advisor/check", json=body, timeout=T)


def test_cfg_20_is_a_warning_with_its_fix(server):
    r = check(server, {"prompt": "a lighthouse at dusk", "cfg_scale": 20, "steps": 25, "send_images": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "txt2img" and body["ok"] is False and body["counts"]["warning"] == 1
    (finding,) = body["findings"]
    assert finding["rule"] == "band:cfg_scale" and finding["severity"] == "warning"
    assert finding["field"] == "cfg_scale" and finding["fix"] == {"cfg_scale": 7.0}
    assert body["fixed"]["cfg_scale"] == 7.0 and body["fixed"]["send_images"] is True  # the rest kept

    fixed = check(server, body["fixed"]).json()
    assert fixed["ok"] is True and fixed["findings"] == []


def test_model_family_and_mode(server):
    sd = check(server, {"prompt": "a castle", "width": 1024, "height": 1024}).json()
    native = sd["context"]["native"]
    assert sd["context"]["family"] == "sd15"
    assert any(f["rule"] == "size-native" for f in sd["findings"]) == (native * 1.5 < 1024)

    xl = check(server, {"prompt": "a castle", "model": "tiny-sdxl", "width": 1024, "height": 1024}).json()
    assert xl["context"]["family"] == "sdxl"
    a1111_style = check(server, {"prompt": "a castle", "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}})
    assert a1111_style.json()["context"]["family"] == "sdxl"

    img = check(server, {"prompt": "a castle", "init_images": ["..."], "denoising_strength": 0.9}).json()
    assert img["mode"] == "img2img"
    (f,) = [f for f in img["findings"] if f["rule"] == "band:denoising_strength"]
    assert "txt2img" in f["message"]
    inpaint = check(server, {"mode": "inpaint", "settings": {"prompt": "a castle", "denoising_strength": 0.9}})
    assert inpaint.json()["mode"] == "inpaint" and inpaint.json()["findings"] == []


def test_errors_and_bad_requests(server):
    r = check(server, {"prompt": "a castle", "steps": 500})
    assert r.status_code == 200
    (err,) = [f for f in r.json()["findings"] if f["severity"] == "error"]
    assert err["field"] == "steps" and err["fix"] == {"steps": 150}

    for body, status, needle in (([1, 2], 422, "JSON object"), ({"mode": "video"}, 400, "mode"),
                                 ({"model": "nope"}, 400, "Unknown model")):
        r = check(server, body)
        assert r.status_code == status and needle in r.json()["detail"], r.text
    r = requests.post(server.url + "/advisor/check", data=b"{not json", timeout=T)
    assert r.status_code == 422
    assert check(server, {"prompt": "still fine"}).status_code == 200


def test_rules_are_listed_with_examples(server):
    rules = requests.get(server.url + "/advisor/rules", timeout=T).json()
    ids = {r["id"] for r in rules}
    assert {"size-native", "prompt-contradiction", "ancestral-fixed-seed", "band:steps", "band:cfg_scale"} <= ids
    contradiction = next(r for r in rules if r["id"] == "prompt-contradiction")
    assert contradiction["example"]["negative_prompt"] == "blue jacket" and "denim" in contradiction["why"]
    # each example, sent back, triggers its rule
    for r in rules:
        # their examples need such files in the model folders, or an SDXL model in fp16: tests/test_networks_advice.py
        # and tests/test_vae.py trigger those
        if r["id"] in ("lora-family", "embedding-family", "sdxl-vae-fp16"):
            continue
        mode = r["modes"][0]
        found = check(server, {"mode": mode, "settings": r["example"], "model": "tiny-sd15"}).json()
        assert r["id"] in {f["rule"] for f in found["findings"]}, (r["id"], found)


def test_finalize_a_chosen_image_over_the_api(server):
    """txt2img, then Hires. fix's second pass over the returned image: the same pixels as txt2img with Hires. fix
    on for that seed, at a fraction of the steps."""
    params = {"prompt": "a lighthouse", "steps": 6, "seed": 21, "sampler_name": "Euler", "cfg_scale": 7}
    hires = {"hr_upscaler": "Lanczos", "hr_scale": 2, "denoising_strength": 0.5}
    r = requests.post(server.url + "/sdapi/v1/txt2img", json=params, timeout=T)
    assert r.status_code == 200, r.text
    chosen = r.json()["images"][0]

    f = requests.post(server.url + "/studio/v1/hires-fix", json={**params, **hires, "image": chosen}, timeout=T)
    assert f.status_code == 200, f.text
    final = Image.open(io.BytesIO(base64.b64decode(f.json()["images"][0])))
    assert final.size == (128, 128) and f.json()["parameters"]["image"] is None
    assert "Hires upscale: 2" in final.info["parameters"] and "Seed: 21" in final.info["parameters"]

    full = requests.post(server.url + "/sdapi/v1/txt2img", json={**params, **hires, "enable_hr": True}, timeout=T)
    whole = Image.open(io.BytesIO(base64.b64decode(full.json()["images"][0])))
    assert np.array_equal(np.asarray(whole), np.asarray(final))

    for body, needle in (({**params, "hr_upscaler": "Latent", "image": chosen}, "pixel upscaler"),
                         ({**params, **hires}, "image")):
        bad = requests.post(server.url + "/studio/v1/hires-fix", json=body, timeout=T)
        assert 400 <= bad.status_code < 500 and needle in bad.json()["detail"], bad.text
