"""The studio's A1111 samplers (pipelines/engine/sampling/) against k-diffusion's own functions, bit for bit.

A toy denoiser (a fixed function of x and sigma) and the same step noise drive both: k-diffusion's `sample_*` (the
code A1111 runs, loaded as tests/a1111_reference.py loads it) and the generator the studio's scheduler drives. Every
sampler must give the same tensor, and the schedules the same sigmas as k-diffusion's; tests/test_a1111_parity.py
then checks whole images against A1111's procedure.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from pipelines.engine.sampling import kdiffusion, sigmas
from pipelines.engine.sampling.rng import ImageRNG, Source
from pipelines.engine.sampling.scheduler import A1111Scheduler, PassSteps, SamplerSpec
from pipelines.params import samplers
from tests.a1111_reference import load_k_diffusion

pytestmark = pytest.mark.unit

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon"}
K_NAMES = {  # studio function -> k-diffusion function (A1111's samplers_k_diffusion)
    "euler": "sample_euler", "euler_ancestral": "sample_euler_ancestral", "heun": "sample_heun",
    "dpm_2": "sample_dpm_2", "dpm_2_ancestral": "sample_dpm_2_ancestral", "lms": "sample_lms",
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral", "dpmpp_sde": "sample_dpmpp_sde", "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_2m_sde": "sample_dpmpp_2m_sde", "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
}


@pytest.fixture(scope="module")
def kd():
    return load_k_diffusion()


def toy_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A deterministic 'denoiser': shrinks x toward a fixed pattern, more at high sigma."""
    pattern = torch.linspace(-1, 1, x[0].numel()).reshape(x.shape[1:])
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (x + s ** 2 * pattern) / (1 + s ** 2) + 0.01 * torch.sin(3 * x)


def noise_source(seed: int, shape: tuple[int, ...]):
    gen = torch.Generator().manual_seed(seed)
    return lambda a, b: torch.randn(shape, generator=gen)


def drive(gen: kdiffusion.Sampler) -> torch.Tensor:
    """Run a studio sampler to the end with the toy model."""
    try:
        x, sigma, _ = next(gen)
        while True:
            x, sigma, _ = gen.send((x, toy_model(x, torch.as_tensor(sigma) * x.new_ones(x.shape[0]))))
    except StopIteration as done:
        return done.value


@pytest.mark.parametrize("name", sorted(K_NAMES))
@pytest.mark.parametrize("schedule", ["Uniform", "Karras", "Exponential"])
def test_every_sampler_is_k_diffusions(kd, name, schedule):
    sampling, external = kd
    model = sigmas.ModelSchedule(sigmas.alphas_cumprod(SD15))
    sig = sigmas.k_sigmas(model, schedule, 7)
    x0 = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5)) * sig[0]
    kwargs = {"solver_type": "heun"} if name == "dpmpp_2m_sde" else {}
    ours = drive(kdiffusion.K_SAMPLERS[name](x0.clone(), sig, noise_source(9, x0.shape), **kwargs))
    fn = getattr(sampling, K_NAMES[name])
    takes_noise = "noise_sampler" in inspect.signature(fn).parameters
    extra = {"noise_sampler": noise_source(9, x0.shape)} if takes_noise else {}
    theirs = fn(lambda x, s: toy_model(x, s), x0.clone(), sig, disable=True, **kwargs, **extra)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("schedule", ["Uniform", "Karras", "Exponential"])
def test_schedules_are_k_diffusions(kd, schedule):
    sampling, external = kd
    acp = sigmas.alphas_cumprod(SD15)
    wrap = external.DiscreteEpsDDPMDenoiser(torch.nn.Identity(), acp, quantize=False)
    ours = sigmas.k_sigmas(sigmas.ModelSchedule(acp), schedule, 12)
    lo, hi = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    theirs = {"Uniform": lambda: wrap.get_sigmas(12), "Karras": lambda: sampling.get_sigmas_karras(12, lo, hi),
              "Exponential": lambda: sampling.get_sigmas_exponential(12, lo, hi)}[schedule]()
    assert torch.equal(ours, theirs)
    s = torch.tensor([14.0, 3.3, 0.5, 0.03])
    assert torch.equal(sigmas.ModelSchedule(acp).sigma_to_t(s), wrap.sigma_to_t(s))


def test_alphas_are_ldms_float64_ones():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.equal(sigmas.alphas_cumprod(SD15), torch.cumprod(1 - betas, 0).float())


def test_discard_penultimate_and_ddim_grid():
    model = sigmas.ModelSchedule(sigmas.alphas_cumprod(SD15))
    full = sigmas.k_sigmas(model, "Karras", 6)
    cut = sigmas.k_sigmas(model, "Karras", 5, discard_penultimate=True)
    assert len(cut) == 6 and torch.equal(cut[:-1], full[:-2]) and cut[-1] == 0
    assert sigmas.ddim_timesteps(6).tolist() == [1, 167, 333, 499, 665, 831, 997]
    assert sigmas.ddim_timesteps(4).tolist() == [1, 251, 501, 751]
    assert sigmas.img2img_steps(20, 0.75, fixed=False) == (20, 15)
    assert sigmas.img2img_steps(10, 0.5, fixed=True) == (20, 9)
    assert sigmas.img2img_steps(10, 1.0, fixed=False) == (10, 9)


def _rng(source: str = "CPU", seeds=(1, 2), ensd: int = 0) -> ImageRNG:
    return ImageRNG(Source(source, torch.device("cpu")), (4, 8, 8), list(seeds), ensd=ensd)


def test_image_rng_draws_as_a1111():
    first, step = (lambda r: (r.next(), r.next()))(_rng())
    for i, seed in enumerate((1, 2)):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(first[i], torch.randn((4, 8, 8), generator=g))
        assert torch.equal(step[i], torch.randn((4, 8, 8), generator=g))  # the same generator continues
    r = _rng(ensd=31337)
    r.next()
    assert torch.equal(r.next()[0], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(1 + 31337)))
    from pipelines.engine.sampling.philox import Generator

    assert torch.equal(_rng("NV").next()[1], torch.asarray(Generator(2).randn((4, 8, 8))))


@pytest.mark.parametrize("sampler", [s for s in samplers.sampler_names() if samplers.spec(s).a1111])
def test_the_scheduler_runs_every_sampler_inside_a_pipeline_loop(sampler):
    """The diffusers protocol as a pipeline uses it: timesteps, scale_model_input, step; an eps 'UNet' that is the
    toy denoiser seen through k-diffusion's scalings gives k-diffusion's result through the scheduler too."""
    spec = samplers.spec(sampler)
    s = A1111Scheduler(SamplerSpec(spec.a1111, spec.brownian, spec.discard_penultimate, spec.solver_type),
                       samplers.resolve_schedule(sampler, "Automatic"), SD15, PassSteps(6), _rng(), [1, 2])
    s.set_timesteps(6)
    latents = s.first_noise() * s.init_noise_sigma
    for i, t in enumerate(s.timesteps):
        x_in = s.scale_model_input(latents, t)
        assert torch.isfinite(x_in).all()
        latents = s.step(torch.tanh(x_in) * 0.5, t, latents, return_dict=False)[0]
    assert len(s.timesteps) == len(s.call_t) and s.progress(len(s.timesteps)) == s.steps_run
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
