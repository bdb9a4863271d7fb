"""ControlNet units in real generations on the tiny models (CPU): maps, models, weights, windows, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipelines import controlnets
from pipelines.engine.control import ControlRequest, ControlStack
from pipelines.params.control import ControlUnit, parse_unit_infotext, units_from_infotext
from pipelines.params.infotext import parse_infotext
from pipelines.params.specs import Img2ImgParams, Txt2ImgParams
from tests.tiny_models import build_controlnet

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server


@pytest.fixture(scope="module")
def cn(world, tiny_store):
    """Tiny ControlNets (with non-zero 'zero convolutions', so they do steer) in the world's models dir."""
    folder = world["root"] / "models" / "ControlNet"
    build_controlnet(tiny_store / "tiny-sd15", folder / "tiny_sd15_canny")
    build_controlnet(tiny_store / "tiny-sd15", folder / "tiny_sd15_openpose", seed=1)
    build_controlnet(tiny_store / "tiny-sdxl", folder / "tiny_sdxl_canny")
    return {m.name: m for m in controlnets.scan(world["root"] / "models")}


def shape_image(size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(im).rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="white")
    return im


def run(world, params, *, model="tiny-sd15", controls=(), image=None, mask=None):
    engine, runner = world["engine"], world["runner"]
    info = world["infos"][model]
    if image is None:
        job = runner.submit(lambda ctx: engine.txt2img(ctx, params, info, list(controls)), kind="txt2img")
    else:
        job = runner.submit(lambda ctx: engine.img2img(ctx, params, info, image, mask, list(controls)),
                            kind="img2img")
    job.wait(timeout=300)
    assert job.error is None, job.error
    return job.result


def unit(cn, name="tiny_sd15_canny", index=0, image=None, **kw):
    u = ControlUnit.model_validate({"module": "canny", "model": name, "image": image or shape_image(), **kw})
    return ControlRequest(index, u, cn[name], u.image)


BASE = dict(prompt="a box", steps=3, seed=7, width=64, height=64, cfg_scale=5)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_weight_zero_is_the_image_without_a_unit_and_weight_one_changes_it(world, cn):
    params = Txt2ImgParams(**BASE)
    plain = pixels(run(world, params))
    zero = run(world, params, controls=[unit(cn, weight=0)])
    one = run(world, params, controls=[unit(cn, weight=1)])
    assert np.array_equal(pixels(zero), plain)  # through the ControlNet pipeline, with exact zero residuals
    assert np.abs(pixels(one) - plain).mean() > 1  # the unit does steer
    assert "ControlNet 0: " in one.infotexts[0] and "Module: canny" in one.infotexts[0]


def test_the_canny_map_has_edges_where_the_shape_is_and_is_saved(world, cn):
    result = run(world, Txt2ImgParams(**BASE), controls=[unit(cn, processor_res=64)])
    (m,) = result.control_maps.values()
    a = np.asarray(m.convert("L"))
    assert m.size == (64, 64)
    edges = np.argwhere(a > 127)
    assert len(edges) > 20
    on_border = [(abs(y - 16) <= 2 or abs(y - 48) <= 2 or abs(x - 16) <= 2 or abs(x - 48) <= 2) for y, x in edges]
    assert all(on_border)
    saved = list(world["root"].glob("outputs/txt2img/*/*-controlnet-0.png"))
    assert saved, "the detected map is saved beside the output"


def test_guidance_window_and_several_units_reach_the_pipeline(world, cn, monkeypatch):
    seen = {}
    original = ControlStack.forward

    def spy(self, *args, **kwargs):
        scales = kwargs["conditioning_scale"]
        seen.setdefault("scales", []).append([float(s) for s in scales])
        seen["modes"] = self.modes
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ControlStack, "forward", spy)
    units = [unit(cn, weight=0.8, guidance_start=0.0, guidance_end=0.5),
             unit(cn, "tiny_sd15_openpose", index=2, module="none", weight=0.6, guidance_start=0.5,
                  guidance_end=1.0, control_mode="My prompt is more important")]
    result = run(world, Txt2ImgParams(**{**BASE, "steps": 4}), controls=units)
    scales = seen["scales"]
    assert len(scales) == 4 and all(len(s) == 2 for s in scales)
    assert [s[0] for s in scales] == pytest.approx([0.8, 0.8, 0, 0])
    assert [s[1] for s in scales] == pytest.approx([0, 0, 0.6, 0.6])
    assert seen["modes"] == ["Balanced", "My prompt is more important"]
    text = parse_infotext(result.infotexts[0])
    restored = units_from_infotext(text["extra"])
    assert list(restored) == [0, 2] and [u["weight"] for u in restored.values()] == [0.8, 0.6]
    assert restored[2]["control_mode"] == "My prompt is more important" and restored[2]["guidance_start"] == 0.5
    assert ControlUnit.model_validate({k: v for k, v in restored[0].items() if k != "model"}).module == "canny"


