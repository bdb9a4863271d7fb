"""A diffusers-protocol scheduler that runs A1111's samplers (kdiffusion.py) inside any diffusers pipeline.

A diffusers pipeline loops over `scheduler.timesteps`: per entry it scales the latents (`scale_model_input`), calls
the UNet (and ControlNet) at that timestep, applies CFG and calls `step`. Here each entry is one model call of the
A1111 sampler: its timestep is the one A1111 gives the UNet (k-diffusion's `sigma_to_t` of the call's sigma, a
fractional timestep; DDIM/PLMS: an integer one), `scale_model_input` is k-diffusion's c_in, and `step` turns the
UNet's (CFG-combined) output into what the sampler asks for (the denoised latents, or the noise for DDIM/PLMS),
sends it to the sampler and returns the latents of its next model call.

The sampler keeps its state in float32, as A1111 does, whatever the pipeline's latents dtype; the latents the
pipeline hands back are used instead only when the pipeline changed them (an inpainting pipeline blends the
unmasked area in between steps).

Img2img: the pass starts from `image latents + first noise x sigma` of A1111's shortened schedule
(`add_noise`), with the first noise from the job's `ImageRNG`. The pipeline cuts `strength` of its own timesteps
off the front; `set_timesteps` puts that many placeholders in front, so what it runs is exactly A1111's calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import torch

from pipelines.engine.sampling import kdiffusion
from pipelines.engine.sampling import sigmas as sched
from pipelines.engine.sampling.rng import ImageRNG


@dataclass(frozen=True)
class SamplerSpec:
    """How A1111 runs one sampler (the options of its samplers_k_diffusion / samplers_timesteps lists)."""

    function: str  # a name in kdiffusion.K_SAMPLERS or kdiffusion.TIMESTEP_SAMPLERS
    brownian: bool = False  # step noise from a Brownian tree seeded with the image seeds (DPM++ SDE family)
    discard_penultimate: bool = False
    solver_type: str = "midpoint"


@dataclass(frozen=True)
class PassSteps:
    """The pass's steps as A1111 counts them: `steps` of a full schedule (txt2img), or an img2img pass at
    `strength` (`fixed`: a Hires. fix pass, which runs exactly `steps` steps)."""

    steps: int
    strength: float = 1.0
    img2img: bool = False
    fixed: bool = False


class A1111Scheduler:
    """Drives one A1111 sampler over one pass of a batch. Built per pass; never shared."""

    order = 1

    def __init__(self, spec: SamplerSpec, schedule: str, base_config: Mapping[str, Any], steps: PassSteps,
                 rng: ImageRNG, seeds: list[int], *, sgm_noise_multiplier: bool = False, eta: float = 1.0):
        self.spec, self.rng, self.seeds = spec, rng, seeds
        from diffusers.configuration_utils import FrozenDict

        # what pipelines read from a scheduler's config (steps_offset 1 / clip_sample off: no deprecation rewrite)
        self.config = FrozenDict({**dict(base_config), "steps_offset": 1, "clip_sample": False})
        self.v_pred = base_config.get("prediction_type") == "v_prediction"
        self.model = sched.ModelSchedule(sched.alphas_cumprod(base_config))
        self.timestep_mode = spec.function in kdiffusion.TIMESTEP_SAMPLERS
        # eta: k-diffusion's (ancestral / SDE samplers) or DDIM's; PLMS takes none (A1111's plms has no eta)
        self.eta = 0.0 if spec.function == "plms" else float(eta)
        self.sgm = sgm_noise_multiplier
        self.pass_steps = steps
        self._plan(schedule)
        self.timesteps = torch.tensor(self.call_t, dtype=torch.float32)
        self.init_noise_sigma = 1.0 if self.timestep_mode else float(self._start_scale())
        self._i = 0
        self._gen: Any = None
        self._x: torch.Tensor | None = None  # the sampler's latents of the current model call (float32)
        self._out: torch.Tensor | None = None  # what `step` last returned (the pipeline's dtype)
        self._first: torch.Tensor | None = None
        self.begin_index = 0
        self.pipeline_strength = 1.0  # the strength the pipeline is given (set_timesteps pads for its cut)

    # -- what the sampler will run ---------------------------------------------------------------------------
    def _plan(self, schedule: str) -> None:
        ps, spec = self.pass_steps, self.spec
        if ps.img2img:
            total, t_enc = sched.img2img_steps(ps.steps, ps.strength, ps.fixed)
        else:
            total, t_enc = ps.steps, None
        if self.timestep_mode:
            ts = sched.ddim_timesteps(total, discard_penultimate=spec.discard_penultimate)
            self.noise_level = ts[t_enc] if t_enc is not None else None  # img2img: noised to this timestep
            self.sched = ts[:t_enc] if t_enc is not None else ts
        else:
            sigmas = sched.k_sigmas(self.model, schedule, total, discard_penultimate=spec.discard_penultimate)
            self.full_sigmas = sigmas
            self.sched = sigmas[total - t_enc - 1:] if t_enc is not None else sigmas
        calls = self._dry_run()
        self.call_level = [c[0] for c in calls]  # sigma (k-diffusion) or integer timestep of each model call
        self.call_step = [c[1] for c in calls]  # the sampler step each call belongs to (progress)
        self.steps_run = (calls[-1][1] + 1) if calls else 0
        if self.timestep_mode:
            self.call_t = [float(t) for t in self.call_level]
        else:
            self.call_t = [self.model.sigma_to_t(torch.as_tensor(s)).item() for s in self.call_level]

    def _function(self) -> Callable[..., kdiffusion.Sampler]:
        return (kdiffusion.TIMESTEP_SAMPLERS | kdiffusion.K_SAMPLERS)[self.spec.function]

    def _start(self, x: torch.Tensor, noise: kdiffusion.Noise) -> kdiffusion.Sampler:
        kw: dict[str, Any] = dict(eta=self.eta, solver_type=self.spec.solver_type)
        if self.timestep_mode:
            kw["acp"] = self.model.alphas_cumprod.to(x.device)
        return self._function()(x, self.sched.to(x.device), noise, **kw)

    def _dry_run(self) -> list[tuple[Any, int]]:
        """The sampler's model calls (level, step) for this schedule: they depend on the schedule only."""
        x = torch.zeros((1, 1, 1, 1))
        gen, calls = self._start(x, lambda a, b: torch.zeros_like(x)), []
        try:
            query = next(gen)
            while True:
                calls.append((query[1], query[2]))
                query = gen.send((query[0], torch.zeros_like(x)))
        except StopIteration:
            return calls

    def _start_scale(self) -> torch.Tensor:
        """What txt2img's first noise is multiplied by: sigmas[0] (or sqrt(1 + sigmas[0]^2) with A1111's SGM noise
        multiplier); 1 for DDIM / PLMS, which start from the noise as it is."""
        if self.timestep_mode:
            return torch.tensor(1.0)
        s0 = self.sched[0]
        return torch.sqrt(1.0 + s0 ** 2.0) if self.sgm and not self.pass_steps.img2img else s0

    # -- the diffusers scheduler protocol -----------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **_: Any) -> None:
        """Keep A1111's calls; an img2img pipeline then drops int(n x (1 - strength)) entries off the front, so as
        many placeholders go there (`pipeline_strength` is the strength the pipeline was given)."""
        n = int(num_inference_steps or 0)
        strength = getattr(self, "pipeline_strength", 1.0)
        pad = max(n - min(int(n * strength), n), 0) if strength < 1.0 else 0
        t = torch.tensor([self.call_t[0]] * pad + self.call_t, dtype=torch.float32)
        self.timesteps = t.to(device) if device is not None else t

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        if self.timestep_mode:
            return sample
        sigma = torch.as_tensor(self.call_level[min(self._i, len(self.call_level) - 1)], device=sample.device)
        return (sample * (1 / (sigma ** 2 + 1.0) ** 0.5)).to(sample.dtype)

    def first_noise(self) -> torch.Tensor:
        """The batch's first noise (float32), drawn once: txt2img's initial latents before the pipeline scales them
        by `init_noise_sigma`; img2img's noise in `add_noise`."""
        if self._first is None:
            self._first = self.rng.next()
        return self._first

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: Any = None) -> torch.Tensor:
        """Image latents noised to the pass's start, with the batch's first noise (A1111's `xi`); the noise given
        by the pipeline is not used. Asked again (an inpainting pipeline re-noises its unmasked area each step),
        the same first noise at the level of the next call."""
        first = self.first_noise().to(original.device)
        if original.shape[0] != first.shape[0]:  # one image for the batch
            original = original.expand(first.shape[0], *original.shape[1:])
        x = original.to(torch.float32)
        if self.timestep_mode:
            acp = self.model.alphas_cumprod
            t = self.noise_level if self._gen is None else int(self.call_level[min(self._i, len(self.call_level) - 1)])
            out = x * torch.sqrt(acp[t]) + first * torch.sqrt(1 - acp[t])
        else:
            level = self.sched[0] if self._gen is None else self.call_level[min(self._i, len(self.call_level) - 1)]
            out = x + first * torch.as_tensor(level, device=x.device)
        if self._gen is None:  # the pass's start: kept in float32 for the sampler
            self._x, self._out = out, out.to(original.dtype)
            return self._out
        return out.to(original.dtype)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any,
             return_dict: bool = True, **kwargs: Any) -> Any:
        if self._x is not None and sample is self._out:
            x = self._x  # the sampler's own float32 latents
        elif self._gen is None and self._x is None and self._first is not None:
            x = self._first.to(sample.device) * self._start_scale().to(sample.device)  # A1111: noise x sigmas[0]
        else:
            x = sample.to(torch.float32)  # the pipeline changed the latents (inpainting blend)
        level = self.call_level[self._i]
        out = self._prediction(model_output.to(torch.float32), x, level)
        if self._gen is None:
            self._gen = self._start(x, self._noise(x))
            next(self._gen)
        try:
            self._x = self._gen.send((x, out))[0]
        except StopIteration as done:
            self._x = done.value
        self._i += 1
        self._out = self._x.to(sample.dtype)
        return SimpleNamespace(prev_sample=self._out) if return_dict else (self._out,)

    # -- helpers --------------------------------------------------------------------------------------------
    def _prediction(self, model_output: torch.Tensor, x: torch.Tensor, level: Any) -> torch.Tensor:
        """The UNet's output -> what the sampler takes: k-diffusion's CompVis(V)Denoiser gives denoised latents;
        A1111's timestep samplers take eps (a v model's output converted with the timestep's alphas)."""
        if self.timestep_mode:
            if not self.v_pred:
                return model_output
            acp = self.model.alphas_cumprod.to(x.device)[int(level)]
            return acp.sqrt() * model_output + (1 - acp).sqrt() * x
        sigma = torch.as_tensor(level, device=x.device)
        if self.v_pred:
            return model_output * (-sigma / (sigma ** 2 + 1.0) ** 0.5) + x * (1.0 / (sigma ** 2 + 1.0))
        return x + model_output * -sigma

    def _noise(self, x: torch.Tensor) -> kdiffusion.Noise:
        if not self.spec.brownian:
            return lambda sigma, sigma_next: self.rng.next().to(x.device)
        s = self.full_sigmas.to(x.device)  # A1111 bounds the tree by the whole schedule, img2img included
        return kdiffusion.BrownianNoise(x, s[s > 0].min(), s.max(), list(self.seeds))

    def progress(self, calls_done: int) -> int:
        """The sampler step in progress after `calls_done` pipeline iterations, counted from 1 (a second-order
        sampler calls the model twice per step): what the progress bar shows."""
        if calls_done <= 0 or not self.call_step:
            return 0
        return self.call_step[min(calls_done, len(self.call_step)) - 1] + 1

    def __len__(self) -> int:
        return len(self.call_t)
