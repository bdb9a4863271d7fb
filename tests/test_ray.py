"""The Ray Serve cluster backend (`--ray auto --ray-replicas 2`): a local Ray with two one-CPU replicas behind the
head. The A1111 API answers through the head, a seed gives the in-process image, progress streams, Interrupt stops
the replica within a step, and a replica killed mid-job gives a retried job (or a clear failure), never a hang,
with the saved files intact. Skipped when Ray is not installed (requirements-ray.txt)."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, Server, tiny_engine
from tests.waiting import wait_for

pytestmark = pytest.mark.server

API, T = "/sdapi/v1", 120
BODY = {"prompt": "a red cube", "steps": 4, "seed": 21, "width": 64, "height": 64, "sampler_name": "Euler a"}


def image_of(answer: dict, i: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][i]))))


@pytest.mark.unit
def test_ray_stays_optional():
    """The default install runs without Ray: no module-level ray import on the head, none in requirements.txt."""
    tree = ast.parse((ROOT / "pipelines" / "cluster.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top & {"ray", "torch"}
    assert "ray" not in (ROOT / "requirements.txt").read_text().lower()
    assert "ray[serve]" in (ROOT / "requirements-ray.txt").read_text()


def add_models(tiny_store: Path, models: Path) -> Path:
    """The tiny checkpoint, a tiny canny ControlNet and a tiny ESRGAN: every tab has what it needs."""
    import shutil

    from tests.tiny_models import build_controlnet
    from tests.tiny_upscalers import esrgan_state_dict, save_pth

    shutil.copytree(tiny_store / "tiny-sd15", models / "Stable-diffusion" / "tiny-sd15")
    build_controlnet(tiny_store / "tiny-sd15", models / "ControlNet" / "control_tiny_sd15_canny")
    save_pth(esrgan_state_dict(scale=4), models / "ESRGAN" / "4x-tiny.pth")
    return models


@pytest.mark.unit
def test_the_status_line_names_each_replica_slot_and_its_job():
    """/sdapi/v1/memory's devices as the Ray head reports them (no local model cache) read as one entry each."""
    from ui.topbar import device_text

    assert device_text({"device": "ray:0", "job": 7, "models": {}}) == "ray:0: job 7"
    assert device_text({"device": "ray:1", "job": None, "models": {}}) == "ray:1: idle"
    assert device_text({"device": "cuda:1", "job": None, "models": {"device_bytes": 2 * 2**30}}) == \
        "cuda:1: idle, 2.0 GB of models"


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    pytest.importorskip("ray.serve")

    root = tmp_path_factory.mktemp("ray")
    models = add_models(tiny_store, root / "models")
    # every replica's log lines reach the head's log: Ray folds lines that differ only in numbers (the replicas'
    # names) into "[repeated Nx]" otherwise, and the kill test reads which replica runs a batch from them
    old = os.environ.get("RAY_DEDUP_LOGS")
    os.environ["RAY_DEDUP_LOGS"] = "0"
    try:
        s = Server(models, root / "outputs", "--api", "--ray", "auto", "--ray-replicas", "2", "--preview-every", "1")
    finally:
        if old is None:
            os.environ.pop("RAY_DEDUP_LOGS", None)
        else:
            os.environ["RAY_DEDUP_LOGS"] = old
    try:
        s.wait_ready(timeout=240)
        yield s
    finally:
        s.stop()


def post(server: Server, body: dict, client: str = "t", timeout: float = T) -> dict:
    r = requests.post(server.url + API + "/txt2img", json={**BODY, **body}, timeout=timeout,
                      headers={"X-Client-Id": client})
    r.raise_for_status()
    return r.json()


