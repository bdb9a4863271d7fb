"""Outpainting on tiny models: the canvas work (pipelines/outpaint.py) and the plan (pipelines/engine/outpaint.py):
the input's pixels stay identical, fills, steps, a 9-channel inpainting checkpoint, a ControlNet unit, the seam."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import outpaint
from pipelines.advisor import rules as advisor
from pipelines.engine.control import ControlRequest
from pipelines.params.control import ControlUnit
from pipelines.params.spec import HintContext
from pipelines.params.specs import OutpaintParams
from pipelines.studio import BadRequest, Studio

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

# The seam: the colour / gradient jump across the old border, divided by the median of the same statistic between
# neighbouring pixels inside the input (pipelines.outpaint.seam_jump). Measured on the tiny models with the
# defaults below (mask blur 8, overlap 16, denoising 0.75, 6 steps), 64x64 input extended 32/32/16/16:
# colour 1.35-1.72x, gradient 3.2-3.6x the interior median with mask blur 8; a hard edge (mask blur 0): 49x / 66x.
SEAM_COLOR_BOUND = 2.5
SEAM_GRADIENT_BOUND = 5.0


def picture(size=(64, 64)):
    """A smooth picture (gradients, a soft disc) so the interior statistic is small and a seam would show."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([80 + 100 * xs / w, 60 + 120 * ys / h, 150 + 40 * np.sin(xs / 9.0)], axis=-1)
    img = Image.fromarray(a.clip(0, 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(img).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(200, 90, 60))
    return img


def run(world, image, model="tiny-sd15", controls=(), **params):
    params = {"prompt": "a landscape", "steps": 6, "seed": 5, "sampler_name": "Euler", "denoising_strength": 0.75,
              "mask_blur": 8, **params}
    p = OutpaintParams(**params)
    job = world["runner"].submit(lambda ctx: world["engine"].outpaint(ctx, p, world["infos"][model], image,
                                                                      list(controls)), kind="outpaint")
    job.wait(300)
    assert job.error is None, job.error
    return job.result


def original_area(img, box):
    return np.asarray(img.crop(box))


# -- the canvas (no model) ------------------------------------------------------------------------------------

def test_steps_split_each_side_into_at_most_the_step_size():
    steps = outpaint.plan_steps(100, 0, 40, 0, 48)
    assert [(s.left, s.up) for s in steps] == [(48, 40), (48, 0), (4, 0)]
    assert outpaint.plan_steps(100, 8, 0, 0, 0) == [outpaint.Step(100, 8, 0, 0)]
    assert outpaint.plan_steps(0, 0, 0, 0, 16) == []


def test_canvas_masks_cover_the_new_area_and_the_overlap_band():
    img = picture()
    c = outpaint.expand(img, outpaint.Step(left=16, right=0, up=0, down=8), overlap=4, fill="original")
    assert c.image.size == (80, 72) and c.box == (16, 0, 80, 64)
    m, keep = np.asarray(c.mask), np.asarray(c.keep)
    assert (m[:, :16] == 255).all() and (m[64:] == 255).all()  # new area
    assert (m[:60, 16:20] == 255).all() and (m[:60, 20:] == 0).all()  # 4 px band on the extended sides only
    assert ((m > 0) ^ (keep > 0)).all()
    assert np.array_equal(np.asarray(c.image.crop(c.box)), np.asarray(img))  # the old image pasted in place
    # "original": the border pixels stretched outwards
    assert np.array_equal(np.asarray(c.image)[:64, 0], np.asarray(img)[:, 0])


def test_matched_noise_follows_the_image_colours():
    img = picture()
    c = outpaint.expand(img, outpaint.Step(right=64), fill=outpaint.MATCHED_NOISE, seed=1)
    new = np.asarray(c.image)[:, 64:].reshape(-1, 3).astype(float)
    ref = np.asarray(img).reshape(-1, 3).astype(float)
    assert np.abs(new.mean(0) - ref.mean(0)).max() < 8
    assert new.std(0).min() > 5  # noise, not a flat colour
    assert np.array_equal(np.asarray(c.image)[:, :64], np.asarray(img))


def test_step_composite_keeps_the_old_canvas_outside_the_band():
    img = picture()
    c = outpaint.expand(img, outpaint.Step(left=24), overlap=8, fill="fill")
    out = outpaint.composite_step(c, Image.new("RGB", c.image.size, (0, 255, 0)), mask_blur=4)
    a = np.asarray(out)
    assert np.array_equal(a[:, 24 + 8:], np.asarray(img)[:, 8:])  # outside the band: byte-identical
    assert (a[:, :24] == (0, 255, 0)).all()  # the new area: all generated


def test_bad_amounts_name_the_field():
    with pytest.raises(ValueError, match="outpaint_left"):
        outpaint.check_amounts((64, 64), -8, 0, 0, 0)
    with pytest.raises(ValueError, match="extend at least one side"):
        outpaint.check_amounts((64, 64), 0, 0, 0, 0)
    with pytest.raises(ValueError, match="limit"):
        outpaint.check_amounts((64, 64), 0, 4096, 0, 0)


# -- the engine ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fill", ["fill", "original", "latent noise", "latent nothing", "matched noise"])
def test_every_fill_extends_and_keeps_the_input_identical(world, fill):
    img = picture()
    r = run(world, img, outpaint_left=16, outpaint_right=24, outpaint_up=0, outpaint_down=8, outpaint_fill=fill,
            steps=3)
    out = r.images[0]
    assert out.size == (64 + 40, 64 + 8)
    assert np.array_equal(original_area(out, (16, 0, 80, 64)), np.asarray(img))
    assert np.asarray(out)[:, :16].std() > 0  # something was drawn there
    assert "Outpaint left: 16" in r.infotexts[0] and f"Outpaint fill: {fill}" in r.infotexts[0]
    assert "Mask mode" not in r.infotexts[0]


def test_several_steps_run_a_pass_each_and_keep_the_input(world):
    img = picture()
    r = run(world, img, outpaint_right=40, outpaint_up=16, outpaint_step=16, outpaint_overlap=8, steps=2,
            denoising_strength=0.5)
    assert len(outpaint.plan_steps(0, 40, 16, 0, 16)) == 3
    out = r.images[0]
    assert out.size == (104, 80)
    assert np.array_equal(original_area(out, (0, 16, 64, 80)), np.asarray(img))
    assert "Outpaint steps: 3" in r.infotexts[0]
    assert r.denoising_steps == 3 * 2  # int(2 x 0.5) + 1 = 2 steps per pass (A1111's count), three passes


def test_inpainting_checkpoint_outpaints(world):
    img = picture()
    r = run(world, img, model="tiny-sd15-inpainting", outpaint_left=24, outpaint_down=16, outpaint_fill="fill",
            steps=3, denoising_strength=1.0)
    out = r.images[0]
    assert out.size == (88, 80)
    assert np.array_equal(original_area(out, (24, 0, 88, 64)), np.asarray(img))


def test_sizes_that_are_not_multiples_of_eight(world):
    img = picture((60, 52))
    r = run(world, img, outpaint_right=20, outpaint_down=10, steps=2)
    assert r.images[0].size == (80, 62)
    assert np.array_equal(original_area(r.images[0], (0, 0, 60, 52)), np.asarray(img))


def test_a_controlnet_unit_steers_the_new_area(world, tiny_store):
    from pipelines import controlnets
    from tests.tiny_models import build_controlnet

    folder = world["root"] / "models" / "ControlNet"
    if not (folder / "tiny_sd15_canny").exists():
        build_controlnet(tiny_store / "tiny-sd15", folder / "tiny_sd15_canny")
    info = {m.name: m for m in controlnets.scan(world["root"] / "models")}["tiny_sd15_canny"]
    img = picture()
    u = ControlUnit.model_validate({"module": "canny", "model": "tiny_sd15_canny", "weight": 1.0})
    plain = run(world, img, outpaint_right=32, steps=3)
    steered = run(world, img, controls=[ControlRequest(0, u, info, None)], outpaint_right=32, steps=3)
    assert steered.images[0].size == (96, 64)
    assert np.array_equal(original_area(steered.images[0], (0, 0, 64, 64)), np.asarray(img))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(steered.images[0]))
    assert "ControlNet 0" in steered.infotexts[0]


