"""Parity with AUTOMATIC1111 webui 1.10: the app's txt2img against tests/a1111_reference.py (A1111's own procedure
rebuilt from k-diffusion), pixel for pixel within rounding: mean |diff| <= 0.5 levels, max <= 8.

The tiny model here differs from tests/tiny_models.build_sd15 in two ways that make the comparison mean something:
- the text encoder's final layer norm has a non-zero bias, as real CLIP has (A1111's emphasis rescale, mean / mean,
  would otherwise divide zero by zero on the padding);
- the UNet's output layer is scaled up (x3), so its eps has about unit variance, like a trained model's: with the
  random UNet's small eps the samplers barely differ (Euler vs LMS was 0.45 levels apart, inside the tolerance).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import a1111_reference as ref
from tests.conftest import tiny_engine

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

MODEL = "tiny-sd15-a1111"
PROMPT, NEGATIVE = "a red cube on a table", "blurry, low quality"
STEPS, CFG, SIZE = 6, 7.0, 64
MAX_MEAN, MAX_ABS = 0.5, 8


def build_parity_sd15(path: Path, *, seed: int = 0, eps_gain: float = 3.0) -> Path:
    """tests/tiny_models.build_sd15 (SD 1.x layout, 64 px) with a non-zero final layer-norm bias in the text encoder
    and the UNet's conv_out scaled by `eps_gain` (see the module docstring)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from tests import tiny_models as tm

    unet, text_encoder = tm._unet(4, seed=seed), tm._text_encoder(seed=seed)
    with torch.no_grad():
        bias = dict(text_encoder.named_parameters())["final_layer_norm.bias"]
        bias.copy_(0.1 + 0.1 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(1234)))
        unet.conv_out.weight.mul_(eps_gain)
        unet.conv_out.bias.mul_(eps_gain)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=tm._vae(seed), text_encoder=text_encoder, tokenizer=tm._tokenizer(),
        scheduler=DDIMScheduler(**tm.SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """The real engine and job runner over a models dir holding only the parity model (like conftest's `world`)."""
    from pipelines import discovery
    from pipelines.jobs import JobRunner

    root = tmp_path_factory.mktemp("a1111-parity")
    folder = build_parity_sd15(root / "models" / "Stable-diffusion" / MODEL)
    infos = {i.name: i for i in discovery.scan(root / "models")}
    engine = tiny_engine(root)
    runner = JobRunner().start()
    yield {"engine": engine, "runner": runner, "info": infos[MODEL], "folder": folder}
    runner.stop()


def app_images(parity, *, sampler, schedule, seed, randn_source, ensd) -> list[np.ndarray]:
    """A batch of 2 through the app's txt2img engine; the pixels of the PNGs it saved."""
    from pipelines.params.specs import Txt2ImgParams

    values = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": seed, "batch_size": 2, "sampler_name": sampler,
              "scheduler": schedule, "steps": STEPS, "cfg_scale": CFG, "width": SIZE, "height": SIZE,
              "randn_source": randn_source, "eta_noise_seed_delta": ensd}
    params = Txt2ImgParams(**values)
    job = parity["runner"].submit(lambda ctx: parity["engine"].txt2img(ctx, params, parity["info"]))
    result = job.wait(300)
    assert len(result.paths) == 2
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in result.paths]


def reference_images(folder, *, sampler, schedule, seed, randn_source, ensd) -> list[np.ndarray]:
    with warnings.catch_warnings():  # torchsde warns about float rounding at the Brownian tree's ends (so in A1111)
        warnings.simplefilter("ignore", UserWarning)
        images = ref.a1111_txt2img(folder, prompt=PROMPT, negative_prompt=NEGATIVE, seeds=[seed, seed + 1],
                                   sampler=sampler, schedule=schedule, steps=STEPS, cfg_scale=CFG, width=SIZE,
                                   height=SIZE, randn_source=randn_source, ensd=ensd)
    return [np.asarray(i, dtype=np.int16) for i in images]


ALL_SAMPLERS = [*ref.SAMPLERS, *ref.TIMESTEP_SAMPLERS]
CASES = (
    # every sampler with its Automatic schedule, CPU noise
    [(s, "Automatic", "CPU", 0) for s in ALL_SAMPLERS]
    # schedule types A1111 offers the k-diffusion samplers
    + [("Euler", sched, "CPU", 0) for sched in ("Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")]
    + [("DPM++ 2M", "Exponential", "CPU", 0), ("DPM++ 2M SDE", "Karras", "CPU", 0), ("Euler a", "Karras", "CPU", 0)]
    # NVIDIA-compatible Philox noise
    + [(s, "Automatic", "NV", 0) for s in ("Euler", "Euler a", "DPM++ 2M SDE", "DDIM")]
    # eta noise seed delta: the ancestral samplers' step noise
    + [(s, "Automatic", "CPU", 31337) for s in ref.ANCESTRAL]
    + [("Euler a", "Automatic", "NV", 31337)]
)


@pytest.mark.parametrize(("sampler", "schedule", "randn_source", "ensd"), CASES,
                         ids=[f"{s}-{sc}-{r}-ensd{e}".replace(" ", "_") for s, sc, r, e in CASES])
