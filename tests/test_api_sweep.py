"""Sweeps over the API, on the real server (tiny models, CPU): A1111's X/Y/Z plot script on /sdapi/v1/txt2img
(integer axis indices, dropdown values, both script_args layouts), errors, and /studio/v1/sweep(/plan)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
import requests
from PIL import Image

from pipelines.sweep import grid
from pipelines.sweep.plan import a1111_labels
from tests.conftest import Server

pytestmark = pytest.mark.server  # the real app over HTTP

T = 300  # seconds per HTTP call
LABELS = a1111_labels("txt2img")
BASE = {"prompt": "a red cube", "steps": 2, "seed": 11, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-sweep")
    ckpts = root / "models" / "Stable-diffusion"
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-sd15")
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-sd15-b")
    with Server(root / "models", root / "outputs", "--api", "--ckpt", "tiny-sd15") as server:
        yield server


def post(server, path, body):
    return requests.post(server.url + path, json=body, timeout=T)


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def script_args(x=(0, ""), y=(0, ""), z=(0, ""), *, lone=False, sub_grids=False, csv_mode=False, dropdowns=()):
    drops = list(dropdowns) + [[]] * (3 - len(dropdowns))
    axes = [v for (t, text), d in zip((x, y, z), drops) for v in (t, text, d)]
    return [*axes, True, lone, sub_grids, False, False, False, False, 0, csv_mode]


def xyz(server, args, **body):
    return post(server, "/sdapi/v1/txt2img", {**BASE, "script_name": "X/Y/Z plot", "script_args": args, **body})


def test_xyz_script_with_a1111_indices_answers_grid_then_cells(server):
    args = script_args((LABELS.index("Steps"), "2, 3"), (LABELS.index("CFG Scale"), "5-9 (+4)"), lone=True)
    r = xyz(server, args)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    images = [decode(b) for b in data["images"]]
    assert len(images) == 5 and len(info["infotexts"]) == 5 and info["warnings"] == []
    lay = grid.layout((64, 64), 2, 2, ["Steps: 2", "Steps: 3"], ["CFG scale: 5", "CFG scale: 9"])
    assert images[0].size == lay.size
    assert 'X Type: Steps, X Values: "2, 3", Y Type: CFG scale, Y Values: 5-9 (+4)' in images[0].info["parameters"]
    cells = [im.info["parameters"] for im in images[1:]]
    for text, (steps, cfg) in zip(cells, [(2, 5), (3, 5), (2, 9), (3, 9)]):  # X fastest, then Y
        assert f"Steps: {steps}," in text and f"CFG scale: {cfg}," in text and "Seed: 11," in text
    assert info["infotexts"][1:] == cells and info["all_seeds"] == [11] * 4
    grids = list(server.outputs_dir.glob("txt2img-grids/*/*-xyz-grid.png"))
    assert len(grids) == 1 and len(list(server.outputs_dir.glob("txt2img/*/*.png"))) >= 4

    # without include_lone_images only the grid comes back
    r = xyz(server, script_args((LABELS.index("Seed"), "1, 2")))
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1 and len(json.loads(r.json()["info"])["infotexts"]) == 1


def test_choice_axes_read_the_dropdown_and_old_script_args_layout(server):
    # before A1111 1.7: [..., no_fixed_seeds, margin_size, csv_mode, raw_mode]; the Sampler axis reads its dropdown
    old = [LABELS.index("Sampler"), "", ["Euler", "Euler a"], 0, "", [], 0, "", [], True, True, False, False, 4,
           False, False]
    r = xyz(server, old)
    assert r.status_code == 200, r.text
    images = [decode(b) for b in r.json()["images"]]
    assert len(images) == 3 and images[0].width == grid.layout((64, 64), 2, 1, ["a", "b"]).size[0] + 4  # margin
    assert "Sampler: Euler," in images[1].info["parameters"] and "Sampler: Euler a," in images[2].info["parameters"]
    # csv_mode: the text is used even with a dropdown list
    args = script_args(("Sampler", "Euler"), dropdowns=[["Euler", "Euler a"]], csv_mode=True, lone=True)
    r = xyz(server, args)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2


def test_unsupported_axis_and_bad_values_answer_400_with_the_reason(server):
    r = xyz(server, script_args((LABELS.index("Sigma Churn"), "0, 1")))
    assert r.status_code == 400 and r.json()["error"] == "UnsupportedAxis"
    assert "x_type" in r.json()["detail"] and "'Sigma Churn' is not supported" in r.json()["detail"]
    r = xyz(server, script_args((LABELS.index("Steps"), "1-10 (-2)")))
    assert r.status_code == 400 and r.json()["error"] == "BadSweep"
    assert "X axis (Steps): '1-10 (-2)' gives no values: the step goes the wrong way" in r.json()["detail"]
    r = xyz(server, script_args((LABELS.index("CFG Scale"), "5"), (LABELS.index("Checkpoint name"), "nope")))
    assert r.status_code == 400 and "Y axis (Checkpoint name): 'nope' is not a known checkpoint" in r.text
    r = xyz(server, script_args((99, "1")))
    assert r.status_code == 400 and "numbered 0..37" in r.text
    r = xyz(server, "not a list")
    assert r.status_code == 422 and "script_args" in r.text


def test_other_scripts_still_warn_and_run_plain_txt2img(server):
    r = post(server, "/sdapi/v1/txt2img", {**BASE, "script_name": "Prompt matrix", "script_args": [1, 2]})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 1
    assert any("script_name='Prompt matrix' ignored" in w for w in info["warnings"])


def test_studio_sweep_plan_and_run(server):
    body = {"params": BASE, "axes": [{"type": "CFG scale", "values": "5-9 (+2)"},
                                     {"type": "Checkpoint name", "values": ["tiny-sd15-b", "tiny-sd15"]}]}
    before = len(list(server.outputs_dir.rglob("*.png")))
    r = post(server, "/studio/v1/sweep/plan", body)
    assert r.status_code == 200, r.text
    assert len(list(server.outputs_dir.rglob("*.png"))) == before  # planning runs nothing
    plan = r.json()
    assert (plan["cells"], plan["images"], plan["denoising_steps"], plan["checkpoints"], plan["model_switches"]) == (
        6, 6, 12, 2, 2)
    assert plan["summary"] == "3 x 2 = 6 cells · 6 images · 12 denoising steps · 2 checkpoints · 2 model switches"
    assert plan["axes"][0] == {"axis": "X", "type": "CFG scale", "values": [5.0, 7.0, 9.0],
                               "labels": ["CFG scale: 5", "CFG scale: 7", "CFG scale: 9"]}

    r = post(server, "/studio/v1/sweep/plan", {**body, "model": "tiny-sd15-b"})  # starts on b: one switch
    assert r.status_code == 200 and r.json()["model_switches"] == 1 and r.json()["warnings"] == []
    r = post(server, "/studio/v1/sweep/plan", {**body, "model": "nope"})
    assert r.status_code == 404 and "Unknown model 'nope'" in r.text
    r = post(server, "/studio/v1/sweep/plan", {"params": BASE, "axes": [{"type": "Steps", "values": "0-3"}]})
    assert r.status_code == 400 and "X axis (Steps): 0 is outside the limits of Sampling steps (1 to 150)" in r.text
    r = post(server, "/studio/v1/sweep/plan", {"params": {**BASE, "steps": 500}, "axes": [{"type": "Seed"}]})
    assert r.status_code == 422 and "steps" in r.text
    r = post(server, "/studio/v1/sweep/plan", {"params": BASE, "axes": []})
    assert r.status_code == 422 and "axes" in r.text

    r = post(server, "/studio/v1/sweep", {"params": BASE, "axes": [{"type": "Size", "values": "64x64, 64x96"}],
                                          "options": {"draw_legend": False}})
    assert r.status_code == 200, r.text
    data = r.json()
    grids, cells = [decode(b) for b in data["grids"]], [decode(b) for b in data["images"]]
    assert [c.size for c in cells] == [(64, 64), (64, 96)] and grids[0].size == (128, 96)  # no legend: cells only
    assert data["info"]["sweep"]["summary"].startswith("2 cells · 2 images") and len(data["info"]["infotexts"]) == 3
