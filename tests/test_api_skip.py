"""Skip and Interrupt over the REST API mid-job, on the real server (tiny model, CPU): the request answers, the
finished images are on disk, and the next job runs. The tiled SD upscale once killed the device worker on Skip."""

from __future__ import annotations

import shutil
import threading

import pytest
import requests
from PIL import Image

from pipelines.outputs import read_png_info
from tests.conftest import Server
from tests.test_api import AUTH, T, b64, decode, get, pattern, post
from tests.waiting import wait_for

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-skip")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    with Server(root / "models", root / "outputs", "--api", "--ckpt", "tiny-sd15", "--auth", ":".join(AUTH)) as s:
        yield s


def in_background(fn):
    box = {}
    thread = threading.Thread(target=lambda: box.update(answer=fn()), daemon=True)
    thread.start()
    return thread, box


def press_when(server, what: str, label_prefix: str) -> None:
    """Press `what` (skip | interrupt) once the caller's job reports progress at `label_prefix`."""
    def at_label():
        return (get(server, "/progress").json().get("textinfo") or "").startswith(label_prefix)

    wait_for(at_label, timeout=T, interval=0.05, what=f"progress at {label_prefix!r}")
    assert post(server, f"/{what}").status_code == 200


def next_job_runs(server):
    r = post(server, "/txt2img", {"prompt": "after", "steps": 2, "width": 64, "height": 64, "seed": 9})
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (64, 64)


@pytest.mark.parametrize("what", ["skip", "interrupt"])
def test_skip_or_interrupt_during_a_tiled_sd_upscale_answers_and_the_worker_goes_on(server, what):
    body = {"image": b64(pattern(96, 96)), "prompt": "a city", "steps": 12, "denoising_strength": 0.5, "seed": 3,
            "upscaler_1": "Lanczos", "upscaling_resize": 2, "tile_width": 64, "tile_height": 64, "tile_padding": 8}
    thread, box = in_background(lambda: requests.post(server.url + "/studio/v1/sd-upscale", json=body, timeout=T,
                                                      auth=AUTH))
    press_when(server, what, "tile 2/")
    thread.join(T)
    assert not thread.is_alive(), "the request never answered"
    answer = box["answer"]
    if what == "skip":  # the image with the tiles redrawn so far, saved
        assert answer.status_code == 200, answer.text
        image = decode(answer.json()["images"][0])
        assert image.size == (192, 192) and "stopped after" in image.info["parameters"]
        saved = sorted(server.outputs_dir.rglob("extras/*/*.png"))
        assert saved and "stopped after" in read_png_info(Image.open(saved[-1]))["info"]
    else:  # interrupted before the end: nothing half-made is saved, and the answer says so
        assert answer.status_code == 200, answer.text
        assert answer.json()["images"] == []
    next_job_runs(server)


@pytest.mark.parametrize("what", ["skip", "interrupt"])
def test_skip_or_interrupt_during_txt2img_keeps_the_finished_images(server, what):
    body = {"prompt": "a cube", "steps": 8, "width": 64, "height": 64, "n_iter": 4, "seed": 100}
    thread, box = in_background(lambda: post(server, "/txt2img", body))
    press_when(server, what, "batch 2/")
    thread.join(T)
    assert not thread.is_alive()
    answer = box["answer"]
    assert answer.status_code == 200, answer.text
    images = answer.json()["images"]
    assert 1 <= len(images) <= 3  # batch 1 finished; batch 2 skipped (skip goes on, interrupt stops)
    for image in images:
        seed = int(read_png_info(decode(image))["parameters"]["seed"])
        assert any(p.name.endswith(f"-{seed}.png") for p in server.outputs_dir.rglob("txt2img/*/*.png"))
    next_job_runs(server)


def test_clip_skip_past_the_text_encoder_answers_422(server):
    r = post(server, "/txt2img", {"prompt": "x", "steps": 1, "width": 64, "height": 64, "clip_skip": 9})
    assert r.status_code == 422 and "clip_skip must be between 1 and" in r.text
    next_job_runs(server)
