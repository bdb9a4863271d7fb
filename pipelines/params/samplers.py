"""A1111's sampler and schedule-type names, and how the studio runs each sampler.

Every sampler A1111 runs through k-diffusion, and its DDIM and PLMS, run as A1111 runs them
(pipelines/engine/sampling/: the same sigmas, timesteps, noise and arithmetic, inside the diffusers pipeline), so an
A1111 infotext gives A1111's image. `Sampler.a1111` names that implementation and `Sampler.parity` records what
was measured for the few that diffusers runs instead (UniPC, DEIS, LCM). "Automatic" is the sampler's own A1111
schedule type (`Sampler.auto`), whatever spacing the checkpoint's scheduler config names, as in A1111.

Everything here is plain data until `make_scheduler`, which imports diffusers lazily, so the UI may import this
module without pulling in torch. `make_scheduler` builds the diffusers class of a sampler: Karras / Exponential /
Beta set `use_*_sigmas`, SGM Uniform sets `timestep_spacing="trailing"`, Uniform clears them all (the class's own
default spacing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

AUTOMATIC = "Automatic"

# label -> (A1111 API name, diffusers config overrides)
_SCHEDULES: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType({
    AUTOMATIC: ("automatic", {}),
    "Uniform": ("uniform", {}),
    "Karras": ("karras", {"use_karras_sigmas": True}),
    "Exponential": ("exponential", {"use_exponential_sigmas": True}),
    "Beta": ("beta", {"use_beta_sigmas": True}),
    "SGM Uniform": ("sgm_uniform", {"timestep_spacing": "trailing"}),
})
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

_ALL = ("Uniform", "Karras", "Exponential", "Beta", "SGM Uniform")
_SPACING_ONLY = ("Uniform", "SGM Uniform")  # classes with timestep_spacing but no sigma flags


@dataclass(frozen=True)
class Sampler:
    name: str
    cls: str  # the diffusers scheduler class with this algorithm (`make_scheduler`: plain-diffusers comparisons)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    auto: str = "Uniform"  # what "Automatic" means for this sampler (A1111's default)
    schedules: tuple[str, ...] = _ALL  # schedule types it takes
    noisy: bool = False  # adds fresh noise every step (ancestral, SDE, LCM)
    # How the studio runs it. `a1111`: the function in pipelines/engine/sampling/kdiffusion.py that is A1111's own
    # sampler (k-diffusion's sample_* at A1111's pinned commit, or A1111's DDIM / PLMS loop), driven inside the
    # diffusers pipeline: the same sigmas, timesteps, noise and arithmetic as A1111, so the same image
    # (tests/test_a1111_parity.py: mean difference <= 0.5 levels, max <= 8 on a tiny model). None: the diffusers
    # class above runs it (no A1111 equivalent, or none ported: see `parity`).
    a1111: str | None = None
    brownian: bool = False  # A1111 "brownian_noise": step noise from Brownian trees seeded with the image seeds
    discard_penultimate: bool = False  # A1111 "discard_next_to_last_sigma"
    solver_type: str = "midpoint"
    uses_ensd: bool = False  # A1111 "uses_ensd": its step noise follows the eta noise seed delta (infotext ENSD)
    takes_eta: bool = False  # its A1111 function takes eta (the ancestral / SDE ones, DDIM): infotext Eta / Eta DDIM
    parity: str = "exact"  # what was measured against A1111 (docs/reproducing.md)
    diffusers_schedules: tuple[str, ...] | None = None  # what `make_scheduler`'s class takes (None: `schedules`)


_DPMPP = "DPMSolverMultistepScheduler"
_SAMPLERS: Mapping[str, Sampler] = MappingProxyType({s.name: s for s in (
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral"), noisy=True,
            a1111="euler_ancestral", uses_ensd=True, diffusers_schedules=_SPACING_ONLY, takes_eta=True),
    Sampler("Euler", "EulerDiscreteScheduler", aliases=("k_euler",), a1111="euler"),
    Sampler("DPM++ 2M", _DPMPP, {"algorithm_type": "dpmsolver++", "solver_order": 2},
            aliases=("k_dpmpp_2m",), auto="Karras", a1111="dpmpp_2m"),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", aliases=("k_dpmpp_sde",), auto="Karras", noisy=True,
            a1111="dpmpp_sde", brownian=True, takes_eta=True),
    Sampler("DPM++ 2M SDE", _DPMPP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            aliases=("k_dpmpp_2m_sde",), auto="Exponential", noisy=True, a1111="dpmpp_2m_sde", brownian=True, takes_eta=True),
    Sampler("DPM++ 2M SDE Heun", _DPMPP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                          "solver_type": "heun"},
            aliases=("k_dpmpp_2m_sde_heun",), auto="Exponential", noisy=True, a1111="dpmpp_2m_sde", brownian=True,
            solver_type="heun", takes_eta=True),
    Sampler("DPM++ 3M SDE", _DPMPP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
            aliases=("k_dpmpp_3m_sde",), auto="Exponential", noisy=True, a1111="dpmpp_3m_sde", brownian=True,
            discard_penultimate=True, takes_eta=True),
    # The diffusers class is only an approximation (no ancestral single-step solver in diffusers); the studio runs
    # A1111's own. lower_order_final=True: the class defaults to False, then warns on every set_timesteps().
    Sampler("DPM++ 2S a", "DPMSolverSinglestepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
            aliases=("k_dpmpp_2s_a",), auto="Karras", noisy=True, a1111="dpmpp_2s_ancestral", uses_ensd=True,
            diffusers_schedules=_ALL[:-1], takes_eta=True),
    Sampler("LMS", "LMSDiscreteScheduler", aliases=("k_lms",), a1111="lms"),
    Sampler("Heun", "HeunDiscreteScheduler", aliases=("k_heun",), a1111="heun"),
    Sampler("DPM2", "KDPM2DiscreteScheduler", aliases=("k_dpm_2",), auto="Karras", a1111="dpm_2",
            discard_penultimate=True),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a",), auto="Karras", noisy=True,
            a1111="dpm_2_ancestral", discard_penultimate=True, uses_ensd=True, takes_eta=True),
    # A1111's UniPC is its own port of the UniPC repository (variant bh1, order 3 by default); diffusers' class runs
    # bh2 at order 2: the studio keeps diffusers' and says so.
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("unipc",),
            parity="diffusers' UniPC (A1111 runs its own port of the UniPC repository): a different image"),
    Sampler("DEIS", "DEISMultistepScheduler", aliases=("deis",), parity="not in A1111 (diffusers' DEIS)"),
    # A1111's DDIM and PLMS run their own loops over timesteps 1, 1 + 1000 // steps, ... (clipped to 999): the
    # schedule type does not change them.
    Sampler("DDIM", "DDIMScheduler", aliases=("ddim",), schedules=("Uniform",), a1111="ddim",
            diffusers_schedules=_SPACING_ONLY, takes_eta=True),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, aliases=("plms",), schedules=("Uniform",),
            a1111="plms", diffusers_schedules=_SPACING_ONLY),
    # LCMScheduler ignores timestep_spacing: it always picks from its own `original_inference_steps` grid.
    Sampler("LCM", "LCMScheduler", aliases=("lcm", "k_lcm"), schedules=("Uniform",), noisy=True,
            parity="diffusers' LCM scheduler (A1111's LCM sampler uses its own 50-step timestep grid): a different "
                   "image"),
)})

# A1111 samplers the studio does not offer (PNG Info says so for an infotext that names one).
NOT_OFFERED = {
    "DPM fast": "A1111's DPM-Solver 'fast' has no port here", "DPM adaptive": "adaptive step counts cannot be "
    "driven by a pipeline's fixed timesteps", "Restart": "A1111's own Restart sampler has no port here",
    "DDIM CFG++": "needs the unconditional prediction separately from CFG",
}


def sampler_names() -> list[str]:
    return list(_SAMPLERS)


def schedule_names() -> list[str]:
    return list(_SCHEDULES)


def schedule_limits() -> list[tuple[list[str], list[str]]]:
    """(samplers, the schedule types they take) for the samplers that do not take every schedule type, grouped by
    what they take ("Automatic" always included): what `check` enforces, for the API schema."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for s in _SAMPLERS.values():
        if set(s.schedules) != set(_ALL):
            groups.setdefault((AUTOMATIC, *s.schedules), []).append(s.name)
    return [(names, list(schedules)) for schedules, names in groups.items()]


