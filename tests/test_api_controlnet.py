"""The A1111 ControlNet extension's API over HTTP on the real server (tiny models and tiny ControlNets, CPU)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from tests.conftest import Server
from tests.tiny_models import build_controlnet

pytestmark = pytest.mark.server  # the real app over HTTP

T = 120


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-cn")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-sd15")
    build_controlnet(tiny_store / "tiny-sd15", root / "models" / "ControlNet" / "control_tiny_sd15_canny")
    build_controlnet(tiny_store / "tiny-sd15", root / "models" / "ControlNet" / "control_tiny_sd15_openpose.safetensors",
                     single_file=True, seed=1)
    build_controlnet(tiny_store / "tiny-sdxl", root / "models" / "ControlNet" / "control_tiny_xl_canny")
    with Server(root / "models", root / "outputs", "--api", "--ckpt", "tiny-sd15") as server:
        yield server


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def shape(size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(im).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="white")
    return im


POSE = {"canvas_width": 64, "canvas_height": 64, "people": [{"pose_keypoints_2d": [
    32, 8, 1, 32, 18, 1, 22, 18, 1, 18, 30, 1, 16, 42, 1, 42, 18, 1, 46, 30, 1, 48, 42, 1,
    26, 40, 1, 26, 52, 1, 26, 62, 1, 38, 40, 1, 38, 52, 1, 38, 62, 1, 30, 6, 1, 34, 6, 1, 28, 7, 1, 36, 7, 1]}]}


def cn_body(*units, **body):
    return {"prompt": "a ball", "steps": 3, "seed": 11, "cfg_scale": 5,
            "alwayson_scripts": {"controlnet": {"args": list(units)}}, **body}


def post(server, path, body):
    return requests.post(server.url + path, json=body, timeout=T)


def titles(server) -> list[str]:
    r = requests.get(server.url + "/controlnet/model_list", timeout=T)
    assert r.status_code == 200, r.text
    return r.json()["model_list"]


def test_lists(server):
    models = titles(server)
    assert any(t.startswith("control_tiny_sd15_canny [") for t in models)
    assert any(t.startswith("control_tiny_sd15_openpose [") for t in models)
    modules = requests.get(server.url + "/controlnet/module_list", timeout=T).json()
    assert {"none", "canny", "depth_midas", "normal_bae", "openpose", "openpose_full"} <= set(modules["module_list"])
    assert modules["module_detail"]["canny"]["sliders"][1]["name"] == "Canny low threshold"
    types = requests.get(server.url + "/controlnet/control_types", timeout=T).json()["control_types"]
    assert types["Canny"]["default_option"] == "canny"
    assert types["Canny"]["default_model"].startswith("control_tiny_sd15_canny")
    assert not any("xl" in m for m in types["Canny"]["model_list"])  # filtered to the checkpoint's family
    assert requests.get(server.url + "/controlnet/version", timeout=T).json() == {"version": 2}


def test_detect_canny(server):
    r = post(server, "/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": [b64(shape())],
                                            "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
                                            "controlnet_threshold_b": 200})
    assert r.status_code == 200, r.text
    (m,) = [np.asarray(decode(x).convert("L")) for x in r.json()["images"]]
    assert m.shape == (64, 64) and m[32, 32] == 0 and m.max() == 255  # edges on the circle, not inside


def test_txt2img_with_a_unit_follows_the_a1111_extension_answer(server):
    canny = next(t for t in titles(server) if "canny" in t and "xl" not in t)
    plain = post(server, "/sdapi/v1/txt2img", cn_body())
    assert plain.status_code == 200, plain.text
    unit = {"enabled": True, "image": b64(shape()), "module": "canny", "model": canny, "weight": 1.2,
            "resize_mode": 1, "processor_res": 64, "control_mode": 0, "guidance_start": 0, "guidance_end": 1,
            "pixel_perfect": False, "lowvram": False, "threshold_a": 100, "threshold_b": 200}
    r = post(server, "/sdapi/v1/txt2img", cn_body(unit))
    assert r.status_code == 200, r.text
    data, info = r.json(), json.loads(r.json()["info"])
    assert len(data["images"]) == 2  # the image, then the detected map (the extension's default)
    assert "ControlNet 0: " in info["infotexts"][0] and f"Model: {canny}" in info["infotexts"][0]
    assert info["warnings"] == []
    image, detected = decode(data["images"][0]), decode(data["images"][1])
    assert np.asarray(detected.convert("L")).max() == 255
    assert np.abs(np.asarray(image, np.int16) - np.asarray(decode(plain.json()["images"][0]), np.int16)).mean() > 1


def test_pose_json_unit_and_img2img_input_as_control(server):
    pose_model = next(t for t in titles(server) if "openpose" in t)
    r = post(server, "/sdapi/v1/txt2img", cn_body({"pose_json": POSE, "model": pose_model}))
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1  # module none: no detected map appended
    assert "Module: none" in json.loads(r.json()["info"])["infotexts"][0]
    # no image in the unit: img2img's input is the control image; the model named without its [hash]
    body = cn_body({"module": "canny", "model": "control_tiny_sd15_canny", "processor_res": 64},
                   init_images=[b64(shape())], denoising_strength=0.5)
    r = post(server, "/sdapi/v1/img2img", body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2


@pytest.mark.parametrize("unit, words", [
    ({"module": "canny", "model": "None"}, ["unit 0", "no control image"]),
    ({"module": "canny", "model": "None", "image": "IMAGE"}, ["unit 0", "no model"]),
    ({"module": "canny", "model": "control_tiny_xl_canny", "image": "IMAGE"}, ["SDXL", "SD 1.x"]),
    ({"module": "canny", "model": "nope", "image": "IMAGE"}, ["unknown model", "nope"]),
    ({"module": "canny", "model": "control_tiny_sd15_canny", "image": "IMAGE", "guidance_start": 0.9,
      "guidance_end": 0.1}, ["guidance_start"]),
    ({"module": "magic", "model": "control_tiny_sd15_canny", "image": "IMAGE"}, ["unknown preprocessor"]),
    ({"module": "canny", "model": "control_tiny_sd15_canny", "image": "bm90IGFuIGltYWdl"}, ["args[0].image"]),
    ({"module": "depth_midas", "model": "control_tiny_sd15_canny", "image": "IMAGE"},
     ["dpt_hybrid-midas-501f0c75.pt", "annotators"]),
])
def test_bad_units_are_4xx_with_reason_and_the_server_keeps_working(server, unit, words):
    unit = {k: (b64(shape()) if v == "IMAGE" else v) for k, v in unit.items()}
    r = post(server, "/sdapi/v1/txt2img", cn_body(unit))
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    for w in words:
        assert w in r.json()["detail"], (w, r.json())
    assert post(server, "/sdapi/v1/txt2img", cn_body()).status_code == 200


def test_disabled_units_and_other_scripts_are_ignored(server):
    body = cn_body({"enabled": False, "module": "canny", "model": "None"})
    body["alwayson_scripts"]["ADetailer"] = {"args": []}
    r = post(server, "/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "ControlNet" not in info["infotexts"][0]
    assert any("ADetailer" in w for w in info["warnings"])
