"""The infinite zoom over the REST API on the real server (tiny model, CPU): POST /studio/v1/zoom and /zoom/plan."""

from __future__ import annotations

import base64
import shutil

import pytest
import requests

from pipelines import zoom
from tests.conftest import Server
from tests.test_api import AUTH, T, b64, decode

pytestmark = pytest.mark.server  # the real app over HTTP

BASE = {"prompt": "0: a forest, 1: a castle", "steps": 2, "width": 64, "height": 64, "seed": 3, "zoom_factor": 0.5,
        "zoom_keyframes": 3, "zoom_frames_per_keyframe": 3, "zoom_fps": 6}


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-zoom")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    with Server(root / "models", root / "outputs", "--api", "--ckpt", "tiny-sd15", "--auth", ":".join(AUTH)) as s:
        yield s


def studio_post(server, path, body):
    return requests.post(server.url + "/studio/v1" + path, json=body, timeout=T, auth=AUTH)


def test_zoom_answers_video_gif_and_keyframes(server, tmp_path):
    from PIL import Image

    start = Image.new("RGB", (64, 64), (30, 120, 60))
    r = studio_post(server, "/zoom", {**BASE, "image": b64(start)})
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["keyframes"]) == len(data["infotexts"]) == 3
    assert data["infotexts"][1].startswith("a castle\n") and "Zoom factor: 0.5" in data["infotexts"][1]
    assert decode(data["keyframes"][2]).size == (64, 64)
    video = tmp_path / "zoom.mp4"
    video.write_bytes(base64.b64decode(data["video"]))
    back = zoom.read_video(video)  # read back with PyAV
    assert back["frames"] == data["info"]["frames"] == 2 * 3 + 1 and back["size"] == (64, 64)
    assert data["video_path"].endswith(".mp4") and "/zoom/" in data["video_path"]
    gif = tmp_path / "zoom.gif"
    gif.write_bytes(base64.b64decode(data["gif"]))
    assert Image.open(gif).n_frames == 7
    assert data["info"]["cost"]["denoising_steps"] == 4 and not data["info"]["interrupted"]


def test_zoom_plan_shows_the_cost(server):
    r = studio_post(server, "/zoom/plan", {**BASE, "zoom_keyframes": 8, "steps": 20})
    assert r.status_code == 200, r.text
    c = r.json()
    assert (c["keyframes"], c["denoising_steps"], c["frames"]) == (8, 20 * 8, 7 * 3 + 1)
    assert "160 denoising steps" in c["text"]


@pytest.mark.parametrize("body, field", [
    ({"zoom_factor": 0.1}, "zoom_factor"), ({"zoom_keyframes": 1}, "zoom_keyframes"),
    ({"zoom_format": "avi"}, "zoom_format"), ({"prompt": "0: a, 7: b"}, "prompt"), ({"zoom_fps": 0}, "zoom_fps"),
    ({"image": "not base64!"}, "image"), ({"frames": 3}, "frames"),
])
def test_bad_zoom_requests_name_the_field(server, body, field):
    r = studio_post(server, "/zoom", {**BASE, **body})
    assert 400 <= r.status_code < 500, r.text
    assert field in r.json()["detail"]
