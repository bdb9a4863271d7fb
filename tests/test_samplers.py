"""Sampler / schedule-type names -> real diffusers schedulers (no mocks: every scheduler is built and run)."""

from __future__ import annotations

import copy
import functools
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.params import samplers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.unit,  # no model: schedulers on a toy problem whose ideal prediction is known exactly
    # numpy 2 / torch interop notes raised thousands of times inside diffusers' schedulers
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context"),
]

# The scheduler_config.json of SD 1.5 checkpoints (a PNDM config, with keys other classes do not take).
SD15 = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "num_train_timesteps": 1000,
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
    "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
    "trained_betas": None,
}

# sampler -> (diffusers class, config values it must have, what "Automatic" resolves to)
EXPECTED = {
    "Euler": ("EulerDiscreteScheduler", {}, "Uniform"),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, "Uniform"),
    "LMS": ("LMSDiscreteScheduler", {}, "Uniform"),
    "Heun": ("HeunDiscreteScheduler", {}, "Uniform"),
    "DPM2": ("KDPM2DiscreteScheduler", {}, "Karras"),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, "Karras"),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}, "Karras"),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                     "Exponential"),
    "DPM++ 2M SDE Heun": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                           "solver_type": "heun"}, "Exponential"),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
                     "Exponential"),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                   "Karras"),
    "DDIM": ("DDIMScheduler", {}, "Uniform"),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}, "Uniform"),
    "UniPC": ("UniPCMultistepScheduler", {}, "Uniform"),
    "DEIS": ("DEISMultistepScheduler", {}, "Uniform"),
    "LCM": ("LCMScheduler", {}, "Uniform"),
}
FLAGS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas", "Beta": "use_beta_sigmas"}


def supported(sampler: str) -> list[str]:
    """Schedule types check() accepts for a sampler (found by asking it, so the test covers check too)."""
    ok = []
    for schedule in samplers.schedule_names():
        try:
            samplers.check(sampler, schedule)
            ok.append(schedule)
        except ValueError:
            pass
    return ok


def diffusers_supported(sampler: str) -> list[str]:
    """Schedule types make_scheduler's diffusers class takes (found by asking it)."""
    ok = []
    for schedule in samplers.schedule_names():
        try:
            samplers.make_scheduler(sampler, schedule, SD15)
            ok.append(schedule)
        except ValueError:
            pass
    return ok


UNSUPPORTED = [(s, k) for s in samplers.sampler_names() for k in samplers.schedule_names() if k not in supported(s)]
COMBOS = [(s, k) for s in samplers.sampler_names() for k in diffusers_supported(s)]  # the diffusers classes


@functools.cache
def _built(sampler: str, schedule: str, seed: int):
    return samplers.make_scheduler(sampler, schedule, SD15, seed=seed)


def build(sampler: str, schedule: str, steps: int = 20, seed: int = 0):
    """make_scheduler on the SD 1.5 config, then set_timesteps. Each combination is built once and copied:
    the DPM2 classes run set_timesteps(1000) in their constructor, which takes seconds."""
    sched = copy.deepcopy(_built(sampler, schedule, seed))
    sched.set_timesteps(steps)
    return sched


# ---------------------------------------------------------------------------------------------- names


def test_names_are_the_a1111_ones():
    assert sorted(samplers.sampler_names()) == sorted(EXPECTED)
    assert samplers.sampler_names()[:2] == ["Euler a", "Euler"]
    assert samplers.schedule_names() == ["Automatic", "Uniform", "Karras", "Exponential", "Beta", "SGM Uniform"]
    samplers.sampler_names().clear()  # callers get copies
    assert len(samplers.sampler_names()) == len(EXPECTED)