def test_seam_is_within_bounds(world, capsys):
    """The colour and gradient jump across the old border, against the input's own neighbouring pixels; with mask
    blur 0 (a hard edge, no blending) for comparison."""
    img = picture()
    figures = {}
    for fill, blur in (("fill", 8), ("original", 8), ("matched noise", 8), ("latent noise", 8), ("fill", 0)):
        r = run(world, img, outpaint_left=32, outpaint_right=32, outpaint_up=16, outpaint_down=16,
                outpaint_fill=fill, steps=6, mask_blur=blur)
        figures[f"{fill}, blur {blur}"] = outpaint.seam_jump(r.images[0], (32, 16, 96, 80))
    with capsys.disabled():
        print("\nseam (jump / interior median):",
              {k: {m: round(v, 2) for m, v in f.items()} for k, f in figures.items()})
    for name, f in figures.items():
        if name.endswith("blur 8"):
            assert f["color"] <= SEAM_COLOR_BOUND, (name, f)
            assert f["gradient"] <= SEAM_GRADIENT_BOUND, (name, f)
            assert f["color"] <= figures["fill, blur 0"]["color"], (name, f)


def test_bad_values_are_refused_naming_the_field_and_the_advisor_knows_the_bands():
    with pytest.raises(BadRequest, match="outpaint_fill"):
        Studio.parse_outpaint({"outpaint_fill": "sideways"})
    with pytest.raises(BadRequest, match="outpaint_left"):
        Studio.parse_outpaint({"outpaint_left": -8})
    with pytest.raises(BadRequest, match="outpaint_overlap"):
        Studio.parse_outpaint({"outpaint_overlap": 999})
    found = advisor.check({"prompt": "a cat", "outpaint_right": 16, "outpaint_overlap": 200}, HintContext(mode="inpaint"))
    assert {f.rule: f.fix for f in found} == {"band:outpaint_right": {"outpaint_right": 32},
                                              "band:outpaint_overlap": {"outpaint_overlap": 16}}
    assert not advisor.check({"prompt": "a cat"}, HintContext(mode="inpaint"))  # only when outpainting
