"""An independent reference: AUTOMATIC1111 webui 1.10's txt2img, rebuilt from k-diffusion (the library A1111 runs).

Nothing here imports the app's sampling code except the Philox generator (the NV noise source, a port of A1111's
modules/rng_philox.py). The app's images are compared against this in tests/test_a1111_parity.py.

Which A1111 file each piece follows:
- `load_k_diffusion`: A1111 imports k-diffusion's `sampling` and `external` (the package `__init__` pulls in training
  modules we do not install, so only those files and `utils.py` are loaded, by path).
- `LDMModel`: the parts of ldm's `LatentDiffusion` that samplers touch (ldm/models/diffusion/ddpm.py
  `register_schedule`, `apply_model`, `decode_first_stage`) over a diffusers UNet / VAE.
- `encode_prompt`: modules/sd_hijack_clip.py (`FrozenCLIPEmbedderWithCustomWords`: BOS + 75 tokens + EOS padding,
  last hidden state, "Original" emphasis rescale).
- `ImageRNG`: modules/rng.py (`ImageRNG`, `slerp`, `create_generator`).
- `CFGDenoiser`: modules/sd_samplers_cfg_denoiser.py (`forward` with cond and uncond in one call, `combine_denoised`).
- `SAMPLERS`, `get_sigmas`, `sample_kdiffusion`: modules/sd_samplers_kdiffusion.py (`samplers_k_diffusion`,
  `get_sigmas`, `sample`, `create_noise_sampler`) and modules/sd_schedulers.py (the schedule functions).
- `ddim`, `plms`, `get_timesteps`: modules/sd_samplers_timesteps_impl.py and modules/sd_samplers_timesteps.py.
- `a1111_txt2img`: modules/processing.py (`StableDiffusionProcessingTxt2Img.sample`, `decode_latent_batch`, the
  uint8 conversion in `process_images_inner`).
- `encode_images`: modules/sd_samplers_common.py `images_tensor_to_samples` (with the posterior's mode, see there).
- `setup_img2img_steps`, `sample_img2img_kdiffusion`, `sample_img2img_timesteps`: modules/sd_samplers_common.py,
  `KDiffusionSampler.sample_img2img` and `CompVisSampler.sample_img2img`.
- `a1111_img2img`: modules/processing.py (`StableDiffusionProcessingImg2Img.init` and `sample`).
- `a1111_hires`: modules/processing.py (`StableDiffusionProcessingTxt2Img.sample` and `sample_hr_pass`, pixel
  upscaler path), modules/images.py `resize_image` and modules/upscaler.py (`Upscaler.upscale`, `UpscalerLanczos`).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

_KD_NAME = "k_diffusion"
_kd_cache: dict = {}


def load_k_diffusion() -> tuple[types.ModuleType, types.ModuleType]:
    """k_diffusion.sampling and k_diffusion.external, loaded by file path (not through the package `__init__`).

    A synthetic parent package is registered under `k_diffusion` only while the three files execute (their relative
    imports need it); whatever sys.modules held under those names before is put back afterwards."""
    if _kd_cache:
        return _kd_cache["sampling"], _kd_cache["external"]
    spec = importlib.util.find_spec(_KD_NAME)  # finds the folder without running __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1 torchdiffeq")
    folder = Path(next(iter(spec.submodule_search_locations)))
    names = [_KD_NAME] + [f"{_KD_NAME}.{m}" for m in ("utils", "sampling", "external")]
    saved = {name: sys.modules.get(name) for name in names}
    package = types.ModuleType(_KD_NAME)
    package.__path__ = [str(folder)]
    sys.modules[_KD_NAME] = package
    loaded = {}
    try:
        for module in ("utils", "sampling", "external"):
            full = f"{_KD_NAME}.{module}"
            mspec = importlib.util.spec_from_file_location(full, folder / f"{module}.py")
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[full] = mod
            mspec.loader.exec_module(mod)
            setattr(package, module, mod)
            loaded[module] = mod
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    _kd_cache.update(loaded)
    return loaded["sampling"], loaded["external"]


# --- the model ---------------------------------------------------------------------------------------------------


class LDMModel:
    """What A1111's samplers see of ldm's LatentDiffusion, over a diffusers SD 1.x folder.

    `alphas_cumprod` as ldm's `register_schedule` makes it: scaled_linear betas in float64, cumprod in float64 (numpy
    there, torch here: the same IEEE operations), stored as float32. `apply_model(x, t, cond)` is the UNet with
    `cond` as the cross-attention context and `t` as given (k-diffusion passes fractional timesteps)."""

    def __init__(self, folder: Path):
        import json

        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        self.unet = UNet2DConditionModel.from_pretrained(str(folder / "unet")).eval()
        self.vae = AutoencoderKL.from_pretrained(str(folder / "vae")).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder")).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert sched.get("beta_schedule", "scaled_linear") == "scaled_linear"
        assert sched.get("prediction_type", "epsilon") == "epsilon"
        n = int(sched.get("num_train_timesteps", 1000))
        betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
        self.scale_factor = float(self.vae.config.scaling_factor)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond).sample

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """ldm's decode_first_stage: `1. / scale_factor * z`, then the VAE decoder."""
        return self.vae.decode(1.0 / self.scale_factor * z).sample