def test_import_does_not_load_torch_or_diffusers():
    code = "import sys, pipelines.params.samplers; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name, expected", [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("DPM++ SDE Karras", ("DPM++ SDE", "Karras")),
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
    ("DPM++ 2M SDE", ("DPM++ 2M SDE", None)),
    ("DPM++ 2S a Karras", ("DPM++ 2S a", "Karras")),
    ("Euler a", ("Euler a", None)),
    ("euler A", ("Euler a", None)),
    ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
    ("Euler sgm_uniform", ("Euler", "SGM Uniform")),
    ("Euler Uniform", ("Euler", "Uniform")),
    ("LMS Karras", ("LMS", "Karras")),
    ("k_euler", ("Euler", None)),
    ("k_euler_a", ("Euler a", None)),
    ("K_EULER_A", ("Euler a", None)),
    ("k_lms", ("LMS", None)),
    ("k_heun", ("Heun", None)),
    ("k_dpm_2", ("DPM2", None)),
    ("k_dpm_2_a", ("DPM2 a", None)),
    ("k_dpmpp_2m", ("DPM++ 2M", None)),
    ("k_dpmpp_sde", ("DPM++ SDE", None)),
    ("k_dpmpp_2m_sde", ("DPM++ 2M SDE", None)),
    ("k_dpmpp_2s_a", ("DPM++ 2S a", None)),
    ("k_dpmpp_2m_ka", ("DPM++ 2M", "Karras")),
    ("ddim", ("DDIM", None)),
    ("plms", ("PLMS", None)),
    ("unipc", ("UniPC", None)),
    ("lcm", ("LCM", None)),
    ("Foo", ("Foo", None)),
    ("Foo Karras", ("Foo Karras", None)),
    ("", ("", None)),
])
def test_split_name(name, expected):
    assert samplers.split_name(name) == expected


def test_check_returns_canonical_names():
    assert samplers.check("k_dpmpp_2m", "karras") == ("DPM++ 2M", "Karras")
    assert samplers.check("Euler", None) == ("Euler", "Automatic")
    assert samplers.check("euler", "sgm_uniform") == ("Euler", "SGM Uniform")


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError) as e:
        samplers.check("Foo", "Automatic")
    assert str(e.value) == "Unknown sampler 'Foo'. Choose one of: " + ", ".join(samplers.sampler_names())
    with pytest.raises(ValueError, match="Unknown schedule type 'Bar'. Choose one of: Automatic, Uniform, Karras"):
        samplers.check("Euler", "Bar")


def test_unsupported_schedule_message():
    with pytest.raises(ValueError) as e:
        samplers.check("DDIM", "Karras")
    assert str(e.value) == ("Schedule type 'Karras' is not available for DDIM; "
                            "choose one of: Automatic, Uniform")


@pytest.mark.parametrize("sampler, schedule", UNSUPPORTED)
def test_unsupported_combos_raise(sampler, schedule):
    pattern = f"Schedule type '{schedule}' is not available for {sampler}; choose one of: Automatic"
    with pytest.raises(ValueError, match=pattern.replace("+", r"\+")):
        samplers.check(sampler, schedule)
    if schedule not in diffusers_supported(sampler):
        with pytest.raises(ValueError, match="is not available"):
            samplers.make_scheduler(sampler, schedule, SD15)


def test_what_each_sampler_supports():
    # The studio runs A1111's samplers, which take every schedule type; A1111's DDIM and PLMS run their own
    # timestep grid, and LCM keeps diffusers' own grid.
    assert supported("DDIM") == supported("PLMS") == supported("LCM") == ["Automatic", "Uniform"]
    for name in set(samplers.sampler_names()) - {"DDIM", "PLMS", "LCM"}:
        assert supported(name) == samplers.schedule_names(), name
    # Decided from the diffusers 0.42 constructors: no sigma flags on EulerAncestral/DDIM/PNDM/LCM, no
    # timestep_spacing on DPMSolverSinglestep.
    assert diffusers_supported("Euler a") == diffusers_supported("DDIM") == ["Automatic", "Uniform", "SGM Uniform"]
    assert diffusers_supported("DPM++ 2S a") == ["Automatic", "Uniform", "Karras", "Exponential", "Beta"]


