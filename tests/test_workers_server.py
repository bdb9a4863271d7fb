"""The real server with two device workers (`--device cpu,cpu`): the A1111 API works as with one, two clients'
jobs run at once, /sdapi/v1/memory lists each device, and a studio open to the network without a login says so."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.server

API, T = "/sdapi/v1", 180
BODY = {"prompt": "a red cube", "steps": 4, "seed": 21, "width": 64, "height": 64, "sampler_name": "Euler a"}


def image_of(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))))


def test_two_workers_serve_the_a1111_api(models_dir, start_server):
    server = start_server(models_dir, "--api", "--device", "cpu,cpu", "--listen")
    answers: dict[str, dict] = {}

    def client(name: str) -> None:
        r = requests.post(server.url + API + "/txt2img", json=BODY, timeout=T, headers={"X-Client-Id": name})
        r.raise_for_status()
        answers[name] = r.json()

    threads = [threading.Thread(target=client, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert set(answers) == {"a", "b"}
    assert np.array_equal(image_of(answers["a"]), image_of(answers["b"]))  # same seed, either worker
    assert '"seed": 21' in answers["a"]["info"] or answers["a"]["parameters"]["seed"] == 21
    memory = requests.get(server.url + API + "/memory", timeout=T).json()
    assert [d["device"] for d in memory["devices"]] == ["cpu", "cpu"]
    assert all("models" in d and "mode" in d for d in memory["devices"])
    log = server.log.read_text()
    assert "WARNING: --listen without a login for the UI and the API" in log
