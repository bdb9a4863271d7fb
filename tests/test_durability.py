"""No data lost: images finished before a kill -9, a cancel or an error are on disk with their infotext, and a
partially written file never appears under a final name (real server, tiny model, CPU).

The module kills a server with SIGKILL in the middle of a batch, then starts a new one on the same outputs
folder (which must clear the hidden temporaries a kill can leave) and uses that one for the cancel and error
cases. Covered elsewhere: a failed write leaves no temporary (test_infotext.py::test_failed_write_leaves_no_temp_
file); the engine keeping finished images on interrupt and on an out-of-memory error in the second batch,
in-process (test_generate.py); the interrupted API answer's shape (test_api.py::test_interrupt_returns_images_
so_far).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from pipelines.outputs import OutputWriter
from tests.waiting import wait_for

pytestmark = pytest.mark.server  # the real app over HTTP

T = 180  # seconds; every HTTP call and wait is bounded
FINAL = re.compile(r"^(\d{5})-(\d+)\.png$")


def finals(outputs: Path, mode: str = "txt2img") -> list[Path]:
    return sorted(p for p in (outputs / mode).glob("*/*.png") if FINAL.match(p.name))


def read_saved(path: Path) -> str:
    """The infotext of a saved PNG, after decoding every pixel (a truncated file fails here)."""
    with Image.open(path) as im:
        im.load()
        return im.text.get("parameters", "")


def seed_of(path: Path) -> int:
    return int(FINAL.match(path.name).group(2))


def post_in_thread(url: str, body: dict, box: dict) -> threading.Thread:
    def call():
        try:
            box["response"] = requests.post(url, json=body, timeout=T)
        except requests.RequestException as e:  # the server was killed under it
            box["error"] = e

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    return worker


# -- stale temporaries, in-process ------------------------------------------------------------------------------


@pytest.mark.unit  # in a module of server tests
def test_clean_stale_removes_only_old_hidden_temporaries(tmp_path):
    writer = OutputWriter(tmp_path)
    day = tmp_path / "txt2img" / "2024-05-17"
    day.mkdir(parents=True)
    old, fresh = time.time() - 600, time.time()
    files = {".00001-5.png.tmp": old, ".00002-6-before-highres-fix.png.tmp": old, ".00003-7.png.tmp": fresh,
             "00004-8.png": old, ".notes.tmp": old, "00005-9.png.tmp": old}
    for name, when in files.items():
        (day / name).write_bytes(b"\x89PNG partial")
        os.utime(day / name, (when, when))
    assert writer.clean_stale(older_than_s=60) == 2
    assert sorted(p.name for p in day.iterdir()) == [".00003-7.png.tmp", ".notes.tmp", "00004-8.png",
                                                     "00005-9.png.tmp"]
    assert writer.clean_stale() == 0
    assert OutputWriter(tmp_path / "missing").clean_stale() == 0
    # the writer hands out the next number after the survivors (a fresh temporary counts as taken)
    assert writer.save(Image.new("RGB", (8, 8)), "x", "txt2img", 1, now=_day()).name == "00006-1.png"


def _day():
    from datetime import datetime

    return datetime(2024, 5, 17, 12, 0)


# -- kill -9 mid-batch, then a restart on the same outputs -----------------------------------------------------


@pytest.fixture(scope="module")
def killed(tiny_store, tmp_path_factory):
    """Start a server, kill -9 it after two images of a 30-image batch, plant stale temporaries, start another
    on the same folders. Yields what the kill left and the new server."""
    from tests.conftest import Server

    root = tmp_path_factory.mktemp("durability")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-sd15")
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-broken")  # fails to load: the error case below
    (ckpts / "tiny-broken" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0garbage" * 64)
    outputs = root / "outputs"
    args = ("--api", "--ckpt", "tiny-sd15")

    first = Server(root / "models", outputs, *args)
    with first:
        box: dict = {}
        worker = post_in_thread(first.url + "/sdapi/v1/txt2img",
                                {"prompt": "kill me", "seed": 1000, "n_iter": 30, "steps": 10}, box)
        wait_for(lambda: len(finals(outputs)) >= 2, timeout=T, interval=0.05, what="two finished images")
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(30)
        worker.join(T)
    after_kill = {p: p.read_bytes() for p in outputs.rglob("*") if p.is_file()}

    # temporaries a kill during a write leaves behind, aged past clean_stale's minute; one fresh (a writer at work)
    day = finals(outputs)[0].parent
    (day / ".00900-1.png.tmp").write_bytes(b"\x89PNG\r\n\x1a\n half an image")
    stale = [p for p in outputs.rglob(".*.png.tmp")]
    for p in stale:
        os.utime(p, (time.time() - 600,) * 2)
    (day / ".00901-2.png.tmp").write_bytes(b"\x89PNG\r\n\x1a\n being written")

    with Server(root / "models", outputs, *args) as second:
        yield {"after_kill": after_kill, "returncode": first.proc.returncode, "stale": stale,
               "fresh": day / ".00901-2.png.tmp", "server": second, "outputs": outputs, "box": box}


def test_kill_9_mid_batch_keeps_every_finished_image(killed):
    assert killed["returncode"] == -signal.SIGKILL and "error" in killed["box"]  # the request died with it
    files = killed["after_kill"]
    saved = [p for p in files if not p.name.startswith(".")]
    assert 2 <= len(saved) < 30
    for path in saved:  # every visible file is a complete PNG with its infotext
        assert FINAL.match(path.name) and path.parent.parent.name == "txt2img", path
        text = read_saved(path)
        assert "kill me" in text and f"Seed: {seed_of(path)}," in text and "Steps: 10" in text, text
    assert sorted(seed_of(p) for p in saved) == list(range(1000, 1000 + len(saved)))  # in order, none missing
    hidden = [p for p in files if p.name.startswith(".")]
    assert all(re.fullmatch(r"\.\d{5}-\d+\.png\.tmp", p.name) for p in hidden), hidden  # partial = hidden only


def test_restart_removes_stale_temporaries_and_numbers_on(killed):
    server, outputs = killed["server"], killed["outputs"]
    assert killed["stale"] and not any(p.exists() for p in killed["stale"])
    assert killed["fresh"].exists()  # younger than a minute: possibly another writer's, left alone
    assert re.search(rf"removed {len(killed['stale'])} stale temporary file\(s\)", server.log.read_text())
    before = finals(outputs)
    r = requests.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "after", "seed": 2000, "steps": 1}, timeout=T)
    assert r.status_code == 200, r.text[:300]
    [new] = [p for p in finals(outputs) if p not in before]
    numbers = [int(FINAL.match(p.name).group(1)) for p in before]
    assert int(FINAL.match(new.name).group(1)) > max(numbers) and "Seed: 2000," in read_saved(new)


# -- cancel and error mid-job ---------------------------------------------------------------------------------


def test_interrupt_keeps_finished_images_on_disk(killed):
    server, outputs = killed["server"], killed["outputs"]
    mine = lambda: [p for p in finals(outputs) if 3000 <= seed_of(p) < 3030]  # noqa: E731
    box: dict = {}
    worker = post_in_thread(server.url + "/sdapi/v1/txt2img",
                            {"prompt": "cancel me", "seed": 3000, "n_iter": 30, "steps": 10}, box)
    wait_for(lambda: len(mine()) >= 2, timeout=T, interval=0.05, what="two finished images")
    assert requests.post(server.url + "/sdapi/v1/interrupt", timeout=T).json() == {"interrupted": True}
    worker.join(T)
    r = box["response"]
    assert r.status_code == 200, r.text[:300]
    info = json.loads(r.json()["info"])
    assert info["interrupted"] and 2 <= len(info["all_seeds"]) < 30
    on_disk = {seed_of(p): read_saved(p) for p in mine()}
    assert sorted(on_disk) == info["all_seeds"]  # every image the answer holds is saved, nothing more
    for seed, text in zip(info["all_seeds"], info["infotexts"]):
        assert on_disk[seed] == text and f"Seed: {seed}," in text


def test_error_mid_job_keeps_the_images_finished_before_it(killed):
    """A sweep over two checkpoints: the first cell is made and saved, the second checkpoint fails to load."""
    server, outputs = killed["server"], killed["outputs"]
    body = {"params": {"prompt": "fail later", "seed": 4000, "steps": 2},
            "axes": [{"type": "Checkpoint name", "values": ["tiny-sd15", "tiny-broken"]}]}
    r = requests.post(server.url + "/studio/v1/sweep", json=body, timeout=T)
    assert r.status_code == 422 and r.json()["error"] == "ModelLoadError", r.text[:300]
    assert "tiny-broken" in r.json()["detail"]
    [cell] = [p for p in finals(outputs) if seed_of(p) == 4000]
    text = read_saved(cell)
    assert "fail later" in text and "Model: tiny-sd15" in text
    assert list((outputs / "txt2img-grids").glob("*/*.png"))  # the partial grid of what finished
    r = requests.get(server.url + "/sdapi/v1/options", timeout=T)
    assert r.json()["sd_model_checkpoint"].startswith("tiny-sd15")  # and the server carries on