def in_process(tiny_store: Path, tmp_path: Path, **params) -> np.ndarray:
    """The image one in-process engine makes for the request (the reference: CPU noise)."""
    import shutil

    from pipelines import discovery
    from pipelines.jobs import JobRunner
    from pipelines.params.specs import Txt2ImgParams

    shutil.copytree(tiny_store / "tiny-sd15", tmp_path / "models" / "Stable-diffusion" / "tiny-sd15")
    info = next(i for i in discovery.scan(tmp_path / "models") if i.name == "tiny-sd15")
    engine = tiny_engine(tmp_path)
    runner = JobRunner().start()
    try:
        p = Txt2ImgParams(**{**BODY, **params})
        result = runner.submit(lambda ctx: engine.txt2img(ctx, p, info)).wait(T)
    finally:
        runner.stop()
    return np.asarray(result.images[0])


def test_the_api_answers_through_the_head_with_the_in_process_image(server, tiny_store, tmp_path):
    answer = post(server, {})
    assert answer["parameters"]["seed"] == 21 and len(answer["images"]) == 1
    assert np.array_equal(image_of(answer), in_process(tiny_store, tmp_path))
    files = sorted((server.outputs_dir / "txt2img").rglob("*.png"))  # saved by the head, infotext included
    assert files and "Seed: 21" in Image.open(files[-1]).info["parameters"]
    init = answer["images"][0]  # img2img through the replicas too
    r = requests.post(server.url + API + "/img2img", timeout=T, headers={"X-Client-Id": "t"},
                      json={**BODY, "init_images": [init], "denoising_strength": 0.5})
    r.raise_for_status()
    assert len(r.json()["images"]) == 1 and image_of(r.json()).shape == (64, 64, 3)
    memory = requests.get(server.url + API + "/memory", timeout=T).json()
    assert [d["device"] for d in memory["devices"]] == ["ray:0", "ray:1"]


def test_progress_streams_from_the_replica(server):
    steps_seen: set[int] = set()
    done = threading.Event()

    def run() -> None:
        try:
            post(server, {"steps": 24, "seed": 5}, client="p")
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()

    def watched() -> bool:
        state = requests.get(server.url + API + "/progress", timeout=T, headers={"X-Client-Id": "p"}).json()["state"]
        if state["sampling_steps"] == 24:
            steps_seen.add(state["sampling_step"])
        return done.is_set()

    wait_for(watched, timeout=T, interval=0.05, what="the job to end")
    assert len(steps_seen) >= 3, steps_seen


def test_interrupt_stops_the_replica_within_a_step(server):
    answer: dict = {}
    t = threading.Thread(target=lambda: answer.update(post(server, {"steps": 150, "seed": 6}, client="i")))
    t.start()

    def step() -> int:
        return requests.get(server.url + API + "/progress", timeout=T,
                            headers={"X-Client-Id": "i"}).json()["state"]["sampling_step"]

    wait_for(lambda: step() >= 2, timeout=T, what="the job's first steps")
    requests.post(server.url + API + "/interrupt", timeout=T, headers={"X-Client-Id": "i"}).raise_for_status()
    t.join(30)
    assert not t.is_alive() and answer.get("images") == []
    wait_for(lambda: "cancelled: the head closed its stream" in server.log.read_text(), timeout=30,
             what="the replica to stop its job")
    assert len(post(server, {"seed": 7}, client="i")["images"]) == 1  # both replicas serve again


def test_skip_abandons_the_running_batch_and_goes_on_with_the_next(server):
    answer: dict = {}
    t = threading.Thread(target=lambda: answer.update(post(server, {"steps": 150, "n_iter": 2, "seed": 30},
                                                           client="s")))
    t.start()
    wait_for(lambda: requests.get(server.url + API + "/progress", timeout=T, headers={"X-Client-Id": "s"})
             .json()["state"]["sampling_step"] >= 2, timeout=T, what="the first batch's steps")
    assert requests.post(server.url + API + "/skip", timeout=T, headers={"X-Client-Id": "s"}).json()["skipped"]
    t.join(T)
    # the 2 batches run at once on the 2 replicas (as on 2 local workers): Skip abandons the one that sees it first
    assert not t.is_alive() and len(json.loads(answer["info"])["all_seeds"]) == 1


