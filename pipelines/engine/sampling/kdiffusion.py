"""A1111's samplers in generator form, so a diffusers pipeline's loop can drive them one model call at a time.

Each function is the sampler A1111 runs, line for line: k-diffusion's `sample_*` functions at the commit A1111 pins
(crowsonkb/k-diffusion ab527a9, MIT licence, Katherine Crowson), and A1111's own DDIM and PLMS loops
(modules/sd_samplers_timesteps_impl.py). Instead of calling `model(x, sigma)`, a sampler yields
`(x, sigma, step)` and is sent back `(x_seen, out)`: the latents the model actually saw (the pipeline may blend an
inpainting mask into them) and its output, the denoised latents (k-diffusion samplers) or the predicted noise (DDIM,
PLMS, which work on integer timesteps). The generator's return value is the final latents.

Step noise comes from `noise(sigma, sigma_next)`: the image generators' next draw (rng.ImageRNG) for ancestral
samplers, a Brownian tree for the SDE ones, exactly where k-diffusion calls its noise sampler. tests/
test_a1111_parity.py checks every one of them against k-diffusion's own functions and A1111's procedure.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Generator

import torch

Noise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Sampler = Generator[tuple[torch.Tensor, Any, int], tuple[torch.Tensor, torch.Tensor], torch.Tensor]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0) -> tuple[Any, Any]:
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def euler(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, **_: Any) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def euler_ancestral(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0, **_: Any) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def heun(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, **_: Any) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            x_2, denoised_2 = yield x_2, sigmas[i + 1], i
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def dpm_2(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, **_: Any) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            x_2, denoised_2 = yield x_2, sigma_mid, i
            x = x + to_d(x_2, sigma_mid, denoised_2) * (sigmas[i + 1] - sigmas[i])
    return x


def dpm_2_ancestral(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0, **_: Any) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            x_2, denoised_2 = yield x_2, sigma_mid, i
            x = x + to_d(x_2, sigma_mid, denoised_2) * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def _lms_coeff(order: int, t: Any, i: int, j: int) -> float:
    from scipy import integrate

    def fn(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, order: int = 4, **_: Any) -> Sampler:
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [_lms_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


def _sigma_fn(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t_fn(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def dpmpp_2s_ancestral(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0, **_: Any) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            x_2, denoised_2 = yield x_2, _sigma_fn(s), i
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def dpmpp_sde(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0, r: float = 1 / 2,
              **_: Any) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
            s_ = _t_fn(sd)
            x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise(_sigma_fn(t), _sigma_fn(s)) * su
            x_2, denoised_2 = yield x_2, _sigma_fn(s), i
            sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
            t_next_ = _t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise(_sigma_fn(t), _sigma_fn(t_next)) * su
    return x


def dpmpp_2m(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, **_: Any) -> Sampler:
    old_denoised = None
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_fn(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def dpmpp_2m_sde(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0,
                 solver_type: str = "midpoint", **_: Any) -> Sampler:
    old_denoised = h_last = h = None
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt()
        old_denoised = denoised
        h_last = h
    return x


def dpmpp_3m_sde(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0, **_: Any) -> Sampler:
    denoised_1 = denoised_2 = h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i], i
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# -- A1111's own loops over integer timesteps (modules/sd_samplers_timesteps_impl.py) -------------------------------

def _alphas(acp: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    alphas = acp[timesteps]
    alphas_prev = acp[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


def ddim(x: torch.Tensor, timesteps: torch.Tensor, noise: Noise, acp: torch.Tensor, eta: float = 0.0,
         **_: Any) -> Sampler:
    alphas, alphas_prev, sqrt_one_minus_alphas = _alphas(acp, timesteps)
    sigmas = eta * ((1 - alphas_prev) / (1 - alphas.double()) * (1 - alphas.double() / alphas_prev)).sqrt()
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        x, e_t = yield x, timesteps[index].item(), i
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        x = a_prev.sqrt() * pred_x0 + dir_xt + (sigma_t * noise(a_t, a_prev) if eta else 0)
    return x


def plms(x: torch.Tensor, timesteps: torch.Tensor, noise: Noise, acp: torch.Tensor, **_: Any) -> Sampler:
    alphas, alphas_prev, sqrt_one_minus_alphas = _alphas(acp, timesteps)
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps: list[torch.Tensor] = []

    def x_prev_of(x: torch.Tensor, e_t: torch.Tensor, index: int) -> torch.Tensor:
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        x, e_t = yield x, timesteps[index].item(), i
        if not old_eps:  # pseudo improved Euler (2nd order)
            x_prev = x_prev_of(x, e_t, index)
            _, e_t_next = yield x_prev, timesteps[max(index - 1, 0)].item(), i
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:  # 2nd order pseudo linear multistep (Adams-Bashforth)
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev = x_prev_of(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
    return x


K_SAMPLERS = {f.__name__: f for f in (euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, lms, dpmpp_2s_ancestral,
                                      dpmpp_sde, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde)}
TIMESTEP_SAMPLERS = {f.__name__: f for f in (ddim, plms)}


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler with one torchsde BrownianTree per image seed (A1111's
    create_noise_sampler): the SDE samplers' noise between two sigmas, the same for a seed in any batch."""

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seeds: list[int]):
        import torchsde

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        w0 = torch.zeros_like(x)[0]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1 if t0 < t1 else -1
        lo, hi = (t0, t1) if t0 < t1 else (t1, t0)
        with warnings.catch_warnings():  # torchsde notes sigmas a float ulp outside the tree's ends (A1111 too)
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self.sign * sign)
        return w / (t1 - t0).abs().sqrt()