def test_how_each_sampler_runs():
    diffusers_run = {s for s in samplers.sampler_names() if samplers.spec(s).a1111 is None}
    assert diffusers_run == {"UniPC", "DEIS", "LCM"}
    assert all(samplers.spec(s).parity != "exact" for s in diffusers_run)
    assert {s for s in samplers.sampler_names() if samplers.uses_ensd(s)} == {"Euler a", "DPM2 a", "DPM++ 2S a"}
    assert samplers.spec("k_dpmpp_2m_sde_heun").solver_type == "heun"


def test_is_ancestral():
    noisy = {"Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE",
             "LCM"}
    assert {s for s in samplers.sampler_names() if samplers.is_ancestral(s)} == noisy
    assert samplers.is_ancestral("k_euler_a") and not samplers.is_ancestral("Foo")


def test_a1111_lists():
    items = samplers.a1111_samplers()
    assert [i["name"] for i in items] == samplers.sampler_names()
    by_name = {i["name"]: i for i in items}
    assert by_name["Euler a"] == {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {}}
    assert by_name["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    scheds = samplers.a1111_schedulers()
    assert [s["label"] for s in scheds] == samplers.schedule_names()
    karras = next(s for s in scheds if s["name"] == "karras")
    assert karras == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                      "need_inner_model": False}
    assert {"name", "label", "aliases", "default_rho", "need_inner_model"} == set(scheds[0])


# ---------------------------------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("sampler, schedule", COMBOS)
def test_builds_the_right_scheduler(sampler, schedule):
    cls_name, values, auto = EXPECTED[sampler]
    sched = build(sampler, schedule)
    assert type(sched).__name__ == cls_name
    for key, value in values.items():
        assert sched.config[key] == value, key
    resolved = auto if schedule == "Automatic" else schedule
    for label, flag in FLAGS.items():
        if flag in sched.config:
            assert sched.config[flag] is (label == resolved), flag
    if resolved == "SGM Uniform":
        assert sched.config.timestep_spacing == "trailing"
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"):
        assert sched.config[key] == SD15[key], key
    assert "skip_prk_steps" not in sched.config or cls_name == "PNDMScheduler"
    assert len(sched.timesteps) >= 20


@pytest.mark.parametrize("sampler, schedule", [c for c in COMBOS if c[1] not in ("Automatic", "Uniform")])
def test_each_schedule_type_changes_the_schedule(sampler, schedule):
    uniform, other = build(sampler, "Uniform"), build(sampler, schedule)
    if schedule == "SGM Uniform":
        assert not torch.equal(other.timesteps, uniform.timesteps)
        assert other.timesteps[0] == 999 and other.timesteps[-1] == 49  # trailing: 999, 949, ..., 49
    else:
        assert not torch.allclose(other.sigmas, uniform.sigmas)
        assert float(other.sigmas[0]) == pytest.approx(float(uniform.sigmas[0]), rel=1e-3)  # same sigma_max


@pytest.mark.parametrize("sampler", samplers.sampler_names())
def test_automatic_is_the_samplers_usual_schedule(sampler):
    auto = build(sampler, "Automatic")
    usual = build(sampler, EXPECTED[sampler][2])
    assert torch.equal(auto.timesteps, usual.timesteps)
    if hasattr(auto, "sigmas"):
        assert torch.equal(auto.sigmas, usual.sigmas)


def test_distinct_samplers_get_distinct_setups():
    seen = {}
    for name in samplers.sampler_names():
        sched = build(name, "Uniform")
        key = (type(sched).__name__, sched.config.get("algorithm_type"), sched.config.get("solver_order"),
               sched.config.get("solver_type"))
        assert key not in seen, f"{name} is built like {seen.get(key)}"
        seen[key] = name


@pytest.mark.parametrize("sampler", samplers.sampler_names())
def test_base_config_is_kept_and_never_mutated(sampler):
    base = SD15 | {"prediction_type": "v_prediction", "use_karras_sigmas": True, "timestep_spacing": "leading",
                   "rescale_betas_zero_snr": False}
    before = copy.deepcopy(base)
    sched = samplers.make_scheduler(sampler, "Automatic", base)
    assert base == before
    assert sched.config.prediction_type == "v_prediction"
    assert sched.config.beta_schedule == "scaled_linear"
    assert sched.config.get("steps_offset", 1) == 1  # DPMSolverSinglestep has no steps_offset