def test_a_replica_killed_mid_job_retries_or_fails_clearly_and_keeps_the_files(server):
    """One job of 2 batches runs on both replicas at once (a batch count spreads over idle workers); once both
    replicas say they started, one of them is killed mid-batch: the head retries the lost batch on the other (or
    fails the job with a clear message), never hangs, and what was saved is whole."""
    import ray

    body = {"steps": 150, "n_iter": 2, "seed": 100}  # seconds a batch here: the kill lands mid-batch
    answer: dict[str, object] = {}

    def client() -> None:
        try:
            answer["r"] = requests.post(server.url + API + "/txt2img", json={**BODY, **body}, timeout=T,
                                        headers={"X-Client-Id": "k"})
        except requests.RequestException as e:
            answer["r"] = e

    out = server.outputs_dir / "txt2img"
    before = set(out.rglob("*.png"))
    address = re.search(r"Ray cluster at (\S+):", server.log.read_text()).group(1)
    started = re.compile(r"replica job \(txt2img\) started on (\S+)")
    seen = len(started.findall(server.log.read_text()))
    # this test joins the head's local Ray to kill a replica ("auto": the cluster started last here, with its token)
    ray.init(address="auto", log_to_driver=False)
    try:
        assert ray.get_runtime_context().gcs_address == address
        t = threading.Thread(target=client)
        t.start()
        wait_for(lambda: len(started.findall(server.log.read_text())) >= seen + 2, timeout=T,
                 what="both replicas to start a batch")
        victim = started.findall(server.log.read_text())[-1]  # busy: its batch has just started
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        t.join(T)
    finally:
        ray.shutdown()
    assert not t.is_alive(), "the request hung"
    r = answer["r"]
    assert isinstance(r, requests.Response), r
    if r.status_code == 200:  # retried: every seed once, in order
        assert json.loads(r.json()["info"])["all_seeds"] == [100, 101] and len(r.json()["images"]) == 2
    else:
        assert "Ray replica" in r.text, r.text
    assert "Ray replica lost during a txt2img job" in server.log.read_text()  # the head saw it
    saved = set(out.rglob("*.png")) - before
    for f in saved:  # complete files with their infotext, no partial ones, no image saved twice
        assert "Seed: 10" in Image.open(f).info["parameters"]
    assert len({f.name.split("-", 1)[1] for f in saved}) == len(saved) <= 2
    assert not list(out.rglob("*.tmp"))
    assert requests.get(server.url + "/", timeout=T).ok  # the app stays up


@pytest.fixture(scope="module")
def reference(server, tiny_store, tmp_path_factory):
    """The same studio without Ray: one in-process worker (the reference images), on one CPU thread as each
    one-CPU replica is (Ray sets OMP_NUM_THREADS=1 there): a CPU convolution's sums depend on its thread count, and
    the img2img family's VAE encoding then differs by a level or two in some pixels."""
    root = tmp_path_factory.mktemp("ray-reference")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        s = Server(add_models(tiny_store, root / "models"), root / "outputs", "--api")
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    with s:
        yield s


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def picture(size: int = 64) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", (size, size), (90, 140, 200))
    ImageDraw.Draw(image).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=(250, 250, 250))
    return image


ZOOM = {"prompt": "0: a forest, 1: a castle", "steps": 2, "width": 64, "height": 64, "seed": 3, "zoom_factor": 0.5,
        "zoom_keyframes": 3, "zoom_frames_per_keyframe": 3, "zoom_fps": 6}


