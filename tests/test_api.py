"""The A1111-compatible REST API (txt2img, img2img/inpaint, ...), called over HTTP on the real server
(tiny models, CPU).

One server, started with --auth, is shared by the module (start-up dominates the cost); tests that switch
models switch back.
Error mapping for failures that are hard to provoke for real (out of memory, full queue) is checked
in-process against a fake studio.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from PIL import Image

from pipelines import imageops
from pipelines.params.specs import PARAMS
from tests.conftest import ROOT, Server
from tests.waiting import wait_for

pytestmark = pytest.mark.server  # the real app over HTTP

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
    args = ("--api", "--ckpt", "tiny-sd15", "--auth", ":".join(AUTH))
    with Server(root / "models", root / "outputs", *args) as server:
        yield server


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
    data, info, images = txt2img(server, seed=2, steps=2, restore_faces=True, hr_scale=2, styles=[],
                                 send_images=False, override_settings={"CLIP_stop_at_last_layers": 2,
                                                                       "sd_hypernetwork": "x",
                                                                       "eta_noise_seed_delta": 31337},
                                 foo=1)
    assert images == [] and info["clip_skip"] == 2
    text = " | ".join(info["warnings"])
    assert "restore_faces" in text and "sd_hypernetwork" in text and "foo" in text and "hr_scale" not in text
    assert "eta_noise_seed_delta" not in text  # an override applied, not ignored


def test_hires_fix_fields(server):
    data, info, images = txt2img(server, seed=2, steps=2, enable_hr=True, hr_scale=2, hr_upscaler="Lanczos",
                                 hr_sampler_name="Use same sampler", denoising_strength=0.5)
    assert images[0].size == (128, 128) and not info.get("warnings")
    assert "Hires upscaler: Lanczos" in info["infotexts"][0] and "Hires upscale: 2" in info["infotexts"][0]
    r = post(server, "/txt2img", {"enable_hr": True, "hr_upscaler": "8x-missing", "steps": 2})
    assert r.status_code == 422 and "Unknown upscaler" in r.json()["detail"]


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


# -- img2img and inpaint -----------------------------------------------------------------------


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pattern(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], -1).astype(np.uint8), "RGB")


def square_mask(size: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


INSIDE = np.zeros((64, 64), bool)
INSIDE[16:48, 16:48] = True  # square_mask(64, (16, 16, 48, 48))


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.any(np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB")), axis=-1)


def img2img(server, **body):
    r = post(server, "/img2img", {"prompt": "a red cube", "steps": 4, "seed": 5, **body})
    assert r.status_code == 200, r.text
    data = r.json()
    return data, json.loads(data["info"]), [decode(b) for b in data["images"]]


def new_outputs(server, mode, before):
    new = set(server.outputs_dir.glob(f"{mode}/*/*.png")) - before
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.parent.name) for p in new), new
    return [Image.open(p).info["parameters"] for p in sorted(new)]


def test_img2img_size_follows_the_input_and_is_saved(server):
    before = set(server.outputs_dir.glob("img2img/*/*.png"))
    data, info, images = img2img(server, init_images=[b64(pattern(128, 64))], denoising_strength=0.5)
    (w, h), = [im.size for im in images]
    # the input's aspect near the native 64 px, in multiples of 8 (and no side below the 64 px minimum)
    assert (w, h) == imageops.default_size((128, 64), 64) and w % 8 == 0 and h % 8 == 0 and w > h >= 64
    assert (info["width"], info["height"]) == (w, h) and info["denoising_strength"] == 0.5
    assert info["warnings"] == [] and info["all_seeds"] == [5]
    params = data["parameters"]
    assert params["init_images"] is None and params["mask"] is None and params["width"] is None
    for name in ("resize_mode", "mask_blur", "inpainting_fill", "inpaint_full_res", "sampler_name", "cfg_scale"):
        assert params[name] == PARAMS[name].default, name
    assert "Denoising strength: 0.5" in images[0].info["parameters"]
    texts = new_outputs(server, "img2img", before)
    assert len(texts) == 1 and "Denoising strength: 0.5" in texts[0] and "Seed: 5" in texts[0]

    # explicit size, data: URL prefix
    _, info, images = img2img(server, init_images=["data:image/png;base64," + b64(pattern(128, 64))],
                              width=96, height=64, denoising_strength=0.5)
    assert [im.size for im in images] == [(96, 64)] and (info["width"], info["height"]) == (96, 64)


def test_img2img_strength_zero_returns_the_input_and_include_init_images(server):
    src = b64(pattern(64, 64))
    data, info, images = img2img(server, init_images=[src], denoising_strength=0, include_init_images=True)
    assert len(images) == 1 and images[0].tobytes() == pattern(64, 64).tobytes()
    # A1111: include_init_images echoes init_images (and mask) in "parameters"; the images list is the output
    assert data["parameters"]["init_images"] == [src] and data["parameters"]["mask"] is None
    assert data["parameters"]["include_init_images"] is True


def test_inpaint_repaints_only_the_mask(server):
    src, mask = pattern(64, 64), b64(square_mask(64, (16, 16, 48, 48)))
    before = set(server.outputs_dir.glob("inpaint/*/*.png"))
    _, info, [out] = img2img(server, init_images=[b64(src)], mask=mask, mask_blur=0, denoising_strength=0.75)
    diff = changed(out, src)
    assert out.size == (64, 64) and not diff[~INSIDE].any() and diff[INSIDE].mean() > 0.5
    assert info["warnings"] == [] and info["denoising_strength"] == 0.75
    texts = new_outputs(server, "inpaint", before)
    assert len(texts) == 1 and "Mask blur: 0" in texts[0] and "Denoising strength: 0.75" in texts[0]

    # inpainting_mask_invert=1 (A1111's int): the square is kept, the rest repainted
    _, _, [out] = img2img(server, init_images=[b64(src)], mask=mask, mask_blur=0, denoising_strength=0.75,
                          inpainting_mask_invert=1)
    diff = changed(out, src)
    assert not diff[INSIDE].any() and diff[~INSIDE].mean() > 0.5

    # inpaint_full_res=true ("Only masked"): the padded crop is generated and pasted back inside the mask only
    _, info, [out] = img2img(server, init_images=[b64(src)], mask=mask, mask_blur=0, denoising_strength=0.75,
                             inpaint_full_res=True, inpaint_full_res_padding=8)
    diff = changed(out, src)
    assert out.size == (64, 64) and not diff[~INSIDE].any() and diff[INSIDE].mean() > 0.5
    assert "Inpaint area: Only masked" in info["infotexts"][0]


def test_inpaint_a1111_fields_and_warnings(server):
    src = pattern(64, 64)
    data, info, [out] = img2img(
        server, init_images=[b64(src), b64(src)], mask=b64(square_mask(32, (8, 8, 24, 24))),  # a half-size mask
        mask_blur_x=0, mask_blur_y=0, resize_mode=0, inpainting_fill=1, inpaint_full_res=False,
        denoising_strength=0.75, subseed=3, subseed_strength=0.3, image_cfg_scale=1.5, restore_faces=True,
        sampler_index="Euler a", foo=1)
    text = " | ".join(info["warnings"])
    assert "mask was 32x32, resized" in text and "2 images sent" in text
    assert "subseed_strength" in text and "restore_faces" in text and "foo" in text
    assert "image_cfg_scale" not in text and "mask_blur" not in text
    params = data["parameters"]
    assert (params["resize_mode"], params["inpainting_fill"], params["inpaint_full_res"], params["mask_blur"]) == (
        "Just resize", "original", "Whole picture", 0)
    assert info["sampler_name"] == "Euler a" and params["init_images"] is None and params["mask"] is None
    diff = changed(out, src)  # the mask was scaled up onto the same square
    assert not diff[~INSIDE].any() and diff[INSIDE].mean() > 0.5


def _img2img_body(case: str) -> dict:
    good = b64(pattern(64, 64))
    return {
        "no init_images": {},
        "null init_images": {"init_images": None},
        "empty init_images": {"init_images": []},
        "bad base64": {"init_images": ["not base64 !!"]},
        "not an image": {"init_images": [base64.b64encode(b"hello").decode()]},
        "not a string": {"init_images": [123]},
        "bad mask": {"init_images": [good], "mask": "%%%"},
        "empty mask": {"init_images": [good], "mask": b64(Image.new("L", (64, 64), 0))},
        "full mask inverted": {"init_images": [good], "mask": b64(Image.new("L", (64, 64), 255)),
                               "inpainting_mask_invert": 1},
        "denoising": {"init_images": [good], "denoising_strength": 1.5},
        "fill": {"init_images": [good], "inpainting_fill": 7},
        "resize": {"init_images": [good], "resize_mode": 9},
        "blur": {"init_images": [good], "mask_blur": 65},
        "huge": {"init_images": [b64(Image.new("L", (4097, 4096)))]},
    }[case]


@pytest.mark.parametrize("case, status, words", [
    ("no init_images", 422, ["init_images", "required"]),
    ("null init_images", 422, ["init_images", "required"]),
    ("empty init_images", 422, ["init_images", "required"]),
    ("bad base64", 400, ["init_images[0]", "base64"]),
    ("not an image", 400, ["init_images[0]", "not a readable image"]),
    ("not a string", 400, ["init_images[0]", "base64"]),
    ("bad mask", 400, ["mask:", "base64"]),
    ("empty mask", 422, ["mask is empty"]),
    ("full mask inverted", 422, ["whole image", "Inpaint not masked"]),
    ("denoising", 422, ["denoising_strength", "1"]),
    ("fill", 422, ["inpainting_fill", "7", "0..3"]),
    ("resize", 422, ["resize_mode", "9", "0..3"]),
    ("blur", 422, ["mask_blur", "64"]),
    ("huge", 413, ["init_images[0]", "4097x4096", "megapixels"]),
])
def test_bad_img2img_input_is_4xx_with_reason(server, case, status, words):
    r = post(server, "/img2img", {"prompt": "x", "steps": 2, **_img2img_body(case)})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail
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

    def progressing():
        p = get(server, "/progress").json()
        return p if p["state"]["sampling_step"] > 0 else None

    seen = wait_for(progressing, timeout=T, interval=0.05, what="the job to report progress")
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


@pytest.mark.unit  # in a module of server tests
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


@pytest.mark.unit  # in a module of server tests
def test_parse_img2img_request_shares_the_txt2img_rules():
    from ui.api import ApiError, parse_request

    overrides = {"sd_model_checkpoint": "m", "CLIP_stop_at_last_layers": 2, "img2img_fix_steps": True}
    req, model, warnings = parse_request({"prompt": "x", "mask_blur_x": 2, "mask_blur_y": 6, "sampler_index": "Euler a",
                                          "denoising_strength": None, "inpainting_mask_invert": 1, "scale_by": None,
                                          "override_settings": overrides}, "img2img")
    assert (req.mask_blur, req.sampler_name, req.clip_skip, model) == (6, "Euler a", 2, "m")
    assert req.denoising_strength == PARAMS["denoising_strength"].default and req.scale_by is None
    assert req.inpainting_mask_invert == "Inpaint not masked"
    assert any("mask_blur=6" in w for w in warnings) and any("img2img_fix_steps" in w for w in warnings)
    req, _, warnings = parse_request({"mask_blur": 3, "mask_blur_x": 9, "mask_blur_y": 1}, "img2img")
    assert req.mask_blur == 3 and warnings == []  # mask_blur sets both axes, as in A1111
    _, _, warnings = parse_request({"subseed_strength": 0.5, "enable_hr": True}, "img2img")
    assert "subseed_strength=0.5 ignored" in warnings[0] and "enable_hr" in warnings[-1]  # no hires fix in img2img
    _, _, warnings = parse_request({"denoising_strength": 0.5, "enable_hr": True}, "txt2img")
    assert warnings == []  # hires fix is a txt2img feature
    for bad, words in (({"inpaint_full_res": 2}, ["inpaint_full_res", "0..1"]),
                       ({"subseed_strength": 2}, ["subseed_strength", "1"])):
        with pytest.raises(ApiError) as e:
            parse_request(bad, "img2img")
        assert e.value.status == 422 and all(w in e.value.detail for w in words), e.value.detail


@pytest.mark.unit  # in a module of server tests
def test_api_module_does_not_import_torch():
    code = "import sys, ui.api; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