def test_app_matches_a1111(parity, sampler, schedule, randn_source, ensd):
    seed = 1234
    want = reference_images(parity["folder"], sampler=sampler, schedule=schedule, seed=seed,
                            randn_source=randn_source, ensd=ensd)
    got = app_images(parity, sampler=sampler, schedule=schedule, seed=seed, randn_source=randn_source, ensd=ensd)
    diffs = [np.abs(g - w) for g, w in zip(got, want)]
    report = ", ".join(f"seed {seed + i}: mean {d.mean():.4f} max {d.max()}" for i, d in enumerate(diffs))
    print(f"{sampler} / {schedule} / {randn_source} / ENSD {ensd}: {report}")
    assert all(d.mean() <= MAX_MEAN and d.max() <= MAX_ABS for d in diffs), report


# --- the reference checks itself ---------------------------------------------------------------------------------


def test_reference_cpu_first_noise_is_torch_randn_per_image():
    shape, seeds = (4, 8, 8), [5, 77]
    rng = ref.ImageRNG(shape, seeds, source="CPU", ensd=31337)
    first = rng.next()
    for i, seed in enumerate(seeds):
        assert torch.equal(first[i], torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
    # after first(), ENSD reseeds each image's generator with seed + ENSD
    second = rng.next()
    for i, seed in enumerate(seeds):
        assert torch.equal(second[i], torch.randn(shape, generator=torch.Generator().manual_seed(seed + 31337)))
    # without ENSD the same generator goes on
    plain = ref.ImageRNG(shape, seeds, source="CPU")
    plain.next()
    g = torch.Generator().manual_seed(seeds[0])
    torch.randn(shape, generator=g)
    assert torch.equal(plain.next()[0], torch.randn(shape, generator=g))


def test_reference_nv_first_noise_is_philox():
    from pipelines.engine.sampling.philox import Generator

    rng = ref.ImageRNG((4, 8, 8), [3, 4], source="NV")
    first = rng.next()
    for i, seed in enumerate([3, 4]):
        assert np.array_equal(first[i].numpy(), np.asarray(Generator(seed).randn((4, 8, 8)), dtype=np.float32))
    assert not torch.equal(first[0], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3)))


def test_reference_variation_seed_is_a1111s_slerp():
    shape = (4, 8, 8)
    noise = ref.ImageRNG(shape, [3], source="CPU", subseeds=[9], subseed_strength=0.25).next()[0]
    a = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    b = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    assert torch.equal(noise, ref.slerp(0.25, a, b))
    assert torch.equal(ref.ImageRNG(shape, [3], source="CPU", subseeds=[9], subseed_strength=0.0).next()[0], a)


def test_reference_ensd_changes_only_ancestral_samplers(parity):
    for sampler in ("Euler a", "DPM2 a", "Euler", "DPM++ 2M SDE", "DDIM"):
        kw = dict(sampler=sampler, schedule="Automatic", seed=7, randn_source="CPU")
        plain = reference_images(parity["folder"], ensd=0, **kw)[0]
        delta = reference_images(parity["folder"], ensd=31337, **kw)[0]
        assert np.array_equal(plain, delta) != (sampler in ref.ANCESTRAL), sampler


def test_parity_model_tells_samplers_apart(parity):
    """The tolerance means something on this model: a wrong sampler, schedule, noise source or ENSD would fail it."""
    def images(**kw):
        args = dict(sampler="Euler", schedule="Automatic", seed=1234, randn_source="CPU", ensd=0)
        return reference_images(parity["folder"], **{**args, **kw})[0]

    base = images()
    for change in (dict(sampler="LMS"), dict(schedule="Karras"), dict(randn_source="NV"), dict(sampler="DDIM")):
        d = np.abs(images(**change) - base)
        assert d.mean() > MAX_MEAN or d.max() > MAX_ABS, (change, d.mean(), d.max())
    d = np.abs(images(sampler="Euler a", ensd=31337) - images(sampler="Euler a"))
    assert d.mean() > MAX_MEAN or d.max() > MAX_ABS


def test_reference_schedules_follow_a1111():
    kd_sampling, kd_external = ref.load_k_diffusion()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    model = type("M", (), {"alphas_cumprod": torch.cumprod(1 - betas, 0).float()})()
    wrap = kd_external.CompVisDenoiser(model)
    assert abs(wrap.sigmas[-1].item() - 14.6146) < 1e-3 and abs(wrap.sigmas[0].item() - 0.0292) < 1e-3
    assert torch.equal(ref.get_sigmas(wrap, "Euler", "Automatic", 6), wrap.get_sigmas(6))
    karras = kd_sampling.get_sigmas_karras(7, wrap.sigmas[0].item(), wrap.sigmas[-1].item())
    assert torch.equal(ref.get_sigmas(wrap, "DPM2", "Automatic", 6), torch.cat([karras[:-2], karras[-1:]]))
    assert len(ref.get_sigmas(wrap, "DPM++ 3M SDE", "Automatic", 6)) == 7
    assert ref.get_timesteps(6).tolist() == [1, 167, 333, 499, 665, 831, 997]  # 1000 // 6 = 166: seven
    assert "k_diffusion.sampling" not in sys.modules  # the by-path loading left nothing registered
