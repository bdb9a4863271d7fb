"""Upscaling over the REST API on the real server (tiny models, CPU): A1111's /sdapi/v1/upscalers,
/latent-upscale-modes, /extra-single-image and /extra-batch-images, and our /studio/v1/sd-upscale.

One server (with a tiny real-layout ESRGAN model in models/ESRGAN) is shared by the module.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from PIL import Image

from pipelines.params.specs import LATENT_UPSCALERS
from tests.conftest import Server
from tests.test_api import AUTH, T, _fake_error, b64, decode, get, pattern, post
from tests.tiny_upscalers import esrgan_state_dict, save_pth

pytestmark = pytest.mark.server  # the real app over HTTP


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-upscale")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    save_pth(esrgan_state_dict(scale=4), root / "models" / "ESRGAN" / "4x-tiny.pth")
    args = ("--api", "--ckpt", "tiny-sd15", "--auth", ":".join(AUTH))
    with Server(root / "models", root / "outputs", *args) as server:
        yield server


def studio_post(server, path, body):
    return requests.post(server.url + "/studio/v1" + path, json=body, timeout=T, auth=AUTH)


def single(server, **body):
    r = post(server, "/extra-single-image", body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"html_info", "image"} and data["html_info"].startswith("<p>")
    return data["html_info"], decode(data["image"])


def with_parameters(image: Image.Image, text: str) -> str:
    from ui.api import encode_png

    return encode_png(image, text)


# -- lists ----------------------------------------------------------------------------------------


def test_upscaler_and_latent_lists(server):
    ups = get(server, "/upscalers").json()
    by_name = {u["name"]: u for u in ups}
    assert [u["name"] for u in ups[:3]] == ["None", "Lanczos", "Nearest"] and "4x-tiny" in by_name
    assert all(set(u) == {"name", "model_name", "model_path", "model_url", "scale"} for u in ups)
    tiny = by_name["4x-tiny"]
    assert tiny["model_path"].endswith("ESRGAN/4x-tiny.pth") and tiny["scale"] == 4 and tiny["model_url"] is None
    assert by_name["Lanczos"]["model_path"] is None and by_name["Lanczos"]["scale"] is None
    assert get(server, "/latent-upscale-modes").json() == [{"name": n} for n in LATENT_UPSCALERS]
    assert LATENT_UPSCALERS[0] == "Latent"


# -- extras ---------------------------------------------------------------------------------------


def test_single_image_model_upscale_keeps_the_parameters(server):
    src = with_parameters(pattern(64, 48), "a red cube\nSteps: 3, Seed: 55")
    # resize_mode 0: the w/h fields are ignored (A1111 clients send 512 by default)
    info, out = single(server, image=src, upscaler_1="4x-tiny", upscaling_resize=2, upscaling_resize_w=512,
                       upscaling_resize_h=512, gfpgan_visibility=0.5, codeformer_weight=0.5, upscale_first=True,
                       show_extras_results=True, upscaling_crop=True)
    assert out.size == (128, 96)
    text = out.info["parameters"]
    assert "Seed: 55" in text and "Postprocess upscaler: 4x-tiny" in text and "Postprocess upscale by: 2" in text
    assert "Postprocess upscale by: 2" in info and "Warning: gfpgan_visibility=0.5 ignored: face restoration" in info
    assert "codeformer" not in info  # the weight alone does nothing


def test_single_image_resize_to(server):
    src = b64(pattern(64, 48))
    info, out = single(server, image=src, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                       upscaler_1="Lanczos", upscaling_resize=0.1,  # the factor is ignored in resize_mode 1
                       upscaling_crop=False)
    assert out.size == (100, 100) and "Postprocess upscale to: 100x100" in info
    assert "upscaling_crop=False ignored: the result is always cropped" in info
    info, out = single(server, image=src, resize_mode=1, upscaling_resize_w=128, upscaling_resize_h=0,
                       upscaler_1="Lanczos", upscaling_crop=False)
    assert out.size == (128, 96) and "upscaling_crop" not in info  # one side: nothing to crop
    r = post(server, "/extra-single-image", {"image": src, "resize_mode": 1, "upscaling_resize_w": 0})
    assert r.status_code == 422 and "resize_mode 1" in r.json()["detail"], r.text


def test_batch_images_are_upscaled_and_saved(server):
    before = set(server.outputs_dir.glob("extras/*/*.png"))
    r = post(server, "/extra-batch-images", {
        "imageList": [{"data": b64(pattern(64, 64)), "name": "a.png"},
                      {"data": "data:image/png;base64," + b64(pattern(32, 48)), "name": "b.png"}],
        "upscaler_1": "4x-tiny", "upscaling_resize": 1.5})
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"html_info", "images"}
    assert [decode(b).size for b in data["images"]] == [(96, 96), (48, 72)]
    new = set(server.outputs_dir.glob("extras/*/*.png")) - before
    assert len(new) == 2 and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.parent.name) for p in new), new
    assert sorted(Image.open(p).size for p in new) == [(48, 72), (96, 96)]


def test_second_upscaler_blend(server):
    src = b64(pattern(32, 32))
    _, nearest = single(server, image=src, upscaler_1="Nearest", upscaling_resize=2)
    _, lanczos = single(server, image=src, upscaler_1="Lanczos", upscaling_resize=2)
    _, blend = single(server, image=src, upscaler_1="Nearest", upscaler_2="Lanczos",
                      extras_upscaler_2_visibility=0.5, upscaling_resize=2)
    expected = Image.blend(nearest.convert("RGB"), lanczos.convert("RGB"), 0.5)
    diff = np.abs(np.asarray(blend.convert("RGB"), int) - np.asarray(expected, int))
    assert blend.size == (64, 64) and diff.max() <= 1
    assert "Postprocess upscaler 2: Lanczos" in blend.info["parameters"]


def _extras_case(case: str) -> tuple[str, dict]:
    good = b64(pattern(32, 32))
    return {
        "unknown upscaler": ("/extra-single-image", {"image": good, "upscaler_1": "8x-missing"}),
        "unknown second": ("/extra-single-image", {"image": good, "upscaler_2": "8x-missing",
                                                   "extras_upscaler_2_visibility": 0.5}),
        "no image": ("/extra-single-image", {"upscaler_1": "Lanczos"}),
        "garbage base64": ("/extra-single-image", {"image": "not base64 !!"}),
        "not an image": ("/extra-single-image", {"image": base64.b64encode(b"hello").decode()}),
        "too big": ("/extra-single-image", {"image": b64(Image.new("RGB", (1100, 1000))), "upscaling_resize": 8}),
        "factor": ("/extra-single-image", {"image": good, "upscaling_resize": 9}),
        "resize_mode": ("/extra-single-image", {"image": good, "resize_mode": 2}),
        "batch garbage": ("/extra-batch-images", {"imageList": [{"data": good, "name": "a"}, {"data": "%%"}]}),
        "batch not object": ("/extra-batch-images", {"imageList": [good]}),
        "batch empty": ("/extra-batch-images", {"imageList": []}),
        "batch missing": ("/extra-batch-images", {}),
    }[case]


@pytest.mark.parametrize("case, status, words", [
    ("unknown upscaler", 422, ["8x-missing", "Available", "Lanczos", "4x-tiny"]),
    ("unknown second", 422, ["8x-missing", "4x-tiny"]),
    ("no image", 400, ["image:", "base64"]),
    ("garbage base64", 400, ["image:", "base64"]),
    ("not an image", 400, ["image:", "not a readable image"]),
    ("too big", 422, ["8800x8000", "8192"]),
    ("factor", 422, ["upscaling_resize", "8"]),
    ("resize_mode", 422, ["resize_mode", "1"]),
    ("batch garbage", 400, ["imageList[1].data", "base64"]),
    ("batch not object", 400, ["imageList[0]", "data"]),
    ("batch empty", 422, ["imageList", "required"]),
    ("batch missing", 422, ["imageList", "required"]),
])
def test_bad_extras_input_is_4xx_with_reason(server, case, status, words):
    path, body = _extras_case(case)
    r = post(server, path, body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail


# -- tiled SD upscale -----------------------------------------------------------------------------


def test_sd_upscale(server):
    r = studio_post(server, "/sd-upscale", {
        "image": b64(pattern(64, 64)), "prompt": "a red cube", "upscaling_resize": 2, "upscaler_1": "Lanczos",
        "tile_width": 64, "tile_height": 64, "tile_padding": 8, "steps": 2, "denoising_strength": 0.3, "seed": 7,
        "sd_model_checkpoint": "tiny-sd15", "foo": 1})
    assert r.status_code == 200, r.text
    data = r.json()
    (out,) = [decode(b) for b in data["images"]]
    info = json.loads(data["info"])
    assert out.size == (128, 128) and (info["width"], info["height"]) == (128, 128)
    assert "Tile width: 64" in info["infotexts"][0] and "Tile width: 64" in out.info["parameters"]
    assert info["seed"] == 7 and any("foo" in w for w in info["warnings"])
    assert data["parameters"]["image"] is None and data["parameters"]["tile_width"] == 64


@pytest.mark.parametrize("body, status, words", [
    ({"upscaling_resize": 1.5, "tile_width": 128, "tile_height": 128}, 422, ["128x128 tile", "96x96"]),
    ({"sd_model_checkpoint": "no-such-model"}, 404, ["no-such-model", "tiny-sd15"]),
    ({"upscaler_1": "8x-missing"}, 422, ["8x-missing", "4x-tiny"]),
    ({"image": "%%"}, 400, ["image:", "base64"]),
    ({"tile_width": 10}, 422, ["tile_width", "64"]),
])
def test_bad_sd_upscale_input_is_4xx_with_reason(server, body, status, words):
    r = studio_post(server, "/sd-upscale", {"image": b64(pattern(64, 64)), "tile_width": 64, "tile_height": 64,
                                            **body})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail


# -- in-process: job failures map like txt2img ------------------------------------------------------


@pytest.mark.unit  # in a module of server tests
@pytest.mark.parametrize("error, status", [("oom", 422), ("queue", 429), ("crash", 500)])
def test_extras_failure_status_mapping(error, status):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipelines.jobs import JobRunner, QueueFull
    from ui.api import build_api

    exc, runner = _fake_error(error), JobRunner().start()

    def submit_extras(params, images, *, owner=None):
        if isinstance(exc, QueueFull):
            raise exc
        return runner.submit(lambda ctx: (_ for _ in ()).throw(exc), kind="extras", owner=owner)

    app = FastAPI()
    app.include_router(build_api(SimpleNamespace(submit_extras=submit_extras)))
    try:
        r = TestClient(app).post("/sdapi/v1/extra-single-image", json={"image": b64(pattern(8, 8))})
    finally:
        runner.stop()
    assert r.status_code == status, r.text
    assert r.json()["detail"] and r.json()["error"]