def encode_prompt(model: LDMModel, text: str) -> torch.Tensor:
    """modules/sd_hijack_clip.py for a prompt without emphasis or BREAK and at most 75 tokens: one chunk of
    BOS + tokens + EOS padding (SD 1.x pads with the end token), the last hidden state, then the "Original" emphasis
    rescale with weights 1.0 (z * (mean / mean), kept here so a zero mean would show up as it does in A1111)."""
    tok = model.tokenizer
    tokens = tok(text, truncation=False, add_special_tokens=False)["input_ids"]
    assert len(tokens) <= 75, "the reference handles one 75-token chunk"
    ids = [tok.bos_token_id, *tokens] + [tok.eos_token_id] * (76 - len(tokens))
    z = model.text_encoder(torch.tensor([ids])).last_hidden_state
    multipliers = torch.ones(1, 77, 1)
    original_mean = z.mean()
    z = z * multipliers
    new_mean = z.mean()
    return z * (original_mean / new_mean)


# --- noise: modules/rng.py ---------------------------------------------------------------------------------------


def slerp(val, low, high):
    """modules/rng.py `slerp`, verbatim."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)

    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)

    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class _Philox:
    """A1111's NV source: rng_philox.Generator (ported at pipelines/engine/sampling/philox.py)."""

    def __init__(self, seed: int):
        from pipelines.engine.sampling.philox import Generator

        self.gen = Generator(int(seed))

    def randn(self, shape) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.gen.randn(tuple(shape))), dtype=torch.float32)


def create_generator(seed: int, source: str):
    """modules/rng.py `create_generator`: Philox for NV, else a CPU torch.Generator (the GPU source is the CPU here)."""
    if source == "NV":
        return _Philox(seed)
    return torch.Generator("cpu").manual_seed(int(seed))


def randn(seed: int, shape, source: str, generator=None) -> torch.Tensor:
    """modules/rng.py `randn` (for the variation seed's noise it seeds a fresh generator, like `manual_seed`)."""
    generator = generator or create_generator(seed, source)
    if source == "NV":
        return generator.randn(shape)
    return torch.randn(shape, generator=generator)


