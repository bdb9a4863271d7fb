"""Hires. fix on the tiny model: sizes, latent and pixel upscalers, second-pass settings, first pass kept."""

import pytest
from PIL import Image

from pipelines.engine.hires import target_size
from pipelines.jobs import EventKind
from pipelines.outputs import read_png_info
from pipelines.params.specs import LATENT_UPSCALERS, Txt2ImgParams

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server


def run(world, **params):
    params = {"prompt": "a castle", "steps": 3, "seed": 9, "enable_hr": True, **params}
    job = world["runner"].submit(lambda ctx: world["engine"].txt2img(ctx, Txt2ImgParams(**params),
                                                                     world["infos"]["tiny-sd15"]))
    return job.wait(120)


@pytest.mark.unit  # in a module of engine tests
def test_target_size():
    assert target_size(512, 512, 2, 0, 0) == (1024, 1024)
    assert target_size(512, 768, 1.5, 0, 0) == (768, 1152)
    assert target_size(512, 768, 2, 1024, 0) == (1024, 1536)  # the other side keeps the aspect
    assert target_size(512, 512, 2, 0, 640) == (640, 640)
    assert target_size(512, 512, 2, 1000, 600) == (1000, 600)


@pytest.mark.parametrize("upscaler", [*LATENT_UPSCALERS, "Lanczos", "Nearest"])
def test_every_upscaler_reaches_the_target_size(world, upscaler):
    r = run(world, hr_upscaler=upscaler, hr_scale=1.5)
    assert r.images[0].size == (96, 96)  # 64 px native x 1.5
    text = r.infotexts[0]
    assert f"Hires upscaler: {upscaler}" in text and "Hires upscale: 1.5" in text and "Size: 64x64" in text


def test_resize_to_and_second_pass_settings(world):
    r = run(world, hr_resize_x=128, hr_resize_y=96, hr_second_pass_steps=4, hr_sampler_name="euler a",
            hr_prompt="a castle, detailed", denoising_strength=0.5, batch_size=2)
    assert [i.size for i in r.images] == [(128, 96), (128, 96)]
    p = read_png_info(Image.open(r.paths[0]))["parameters"]
    assert (p["hr_resize_x"], p["hr_resize_y"], p["hr_second_pass_steps"]) == (128, 96, 4)
    assert p["hr_sampler_name"] == "Euler a" and p["hr_prompt"] == "a castle, detailed" and p["enable_hr"]
    assert p["denoising_strength"] == 0.5


def test_first_pass_is_kept_when_asked(world):
    r = run(world, hr_keep_first_pass=True, seed=77)
    before = sorted(r.paths[0].parent.glob("*-77-before-highres-fix.png"))
    assert before
    img = Image.open(before[-1])
    assert img.size == (64, 64) and "Hires" not in read_png_info(img)["info"]
    assert r.images[0].size == (128, 128)


def test_progress_counts_both_passes(world):
    params = Txt2ImgParams(prompt="x", steps=4, seed=1, enable_hr=True, hr_second_pass_steps=6,
                           denoising_strength=0.5)  # second pass: all 6 steps, as A1111 runs them
    job = world["runner"].submit(lambda ctx: world["engine"].txt2img(ctx, params, world["infos"]["tiny-sd15"]))
    steps = [e.step for e in job.events(timeout=60) if e.kind is EventKind.PROGRESS and e.total == 10]
    assert steps[-1] == 10 and steps == sorted(steps)


def test_plain_txt2img_writes_no_hires_settings(world):
    job = world["runner"].submit(lambda ctx: world["engine"].txt2img(
        ctx, Txt2ImgParams(prompt="x", steps=2, seed=1, hr_scale=3), world["infos"]["tiny-sd15"]))
    text = job.wait(60).infotexts[0]
    assert "Hires" not in text and "Denoising" not in text


@pytest.mark.unit  # in a module of engine tests
def test_bad_hires_sampler_is_refused():
    with pytest.raises(ValueError, match="Unknown sampler 'Nope'"):
        Txt2ImgParams(enable_hr=True, hr_sampler_name="Nope")