def _find_sampler(name: str) -> Sampler | None:
    key = name.strip().lower()
    return next((s for s in _SAMPLERS.values() if key == s.name.lower() or key in s.aliases), None)


def _find_schedule(name: str | None) -> str | None:
    if name is None or not name.strip():
        return AUTOMATIC
    key = name.strip().lower()
    return next((label for label, (api, _) in _SCHEDULES.items() if key in (label.lower(), api)), None)


def split_name(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); "k_euler_a" -> ("Euler a", None); unknown: (name, None)."""
    if sampler := _find_sampler(name):
        return sampler.name, None
    key = name.strip().lower()
    if key.endswith("_ka") and (sampler := _find_sampler(key[:-3])):  # old A1111 aliases: k_dpmpp_2m_ka
        return sampler.name, "Karras"
    for label in sorted(_SCHEDULES, key=len, reverse=True):  # "SGM Uniform" before "Uniform"
        for suffix in (label.lower(), label.lower().replace(" ", "_")):
            if key.endswith(" " + suffix) and (sampler := _find_sampler(key[: -len(suffix) - 1])):
                return sampler.name, label
    return name, None


def check(sampler: str, schedule: str | None = AUTOMATIC) -> tuple[str, str]:
    """Return the canonical (sampler, schedule type); raise ValueError listing the valid choices."""
    found = _find_sampler(sampler)
    if found is None:
        raise ValueError(f"Unknown sampler {sampler!r}. Choose one of: {', '.join(_SAMPLERS)}")
    label = _find_schedule(schedule)
    choices = (AUTOMATIC, *found.schedules)
    if label is None:
        raise ValueError(f"Unknown schedule type {schedule!r}. Choose one of: {', '.join(_SCHEDULES)}")
    if label not in choices:
        raise ValueError(f"Schedule type {label!r} is not available for {found.name}; "
                         f"choose one of: {', '.join(choices)}")
    return found.name, label


def resolve_schedule(sampler: str, schedule: str | None = AUTOMATIC) -> str:
    """The schedule type actually used: "Automatic" becomes the sampler's usual one (A1111 writes that)."""
    name, label = check(sampler, schedule)
    return _SAMPLERS[name].auto if label == AUTOMATIC else label


