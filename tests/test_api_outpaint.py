"""Outpainting over the REST API on the real server (tiny models, CPU): A1111's "Outpainting mk2" and "Poor man's
outpainting" scripts on /sdapi/v1/img2img (positional script_args) and our readable /studio/v1/outpaint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from tests.conftest import Server
from tests.test_api import AUTH, T, b64, decode, post

pytestmark = pytest.mark.server  # the real app over HTTP


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-outpaint")
    for name in ("tiny-sd15", "tiny-sd15-inpainting"):
        shutil.copytree(tiny_store / name, root / "models" / "Stable-diffusion" / name)
    args = ("--api", "--ckpt", "tiny-sd15", "--auth", ":".join(AUTH))
    with Server(root / "models", root / "outputs", *args) as server:
        yield server


def picture(size=(64, 64)):
    img = Image.new("RGB", size, (90, 140, 200))
    ImageDraw.Draw(img).ellipse([16, 16, 48, 48], fill=(220, 120, 40))
    return img


def studio_post(server, body):
    return requests.post(server.url + "/studio/v1/outpaint", json=body, timeout=T, auth=AUTH)


BASE = {"prompt": "a beach", "steps": 2, "seed": 4, "sampler_name": "Euler", "denoising_strength": 0.75}


def test_mk2_script_extends_every_chosen_side(server):
    img = picture()
    r = post(server, "/img2img", {**BASE, "init_images": [b64(img)], "script_name": "Outpainting mk2",
                                  "script_args": ["", 16, 4, ["left", "down"], 1.0, 0.05]})
    assert r.status_code == 200, r.text
    out = decode(r.json()["images"][0])
    assert out.size == (80, 80)
    assert np.array_equal(np.asarray(out.convert("RGB").crop((16, 0, 80, 64))), np.asarray(img))
    info = json.loads(r.json()["info"])
    assert "Outpaint fill: matched noise" in info["infotexts"][0]
    assert not any("script" in w for w in info["warnings"]), info["warnings"]


def test_poor_mans_script_with_a_fill_index(server):
    img = picture()
    r = post(server, "/img2img", {**BASE, "init_images": [b64(img)], "script_name": "Poor man's outpainting",
                                  "script_args": [8, 4, 1, ["right", "up"]]})
    assert r.status_code == 200, r.text
    out = decode(r.json()["images"][0])
    assert out.size == (72, 72)
    assert np.array_equal(np.asarray(out.convert("RGB").crop((0, 8, 64, 72))), np.asarray(img))
    assert "Outpaint fill: original" in json.loads(r.json()["info"])["infotexts"][0]


def test_studio_route_with_readable_fields_and_an_inpainting_checkpoint(server):
    img = picture()
    r = studio_post(server, {**BASE, "image": b64(img), "left": 8, "right": 16, "fill": "fill", "overlap": 4,
                             "step": 8, "sd_model_checkpoint": "tiny-sd15-inpainting"})
    assert r.status_code == 200, r.text
    data = r.json()
    out = decode(data["images"][0])
    assert out.size == (88, 64)
    assert np.array_equal(np.asarray(out.convert("RGB").crop((8, 0, 72, 64))), np.asarray(img))
    assert data["parameters"]["image"] is None and data["parameters"]["outpaint_right"] == 16
    assert "Outpaint steps: 2" in json.loads(data["info"])["infotexts"][0]


@pytest.mark.parametrize("body, words", [
    ({"left": -8}, "left"),
    ({"right": 16, "fill": "sideways"}, "fill"),
    ({"right": 16, "overlap": 1000}, "overlap"),
    ({}, "extend at least one side"),
    ({"right": 4000}, "right"),
    ({"right": 16, "outpaint_right": 16}, "sent twice"),
])
def test_bad_studio_values_are_4xx_naming_the_field(server, body, words):
    r = studio_post(server, {**BASE, "image": b64(picture()), **body})
    assert 400 <= r.status_code < 500, r.text
    assert words in r.json()["detail"], r.json()


@pytest.mark.parametrize("script, args, words", [
    ("Outpainting mk2", ["", "wide", 4, ["left"], 1, 0.05], "script_args[1] (pixels)"),
    ("Outpainting mk2", ["", 16, 4, ["sideways"], 1, 0.05], "script_args[3] (direction)"),
    ("Outpainting mk2", ["", 16, 4, ["left"], 9, 0.05], "script_args[4] (noise_q)"),
    ("Poor man's outpainting", [16, 4, 7, ["left"]], "script_args[2] (inpainting_fill)"),
    ("Poor man's outpainting", [16, 99, 0, ["left"]], "script_args[1] (mask_blur)"),
    ("Poor man's outpainting", [16, 4, 0, []], "direction"),
])
def test_bad_script_args_are_4xx_naming_the_argument(server, script, args, words):
    r = post(server, "/img2img", {**BASE, "init_images": [b64(picture())], "script_name": script,
                                  "script_args": args})
    assert 400 <= r.status_code < 500, r.text
    assert words in r.json()["detail"], r.json()


def test_missing_image_is_4xx(server):
    r = studio_post(server, {**BASE, "right": 16})
    assert 400 <= r.status_code < 500 and "image" in r.json()["detail"]