def answer_images(answer: dict) -> list[np.ndarray]:
    found = [*answer.get("grids", []), *(answer.get("images") or answer.get("keyframes") or [answer["image"]])]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def test_every_tab_runs_on_the_replicas_with_the_in_process_results(server, reference):
    """ControlNet, outpainting, the infinite zoom, both upscales, ControlNet detection and an X/Y/Z plot (its cells
    spread over both replicas) run on the replicas and answer what one in-process worker answers, image for image,
    with the files saved by the head."""
    canny = next(t for t in requests.get(server.url + "/controlnet/model_list", timeout=T).json()["model_list"]
                 if "canny" in t)
    unit = {"enabled": True, "image": b64(picture()), "module": "canny", "model": canny, "processor_res": 64,
            "threshold_a": 100, "threshold_b": 200}
    cases = {
        "/sdapi/v1/txt2img": {**BODY, "alwayson_scripts": {"controlnet": {"args": [unit]}}},
        "/studio/v1/outpaint": {"prompt": "a beach", "steps": 2, "seed": 4, "sampler_name": "Euler",
                                "image": b64(picture()), "left": 8, "right": 16, "step": 8, "fill": "fill"},
        "/studio/v1/zoom": {**ZOOM, "image": b64(picture())},
        "/sdapi/v1/extra-single-image": {"image": b64(picture()), "upscaler_1": "4x-tiny", "upscaling_resize": 2},
        "/studio/v1/sd-upscale": {"image": b64(picture()), "prompt": "a red cube", "upscaling_resize": 2,
                                  "upscaler_1": "Lanczos", "tile_width": 64, "tile_height": 64, "tile_padding": 8,
                                  "steps": 2, "denoising_strength": 0.3, "seed": 7},
        "/controlnet/detect": {"controlnet_module": "canny", "controlnet_input_images": [b64(picture())],
                               "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
                               "controlnet_threshold_b": 200},
        "/studio/v1/sweep": {"params": {**BODY, "steps": 2}, "axes": [{"type": "Seed", "values": "1, 2, 3"},
                                                                     {"type": "Steps", "values": "2, 3"}]},
    }
    for path, body in cases.items():
        got, want = (requests.post(s.url + path, json=body, timeout=T, headers={"X-Client-Id": "tabs"})
                     for s in (server, reference))
        assert got.status_code == want.status_code == 200, (path, got.text[:300], want.text[:300])
        a, b = answer_images(got.json()), answer_images(want.json())
        assert len(a) == len(b) >= 1, path
        for x, y in zip(a, b):
            assert np.array_equal(x, y), path
        if path == "/studio/v1/zoom":  # the video is written by the head, beside the keyframes it saved
            assert got.json()["info"]["frames"] == 7 and Path(got.json()["video_path"]).is_file()
            assert Path(got.json()["video_path"]).parent.parent == server.outputs_dir / "zoom"
    assert "replica job (zoom_keyframes) started" in server.log.read_text()
    assert len(list((server.outputs_dir / "extras").rglob("*.png"))) == 2  # the upscale and the SD upscale


def test_an_interrupted_zoom_on_ray_keeps_its_keyframes_and_their_video(server):
    """Interrupt reaches the replica's zoom as it does a local worker's: the keyframes made so far are kept and the
    video of them is still written (the head's Signals actor carries Interrupt to the job)."""
    answer: dict = {}
    body = {**ZOOM, "zoom_keyframes": 8, "steps": 60}
    t = threading.Thread(target=lambda: answer.update(requests.post(
        server.url + "/studio/v1/zoom", json=body, timeout=T, headers={"X-Client-Id": "z"}).json()))
    before = set((server.outputs_dir / "zoom").rglob("*keyframe-*.png"))
    t.start()
    wait_for(lambda: len(set((server.outputs_dir / "zoom").rglob("*keyframe-*.png")) - before) >= 2, timeout=T,
             what="two keyframes saved")
    requests.post(server.url + API + "/interrupt", timeout=T, headers={"X-Client-Id": "z"}).raise_for_status()
    t.join(T)
    assert not t.is_alive() and answer["info"]["interrupted"], answer
    assert 2 <= len(answer["keyframes"]) < 8 and answer["video"] and Path(answer["video_path"]).is_file()
