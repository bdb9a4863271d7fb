"""The models people already have, over the real API: a models tree kept elsewhere and pointed at with A1111's folder
flags, symlinked checkpoints and LoRA folders, `GET /sdapi/v1/loras`, LoRA tags in txt2img (with `Lora hashes` in
the answer's infotext), and clear 4xx answers for unknown or mismatched LoRAs."""

from __future__ import annotations

import shutil

import pytest
import requests
from safetensors.torch import save_file

from tests import tiny_loras
from tests.conftest import Server

pytestmark = pytest.mark.server

T = 180


def lora_for(folder, seed: int = 0) -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    return tiny_loras.build(unet, [te], "lora", seed=seed)[0]


@pytest.fixture(scope="module")
def tree(tiny_store, tmp_path_factory):
    """An A1111-style tree outside the studio's models folder: checkpoints (one of them linked in from a shared
    folder), LoRAs (a sub-folder linked in), reached only through --ckpt-dir and --lora-dir."""
    root = tmp_path_factory.mktemp("shared-tree")
    webui = root / "stable-diffusion-webui" / "models"
    shared = root / "team-share"
    shutil.copytree(tiny_store / "tiny-sd15", webui / "Stable-diffusion" / "tiny-sd15")
    shutil.copytree(tiny_store / "tiny-sdxl", shared / "checkpoints" / "tiny-sdxl")
    (webui / "Stable-diffusion" / "from-team").symlink_to(shared / "checkpoints", target_is_directory=True)
    (webui / "Lora").mkdir()
    save_file(lora_for(tiny_store / "tiny-sd15"), str(webui / "Lora" / "detail.safetensors"))
    (shared / "loras").mkdir()
    save_file(lora_for(tiny_store / "tiny-sd15", seed=1), str(shared / "loras" / "team-style.safetensors"))
    (webui / "Lora" / "team").symlink_to(shared / "loras", target_is_directory=True)
    return root, webui


@pytest.fixture(scope="module")
def server(tree, tmp_path_factory):
    root, webui = tree
    own = tmp_path_factory.mktemp("studio-models")  # the studio's own models folder stays empty
    args = ("--api", "--ckpt", "tiny-sd15", "--ckpt-dir", str(webui / "Stable-diffusion"),
            "--lora-dir", str(webui / "Lora"))
    with Server(own, root / "outputs", *args) as server:
        yield server


def api(server, method: str, path: str, body=None) -> requests.Response:
    return requests.request(method, server.url + path, json=body, timeout=T)


def test_a1111_tree_is_used_as_it_is(server):
    models = {m["model_name"]: m for m in api(server, "GET", "/sdapi/v1/sd-models").json()}
    assert "tiny-sd15" in models and "tiny-sdxl" in models, models  # tiny-sdxl through the linked folder
    assert models["tiny-sdxl"]["filename"].endswith("from-team/tiny-sdxl")
    loras = {entry["name"]: entry for entry in api(server, "GET", "/sdapi/v1/loras").json()}
    assert set(loras) == {"detail", "team-style"}
    assert loras["detail"]["alias"] == "detail" and loras["team-style"]["path"].endswith("team/team-style.safetensors")
    assert loras["detail"]["formats"] == ["locon", "lora"] and not loras["detail"]["error"]


def test_txt2img_with_lora_tags_records_their_hashes(server):
    body = {"prompt": "a castle <lora:detail:0.7> <lora:team-style:0.3>", "steps": 2, "seed": 3}
    r = api(server, "POST", "/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    import json

    text = json.loads(info)["infotexts"][0]
    assert text.startswith("a castle <lora:detail:0.7> <lora:team-style:0.3>")  # the tags stay in the prompt
    assert 'Lora hashes: "detail: ' in text and ", team-style: " in text
    plain = api(server, "POST", "/sdapi/v1/txt2img", {**body, "prompt": "a castle"})
    assert plain.status_code == 200 and plain.json()["images"][0] != r.json()["images"][0]


def test_unknown_or_mismatched_lora_is_a_4xx_naming_it(server):
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x <lora:missing-one:1>", "steps": 1})
    assert 400 <= r.status_code < 500 and "missing-one" in r.json()["detail"], r.text
    assert "detail" in r.json()["detail"]  # the listed names are offered
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x <lora:detail:1>", "steps": 1,
                                                    "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}})
    assert 400 <= r.status_code < 500 and "does not fit" in r.json()["detail"], r.text
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x <lora:detail:lots>", "steps": 1})
    assert 400 <= r.status_code < 500 and "must be a number" in r.json()["detail"], r.text


def test_refresh_loras_sees_new_files(server, tree, tiny_store):
    _, webui = tree
    save_file(lora_for(tiny_store / "tiny-sd15", seed=2), str(webui / "Lora" / "late.safetensors"))
    assert "late" not in [e["name"] for e in api(server, "GET", "/sdapi/v1/loras").json()]
    assert api(server, "POST", "/sdapi/v1/refresh-loras").status_code == 200
    assert "late" in [e["name"] for e in api(server, "GET", "/sdapi/v1/loras").json()]
