"""A1111's noise schedules for a checkpoint, computed as A1111 computes them.

`ModelSchedule` is k-diffusion's `DiscreteSchedule` for an eps/v model (k_diffusion/external.py): the model's sigmas
from its alphas_cumprod, log-sigma interpolation between integer timesteps, `sigma_to_t` for the UNet's timestep.
The alphas_cumprod are computed in float64 from the betas and then cast to float32, as the original LDM code does
(diffusers computes them in float32, a few ulps apart).

`k_sigmas` is A1111's `KDiffusionSampler.get_sigmas` (modules/sd_samplers_kdiffusion.py, sd_schedulers.py) and
`img2img_steps` its `setup_img2img_steps` (sd_samplers_common.py); `ddim_timesteps` is the DDIM / PLMS grid of
`CompVisSampler.get_timesteps` (sd_samplers_timesteps.py).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

BETA_ALPHA = BETA_BETA = 0.6  # A1111's beta_dist_alpha / beta_dist_beta defaults


def alphas_cumprod(config: Mapping[str, Any]) -> torch.Tensor:
    """The checkpoint's alphas_cumprod (float32) from its scheduler config, the betas in float64 as LDM makes them."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    else:
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        kind = config.get("beta_schedule", "scaled_linear")
        if kind == "scaled_linear":
            betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
        elif kind == "linear":
            betas = torch.linspace(start, end, n, dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule {kind!r}: A1111 samplers need a linear or scaled_linear schedule")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class ModelSchedule:
    """k-diffusion's DiscreteSchedule: the model's sigmas (ascending) and the sigma <-> timestep mapping."""

    def __init__(self, acp: torch.Tensor):
        self.alphas_cumprod = acp
        self.sigmas = ((1 - acp) / acp) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def uniform(self, n: int) -> torch.Tensor:
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def sgm_uniform(n: int, model: ModelSchedule) -> torch.Tensor:
    start = model.sigma_to_t(torch.tensor(model.sigma_max))
    end = model.sigma_to_t(torch.tensor(model.sigma_min))
    sigs = [model.t_to_sigma(ts) for ts in torch.linspace(start, end, n + 1)[:-1]]
    return torch.FloatTensor([*sigs, 0.0])


def beta(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    from scipy import stats

    ts = [stats.beta.ppf(x, BETA_ALPHA, BETA_BETA) for x in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([*(sigma_min + x * (sigma_max - sigma_min) for x in ts), 0.0])


def k_sigmas(model: ModelSchedule, schedule: str, steps: int, *, discard_penultimate: bool = False) -> torch.Tensor:
    """A1111's sigmas (float32, CPU) for `steps` steps of schedule type `schedule` (already resolved from
    "Automatic": Uniform is the model's own get_sigmas)."""
    n = steps + 1 if discard_penultimate else steps
    lo, hi = model.sigma_min, model.sigma_max
    if schedule == "Uniform":
        sigmas = model.uniform(n)
    elif schedule == "Karras":
        sigmas = karras(n, lo, hi)
    elif schedule == "Exponential":
        sigmas = exponential(n, lo, hi)
    elif schedule == "SGM Uniform":
        sigmas = sgm_uniform(n, model)
    elif schedule == "Beta":
        sigmas = beta(n, lo, hi)
    else:
        raise ValueError(f"unknown schedule type {schedule!r}")
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def img2img_steps(steps: int, strength: float, fixed: bool) -> tuple[int, int]:
    """A1111's setup_img2img_steps: (schedule length, t_enc). `fixed` (a Hires. fix pass, which names its steps):
    the pass runs exactly `steps` steps of a schedule lengthened to steps / strength; otherwise it runs the last
    int(strength x steps) + 1 steps of a `steps`-long schedule."""
    s = min(strength, 0.999)
    if fixed:
        return (int(steps / s) if strength > 0 else 0), steps - 1
    return steps, int(s * steps)


def ddim_timesteps(steps: int, *, discard_penultimate: bool = False) -> torch.Tensor:
    """A1111's DDIM / PLMS timesteps: every 1000 // steps from 1 up (clipped to 999), as integers."""
    steps += 1 if discard_penultimate else 0
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)
