"""Parity with AUTOMATIC1111 webui 1.10 beyond txt2img: the app's img2img and Hires. fix (Lanczos upscaler) against
tests/a1111_reference.py, on the parity model of tests/test_a1111_parity.py, with the same tolerance (mean |diff|
<= 0.5 levels, max <= 8 per image).

The VAE encode takes the posterior's mode on both sides: A1111 1.10 draws `.sample()` from torch's unseeded global
RNG there, so A1111 itself is not reproducible in img2img (see `a1111_reference.encode_images`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests import a1111_reference as ref
from tests.test_a1111_parity import parity  # noqa: F401 - the parity model's engine, a fixture per module

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

MODEL = "tiny-sd15-a1111"
PROMPT, NEGATIVE = "a red cube on a table", "blurry, low quality"
CFG, SIZE, SEED = 7.0, 64, 1234
IMG2IMG_STEPS = 8
HIRES_STEPS, HR_SCALE, HR_DENOISE = 6, 2.0, 0.5
MAX_MEAN, MAX_ABS = 0.5, 8


def picture(size=SIZE) -> Image.Image:
    """An input with flat areas, edges and fine texture (a fixed-seed noise layer), exactly the output size."""
    rng = np.random.default_rng(5)
    base = np.clip(np.full((size, size, 3), (200, 110, 60), np.float64) + rng.normal(0, 18, (size, size, 3)), 0, 255)
    img = Image.fromarray(base.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=(20, 180, 220))
    d.line([0, 0, size, size], fill=(250, 250, 250), width=3)
    return img


def pixels(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in paths]


def submit(parity, fn) -> list[np.ndarray]:
    result = parity["runner"].submit(fn).wait(300)
    assert len(result.paths) == 2
    return pixels(result.paths)


def compare(got, want, label) -> tuple[list[np.ndarray], str]:
    assert [g.shape for g in got] == [w.shape for w in want], label
    diffs = [np.abs(g - w) for g, w in zip(got, want)]
    report = ", ".join(f"seed {SEED + i}: mean {d.mean():.4f} max {d.max()}" for i, d in enumerate(diffs))
    print(f"{label}: {report}")
    return diffs, report


def reference(fn, **kwargs) -> list[np.ndarray]:
    with warnings.catch_warnings():  # torchsde warns about float rounding at the Brownian tree's ends (so in A1111)
        warnings.simplefilter("ignore", UserWarning)
        return [np.asarray(i, dtype=np.int16) for i in fn(**kwargs)]


# --- img2img -------------------------------------------------------------------------------------------------------


def app_img2img(parity, image, *, sampler, strength, randn_source, ensd) -> list[np.ndarray]:
    """A batch of 2 through the app's img2img engine (as tests/test_img2img.py runs it), "Just resize" to the input's
    own size: no resampling on either side."""
    from pipelines.params.specs import Img2ImgParams

    params = Img2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, batch_size=2, sampler_name=sampler,
                           scheduler="Automatic", steps=IMG2IMG_STEPS, cfg_scale=CFG, width=SIZE, height=SIZE,
                           denoising_strength=strength, resize_mode="Just resize", randn_source=randn_source,
                           eta_noise_seed_delta=ensd)
    return submit(parity, lambda ctx: parity["engine"].img2img(ctx, params, parity["info"], image))


def reference_img2img(folder, image, *, sampler, strength, randn_source, ensd) -> list[np.ndarray]:
    return reference(ref.a1111_img2img, folder=folder, image=image, prompt=PROMPT, negative_prompt=NEGATIVE,
                     seeds=[SEED, SEED + 1], sampler=sampler, steps=IMG2IMG_STEPS, cfg_scale=CFG,
                     denoising_strength=strength, randn_source=randn_source, ensd=ensd)


IMG2IMG_CASES = (
    [(s, strength, "CPU", 0) for s in ("Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM")
     for strength in (0.3, 0.75, 1.0)]
    + [("Euler a", 0.75, "NV", 31337)]
)


@pytest.mark.parametrize(("sampler", "strength", "randn_source", "ensd"), IMG2IMG_CASES,
                         ids=[f"{s}-{st}-{r}-ensd{e}".replace(" ", "_") for s, st, r, e in IMG2IMG_CASES])
def test_img2img_matches_a1111(parity, sampler, strength, randn_source, ensd):
    kw = dict(sampler=sampler, strength=strength, randn_source=randn_source, ensd=ensd)
    image = picture()
    want = reference_img2img(parity["folder"], image, **kw)
    got = app_img2img(parity, image, **kw)
    diffs, report = compare(got, want, f"img2img {sampler} / {strength} / {randn_source} / ENSD {ensd}")
    assert all(d.mean() <= MAX_MEAN and d.max() <= MAX_ABS for d in diffs), report


# --- Hires. fix ----------------------------------------------------------------------------------------------------


def app_hires(parity, *, sampler) -> list[np.ndarray]:
    from pipelines.params.specs import Txt2ImgParams

    params = Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, batch_size=2, sampler_name=sampler,
                           scheduler="Automatic", steps=HIRES_STEPS, cfg_scale=CFG, width=SIZE, height=SIZE,
                           randn_source="CPU", enable_hr=True, hr_upscaler="Lanczos", hr_scale=HR_SCALE,
                           denoising_strength=HR_DENOISE)
    return submit(parity, lambda ctx: parity["engine"].txt2img(ctx, params, parity["info"]))


def reference_hires(folder, *, sampler) -> list[np.ndarray]:
    return reference(ref.a1111_hires, folder=folder, prompt=PROMPT, negative_prompt=NEGATIVE, seeds=[SEED, SEED + 1],
                     sampler=sampler, steps=HIRES_STEPS, cfg_scale=CFG, width=SIZE, height=SIZE, hr_scale=HR_SCALE,
                     denoising_strength=HR_DENOISE, randn_source="CPU")


@pytest.mark.parametrize("sampler", ["Euler", "Euler a"])
def test_hires_fix_matches_a1111(parity, sampler):
    want = reference_hires(parity["folder"], sampler=sampler)
    got = app_hires(parity, sampler=sampler)
    assert got[0].shape == (int(SIZE * HR_SCALE), int(SIZE * HR_SCALE), 3)
    diffs, report = compare(got, want, f"hires {sampler} / Lanczos x{HR_SCALE} / denoise {HR_DENOISE}")
    assert all(d.mean() <= MAX_MEAN and d.max() <= MAX_ABS for d in diffs), report


# --- the reference checks itself -----------------------------------------------------------------------------------


def test_reference_img2img_steps_follow_a1111():
    assert ref.setup_img2img_steps(8, 0.3) == (8, 2)
    assert ref.setup_img2img_steps(8, 0.75) == (8, 6)
    assert ref.setup_img2img_steps(8, 1.0) == (8, 7)  # min(strength, 0.999): the full schedule, sigmas[0:]
    assert ref.setup_img2img_steps(6, 0.5, hr_steps=6) == (12, 5)  # Hires. fix: exactly 6 steps of 12
    assert ref.setup_img2img_steps(6, 0.3, hr_steps=0) == (20, 5)  # hr_second_pass_steps 0: the first pass's


def test_reference_lanczos_upscale_is_one_pil_resize_at_2x():
    img = picture()
    assert np.array_equal(np.asarray(ref.lanczos_upscale(img, 128, 128)),
                          np.asarray(img.resize((128, 128), Image.LANCZOS)))


def test_parity_model_tells_img2img_settings_apart(parity):
    """The tolerance means something here: another strength, sampler or noise source would fail it."""
    image = picture()

    def images(**kw):
        args = dict(sampler="Euler", strength=0.75, randn_source="CPU", ensd=0)
        return reference_img2img(parity["folder"], image, **{**args, **kw})[0]

    base = images()
    for change in (dict(strength=0.6), dict(sampler="Euler a"), dict(randn_source="NV"), dict(sampler="DDIM")):
        d = np.abs(images(**change) - base)
        assert d.mean() > MAX_MEAN or d.max() > MAX_ABS, (change, d.mean(), d.max())
