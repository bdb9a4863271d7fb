"""The real app started on an EMPTY models folder, offline: it starts, lists the hub model that suits this machine,
and says plainly where to put a checkpoint, in the UI's notice, in GET /studio/v1/first-run and in the error a
txt2img request gets. Then a checkpoint put into the folder and 🔄 make it usable."""

from __future__ import annotations

import shutil

import pytest
import requests

from pipelines.first_run import SD15, SD_TURBO, SDXL_BASE

pytestmark = pytest.mark.server  # the real app over HTTP

T = 120  # seconds; every HTTP call is bounded


@pytest.fixture
def empty_server(tmp_path, start_server, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # no hub model this machine may have cached
    models = tmp_path / "models"
    ckpts = tmp_path / "elsewhere" / "checkpoints"  # --ckpt-dir moves the folder; the notice names the real one
    server = start_server(models, "--api", "--offline", "--ckpt-dir", str(ckpts))
    server.ckpts = ckpts
    return server


def test_empty_models_folder_offline_says_where_checkpoints_go(empty_server, tiny_store):
    server, folder = empty_server, str(empty_server.ckpts.absolute())
    assert server.ckpts.is_dir() and not any(server.ckpts.iterdir())  # created, and empty

    facts = requests.get(server.url + "/studio/v1/first-run", timeout=T).json()
    assert facts["recommended"] in (SD_TURBO, SD15, SDXL_BASE)  # the CPU here, a GPU on the device machine
    assert (facts["model"], facts["source"], facts["downloaded"], facts["offline"]) == (
        facts["recommended"], "hub", False, True)
    assert facts["checkpoints_dir"] == folder and facts["local_checkpoints"] == 0 and facts["download"] is None
    for words in (folder, ".safetensors", ".ckpt", "diffusers folder", "offline"):
        assert words in facts["notice"], (words, facts["notice"])

    listed = [m["model_name"] for m in requests.get(server.url + "/sdapi/v1/sd-models", timeout=T).json()]
    assert facts["recommended"].split("/")[1] in listed

    # the web page shows the same notice (its first value is in the page's config)
    config = requests.get(server.url + "/config", timeout=T)
    assert config.status_code == 200 and "first-run-notice" in config.text
    assert folder in config.text

    # a Generate through the API: a clear 4xx naming the folder, before anything is queued
    r = requests.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "a red cube", "steps": 1}, timeout=T)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()
    assert set(err) == {"error", "detail"} and folder in err["detail"] and ".safetensors" in err["detail"]
    assert requests.get(server.url + "/studio/v1/first-run", params={"model": "no/such-model"}, timeout=T).status_code == 404

    # a checkpoint put into the folder and a refresh: it is picked, the notice is gone, and it generates
    shutil.copytree(tiny_store / "tiny-sd15", server.ckpts / "tiny-sd15")
    assert requests.post(server.url + "/sdapi/v1/refresh-checkpoints", timeout=T).status_code == 200
    facts = requests.get(server.url + "/studio/v1/first-run", timeout=T).json()
    assert (facts["model"], facts["notice"], facts["local_checkpoints"]) == ("tiny-sd15", "", 1)
    r = requests.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "a red cube", "steps": 2}, timeout=T)
    assert r.status_code == 200 and len(r.json()["images"]) == 1, r.text[:300]