class ImageRNG:
    """modules/rng.py `ImageRNG` without seed resizing: one generator per image; `first()` draws each image's
    starting noise (slerped toward its variation seed's noise), then reseeds with seed + ENSD when ENSD != 0;
    `next()` draws the next noise of every image (what the samplers' `torch.randn_like` gets in A1111)."""

    def __init__(self, shape, seeds, *, source: str, ensd: int = 0, subseeds=None, subseed_strength: float = 0.0):
        self.shape, self.seeds, self.source, self.ensd = tuple(shape), list(seeds), source, int(ensd)
        self.subseeds, self.subseed_strength = subseeds, subseed_strength
        self.generators = [create_generator(seed, source) for seed in self.seeds]
        self.is_first = True

    def first(self) -> torch.Tensor:
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                subnoise = randn(subseed, self.shape, self.source)
            noise = randn(seed, self.shape, self.source, generator=generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            xs.append(noise)
        if self.ensd:
            self.generators = [create_generator(seed + self.ensd, self.source) for seed in self.seeds]
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([randn(0, self.shape, self.source, generator=g) for g in self.generators])


# --- classifier-free guidance: modules/sd_samplers_cfg_denoiser.py -----------------------------------------------


class CFGDenoiser:
    """A1111's CFGDenoiser for one prompt per image: x_in = [x (cond), x (uncond)], one model call, then
    `combine_denoised`: denoised = uncond + (cond - uncond) * cfg_scale. `inner` is CompVisDenoiser (x0 out) for the
    k-diffusion samplers, or the timestep denoiser (eps out) for DDIM / PLMS: the same combination either way."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x, sigma, *, cond, uncond, cond_scale):
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        cond_in = torch.cat([cond, uncond])
        x_out = self.inner(x_in, sigma_in, cond=cond_in)
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i in range(x.shape[0]):
            denoised[i] += (x_out[i] - denoised_uncond[i]) * (1.0 * cond_scale)
        return denoised


class TimestepsDenoiser:
    """modules/sd_samplers_timesteps.py `CompVisTimestepsDenoiser`: the model's eps at integer timesteps."""

    def __init__(self, model: LDMModel):
        self.inner_model = model

    def __call__(self, x, timesteps, *, cond):
        return self.inner_model.apply_model(x, timesteps, cond)


# --- samplers and schedules: modules/sd_samplers_kdiffusion.py, modules/sd_schedulers.py -------------------------


@dataclass(frozen=True)
class Sampler:
    funcname: str
    options: dict = field(default_factory=dict)


SAMPLERS = {  # A1111 1.10's samplers_k_diffusion
    "DPM++ 2M": Sampler("sample_dpmpp_2m", {"scheduler": "karras"}),
    "DPM++ SDE": Sampler("sample_dpmpp_sde", {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    "DPM++ 2M SDE": Sampler("sample_dpmpp_2m_sde", {"scheduler": "exponential", "brownian_noise": True}),
    "DPM++ 2M SDE Heun": Sampler("sample_dpmpp_2m_sde", {"scheduler": "exponential", "brownian_noise": True,
                                                         "solver_type": "heun"}),
    "DPM++ 2S a": Sampler("sample_dpmpp_2s_ancestral", {"scheduler": "karras", "uses_ensd": True,
                                                         "second_order": True}),
    "DPM++ 3M SDE": Sampler("sample_dpmpp_3m_sde", {"scheduler": "exponential", "discard_next_to_last_sigma": True,
                                                    "brownian_noise": True}),
    "Euler a": Sampler("sample_euler_ancestral", {"uses_ensd": True}),
    "Euler": Sampler("sample_euler"),
    "LMS": Sampler("sample_lms"),
    "Heun": Sampler("sample_heun", {"second_order": True}),
    "DPM2": Sampler("sample_dpm_2", {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    "DPM2 a": Sampler("sample_dpm_2_ancestral", {"scheduler": "karras", "discard_next_to_last_sigma": True,
                                                 "uses_ensd": True, "second_order": True}),
}
TIMESTEP_SAMPLERS = ("DDIM", "PLMS")
ANCESTRAL = tuple(name for name, s in SAMPLERS.items() if s.options.get("uses_ensd"))
SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")
_SCHEDULE_KEYS = {"karras": "Karras", "exponential": "Exponential"}
BETA_ALPHA = BETA_BETA = 0.6  # A1111's beta_dist_alpha / beta_dist_beta defaults


def sgm_uniform(n, sigma_min, sigma_max, inner_model):
    """modules/sd_schedulers.py `sgm_uniform`."""
    start = inner_model.sigma_to_t(torch.tensor(sigma_max))
    end = inner_model.sigma_to_t(torch.tensor(sigma_min))
    sigs = [inner_model.t_to_sigma(ts) for ts in torch.linspace(start, end, n + 1)[:-1]]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def beta_schedule(n, sigma_min, sigma_max, alpha=BETA_ALPHA, beta=BETA_BETA):
    """modules/sd_schedulers.py `beta_scheduler`."""
    from scipy import stats

    timesteps = 1 - np.linspace(0, 1, n)
    timesteps = [stats.beta.ppf(x, alpha, beta) for x in timesteps]
    sigmas = [sigma_min + (x * (sigma_max - sigma_min)) for x in timesteps]
    sigmas += [0.0]
    return torch.FloatTensor(sigmas)


def get_sigmas(model_wrap, sampler: str, schedule: str, steps: int, always_discard: bool = False) -> torch.Tensor:
    """modules/sd_samplers_kdiffusion.py `KDiffusionSampler.get_sigmas` (1.10) with default options
    (`always_discard`: opts.always_discard_next_to_last_sigma)."""
    kd_sampling, _ = load_k_diffusion()
    options = SAMPLERS[sampler].options
    discard = options.get("discard_next_to_last_sigma", False) or always_discard
    steps += 1 if discard else 0
    if schedule == "Automatic":
        schedule = _SCHEDULE_KEYS.get(options.get("scheduler"), "Automatic")
    sigma_min, sigma_max = model_wrap.sigmas[0].item(), model_wrap.sigmas[-1].item()
    if schedule in ("Automatic", "Uniform"):
        sigmas = model_wrap.get_sigmas(steps)
    elif schedule == "Karras":
        sigmas = kd_sampling.get_sigmas_karras(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, device="cpu")
    elif schedule == "Exponential":
        sigmas = kd_sampling.get_sigmas_exponential(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, device="cpu")
    elif schedule == "SGM Uniform":
        sigmas = sgm_uniform(steps, sigma_min, sigma_max, model_wrap)
    elif schedule == "Beta":
        sigmas = beta_schedule(steps, sigma_min, sigma_max)
    else:
        raise ValueError(f"the reference has no schedule {schedule!r}")
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.cpu()


def sample_kdiffusion(model: LDMModel, x, *, sampler, schedule, steps, rng, seeds, extra_args, eta=1.0,
                      sgm_noise_multiplier=False, always_discard=False):
    """modules/sd_samplers_kdiffusion.py `KDiffusionSampler.sample`: x = noise * sigmas[0], A1111's noise routing,
    then the k-diffusion function. A1111 replaces `k_diffusion.sampling.torch` by a `TorchHijack` whose `randn_like`
    returns `p.rng.next()`; every sampler here draws its step noise through `noise_sampler` (which defaults to
    `torch.randn_like(x)`), so passing `lambda s, sn: rng.next()` is the same thing without patching the module."""
    _, kd_external = load_k_diffusion()
    model_wrap = kd_external.CompVisDenoiser(model, quantize=False)
    sigmas = get_sigmas(model_wrap, sampler, schedule, steps, always_discard)
    x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0) if sgm_noise_multiplier else x * sigmas[0]  # opts.sgm_noise_multiplier
    return _run_kdiffusion(model_wrap, sampler, x, sigmas, sigmas, rng=rng, seeds=seeds, extra_args=extra_args,
                           eta=eta)


def _run_kdiffusion(model_wrap, sampler: str, x, sigma_sched, full_sigmas, *, rng, seeds, extra_args, eta=1.0):
    """The k-diffusion function of `sampler` from `x` over `sigma_sched` (A1111's `sample` and `sample_img2img`
    share this part). A1111's `create_noise_sampler` bounds the Brownian tree by `full_sigmas`, the whole schedule
    (in img2img too, where the sampler only runs its tail)."""
    import inspect

    kd_sampling, _ = load_k_diffusion()
    spec = SAMPLERS[sampler]
    func = getattr(kd_sampling, spec.funcname)
    parameters = inspect.signature(func).parameters
    kwargs = {"sigmas": sigma_sched}
    if "eta" in parameters:
        kwargs["eta"] = eta  # p.eta, else opts.eta_ancestral (default 1)
    if spec.options.get("brownian_noise"):
        sigma_min, sigma_max = full_sigmas[full_sigmas > 0].min(), full_sigmas.max()
        kwargs["noise_sampler"] = kd_sampling.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=list(seeds))
    elif "noise_sampler" in parameters:
        kwargs["noise_sampler"] = lambda sigma, sigma_next: rng.next()
    if spec.options.get("solver_type") == "heun":
        kwargs["solver_type"] = "heun"
    return func(CFGDenoiser(model_wrap), x, extra_args=extra_args, disable=True, **kwargs)


# --- DDIM and PLMS: modules/sd_samplers_timesteps.py, modules/sd_samplers_timesteps_impl.py ----------------------


def get_timesteps(steps: int, always_discard: bool = False) -> torch.Tensor:
    """modules/sd_samplers_timesteps.py `CompVisSampler.get_timesteps`."""
    steps += 1 if always_discard else 0
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


@torch.no_grad()
def ddim(model, alphas_cumprod, x, timesteps, rng, extra_args, eta=0.0):
    """modules/sd_samplers_timesteps_impl.py `ddim` (its `k_diffusion.sampling.torch.randn_like` is `rng.next()`)."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * np.sqrt((1 - alphas_prev.cpu().numpy()) / (1 - alphas.cpu())
                           * (1 - alphas.cpu() / alphas_prev.cpu().numpy()))

    s_in = x.new_ones(x.shape[0])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x

        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1. - a_prev - sigma_t ** 2).sqrt() * e_t
        noise = sigma_t * rng.next()
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return x


@torch.no_grad()
def plms(model, alphas_cumprod, x, timesteps, extra_args):
    """modules/sd_samplers_timesteps_impl.py `plms`."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_in = x.new_ones(x.shape[0])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps = []

    def get_x_prev_and_pred_x0(e_t, index):
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1. - a_prev).sqrt() * e_t
        return a_prev.sqrt() * pred_x0 + dir_xt, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in

        e_t = model(x, ts, **extra_args)
        if len(old_eps) == 0:  # pseudo improved Euler (2nd order)
            x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t, index)
            e_t_next = model(x_prev, t_next, **extra_args)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24

        x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
    return x


# --- txt2img: modules/processing.py ------------------------------------------------------------------------------

_model_cache: dict = {}


def load_model(folder: Path) -> LDMModel:
    key = str(Path(folder).resolve())
    if key not in _model_cache:
        _model_cache[key] = LDMModel(Path(folder))
    return _model_cache[key]


@torch.no_grad()
def a1111_latents(folder: Path, *, prompt: str, negative_prompt: str, seeds, sampler: str, schedule: str = "Automatic",
                  steps: int, cfg_scale: float, width: int, height: int, randn_source: str = "CPU", ensd: int = 0,
                  subseed: int | None = None, subseed_strength: float = 0.0, eta: float | None = None,
                  sgm_noise_multiplier: bool = False, always_discard: bool = False) -> torch.Tensor:
    """The sampled latents of one batch (`StableDiffusionProcessingTxt2Img.sample`): `x = p.rng.next()` (the
    first noise), then the sampler. `randn_source` "GPU" is the CPU source here (no GPU). `eta` None: the option
    of the sampler's kind (eta_ancestral 1, eta_ddim 0); `sgm_noise_multiplier`, `always_discard`: A1111's options
    sgm_noise_multiplier and always_discard_next_to_last_sigma."""
    model = load_model(folder)
    seeds = [int(s) for s in seeds]
    source = "NV" if randn_source == "NV" else "CPU"
    subseeds = None if subseed is None else [int(subseed) + i for i in range(len(seeds))]
    rng = ImageRNG((4, height // 8, width // 8), seeds, source=source, ensd=ensd, subseeds=subseeds,
                   subseed_strength=subseed_strength)
    extra_args = _extra_args(model, prompt, negative_prompt, len(seeds), cfg_scale)
    x = rng.next()
    if sampler in TIMESTEP_SAMPLERS:
        denoiser = CFGDenoiser(TimestepsDenoiser(model))
        timesteps = get_timesteps(steps, always_discard)
        if sampler == "DDIM":
            return ddim(denoiser, model.alphas_cumprod, x, timesteps, rng, extra_args, eta=eta or 0.0)
        return plms(denoiser, model.alphas_cumprod, x, timesteps, extra_args)
    return sample_kdiffusion(model, x, sampler=sampler, schedule=schedule, steps=steps, rng=rng, seeds=seeds,
                             extra_args=extra_args, eta=1.0 if eta is None else eta,
                             sgm_noise_multiplier=sgm_noise_multiplier, always_discard=always_discard)


@torch.no_grad()
def a1111_txt2img(folder: Path, **kwargs) -> list:
    """A1111 1.10's txt2img on a diffusers SD 1.x folder: `a1111_latents`, then `decode_latent_batch`, clamp of
    (x + 1) / 2 to [0, 1] and `(255. * x).astype(np.uint8)` (truncation). Returns one PIL image per seed."""
    return to_images(load_model(folder), a1111_latents(folder, **kwargs))


@torch.no_grad()
def to_images(model: LDMModel, samples: torch.Tensor) -> list:
    """`decode_latent_batch` (one image at a time, as float32), clamp of (x + 1) / 2 to [0, 1], then
    `(255. * x).astype(np.uint8)` (truncation, as `process_images_inner` and `sample_hr_pass` do): PIL images."""
    from PIL import Image

    decoded = torch.stack([model.decode_first_stage(s[None])[0] for s in samples]).float()
    decoded = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)
    images = []
    for x in decoded:
        x = 255. * np.moveaxis(x.cpu().numpy(), 0, 2)
        images.append(Image.fromarray(x.astype(np.uint8)))
    return images


def _extra_args(model: LDMModel, prompt: str, negative_prompt: str, n: int, cfg_scale: float) -> dict:
    cond = encode_prompt(model, prompt).repeat(n, 1, 1)
    uncond = encode_prompt(model, negative_prompt).repeat(n, 1, 1)
    return {"cond": cond, "uncond": uncond, "cond_scale": cfg_scale}


# --- img2img: modules/processing.py, modules/sd_samplers_common.py, the samplers' sample_img2img -----------------


@torch.no_grad()
def encode_images(model: LDMModel, images: list) -> torch.Tensor:
    """PIL images -> latents as `StableDiffusionProcessingImg2Img.init` and `images_tensor_to_samples` make them:
    `np.array(img).astype(np.float32) / 255.0`, `image * 2 - 1`, the VAE encoder one image at a time, then ldm's
    `get_first_stage_encoding` (scale_factor * z).

    A1111 1.10's `get_first_stage_encoding` takes `encoder_posterior.sample()`, a draw from torch's unseeded global
    RNG, so no two A1111 runs of img2img (or of Hires. fix with a pixel upscaler) are bit-identical; the app uses
    the posterior's mode (its mean), and so does this reference: the difference is the posterior's std, which
    for SD's VAE is tiny next to the latents."""
    latents = []
    for img in images:
        x = torch.from_numpy(np.moveaxis(np.array(img.convert("RGB")).astype(np.float32) / 255.0, 2, 0))[None]
        x = x * 2 - 1
        latents.append(model.scale_factor * model.vae.encode(x).latent_dist.mode()[0])
    return torch.stack(latents)


def setup_img2img_steps(steps: int, denoising_strength: float, hr_steps: int | None = None) -> tuple[int, int]:
    """modules/sd_samplers_common.py `setup_img2img_steps` (opts.img2img_fix_steps off): (schedule length, t_enc).
    `hr_steps` is the `steps` argument Hires. fix passes (hr_second_pass_steps or steps): then exactly that many
    steps run, of a schedule lengthened to steps / strength."""
    if hr_steps is not None:
        requested = hr_steps or steps
        steps = int(requested / min(denoising_strength, 0.999)) if denoising_strength > 0 else 0
        return steps, requested - 1
    return steps, int(min(denoising_strength, 0.999) * steps)


def sample_img2img_kdiffusion(model: LDMModel, x, noise, *, sampler, schedule, steps, t_enc, rng, seeds,
                              extra_args):
    """modules/sd_samplers_kdiffusion.py `KDiffusionSampler.sample_img2img`: sigma_sched = sigmas[steps - t_enc - 1:],
    xi = x + noise * sigma_sched[0] (opts.img2img_extra_noise 0), the sampler over sigma_sched; the Brownian tree
    of `create_noise_sampler` is bounded by the full `sigmas`."""
    _, kd_external = load_k_diffusion()
    model_wrap = kd_external.CompVisDenoiser(model, quantize=False)
    sigmas = get_sigmas(model_wrap, sampler, schedule, steps)
    sigma_sched = sigmas[steps - t_enc - 1:]
    xi = x + noise * sigma_sched[0]
    return _run_kdiffusion(model_wrap, sampler, xi, sigma_sched, sigmas, rng=rng, seeds=seeds, extra_args=extra_args)


def sample_img2img_timesteps(model: LDMModel, x, noise, *, sampler, steps, t_enc, rng, extra_args):
    """modules/sd_samplers_timesteps.py `CompVisSampler.sample_img2img`: timesteps_sched = timesteps[:t_enc],
    xi = x * sqrt(acp[timesteps[t_enc]]) + noise * sqrt(1 - acp[timesteps[t_enc]]), DDIM / PLMS over the sched."""
    timesteps = get_timesteps(steps)
    timesteps_sched = timesteps[:t_enc]
    acp = model.alphas_cumprod
    xi = x * torch.sqrt(acp[timesteps[t_enc]]) + noise * torch.sqrt(1 - acp[timesteps[t_enc]])
    denoiser = CFGDenoiser(TimestepsDenoiser(model))
    if sampler == "DDIM":
        return ddim(denoiser, acp, xi, timesteps_sched, rng, extra_args)
    return plms(denoiser, acp, xi, timesteps_sched, extra_args)


def sample_img2img(model: LDMModel, init_latent, *, sampler, schedule, steps, denoising_strength, rng, seeds,
                   extra_args, hr_steps: int | None = None):
    """`noise = rng.next()` (the batch's first noise), then the sampler's `sample_img2img`."""
    steps, t_enc = setup_img2img_steps(steps, denoising_strength, hr_steps)
    noise = rng.next()
    if sampler in TIMESTEP_SAMPLERS:
        return sample_img2img_timesteps(model, init_latent, noise, sampler=sampler, steps=steps, t_enc=t_enc,
                                        rng=rng, extra_args=extra_args)
    return sample_img2img_kdiffusion(model, init_latent, noise, sampler=sampler, schedule=schedule, steps=steps,
                                     t_enc=t_enc, rng=rng, seeds=seeds, extra_args=extra_args)


@torch.no_grad()
def a1111_img2img(folder: Path, image, *, prompt: str, negative_prompt: str, seeds, sampler: str,
                  schedule: str = "Automatic", steps: int, cfg_scale: float, denoising_strength: float,
                  randn_source: str = "CPU", ensd: int = 0) -> list:
    """A1111 1.10's img2img of one PIL `image` already at the output size (no resize, no mask), one output per
    seed: the init latent (`encode_images`, repeated over the batch), `x = p.rng.next()`, `sample_img2img`,
    `to_images`."""
    model = load_model(folder)
    seeds = [int(s) for s in seeds]
    source = "NV" if randn_source == "NV" else "CPU"
    rng = ImageRNG((4, image.height // 8, image.width // 8), seeds, source=source, ensd=ensd)
    init_latent = encode_images(model, [image]).repeat(len(seeds), 1, 1, 1)
    extra_args = _extra_args(model, prompt, negative_prompt, len(seeds), cfg_scale)
    samples = sample_img2img(model, init_latent, sampler=sampler, schedule=schedule, steps=steps,
                             denoising_strength=denoising_strength, rng=rng, seeds=seeds, extra_args=extra_args)
    return to_images(model, samples)


# --- Hires. fix: modules/processing.py sample_hr_pass, pixel upscalers ------------------------------------------


def lanczos_upscale(image, width: int, height: int):
    """`images.resize_image(0, image, width, height, upscaler_name="Lanczos")`: `Upscaler.upscale` at
    scale = max(w / W, h / H) (at most three `UpscalerLanczos.do_upscale` rounds of
    `img.resize((int(W * scale), int(H * scale)), LANCZOS)` until the size reaches int(W * scale // 8 * 8), then a
    LANCZOS resize to that), then a LANCZOS resize to width x height when the size still differs."""
    from PIL import Image

    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
        for _ in range(3):
            if image.width >= dest_w and image.height >= dest_h:
                break
            shape = image.size
            image = image.resize((int(image.width * scale), int(image.height * scale)), resample=Image.LANCZOS)
            if shape == image.size:
                break
        if image.size != (dest_w, dest_h):
            image = image.resize((dest_w, dest_h), resample=Image.LANCZOS)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    return image


@torch.no_grad()
def a1111_hires(folder: Path, *, prompt: str, negative_prompt: str, seeds, sampler: str, schedule: str = "Automatic",
                steps: int, cfg_scale: float, width: int, height: int, hr_scale: float, denoising_strength: float,
                hr_second_pass_steps: int = 0, randn_source: str = "CPU", ensd: int = 0) -> list:
    """A1111 1.10's txt2img with Hires. fix and the "Lanczos" upscaler (same sampler and prompt in both passes):
    the first pass's latents (`a1111_latents`), decoded and truncated to 8-bit images as `sample_hr_pass` does for
    a pixel upscaler, `lanczos_upscale` to int(width * hr_scale) x int(height * hr_scale), `encode_images`, a NEW
    ImageRNG of the hires latent shape with the same seeds (A1111 1.6+), then `sample_img2img` with
    `steps=hr_second_pass_steps or steps`, decoded and truncated."""
    model = load_model(folder)
    seeds = [int(s) for s in seeds]
    source = "NV" if randn_source == "NV" else "CPU"
    common = dict(prompt=prompt, negative_prompt=negative_prompt, seeds=seeds, sampler=sampler, schedule=schedule,
                  steps=steps, cfg_scale=cfg_scale)
    first = to_images(model, a1111_latents(folder, width=width, height=height, randn_source=randn_source, ensd=ensd,
                                           **common))
    tw, th = int(width * hr_scale), int(height * hr_scale)
    init_latent = encode_images(model, [lanczos_upscale(img, tw, th) for img in first])
    rng = ImageRNG(init_latent.shape[1:], seeds, source=source, ensd=ensd)
    extra_args = _extra_args(model, prompt, negative_prompt, len(seeds), cfg_scale)
    samples = sample_img2img(model, init_latent, sampler=sampler, schedule=schedule, steps=steps,
                             denoising_strength=denoising_strength, rng=rng, seeds=seeds, extra_args=extra_args,
                             hr_steps=hr_second_pass_steps or steps)
    return to_images(model, samples)
