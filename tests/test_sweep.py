"""Parameter sweeps (X/Y/Z plot): value syntax, axis checks, cell order and cost, the labelled grid, and real sweeps
on the tiny models (cells saved with their infotexts, grids, Z axis, checkpoint axis, cancel mid-grid)."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from PIL import Image

from pipelines.jobs import Cancelled, EventKind
from pipelines.outputs import read_png_info
from pipelines.params.specs import defaults
from pipelines.settings import Settings
from pipelines.studio import BadRequest, Studio
from pipelines.sweep import grid
from pipelines.sweep import plan as sweep
from tests.tiny_models import build_controlnet

pytestmark = pytest.mark.unit  # pure Python, no model

BASE = dict(prompt="a red cube on a table", negative_prompt="blurry", steps=2, seed=5, width=64, height=64)


def base(**kw):
    return {**defaults("txt2img"), "controlnet": [], **BASE, **kw}


def plan(*axes, b=None, **kw):
    return sweep.build_plan(b or base(), list(axes), checkpoint="tiny-sd15", **kw)


# -- value syntax -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, whole, expected", [
    ("1-5", True, [1, 2, 3, 4, 5]),
    ("1-10 (+2)", True, [1, 3, 5, 7, 9]),
    ("10-1 (-3)", True, [10, 7, 4, 1]),
    ("5-1", True, [5, 4, 3, 2, 1]),
    ("7-12 [4]", True, [7, 9, 10, 12]),  # 7, 8.67, 10.33, 12 rounded
    ("1.5-3 (+0.5)", False, [1.5, 2.0, 2.5, 3.0]),
    ("0-1 [5]", False, [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0.1-0.3 (+0.1)", False, [0.1, 0.2, 0.3]),
    ("5, 10-20 (+5)", True, [5, 10, 15, 20]),
    ("3,  4,5,", True, [3, 4, 5]),
    ("-5--3", True, [-5, -4, -3]),
    ("2-2 [3]", True, [2, 2, 2]),
    ("7", False, [7.0]),
])
def test_range_syntax(text, whole, expected):
    assert sweep.expand_numbers(sweep.split_values(text), whole) == expected


@pytest.mark.parametrize("text, whole, message", [
    ("1-10 (-2)", True, "step goes the wrong way"),
    ("1-10 (+0)", True, "step of 0"),
    ("1-5 [0]", True, "asks for 0 values"),
    ("7.5", True, "'7.5' is not a whole number"),
    ("abc", False, "'abc' is not a number"),
    ("1-x", True, "'1-x' is not a number"),
    ("nan", False, "'nan' is not a number"),
])
def test_range_errors(text, whole, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.expand_numbers(sweep.split_values(text), whole, "X axis (Steps)")


def test_csv_quoting_and_lists():
    assert sweep.split_values('red, "dark, blue", green') == ["red", "dark, blue", "green"]
    assert sweep.split_values("a\nb, c") == ["a", "b", "c"]
    assert sweep.split_values([5, "7", None, " "]) == ["5", "7"] and sweep.split_values(7.5) == ["7.5"]


# -- axis types and value checks -----------------------------------------------------------------------------

def test_axis_types_by_name_a1111_label_and_index():
    assert sweep.axis_type("CFG Scale").name == "CFG scale"
    assert sweep.axis_type("cfg scale") is sweep.axis_type(6) is sweep.AXES["CFG scale"]
    labels = sweep.a1111_labels("txt2img")
    assert labels[:8] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                          "Prompt S/R"]
    assert "Image CFG Scale" not in labels and len(labels) == 38
    assert sweep.axis_type(labels.index("Checkpoint name")).reloads_model
    for name in ("Denoising", "Var. seed", "Hires steps", "Schedule type", "Clip skip", "Hires upscaler",
                 "Sampler", "Hires sampler"):
        assert sweep.axis_type(labels.index(name)).name == name
    with pytest.raises(ValueError, match="'Sigma Churn' is not supported"):
        sweep.axis_type(labels.index("Sigma Churn"))
    with pytest.raises(ValueError, match="unknown axis type 'Banana'"):
        sweep.axis_type("Banana")
    with pytest.raises(ValueError, match="numbered 0..37"):
        sweep.axis_type(99)


def test_values_are_checked_against_the_specs():
    with pytest.raises(ValueError, match=r"X axis \(CFG scale\): 40 is outside the limits of CFG scale \(1 to 30\)"):
        plan(("CFG scale", "5, 40"))
    with pytest.raises(ValueError, match=r"Y axis \(Steps\): 0 is outside"):
        plan(("CFG scale", "5"), ("Steps", "0-4"))
    with pytest.raises(ValueError, match=r"X axis \(Size\): 100 is not a multiple of 8"):
        plan(("Size", "64x64, 100x64"))
    with pytest.raises(ValueError, match=r"'big' is not a size; write it as 512x768"):
        plan(("Size", "big"))
    with pytest.raises(ValueError, match=r"X axis \(Sampler\): 'Foo' is not a known sampler; choose from: Euler a"):
        plan(("Sampler", "Euler, Foo"))
    with pytest.raises(ValueError, match=r"'Fancy' is not a known schedule type"):
        plan(("Schedule type", "Karras, Fancy"))
    with pytest.raises(ValueError, match=r"'cat' does not occur in the prompt or the negative prompt"):
        plan(("Prompt S/R", "cat, dog"))
    with pytest.raises(ValueError, match=r"X axis \(Hires steps\): .*enable Hires. fix"):
        plan(("Hires steps", "5, 10"))
    with pytest.raises(ValueError, match=r"X axis \(ControlNet weight\): no ControlNet unit is enabled"):
        plan(("ControlNet weight", "0.5, 1"))
    with pytest.raises(ValueError, match=r"X axis \(Checkpoint name\): 'nope' is not a known checkpoint"):
        plan(("Checkpoint name", "a, nope"), lists={"checkpoint": lambda: ["a", "b"]})
    with pytest.raises(ValueError, match=r"X axis \(CFG scale\): no values given"):
        plan(("CFG scale", " , "))
    with pytest.raises(ValueError, match="at least one axis"):
        plan(("Nothing", ""))
    with pytest.raises(ValueError, match="Var. seed only changes images with a variation strength above 0"):
        plan(("Var. seed", "1, 2"))
    assert len(plan(("Var. seed", "1, 2"), ("Var. strength", "0.1, 0.5")).cells) == 4
    with pytest.raises(ValueError, match="Steps is on two axes"):
        plan(("Steps", "2, 3"), ("Steps", "4"))
    with pytest.raises(ValueError, match=r"Z axis: axis type 'Styles' is not supported"):
        plan(("Steps", "2"), ("Nothing", ""), ("Styles", "a"))
    with pytest.raises(ValueError, match=r"Z axis \(VAE\): 'a' is not a known vae; choose from: Automatic, None"):
        plan(("Steps", "2"), ("Nothing", ""), ("VAE", "a"), lists={"vae": lambda: ["Automatic", "None"]})


def test_choice_values_are_canonical_and_applied():
    p = plan(("Sampler", "k_euler_a, dpm++ 2m karras"), ("Prompt S/R", 'red, "dark, blue"'))
    cells = {c.pos: c.params for c in p.cells}
    assert p.axes[0].values == ("Euler a", "DPM++ 2M Karras")
    assert (cells[(0, 0, 0)]["sampler_name"], cells[(0, 0, 0)]["scheduler"]) == ("Euler a", "Automatic")
    assert (cells[(1, 0, 0)]["sampler_name"], cells[(1, 0, 0)]["scheduler"]) == ("DPM++ 2M", "Karras")
    assert cells[(1, 1, 0)]["prompt"] == "a dark, blue cube on a table"
    assert p.axes[0].labels == ["Euler a", "DPM++ 2M Karras"] and p.axes[1].labels == ["red", "dark, blue"]
    s = plan(("Size", "64x96, 128"), ("Checkpoint name", "B"), lists={"checkpoint": lambda: ["a", "b [abc123]"]})
    assert [c.params["width"] for c in s.cells] == [64, 128] and [c.params["height"] for c in s.cells] == [96, 128]
    assert s.axes[0].labels == ["Size: 64x96", "Size: 128x128"] and s.cells[0].checkpoint == "b [abc123]"
    assert sweep.choices_of(sweep.AXES["Schedule type"])[:3] == ["Automatic", "Uniform", "Karras"]
    assert sweep.choices_of(sweep.AXES["Steps"]) == []


# -- order and cost -------------------------------------------------------------------------------------------

def test_cells_row_by_row_and_cost_counts_steps_per_cell():
    p = plan(("CFG scale", "5-9 (+2)"), ("Steps", "2, 3"))
    assert [c.pos for c in p.cells] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0), (1, 1, 0), (2, 1, 0)]
    assert [(c.params["cfg_scale"], c.params["steps"]) for c in p.cells][:4] == [(5, 2), (7, 2), (9, 2), (5, 3)]
    assert p.cost == sweep.SweepCost(cells=6, images=6, steps=3 * 2 + 3 * 3, checkpoints=1, switches=0)
    assert p.summary() == "3 x 2 = 6 cells · 6 images · 15 denoising steps · 1 checkpoint"
    assert p.axes[0].labels == ["CFG scale: 5", "CFG scale: 7", "CFG scale: 9"]

    hires = plan(("Hires steps", "0, 4"), ("Denoising", "0.5"), b=base(enable_hr=True, steps=10, batch_size=2))
    # hires steps 0 = the first pass's 10 -> 10 + 10; 4 -> 10 + 4 (A1111 runs all hires steps); two images a cell
    assert hires.cost.steps == (20 + 14) * 2 and hires.cost.images == 4
    assert hires.summary().startswith("2 x 1 = 2 cells · 4 images · 68 denoising steps")


def test_checkpoint_axis_changes_least_often():
    lists = {"checkpoint": lambda: ["a", "b"]}
    p = sweep.build_plan(base(), [("CFG scale", "5, 7"), ("Steps", "2, 3"), ("Checkpoint name", "b, a")],
                         checkpoint="a", lists=lists)
    assert [c.checkpoint for c in p.cells] == ["b"] * 4 + ["a"] * 4
    assert p.cost.switches == 2 and p.cost.checkpoints == 2  # load b, then back to a
    assert p.summary() == "2 x 2 x 2 = 8 cells · 8 images · 20 denoising steps · 2 checkpoints · 2 model switches"
    p = sweep.build_plan(base(), [("Checkpoint name", "a, b"), ("Steps", "2, 3")], checkpoint="a", lists=lists)
    assert [(c.checkpoint, c.pos) for c in p.cells] == [("a", (0, 0, 0)), ("a", (0, 1, 0)), ("b", (1, 0, 0)),
                                                        ("b", (1, 1, 0))]
    assert p.cost.switches == 1


def test_random_seed_fixed_once_unless_kept():
    b = base(seed=-1)
    fixed = plan(("CFG scale", "5, 7"), ("Seed", "-1, 3"), b=b, rng=random.Random(1))
    seeds = {c.pos: c.params["seed"] for c in fixed.cells}
    assert seeds[(0, 0, 0)] == seeds[(1, 0, 0)] >= 0 and seeds[(0, 1, 0)] == seeds[(1, 1, 0)] == 3
    assert fixed.base["seed"] >= 0 and fixed.base["subseed"] >= 0
    assert fixed.infotext_extra()["Fixed Y Values"] == f"{seeds[(0, 0, 0)]}, 3"
    same = plan(("CFG scale", "5, 7"), b=b, rng=random.Random(2))
    assert len({c.params["seed"] for c in same.cells}) == 1
    kept = plan(("CFG scale", "5, 7"), b=b, rng=random.Random(2), options=sweep.SweepOptions(keep_random_seeds=True))
    assert {c.params["seed"] for c in kept.cells} == {-1}
    varied = plan(("CFG scale", "5, 7"), ("Steps", "2, 3"), options=sweep.SweepOptions(vary_seeds=(True, True, False)))
    assert [c.params["seed"] for c in varied.cells] == [5, 6, 7, 8]


def test_too_many_cells_refused_with_the_count():
    with pytest.raises(ValueError, match=r"11 x 10 x 1 = 110 cells is too many: a sweep runs at most 100"):
        plan(("Seed", "1-11"), ("Steps", "1-10"))


# -- the grid image ---------------------------------------------------------------------------------------------

def solid(color, size=(64, 64)):
    return Image.new("RGB", size, color)


def test_grid_layout_labels_centering_and_placeholders():
    assert isinstance(grid.font(20), grid.ImageFont.FreeTypeFont)  # scalable text
    cells = [solid((255, 0, 0)), solid((0, 255, 0), (32, 48)), None, solid((0, 0, 255))]
    lay = grid.layout((64, 64), 2, 2, ["CFG scale: 5", "CFG scale: 7"], ["Steps: 2", "Steps: 3"])
    g = grid.draw_grid(cells, 2, 2, col_labels=["CFG scale: 5", "CFG scale: 7"], row_labels=["Steps: 2", "Steps: 3"])
    assert lay.left > 0 and lay.top > 0 and g.size == (lay.left + 2 * 64, lay.top + 2 * 64)
    a = np.asarray(g)
    assert (a[lay.top + 10, lay.left + 10] == [255, 0, 0]).all()
    green_x, green_y = lay.left + 64 + 16, lay.top + 8  # a 32x48 cell centered in its 64x64 box
    assert (a[green_y + 1, green_x + 1] == [0, 255, 0]).all() and (a[green_y - 1, green_x - 1] == 255).all()
    assert (a[lay.top + 64 + 32, lay.left + 32] == grid.PLACEHOLDER).all()
    assert (a[: lay.top, lay.left:] < 128).any() and (a[lay.top:, : lay.left] < 128).any()  # text drawn
    bare = grid.draw_grid(cells, 2, 2, col_labels=["a", "b"], row_labels=["c", "d"], legend=False, margin=4)
    assert bare.size == (2 * 64 + 4, 2 * 64 + 4)
    assert len(grid.wrap("Prompt S/R: a very long replacement text", grid.font(12), 60)) > 2
    assert all(grid.font(12).getlength(line) <= 60 for line in grid.wrap("Supercalifragilistic", grid.font(12), 60))
    z = grid.combine([g, g], ["Seed: 1", "Seed: 2"], margin=8)
    assert z.width == 2 * g.width + 8 and z.height > g.height


# -- real sweeps on the tiny models -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def studio(world, tiny_store):
    build_controlnet(tiny_store / "tiny-sd15", world["root"] / "models" / "ControlNet" / "tiny_sd15_canny")
    settings = Settings(models_dir=world["root"] / "models", outputs_dir=world["root"] / "outputs", hub_models=(),
                        ckpt="tiny-sd15", hub_endpoint=None)
    return Studio(settings, world["runner"], world["engine"])


def events_of(job):
    return list(job.events(timeout=300))


def info_of(path):
    return read_png_info(Image.open(path))


@pytest.mark.engine  # in a module of unit tests
def test_2x3_sweep_saves_cells_with_infotexts_and_a_grid(studio, world):
    job = studio.submit_sweep(dict(BASE), [("Steps", "2, 3"), ("CFG scale", "5-9 (+2)")])
    events = events_of(job)
    assert events[-1].kind is EventKind.FINISHED, events[-1].message
    result = events[-1].result
    images = [ev for ev in events if ev.kind is EventKind.IMAGE]
    assert len(images) == 7 and images[-1].result["grid"] and not any(ev.result.get("grid") for ev in images[:-1])
    assert len(result.cells) == 6 and len(result.grids) == 1

    for out in result.cells:
        ix, iy, _ = out.cell.pos
        path = out.payloads[0]["path"]
        assert "/txt2img/" in path and out.images[0].size == (64, 64)
        text = info_of(path)["info"]
        assert f"Steps: {[2, 3][ix]}," in text and f"CFG scale: {[5, 7, 9][iy]}," in text and "Seed: 5," in text
        assert "Script" not in text
    progress = [ev for ev in events if ev.kind is EventKind.PROGRESS and ev.total > 1]
    assert {ev.total for ev in progress} == {3 * 2 + 3 * 3}
    assert any(re.fullmatch(r"cell 3/6 · step \d/\d", ev.label or "") for ev in progress)
    assert result.denoising_steps == 15

    g = result.grids[0]
    assert g.path.parent.parent.name == "txt2img-grids" and g.path.name.endswith("-5-xyz-grid.png")
    saved = Image.open(g.path)
    lay = grid.layout((64, 64), 2, 3, ["Steps: 2", "Steps: 3"], ["CFG scale: 5", "CFG scale: 7", "CFG scale: 9"])
    assert saved.size == g.image.size == (lay.left + 2 * 64, lay.top + 3 * 64)
    for out in result.cells:  # every cell where it belongs, pixel for pixel
        x, y = lay.origin(out.cell.pos[0], out.cell.pos[1])
        crop = np.asarray(saved.convert("RGB").crop((x, y, x + 64, y + 64)))
        assert np.array_equal(crop, np.asarray(Image.open(out.payloads[0]["path"]).convert("RGB")))
    parsed = info_of(g.path)
    assert parsed["parameters"]["prompt"] == BASE["prompt"]
    assert 'X Type: Steps, X Values: "2, 3", Y Type: CFG scale, Y Values: 5-9 (+2)' in parsed["info"]
    info = result.info()
    assert len(info["infotexts"]) == 7 and info["sweep"]["cells"] == 6 and info["all_seeds"] == [5] * 6


@pytest.mark.engine  # in a module of unit tests
def test_z_axis_gives_a_grid_per_value_side_by_side(studio):
    job = studio.submit_sweep(dict(BASE), [("CFG scale", "5, 9"), ("Nothing", ""), ("Seed", "1, 2")],
                              options=sweep.SweepOptions(include_sub_grids=True))
    result = job.wait(300)
    assert [g.z for g in result.grids] == [None, 0, 1]
    main, sub1, sub2 = (g.image for g in result.grids)
    assert sub1.size == sub2.size and main.width == 2 * sub1.width and main.height > sub1.height
    assert sub1.height == 64 + grid.layout((64, 64), 2, 1, ["CFG scale: 5", "CFG scale: 9"]).top  # no row labels
    assert "Z Type: Seed, Z Values: " in result.grids[0].infotext and "Z Type" not in result.grids[1].infotext
    seeds = {o.cell.pos: o.payloads[0]["seed"] for o in result.cells}
    assert seeds[(0, 0, 0)] == seeds[(1, 0, 0)] == 1 and seeds[(1, 0, 1)] == 2


@pytest.mark.engine  # in a module of unit tests
def test_checkpoint_axis_runs_each_model_once(studio):
    axes = [("CFG scale", "5, 7"), ("Checkpoint name", "tiny-sd15-inpainting, tiny-sd15")]
    plan_ = studio.plan_sweep(dict(BASE), axes)
    assert plan_.cost.switches == 2 and [c.checkpoint for c in plan_.cells][:2] == ["tiny-sd15-inpainting"] * 2
    result = studio.submit_sweep(dict(BASE), axes).wait(300)
    models = {o.cell.pos: re.search(r"Model: ([\w-]+)", o.payloads[0]["infotext"]).group(1) for o in result.cells}
    assert models == {(0, 0, 0): "tiny-sd15-inpainting", (1, 0, 0): "tiny-sd15-inpainting",
                      (0, 1, 0): "tiny-sd15", (1, 1, 0): "tiny-sd15"}
    assert studio.current_model().name == "tiny-sd15"  # the sweep does not change the selected model


@pytest.mark.engine  # in a module of unit tests
def test_controlnet_weight_axis_changes_the_first_enabled_unit(studio):
    unit = {"module": "canny", "model": "tiny_sd15_canny", "image": Image.new("RGB", (64, 64), "white")}
    params = dict(BASE, controlnet=[{"enabled": False}, unit])
    result = studio.submit_sweep(params, [("ControlNet weight", "0, 1.5")]).wait(300)
    texts = [o.payloads[0]["infotext"] for o in result.cells]
    assert "Weight: 0," in texts[0] and "Weight: 1.5," in texts[1] and "ControlNet 1:" in texts[0]


@pytest.mark.engine  # in a module of unit tests
def test_cells_are_checked_before_queueing(studio, world):
    before = set((world["root"] / "outputs").rglob("*.png"))
    with pytest.raises(BadRequest, match=r"cell 2/2 \(Size: 2048x2048\): 2048x2048 with batch size 8 is too large"):
        studio.submit_sweep(dict(BASE, batch_size=8), [("Size", "64x64, 2048x2048")])
    with pytest.raises(BadRequest, match=r"cell 1/2 \(DDIM\): Schedule type 'Karras' is not available for DDIM"):
        studio.submit_sweep(dict(BASE, scheduler="Karras", sampler_name="Euler"), [("Sampler", "DDIM, Euler")])
    with pytest.raises(BadRequest, match=r"X axis \(Steps\): '2-x' is not a number"):
        studio.plan_sweep(dict(BASE), [{"type": "Steps", "values": "2-x"}])
    with pytest.raises(BadRequest, match="ControlNet unit 0 is enabled but has no control image"):
        studio.submit_sweep(dict(BASE, controlnet=[{"model": "tiny_sd15_canny"}]), [("ControlNet weight", "1")])
    assert not world["runner"].pending() and set((world["root"] / "outputs").rglob("*.png")) == before
    assert sorted(studio.sweep_choices("Checkpoint name")) == ["tiny-sd15", "tiny-sd15-inpainting", "tiny-sdxl"]
    assert "Latent" in studio.sweep_choices("Hires upscaler") and studio.sweep_choices("Steps") == []


@pytest.mark.engine  # in a module of unit tests
def test_cancel_mid_grid_keeps_finished_cells_and_a_partial_grid(studio, world):
    job = studio.submit_sweep(dict(BASE, steps=25), [("CFG scale", "4, 5"), ("Seed", "1, 2")])
    seen, partial = 0, None
    for ev in job.events(timeout=300):
        if ev.kind is EventKind.IMAGE and not ev.result.get("grid"):
            seen += 1
            if seen == 2:
                world["runner"].interrupt(job)
        if ev.kind is EventKind.IMAGE and ev.result.get("grid"):
            partial = ev
    assert job.status == "cancelled" and "cells kept" in job.error and "partial grid saved" in job.error
    with pytest.raises(Cancelled):
        job.wait(1)
    assert 2 <= seen < 4
    g = Image.open(partial.result["path"]).convert("RGB")
    lay = grid.layout((64, 64), 2, 2, ["CFG scale: 4", "CFG scale: 5"], ["Seed: 1", "Seed: 2"])
    assert g.size == lay.size
    x, y = lay.origin(1, 1)  # the last cell never finished: a placeholder
    assert (np.asarray(g)[y + 32, x + 32] == grid.PLACEHOLDER).all()
    x, y = lay.origin(0, 0)
    assert not (np.asarray(g)[y:y + 64, x:x + 64] == grid.PLACEHOLDER).all()
    assert "X Type: CFG scale" in info_of(partial.result["path"])["info"]