def test_control_modes_change_the_result(world, cn):
    params = Txt2ImgParams(**BASE)
    out = {mode: pixels(run(world, params, controls=[unit(cn, control_mode=mode, weight=1.5)]))
           for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")}
    a, b, c = out.values()
    assert np.abs(a - b).mean() > 0.5 and np.abs(a - c).mean() > 0.5 and np.abs(b - c).mean() > 0.5


def test_img2img_and_inpaint_use_the_input_as_control_image_when_the_unit_has_none(world, cn):
    src = shape_image()
    params = Img2ImgParams(**BASE, denoising_strength=0.6)
    u = ControlUnit.model_validate({"module": "canny", "model": "tiny_sd15_canny", "pixel_perfect": True})
    req = ControlRequest(0, u, cn["tiny_sd15_canny"], None)
    with_unit = run(world, params, controls=[req], image=src)
    without = run(world, params, image=src)
    assert with_unit.control_maps and np.asarray(with_unit.control_maps[0]).max() == 255
    assert not np.array_equal(pixels(with_unit), pixels(without))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([0, 0, 31, 63], fill=255)
    inpaint = Img2ImgParams(**BASE, denoising_strength=0.9, inpainting_fill="latent noise", mask_blur=0)
    out = run(world, inpaint, controls=[req], image=src, mask=mask)
    right = np.asarray(out.images[0])[:, 40:]
    assert np.array_equal(right, np.asarray(src)[:, 40:])  # outside the mask: the input's pixels


def test_sdxl_unit_and_hires_pass_with_control(world, cn):
    result = run(world, Txt2ImgParams(**BASE), model="tiny-sdxl", controls=[unit(cn, "tiny_sdxl_canny")])
    assert result.images[0].size == (64, 64)
    hires = Txt2ImgParams(**BASE, enable_hr=True, hr_scale=2, denoising_strength=0.5, hr_second_pass_steps=2)
    result = run(world, hires, controls=[unit(cn)])
    assert result.images[0].size == (128, 128)


@pytest.mark.unit  # in a module of engine tests
def test_unit_validation():
    with pytest.raises(ValueError, match="guidance_start"):
        ControlUnit.model_validate({"guidance_start": 0.8, "guidance_end": 0.2})
    u = ControlUnit.model_validate({"resize_mode": 2, "control_mode": 1, "module": "depth", "threshold_a": -1})
    assert (u.resize_mode, u.control_mode, u.module, u.threshold_a) == \
        ("Resize and fill", "My prompt is more important", "depth_midas", None)
    assert ControlUnit.model_validate({"resize_mode": "Crop and Resize"}).resize_mode == "Crop and resize"
    with pytest.raises(ValueError, match="unknown preprocessor"):
        ControlUnit.model_validate({"module": "scribble_magic"})
    with pytest.raises(ValueError, match="weight"):
        ControlUnit.model_validate({"weight": 2.5})
    parsed = parse_unit_infotext("Module: canny, Model: my_model [abcd1234], Weight: 0.75, Resize Mode: Just resize, "
                                 "Processor Res: 384, Threshold A: 80, Threshold B: 160, Guidance Start: 0.1, "
                                 "Guidance End: 0.9, Pixel Perfect: True, Control Mode: Balanced")
    assert parsed == {"enabled": True, "module": "canny", "model": "my_model [abcd1234]", "weight": 0.75,
                      "resize_mode": "Just resize", "processor_res": 384, "threshold_a": 80.0, "threshold_b": 160.0,
                      "guidance_start": 0.1, "guidance_end": 0.9, "pixel_perfect": True, "control_mode": "Balanced"}


@pytest.mark.unit  # in a module of engine tests
def test_control_stack_keeps_control_out_of_the_unconditional_half():
    class Fake(torch.nn.Module):
        def forward(self, sample, conditioning_scale, **kw):
            down = [torch.ones_like(sample) * conditioning_scale for _ in range(3)]
            return down, torch.ones_like(sample) * conditioning_scale

    sample = torch.zeros(2, 4, 8, 8)
    common = dict(timestep=1, encoder_hidden_states=None, controlnet_cond=[None], conditioning_scale=[1.0])
    down, mid = ControlStack([Fake()], ["ControlNet is more important"], cfg=True)(sample, **common)
    assert mid[0].abs().sum() == 0 and mid[1].abs().sum() > 0
    assert down[0][1].mean().item() == pytest.approx(0.825 ** 12)  # soft weights: shallow residuals least
    down, mid = ControlStack([Fake()], ["Balanced"], cfg=True)(sample, **common)
    assert mid[0].mean().item() == 1 and down[0].mean().item() == 1


def test_changing_units_loads_each_controlnet_once_and_never_reloads_the_checkpoint(world, cn):
    manager = world["manager"]
    params = Txt2ImgParams(**BASE)
    run(world, params, controls=[unit(cn)])  # warm: checkpoint and the canny ControlNet cached
    start = len(manager.history)
    run(world, params, controls=[unit(cn, weight=0.5), unit(cn, "tiny_sd15_openpose", index=1, module="none")])
    run(world, params, controls=[unit(cn, "tiny_sd15_openpose", module="none", control_mode="Balanced")])
    run(world, params)
    loads = [h["key"] for h in list(manager.history)[start:] if h["action"] == "load"]
    assert not any("tiny-sd15@" in k for k in loads), loads  # the checkpoint's components stayed cached
    assert [k for k in loads if k.startswith("controlnet::")] == [k for k in loads if "openpose" in k]
    assert len(loads) <= 1 and any(k.startswith("controlnet::tiny_sd15_openpose") for k in manager.cached())


@pytest.mark.unit  # in a module of engine tests
def test_unit_hints_depend_on_the_preprocessor():
    from pipelines.params.control import CONTROL_PARAMS as C
    from pipelines.params.spec import HintContext

    ctx = HintContext()
    assert C["model"].hint("None", ctx, {"module": "canny"}).verdict == "avoid"
    assert C["model"].hint("control_v11p_sd15_openpose [x]", ctx, {"module": "canny"}).verdict == "caution"
    assert C["model"].hint("control_v11p_sd15_canny [x]", ctx, {"module": "canny"}).verdict == "best"
    assert C["threshold_a"].hint(30, ctx, {"module": "canny"}).verdict == "caution"
    assert C["threshold_a"].hint(100, ctx, {"module": "canny"}).verdict == "best"
    assert C["threshold_a"].hint(0.9, ctx, {"module": "normal_midas"}).verdict == "caution"
    assert C["weight"].hint(1.8, ctx).verdict == "avoid" and C["weight"].hint(1.0, ctx).verdict == "best"
    assert C["guidance_end"].hint(0.3, ctx).verdict == "caution"
    sdxl = HintContext(family="sdxl", native=1024)
    assert C["processor_res"].hint(512, ctx).verdict == "best" and C["processor_res"].hint(512, sdxl).verdict == "ok"


def test_a_unit_outside_its_window_is_not_run(world, cn, monkeypatch):
    from diffusers import ControlNetModel

    calls = []
    original = ControlNetModel.forward

    def count(self, *args, **kwargs):
        calls.append(kwargs.get("conditioning_scale"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", count)
    params = Txt2ImgParams(**{**BASE, "steps": 4})
    ended = run(world, params, controls=[unit(cn, guidance_end=0.5)])
    assert len(calls) == 2  # steps 3 and 4 use zero residuals without running the net
    calls.clear()
    late = run(world, params, controls=[unit(cn, guidance_start=0.5)])
    assert calls == [0.0, 1.0, 1.0]  # before it ever ran, one run at scale 0 gives the residual shapes
    assert not np.array_equal(pixels(ended), pixels(late))  # the windows steer different steps
