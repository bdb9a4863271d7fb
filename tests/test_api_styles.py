"""Saved prompt styles over the A1111 API on the real server (tiny SD 1.5, CPU): GET /sdapi/v1/prompt-styles
lists styles.csv, and the `styles` field of txt2img/img2img applies them to prompt and negative prompt before
the job runs (as A1111 does); an unknown style answers 400 naming it."""

from __future__ import annotations

import json
import os

import pytest
import requests

from pipelines.advisor.prompt_builder import Style, write_styles
from tests.conftest import Server
from tests.test_api import b64, pattern

pytestmark = pytest.mark.server  # the real app over HTTP

T = 120
API = "/sdapi/v1"
STYLES = [
    Style("photo", "analog photo of {prompt}, 35mm, film grain", "drawing, {prompt}"),
    Style("sharp, clean", "sharp focus", "blurry"),
    Style("ünïcode", "水彩画", ""),
]


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("api-styles")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    styles = root / "conf" / "styles.csv"
    write_styles(styles, STYLES)
    with Server(root / "models", root / "outputs", "--api", "--styles-file", str(styles)) as server:
        server.styles_file = styles
        yield server


def post(server, path, body):
    return requests.post(server.url + API + path, json=body, timeout=T)


def listed(server) -> list[dict]:
    r = requests.get(server.url + API + "/prompt-styles", timeout=T)
    assert r.status_code == 200, r.text
    return r.json()


def test_prompt_styles_lists_the_styles_file(server):
    assert listed(server) == [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                              for s in STYLES]


def test_txt2img_applies_styles_in_order(server):
    r = post(server, "/txt2img", {"prompt": "a red cube", "negative_prompt": "ugly", "steps": 2, "seed": 7,
                                  "styles": ["photo", "sharp, clean"]})
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    prompt = "analog photo of a red cube, 35mm, film grain, sharp focus"
    negative = "drawing, ugly, blurry"
    assert info["prompt"] == prompt and info["negative_prompt"] == negative
    assert info["infotexts"][0].startswith(f"{prompt}\nNegative prompt: {negative}\n")
    assert not any("styles" in w for w in info["warnings"])  # applied, not "ignored"
    assert data["parameters"]["prompt"] == "a red cube"  # `parameters` echoes the request, as in A1111
    assert data["parameters"]["styles"] == ["photo", "sharp, clean"]


def test_img2img_applies_styles(server):
    r = post(server, "/img2img", {"prompt": "a teapot", "steps": 2, "seed": 1, "denoising_strength": 0.5,
                                  "init_images": [b64(pattern(64, 64))], "styles": ["ünïcode"]})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "a teapot, 水彩画"
    assert info["infotexts"][0].startswith("a teapot, 水彩画\n")


def test_unknown_style_is_refused_with_the_available_ones(server):
    before = sorted(server.outputs_dir.rglob("*.png"))
    r = post(server, "/txt2img", {"prompt": "a red cube", "steps": 2, "styles": ["photo", "vaporwave"]})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "UnknownStyle"
    assert "'vaporwave'" in body["detail"] and "'photo'" in body["detail"] and "'sharp, clean'" in body["detail"]
    assert sorted(server.outputs_dir.rglob("*.png")) == before  # nothing was generated


def test_a_style_added_by_hand_is_seen_without_a_restart(server):
    path = server.styles_file
    original = path.read_bytes()
    try:
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write('hand made,"{prompt}, by hand",\r\n')
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert listed(server)[-1] == {"name": "hand made", "prompt": "{prompt}, by hand", "negative_prompt": ""}
        r = post(server, "/txt2img", {"prompt": "a cube", "steps": 2, "styles": ["hand made"]})
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["info"])["prompt"] == "a cube, by hand"
    finally:
        path.write_bytes(original)
