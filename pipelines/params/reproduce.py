"""Which fields of a parsed infotext this studio reproduces exactly, and which not (with the reason): PNG Info shows
it under the parsed parameters, so someone pasting an A1111 image's parameters knows what to expect.

`report(parsed, local)` takes `parse_infotext`'s dict and what is on this machine (`Local`: checkpoint and LoRA
hashes, upscaler names); `markdown(checks)` renders the list. Pure Python, no torch.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from pipelines.params import samplers
from pipelines.params.infotext import ABSENT_RNG, uses_ensd
from pipelines.params.specs import LATENT_UPSCALERS, PARAMS, PIXEL_UPSCALERS

Status = Literal["exact", "not"]
BUILT_IN_UPSCALERS = frozenset((*LATENT_UPSCALERS, *PIXEL_UPSCALERS))  # the rest are model files (models/ESRGAN)

# fields applied as they are written: (our name, why it matches)
_APPLIED = (
    ("prompt", "applied as written (A1111's emphasis syntax and BREAK)"),
    ("negative_prompt", "applied as written"),
    ("steps", "applied"),
    ("cfg_scale", "applied"),
    ("seed", "applied: the same noise for the same seed and noise source"),
    ("subseed", "applied (variation seed)"),
    ("subseed_strength", "applied (variation seed)"),
    ("clip_skip", "applied"),
    ("denoising_strength", "applied"),
    ("hr_scale", "applied (Hires. fix)"),
    ("hr_second_pass_steps", "applied (Hires. fix)"),
    ("hr_resize_x", "applied (Hires. fix)"),
    ("hr_resize_y", "applied (Hires. fix)"),
)
# extra keys that carry nothing to reproduce, or that another row covers
_INFORMATIONAL = {"Version": "which program made it", "Model": "the checkpoint's name (see Model hash)",
                  "VAE hash": "see VAE", "Schedule type": "see Sampler"}


@dataclass(frozen=True)
class Local:
    """What this machine has: checkpoint name -> full sha256 (None: not hashed yet), LoRA name (and alias) ->
    sha256, upscaler names."""

    checkpoints: Mapping[str, str | None] = field(default_factory=dict)
    loras: Mapping[str, str | None] = field(default_factory=dict)
    upscalers: Sequence[str] = ()


@dataclass(frozen=True)
class Check:
    label: str  # the infotext's key (or our label for our fields)
    value: str
    status: Status
    why: str


def _label(name: str) -> str:
    return PARAMS[name].infotext_key or PARAMS[name].label


def _model_check(parsed: Mapping[str, Any], local: Local) -> Check | None:
    wanted = str(parsed.get("model_hash") or "").strip().lower()
    name = str(parsed.get("model_name") or "")
    if not wanted:
        return None
    for local_name, sha in local.checkpoints.items():
        if sha and sha.lower().startswith(wanted):
            return Check("Model hash", wanted, "exact", f"the local checkpoint {local_name} has this hash")
    unhashed = [n for n, sha in local.checkpoints.items() if not sha and name and n == name]
    if unhashed:
        return Check("Model hash", wanted, "not", f"a local checkpoint is named {name} but its hash is not known yet "
                                                  "(select it once to hash it): a different file gives other images")
    return Check("Model hash", wanted, "not", "no local checkpoint has this hash: put the checkpoint into "
                                              "models/Stable-diffusion and refresh")


def _lora_checks(text: str, local: Local) -> list[Check]:
    out = []
    for part in text.split(","):
        name, _, wanted = part.strip().rpartition(":")
        name, wanted = name.strip(), wanted.strip().lower()
        if not name or not wanted:
            continue
        hit = next((n for n, sha in local.loras.items() if sha and sha.lower().startswith(wanted)), None)
        if hit:
            out.append(Check(f"LoRA {name}", wanted, "exact", f"the local LoRA {hit} has this hash"))
        elif name in local.loras:
            out.append(Check(f"LoRA {name}", wanted, "not", "a local LoRA has this name but another (or no known) "
                                                            "hash: a different file gives other images"))
        else:
            out.append(Check(f"LoRA {name}", wanted, "not", "no local LoRA has this hash: put it into models/Lora"))
    return out


def _sampler_check(parsed: Mapping[str, Any]) -> Check | None:
    sampler = parsed.get("sampler_name")
    if not sampler:
        return None
    schedule = parsed.get("scheduler") or samplers.AUTOMATIC
    value = f"{sampler}, {schedule}" if schedule != samplers.AUTOMATIC else str(sampler)
    if sampler in samplers.sampler_names():
        try:
            samplers.check(str(sampler), str(schedule))
        except ValueError as e:
            return Check("Sampler", value, "not", str(e))
        spec = samplers.spec(str(sampler))
        if spec.a1111 is None:
            return Check("Sampler", value, "not", spec.parity)
        return Check("Sampler", value, "exact", "A1111's own sampler and schedule (docs/reproducing.md)")
    why = samplers.NOT_OFFERED.get(str(sampler))
    known = f" (an A1111 sampler: {why})" if why else ""
    return Check("Sampler", value, "not", f"{sampler} is not available here{known}: pick one of "
                                          f"{', '.join(samplers.sampler_names())}")


def _sampler_option_checks(parsed: Mapping[str, Any]) -> list[Check]:
    """A1111's sampler options the infotext names (Eta / Eta DDIM off their defaults, SGM noise multiplier,
    Discard penultimate sigma): applied as A1111 applies them."""
    out = []
    sampler = str(parsed.get("sampler_name") or "")
    if parsed.get("eta") not in (None, "") and samplers.takes_eta(sampler):
        _, key, default = samplers.eta_kind(sampler)
        if float(parsed["eta"]) != default:
            out.append(Check(key, _num(parsed["eta"]), "exact", "applied: the step noise of the sampler's eta"))
    if parsed.get("sgm_noise_multiplier"):
        out.append(Check(_label("sgm_noise_multiplier"), "True", "exact",
                         "applied: txt2img's first noise x sqrt(1 + sigma_max^2)"))
    if parsed.get("always_discard_next_to_last_sigma"):
        out.append(Check(_label("always_discard_next_to_last_sigma"), "True", "exact",
                         "applied: steps + 1 sigmas with the next-to-last dropped"))
    return out


def _num(value: Any) -> str:
    v = float(value)
    return str(int(v)) if v.is_integer() else str(v)


def _upscaler_check(parsed: Mapping[str, Any], local: Local) -> Check | None:
    upscaler = parsed.get("hr_upscaler")
    if not upscaler:
        return None
    if upscaler in BUILT_IN_UPSCALERS or upscaler in local.upscalers:
        return Check(_label("hr_upscaler"), str(upscaler), "exact", "available here (Hires. fix)")
    return Check(_label("hr_upscaler"), str(upscaler), "not", "no such upscaler here: put the model into "
                                                              "models/ESRGAN")


def report(parsed: Mapping[str, Any], local: Local | None = None) -> list[Check]:
    """What reproduces exactly and what not, field by field, for `parse_infotext`'s dict (empty for plain text)."""
    local = local or Local()
    if "steps" not in parsed and "sampler_name" not in parsed and "seed" not in parsed:
        return []  # plain text: nothing to reproduce but a prompt
    extra: Mapping[str, Any] = parsed.get("extra") or {}
    checks: list[Check] = []
    for name, why in _APPLIED:
        if parsed.get(name) not in (None, ""):
            checks.append(Check(_label(name), str(parsed[name]), "exact", why))
    if parsed.get("width") and parsed.get("height"):
        checks.append(Check("Size", f"{parsed['width']}x{parsed['height']}", "exact", "applied"))
    if (check := _sampler_check(parsed)) is not None:
        checks.append(check)
    if parsed.get("randn_source"):
        source = str(parsed["randn_source"])
        why = {"CPU": "the CPU generator: the same noise on any hardware",
               "NV": "A1111's NVIDIA noise, emulated on any hardware",
               "GPU": "this device's own generator: the same noise only on the same kind of hardware"}.get(source, "")
        if "RNG" not in extra and source == ABSENT_RNG and not str(extra.get("Version", "")).startswith("studio-"):
            why = "no RNG field: A1111's default GPU noise (on NVIDIA cards), which NV emulates on any hardware"
        checks.append(Check("RNG", source, "not" if source == "GPU" else "exact", why))
    ensd = parsed.get("eta_noise_seed_delta")
    if ensd:
        ensd_counts = uses_ensd(parsed.get("sampler_name"), parsed.get("eta"))
        checks.append(Check("ENSD", str(ensd), "exact",
                            "applied: reseeds the ancestral step noise" if ensd_counts
                            else "applied (this sampler does not use it here)"))
    checks += _sampler_option_checks(parsed)
    if parsed.get("sd_vae"):
        checks.append(Check("VAE", str(parsed["sd_vae"]), "exact", "applied when a VAE file of that name is listed "
                                                                  "(GET /sdapi/v1/sd-vae)"))
    if (check := _model_check(parsed, local)) is not None:
        checks.append(check)
    if (check := _upscaler_check(parsed, local)) is not None:
        checks.append(check)
    for key, value in extra.items():
        if key == "Model hash" or key in _INFORMATIONAL:
            continue
        if key == "Lora hashes":
            checks += _lora_checks(str(value), local)
        elif key in {spec.infotext_key for spec in PARAMS.values()}:  # a value that did not parse
            checks.append(Check(key, str(value), "not", "not a valid value here"))
        else:
            checks.append(Check(key, str(value), "not", "not applied by this studio (kept as text)"))
    return checks


def markdown(checks: Sequence[Check]) -> str:
    """The report as two Markdown tables: reproduced exactly, then not reproduced (with the reasons)."""
    if not checks:
        return ""
    cell = lambda v: html.escape(str(v)).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    parts = []
    for status, title in (("exact", "Reproduced exactly"), ("not", "Not reproduced")):
        rows = [c for c in checks if c.status == status]
        if rows:
            parts.append(f"**{title}**\n\n| Field | Value | Why |\n|---|---|---|\n" + "\n".join(
                f"| {cell(c.label)} | {cell(_short(c.value))} | {cell(c.why)} |" for c in rows))
    return "\n\n".join(parts)


def _short(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit - 1] + "…"