def spec(sampler: str) -> Sampler:
    """The sampler's description (canonical or alias name; ValueError listing the choices)."""
    return _SAMPLERS[check(sampler)[0]]


def uses_ensd(sampler: str) -> bool:
    """A1111's "uses_ensd": the eta noise seed delta changes this sampler's image (its infotext then says ENSD)."""
    found = _find_sampler(sampler)
    return bool(found and found.uses_ensd)


def takes_eta(sampler: str) -> bool:
    """Whether the sampler's A1111 function takes eta (Euler a, DPM2 a, DPM++ 2S a, the DPM++ SDE family: the
    eta_ancestral option, infotext Eta; DDIM: eta_ddim, infotext Eta DDIM)."""
    found = _find_sampler(sampler)
    return bool(found and found.takes_eta)


# A1111's eta options: (option, infotext key, default) for k-diffusion samplers and for DDIM's timestep loop
ETA_ANCESTRAL = ("eta_ancestral", "Eta", 1.0)
ETA_DDIM = ("eta_ddim", "Eta DDIM", 0.0)


def eta_kind(sampler: str) -> tuple[str, str, float]:
    """Which eta option a sampler reads when the request names no eta: ETA_DDIM for A1111's timestep samplers
    (DDIM, PLMS, UniPC), else ETA_ANCESTRAL (k-diffusion's)."""
    found = _find_sampler(sampler)
    return ETA_DDIM if found and found.name in ("DDIM", "PLMS", "UniPC") else ETA_ANCESTRAL


def eta_option(sampler: str) -> str:
    return eta_kind(sampler)[0]


def is_ancestral(sampler: str) -> bool:
    """True when the sampler adds fresh noise every step (ancestral "a", SDE and LCM samplers): its image
    depends on the step noise (pass a generator / seed) and does not converge as steps grow."""
    found = _find_sampler(sampler)
    return bool(found and found.noisy)


def make_scheduler(sampler: str, schedule: str | None, base_config: Mapping[str, Any], *,
                   seed: int | list[int] | None = None) -> Any:
    """A new diffusers scheduler for `sampler` / `schedule` built from the checkpoint's scheduler config.

    Keys of `base_config` the class does not take are dropped; `base_config` itself is never changed.
    `seed` seeds the Brownian-tree noise of "DPM++ SDE", whose `step` takes no generator (random when
    None); a list gives one seed per image of the batch. Other samplers ignore it.
    """
    import inspect

    import diffusers

    name, label = _SAMPLERS[check(sampler)[0]].name, _find_schedule(schedule)
    spec = _SAMPLERS[name]
    takes = spec.diffusers_schedules or spec.schedules
    if label is None or label not in (AUTOMATIC, *takes):
        raise ValueError(f"Schedule type {schedule!r} is not available for {name}'s diffusers class {spec.cls}; "
                         f"choose one of: {', '.join((AUTOMATIC, *takes))}")
    cls = getattr(diffusers, spec.cls)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(base_config).items() if k in accepted}

    resolved = spec.auto if label == AUTOMATIC else label
    overrides: dict[str, Any] = {flag: False for flag in _SIGMA_FLAGS if flag in accepted}
    overrides.update(_SCHEDULES[resolved][1])
    if "timestep_spacing" not in overrides:
        config.pop("timestep_spacing", None)  # the class's own default spacing, as "Automatic" is in A1111
    overrides.update(spec.kwargs)
    if seed is not None and "noise_sampler_seed" in accepted:
        overrides["noise_sampler_seed"] = seed
    return cls.from_config(config, **{k: v for k, v in overrides.items() if k in accepted})


def a1111_samplers() -> list[dict[str, Any]]:
    """Items of A1111's GET /sdapi/v1/samplers."""
    return [{"name": s.name, "aliases": list(s.aliases),
             "options": {} if s.auto == "Uniform" else {"scheduler": _SCHEDULES[s.auto][0]}}
            for s in _SAMPLERS.values()]


def a1111_schedulers() -> list[dict[str, Any]]:
    """Items of A1111's GET /sdapi/v1/schedulers (default_rho / need_inner_model as A1111 reports them)."""
    return [{"name": api, "label": label, "aliases": ["SGMUniform"] if api == "sgm_uniform" else None,
             "default_rho": 7.0 if api == "karras" else -1,
             "need_inner_model": api in ("uniform", "sgm_uniform", "beta")}
            for label, (api, _) in _SCHEDULES.items()]