def test_every_call_returns_a_fresh_instance():
    a, b = (samplers.make_scheduler("Euler", "Automatic", SD15) for _ in range(2))
    assert a is not b
    a.set_timesteps(5)
    b.set_timesteps(20)
    assert len(a.timesteps) == 5 and len(b.timesteps) == 20


def test_a_scheduler_config_object_is_accepted():
    ddim = samplers.make_scheduler("DDIM", "Uniform", SD15)
    euler = samplers.make_scheduler("Euler", "Karras", ddim.config)  # a FrozenDict, as pipe.scheduler.config
    assert type(euler).__name__ == "EulerDiscreteScheduler" and euler.config.use_karras_sigmas


def test_checkpoint_timestep_spacing():
    sdxl = SD15 | {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"}
    turbo = SD15 | {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
    # Automatic is the sampler's own A1111 schedule whatever the checkpoint's config says (A1111 ignores it)...
    assert samplers.make_scheduler("Euler", "Automatic", sdxl).config.timestep_spacing == "linspace"
    assert samplers.make_scheduler("Euler a", "Automatic", turbo).config.timestep_spacing == "linspace"
    # ...as an explicit Uniform (and the sigma schedules) use the class's own default spacing.
    assert samplers.make_scheduler("Euler", "Uniform", sdxl).config.timestep_spacing == "linspace"
    assert samplers.make_scheduler("Euler", "Karras", sdxl).config.timestep_spacing == "linspace"
    assert samplers.make_scheduler("DDIM", "Uniform", turbo).config.timestep_spacing == "leading"
    assert samplers.make_scheduler("DDIM", "SGM Uniform", sdxl).config.timestep_spacing == "trailing"


# ---------------------------------------------------------------------------------------------- sampling

MU, SD = 0.3, 0.5  # toy data: every value ~ N(MU, SD^2), so the ideal noise prediction is known exactly
_ALPHAS_BAR = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
_SIGMAS = ((1 - _ALPHAS_BAR) / _ALPHAS_BAR).sqrt()


def ideal_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact epsilon prediction for x = a*x0 + b*eps at (possibly fractional) timestep t."""
    t = float(t)
    lo = min(int(t), 998)
    sigma = _SIGMAS[lo] + (t - lo) * (_SIGMAS[lo + 1] - _SIGMAS[lo])
    a = (1 / (1 + sigma**2)).sqrt()
    b = (1 - a**2).sqrt()
    x0 = MU + a * SD**2 / (a**2 * SD**2 + b**2) * (x - a * MU)
    return ((x - a * x0) / b).float()


def sample(sched, seed: int = 0, steps: int | None = None) -> torch.Tensor:
    if steps is not None:
        sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1024, generator=gen) * sched.init_noise_sigma
    extra = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        x = sched.step(ideal_eps(x_in, t), t, x, **extra).prev_sample
        assert x.shape == (2, 1024) and torch.isfinite(x).all()
    return x


@pytest.mark.filterwarnings("ignore:Should have ta>=t0")  # torchsde float round-off note (DPM++ SDE)
@pytest.mark.parametrize("sampler, schedule", COMBOS)
def test_every_scheduler_denoises(sampler, schedule):
    """20 real steps turn pure noise into samples of the toy data (loose bounds: LCM and ancestral
    samplers under-shoot the spread at 20 steps with a non-distilled model; pure noise has std >= 1)."""
    x = sample(build(sampler, schedule))
    assert abs(x.mean().item() - MU) < 0.05
    assert 0.25 < x.std().item() < 0.85


@pytest.mark.filterwarnings("ignore:Should have ta>=t0")
def test_dpmpp_sde_noise_follows_the_seed():
    runs = [sample(build("DPM++ SDE", "Karras", steps=8, seed=s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    # one seed per image: an image's noise does not depend on its batch neighbours
    a, b = (sample(samplers.make_scheduler("DPM++ SDE", "Karras", SD15, seed=[1, s]), steps=8) for s in (2, 3))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
