"""The A1111-compatible REST API, called over HTTP on the real server (tiny models, CPU).

One server, started with --auth, is shared by the module (start-up dominates the cost); tests that switch
models switch back.
Error mapping for failures that are hard to provoke for real (out of memory, full queue) is checked
in-process against a fake studio.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import requests
from PIL import Image

from pipelines.params import PARAMS
from tests.conftest import ROOT, Server

API = "/sdapi/v1"
T = 120  # seconds; every HTTP call is bounded
AUTH = ("u", "p")


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-sd15")
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-sd15-b")
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-broken")
    (ckpts / "tiny-broken" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0garbage" * 64)
    s = Server(root / "models", root / "outputs", "--api", "--ckpt", "tiny-sd15", "--auth", ":".join(AUTH))
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def post(server, path, body=None, **kw):
    return requests.post(server.url + API + path, json=body, timeout=T, auth=AUTH, **kw)


def get(server, path, **kw):
    return requests.get(server.url + API + path, timeout=T, auth=AUTH, **kw)


def txt2img(server, **body):
    r = post(server, "/txt2img", {"prompt": "a red cube", **body})
    assert r.status_code == 200, r.text
    data = r.json()
    return data, json.loads(data["info"]), [decode(b) for b in data["images"]]


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


# -- txt2img ------------------------------------------------------------------------------------


def test_txt2img_defaults_come_from_params(server):
    before = set(server.outputs_dir.glob("txt2img/*/*.png"))
    data, info, images = txt2img(server, seed=1234, steps=3)
    assert len(images) == 1 and images[0].size == (64, 64)  # native size of the tiny model
    assert "parameters" in images[0].info and "Seed: 1234" in images[0].info["parameters"]
    assert info["seed"] == 1234 and info["all_seeds"] == [1234] and len(info["infotexts"]) == 1
    assert (info["width"], info["height"]) == (64, 64) and info["warnings"] == []
    for name in ("sampler_name", "scheduler", "cfg_scale", "batch_size", "n_iter", "clip_skip", "subseed_strength"):
        assert data["parameters"][name] == PARAMS[name].default, name
        if name != "scheduler":  # info names the schedule "Automatic" resolved to
            assert info[name] == PARAMS[name].default, name
    assert data["parameters"]["width"] is None and data["parameters"]["steps"] == 3

    new = set(server.outputs_dir.glob("txt2img/*/*.png")) - before
    assert len(new) == 1
    assert any("Seed: 1234" in Image.open(p).info["parameters"] for p in new)


def test_same_seed_same_pixels_and_batches(server):
    _, info, images = txt2img(server, seed=777, steps=2, batch_size=2, n_iter=2, width=96, height=64)
    assert len(images) == 4 and info["all_seeds"] == [777, 778, 779, 780]
    assert all(im.size == (96, 64) for im in images)
    _, info2, again = txt2img(server, seed=777, steps=2, batch_size=2, n_iter=2, width=96, height=64)
    assert info2["all_seeds"] == info["all_seeds"]
    assert [im.tobytes() for im in again] == [im.tobytes() for im in images]


def test_combined_sampler_names_and_sampler_index(server):
    _, info, images = txt2img(server, seed=1, steps=3, sampler_name="DPM++ 2M Karras")
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras") and len(images) == 1
    _, info, _ = txt2img(server, seed=1, steps=3, sampler_index="Euler a")  # old field, sampler_name absent
    assert info["sampler_name"] == "Euler a"
    _, info, _ = txt2img(server, seed=1, steps=3, sampler_name="Euler", sampler_index="Euler a")
    assert info["sampler_name"] == "Euler"


def test_unsupported_fields_are_ignored_with_warnings(server):
    data, info, images = txt2img(server, seed=2, steps=2, enable_hr=True, hr_scale=2, styles=[], send_images=False,
                                 override_settings={"CLIP_stop_at_last_layers": 2, "sd_vae": "x"}, foo=1)
    assert images == [] and info["clip_skip"] == 2
    text = " | ".join(info["warnings"])
    assert "enable_hr" in text and "sd_vae" in text and "foo" in text and "hr_scale" not in text


def test_override_model_applies_to_one_request(server):
    _, info, _ = txt2img(server, seed=3, steps=2, override_settings={"sd_model_checkpoint": "tiny-sd15-b"})
    assert info["sd_model_name"] == "tiny-sd15-b"
    assert get(server, "/options").json()["sd_model_checkpoint"].startswith("tiny-sd15 ")


@pytest.mark.parametrize("body, status, words", [
    ({"steps": 0}, 422, ["steps", "1"]),
    ({"steps": 151}, 422, ["steps", "150"]),
    ({"width": 65}, 422, ["width", "8"]),
    ({"cfg_scale": 31}, 422, ["cfg_scale", "30"]),
    ({"sampler_name": "Nope"}, 422, ["Nope", "Euler"]),
    ({"override_settings": {"sd_model_checkpoint": "no-such-model"}}, 404, ["no-such-model", "tiny-sd15"]),
    ([1, 2], 422, ["object"]),
])
def test_bad_txt2img_input_is_4xx_with_reason(server, body, status, words):
    r = post(server, "/txt2img", {"prompt": "x", **body} if isinstance(body, dict) else body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail


def test_malformed_json_and_garbage_image(server):
    r = requests.post(server.url + API + "/txt2img", data="{bad json", timeout=T, auth=AUTH,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = post(server, "/png-info", {"image": "not base64 !!"})
    assert r.status_code == 400 and "base64" in r.json()["detail"]
    r = post(server, "/png-info", {"image": base64.b64encode(b"hello").decode()})
    assert r.status_code == 400 and "image" in r.json()["detail"]
    assert get(server, "/sd-models").status_code == 200  # still serving


# -- models, options, lists ---------------------------------------------------------------------


def test_lists(server):
    models = get(server, "/sd-models").json()
    tiny = next(m for m in models if m["model_name"] == "tiny-sd15")
    assert set(tiny) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert tiny["hash"] == tiny["sha256"][:10] and tiny["title"] == f"tiny-sd15 [{tiny['hash']}]"
    assert post(server, "/refresh-checkpoints").status_code == 200
    names = [s["name"] for s in get(server, "/samplers").json()]
    assert {"Euler a", "DPM++ 2M"} <= set(names)
    assert "karras" in [s["name"] for s in get(server, "/schedulers").json()]
    assert get(server, "/sd-vae").json() == []
    assert isinstance(get(server, "/memory").json(), dict)


def test_options_switch_model(server):
    opts = get(server, "/options").json()
    assert opts["sd_model_checkpoint"].startswith("tiny-sd15 [")
    try:
        r = post(server, "/options", {"sd_model_checkpoint": "tiny-sd15-b"})
        assert r.status_code == 200, r.text
        assert get(server, "/options").json()["sd_model_checkpoint"].startswith("tiny-sd15-b")
        _, info, _ = txt2img(server, seed=4, steps=2)
        assert info["sd_model_name"] == "tiny-sd15-b"

        r = post(server, "/options", {"sd_model_checkpoint": "no-such-model"})
        assert r.status_code == 404 and "no-such-model" in r.json()["detail"]
        r = post(server, "/options", {"sd_model_checkpoint": "tiny-broken"})
        assert 400 <= r.status_code < 500 and "tiny-broken" in r.json()["detail"], r.text
        # a failed switch keeps the previous model usable
        assert get(server, "/options").json()["sd_model_checkpoint"].startswith("tiny-sd15-b")
    finally:
        assert post(server, "/options", {"sd_model_checkpoint": "tiny-sd15"}).status_code == 200


def test_png_info_round_trip(server):
    data, info, _ = txt2img(server, prompt="a (blue:1.2) sphere", seed=4242, steps=2)
    for encoded in (data["images"][0], "data:image/png;base64," + data["images"][0]):
        r = post(server, "/png-info", {"image": encoded})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["parameters"]["prompt"] == "a (blue:1.2) sphere" and out["parameters"]["seed"] == 4242
        assert "parameters" not in out["items"] and out["info"] == info["infotexts"][0]


# -- progress and interrupt ---------------------------------------------------------------------


def test_progress_idle(server):
    p = get(server, "/progress").json()
    assert set(p) >= {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert p["progress"] == 0 and p["current_image"] is None
    assert {"sampling_step", "sampling_steps", "job_count", "interrupted", "skipped"} <= set(p["state"])


def test_interrupt_returns_images_so_far(server):
    box = {}
    worker = threading.Thread(target=lambda: box.update(r=post(server, "/txt2img", {
        "prompt": "long", "seed": 9, "n_iter": 30})))  # steps omitted: PARAMS default
    worker.start()
    deadline, seen = time.time() + 60, None
    while time.time() < deadline:
        p = get(server, "/progress").json()
        if p["state"]["sampling_step"] > 0:
            seen = p
            break
        time.sleep(0.05)
    assert seen is not None, "the job never reported progress"
    assert 0 < seen["progress"] <= 1 and seen["state"]["sampling_steps"] == 30 * PARAMS["steps"].default
    assert seen["current_image"] is None or decode(seen["current_image"]).size == (64, 64)
    assert post(server, "/interrupt").status_code == 200
    worker.join(T)
    r = box["r"]
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) < 30 and len(info["all_seeds"]) == len(r.json()["images"])
    assert r.json()["parameters"]["steps"] == info["steps"] == PARAMS["steps"].default
    assert get(server, "/progress").json()["state"]["sampling_step"] == 0  # idle again


# -- auth -----------------------------------------------------------------------------------------


def test_auth(server):
    r = requests.get(server.url + API + "/sd-models", timeout=T)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(server.url + API + "/sd-models", auth=("u", "wrong"), timeout=T).status_code == 401
    assert requests.post(server.url + API + "/txt2img", data="{bad", timeout=T).status_code == 401
    assert requests.post(server.url + API + "/interrupt", timeout=T).status_code == 401
    r = get(server, "/sd-models")
    assert r.status_code == 200 and any(m["model_name"] == "tiny-sd15" for m in r.json())


# -- in-process: status mapping and imports -----------------------------------------------------


class OutOfMemory(RuntimeError):
    pass


class LoadError(RuntimeError):
    pass


class FakeStudio:
    """Just enough of Studio for txt2img: every job fails with `error`."""

    def __init__(self, error):
        from pipelines.jobs import JobRunner

        self.error = error
        self.runner = JobRunner().start()

    def find_model(self, name):
        return SimpleNamespace(name=name)

    def submit_txt2img(self, params, *, model=None, owner=None):
        from pipelines.jobs import QueueFull

        if isinstance(self.error, QueueFull):
            raise self.error

        def fail(ctx):
            raise self.error

        return self.runner.submit(fail, kind="txt2img", owner=owner)


def _fake_error(error):
    from pipelines.jobs import QueueFull

    return {"oom": OutOfMemory("Out of device memory at 2048x2048"), "queue": QueueFull("16 jobs already waiting"),
            "load": LoadError("Could not load x: bad weights"), "crash": KeyError("boom")}[error]


@pytest.mark.parametrize("error, status", [("oom", 422), ("queue", 429), ("load", 422), ("crash", 500)])
def test_failure_status_mapping(error, status):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ui.api import build_api

    studio = FakeStudio(_fake_error(error))
    app = FastAPI()
    app.include_router(build_api(studio))
    try:
        r = TestClient(app).post(API + "/txt2img", json={"prompt": "x"})
    finally:
        studio.runner.stop()
    assert r.status_code == status, r.text
    assert r.json()["detail"] and r.json()["error"]


def test_api_module_does_not_import_torch():
    code = "import sys, ui.api; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
