"""The advisor: settings and the selected model in, findings out, each with a severity and a one-click fix.

The rules are data (`RULES`), next to the parameter definitions they build on:
- every parameter's bands (pipelines/params/specs.py) are rules, `band:<name>` (pipelines/advisor/band_rules.py);
- facts of RECOMMENDATIONS.md that cross fields or need their own fix are rules of their own: size against the
  model's native size, the hires target, ancestral samplers while refining a fixed seed, hires fix while still
  exploring, denoising floors (below), and the prompt rules (pipelines/advisor/prompt_rules.py: contradictions, people
  without anatomy guards, anatomy guards on landscapes, prompts past one 75-token chunk).
Every rule carries `example`, settings built to trigger it: the tests check that each rule fires on its example
and stays silent on the recommended defaults, and the docs page shows them. Pure Python: no torch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from pipelines import imageops
from pipelines.advisor.band_rules import NOT_BAND_RULES, advised_modes, band_rule
from pipelines.advisor.findings import MODES, SEVERITY_ORDER, Finding, Rule, Situation, fmt
from pipelines.advisor.network_rules import embedding_family, lora_family, lora_missing, lora_total, lora_weight
from pipelines.advisor.prompt_builder import NEGATIVE_PRESETS
from pipelines.advisor.prompt_rules import (
    contradictions,
    long_prompt,
    people_negative,
    prompt_contradiction,
    scenery_negative,
    trim_to_chunk,
)
from pipelines.networks.vaes import fp16_fixed
from pipelines.params import samplers
from pipelines.params.networks import NetworkItem, Networks
from pipelines.params.spec import VERDICT_ORDER, HintContext
from pipelines.params.specs import PARAMS, approx_tokens, defaults

# Rules about the settings.

def _native_fix(s: Situation, w: int, h: int) -> dict[str, int]:
    """Keep the aspect ratio (at most 2:3, as the study's portrait/landscape sizes), short side native."""
    n = s.ctx.native
    ratio = min(max(w, h) / min(w, h), 1.5)
    long_side = imageops.snap8(n * ratio)
    return {"width": long_side, "height": n} if w > h else {"width": n, "height": long_side if h > w else n}


def _size(s: Situation) -> Finding | None:
    size = s.size()
    if size is None:
        return None
    w, h = size
    hints = [PARAMS[name].hint(v, s.ctx, {"width": w, "height": h}) for name, v in (("width", w), ("height", h))]
    worst = max(hints, key=lambda x: VERDICT_ORDER[x.verdict])
    if worst.verdict not in ("caution", "avoid"):
        return None
    fix = _native_fix(s, w, h)
    tail = " Generate at the native size, then upscale (Hires. fix or tiled upscale)." \
        if max(w, h) > s.ctx.native and "upscale" not in worst.why else ""
    return Finding("size-native", "warning" if worst.verdict == "avoid" else "info", "width",
                   f"{w}x{h} on a model trained at {s.ctx.native}x{s.ctx.native}: {worst.why}.{tail}", fix,
                   f"Set size to {fix['width']}x{fix['height']}")


def _hires_target(s: Situation) -> Finding | None:
    v = s.values
    if s.mode != "txt2img" or not v.get("enable_hr"):
        return None
    w, h = s.size() or (s.ctx.native, s.ctx.native)
    tw, th = imageops.scaled_size((w, h), float(v.get("hr_scale") or 1), int(v.get("hr_resize_x") or 0),
                                  int(v.get("hr_resize_y") or 0))
    limit = s.ctx.native * 2
    if max(tw, th) <= limit + 8:
        return None
    scale = math.floor(limit / max(w, h) / 0.05) * 0.05
    fix: dict[str, Any] = {"hr_scale": round(scale, 2), "hr_resize_x": 0, "hr_resize_y": 0}
    label = f"Set Upscale by to {scale:g}"
    if scale < 1.1:  # the first pass is already at the limit
        fix, label = {"enable_hr": False}, "Turn Hires. fix off"
    return Finding("hires-target", "warning", "hr_scale",
                   f"Hires. fix to {tw}x{th}: past ~{limit}px a side this model duplicates subjects. Upscale "
                   "further with the tiled SD upscale.", fix, label)


# A deterministic sampler of the same family for each one that adds noise every step.
DETERMINISTIC = {"Euler a": "Euler", "DPM2 a": "DPM2", "DPM++ 2S a": "DPM++ 2M", "DPM++ SDE": "DPM++ 2M",
                 "DPM++ 2M SDE": "DPM++ 2M", "DPM++ 3M SDE": "DPM++ 2M", "LCM": "Euler"}


def deterministic(sampler: str) -> str:
    return DETERMINISTIC.get(sampler, "DPM++ 2M") if samplers.is_ancestral(sampler) else sampler


def _ancestral_seed(s: Situation) -> Finding | None:
    sampler = str(s.values.get("sampler_name") or "")
    seed = s.values.get("seed")
    if seed in (None, "") or int(seed) < 0 or not samplers.is_ancestral(sampler):
        return None
    if sampler == "LCM" and s.ctx.distilled:
        return None
    target = deterministic(sampler)
    return Finding("ancestral-fixed-seed", "info", "sampler_name",
                   f"{sampler} adds fresh noise every step, so with seed {seed} a different step count gives a "
                   f"different image: refining a fixed seed wants a deterministic sampler.",
                   {"sampler_name": target}, f"Use {target}")



def _exploring_hires(s: Situation) -> Finding | None:
    v = s.values
    if s.mode != "txt2img" or not v.get("enable_hr") or int(v.get("seed") if v.get("seed") is not None else -1) >= 0:
        return None
    images = int(v.get("batch_size") or 1) * int(v.get("n_iter") or 1)
    return Finding("hires-while-exploring", "warning" if images > 1 else "info", "enable_hr",
                   f"Hires. fix on {images} random-seed image(s): the second pass is paid for every candidate "
                   "before one is chosen. Explore at native size, then hires-fix the seed you like.",
                   {"enable_hr": False}, "Turn Hires. fix off while exploring")


def _denoise_floor(rule_id: str, applies: Callable[[Situation], bool], floor: float, fix: float,
                   why: Callable[[Mapping[str, Any], float], str]) -> Callable[[Situation], Finding | None]:
    """A rule for settings that need at least `floor` denoising: below it, a note whose fix sets `fix`."""
    def check(s: Situation) -> Finding | None:
        d = float(s.values.get("denoising_strength") or 0)
        if not applies(s) or d >= floor:
            return None
        return Finding(rule_id, "info", "denoising_strength", why(s.values, d), {"denoising_strength": fix},
                       f"Set Denoising strength to {fix:g}")
    return check


_latent_upscaler_denoise = _denoise_floor(
    "latent-upscaler-denoise",
    lambda s: s.mode == "txt2img" and bool(s.values.get("enable_hr"))
    and str(s.values.get("hr_upscaler", "")).startswith("Latent"), 0.5, 0.55,
    lambda v, d: f"A latent upscaler with denoising {d:g}: latent upscaling is blurry unless the second pass "
                 "redraws at 0.5 or more. Raise the denoising, or use Lanczos / an ESRGAN model at 0.2-0.4.")

_masked_noise_denoise = _denoise_floor(
    "masked-content-denoise",
    lambda s: s.mode == "inpaint" and s.values.get("inpainting_fill") in ("latent noise", "latent nothing"), 0.75, 0.8,
    lambda v, d: f"Masked content '{v['inpainting_fill']}' with denoising {d:g}: the masked area starts from noise "
                 "or nothing and needs 0.75 or more to become an image.")


def _sdxl_vae_fp16(s: Situation) -> Finding | None:
    """SDXL in fp16 without an fp16-fixed VAE: its own VAE is decoded in float32 (it overflows fp16), and a VAE file
    that is not fixed overflows first (the NaN guard decodes it again). The fix picks a listed fixed VAE."""
    if not (s.ctx.half and s.ctx.family.startswith("sdxl")):
        return None
    chosen = str(s.values.get("sd_vae") or "Automatic")
    if fp16_fixed(chosen):
        return None
    fixed = next((name for name in s.ctx.vaes if fp16_fixed(name)), None)
    why = (f"SDXL's VAE overflows in fp16 ({'its own' if chosen in ('Automatic', 'None') else chosen}): the decode "
           "falls back to float32, slower and with more memory (a VAE file that is not fixed gives NaNs first and "
           "is decoded twice). ")
    if fixed is None:
        return Finding("sdxl-vae-fp16", "info", "sd_vae", why + "Save the fp16-fixed VAE (madebyollin's "
                       "sdxl-vae-fp16-fix) in models/VAE as sdxl-vae-fp16-fix.safetensors, refresh and choose it.")
    return Finding("sdxl-vae-fp16", "info", "sd_vae", why + f"{fixed} is fixed: it decodes in fp16.",
                   {"sd_vae": fixed}, f"Use VAE {fixed}")


_NET_PROMPT = "a lighthouse on a cliff at sunset, oil painting"
# what the LoRA / embedding rules' examples find in the model folders (an SD 1.x checkpoint is selected)
_EXAMPLE_NETWORKS = Networks(
    model="an SD 1.x checkpoint",
    loras=(NetworkItem("detail-tweaker", "SD 1.x"), NetworkItem("film-grain", "SD 1.x"),
           NetworkItem("xl-style", "SDXL", "it was trained for SDXL (2048-wide cross-attention); the model is SD 1.x "
                                           "(768-wide)")),
    embeddings=(NetworkItem("EasyNegativeXL", "SDXL", "made for two text encoders, 768- and 1280-wide (SDXL); this "
                                                      "model has a 768-wide text encoder (SD 1.x)"),))
_LONG = "a portrait of an old fisherman, " + ", ".join(f"detail {i} of the weathered wooden boat" for i in range(14))

RULES: tuple[Rule, ...] = (
    Rule("size-native", "Size against the model's native size",
         "Use the resolution the checkpoint's base model was trained at; far above it (both sides) gives "
         "duplicated subjects, far below loses detail. Generate at native size and upscale.",
         _size, {"width": 1024, "height": 1024, "_mode": "txt2img"}),
    Rule("hires-target", "Hires. fix target past the family's limit",
         "Target at most ~2x the native size a side (1024 for SD 1.x); beyond that duplication appears.",
         _hires_target, {"enable_hr": True, "hr_scale": 3.0, "seed": 7, "_mode": "txt2img"}, modes=("txt2img",)),
    Rule("ancestral-fixed-seed", "Ancestral or SDE sampler while a seed is fixed",
         "Ancestral and SDE samplers add fresh noise each step and do not converge: the same seed at different "
         "step counts gives different images. Choose a deterministic sampler for reproducible refinement.",
         _ancestral_seed, {"sampler_name": "Euler a", "seed": 1234, "_mode": "txt2img"}),
    Rule("prompt-contradiction", "Prompt and negative prompt contradicting each other",
         "Do not let prompt and negative prompt contradict each other (\"denim jacket\" with negative "
         "\"blue jacket\": the model's notion of denim is blue).",
         prompt_contradiction, {"prompt": "a man in a denim jacket", "negative_prompt": "blue jacket",
                          "_mode": "txt2img"}),
    Rule("people-negative", "People without anatomy guards",
         "Write the negative prompt for the subject: for people, anatomy guards (deformed, extra/missing limbs, "
         "mutated hands, blurry face, poorly drawn).",
         people_negative, {"prompt": "portrait of a woman in a red coat", "_mode": "txt2img"}),
    Rule("scenery-negative", "Anatomy guards in a landscape's negative prompt",
         "Write the negative prompt for the subject: for landscapes anatomy guards are useless (use e.g. 3d, render, "
         "poorly drawn, low quality, worst quality, blurry).",
         scenery_negative, {"prompt": "a misty mountain lake at sunrise",
                             "negative_prompt": NEGATIVE_PRESETS["people"], "_mode": "txt2img"}),
    Rule("prompt-long", "Prompt longer than one 75-token chunk",
         "Tokens near the start weigh more; prompts are encoded in chunks of 75 tokens and later chunks weigh "
         "less.", long_prompt, {"prompt": _LONG, "_mode": "txt2img"}),
    Rule("lora-weight", "LoRA tag weight outside its recommended band",
         "One LoRA's weight: 0.6-1.0 applies it as trained; below 0.4 it does little, past 1.0-1.3 it burns in "
         "(oversaturation, warped anatomy, repeated motifs). Negative weights are for slider LoRAs.",
         lora_weight, {"prompt": f"{_NET_PROMPT} <lora:detail-tweaker:1.8>", "_mode": "txt2img"}),
    Rule("lora-total-weight", "Stacked LoRAs too strong together",
         "Stacked LoRAs fight each other: keep their total weight up to ~1.5 (1.5-2.5 caution, above ~2.5 avoid) "
         "by lowering each one.", lora_total,
         {"prompt": f"{_NET_PROMPT} <lora:detail-tweaker:1> <lora:film-grain:1>", "_mode": "txt2img"}),
    Rule("lora-missing", "LoRA tag naming no listed file",
         "A tag names a LoRA by its file name (or the trainer's alias); one that is not in the LoRA folder stops the "
         "job.", lora_missing, {"prompt": f"{_NET_PROMPT} <lora:not-downloaded:0.8>", "_mode": "txt2img"},
         HintContext(networks=_EXAMPLE_NETWORKS)),
    Rule("lora-family", "LoRA made for another model family",
         "A LoRA or embedding of another family (SD 1.x on SDXL...) does not fit: the shapes differ, so it fails or "
         "does nothing useful.", lora_family,
         {"prompt": f"{_NET_PROMPT} <lora:xl-style:0.8>", "_mode": "txt2img"}, HintContext(networks=_EXAMPLE_NETWORKS)),
    Rule("embedding-family", "Embedding made for another model family",
         "An embedding's vectors are as wide as the text encoder it was trained for: on another family it is "
         "skipped and its name is read as plain words.", embedding_family,
         {"prompt": _NET_PROMPT, "negative_prompt": "EasyNegativeXL, blurry", "_mode": "txt2img"},
         HintContext(networks=_EXAMPLE_NETWORKS)),
    Rule("hires-while-exploring", "Finalizing before the composition is chosen",
         "Explore with random seeds at native size; hires fix or tiled upscale only the chosen image.",
         _exploring_hires, {"enable_hr": True, "batch_size": 4, "_mode": "txt2img"}, modes=("txt2img",)),
    Rule("latent-upscaler-denoise", "Latent upscaler with a low denoising strength",
         "Latent upscalers are fast but blurry unless the second pass denoises at 0.5 or more.",
         _latent_upscaler_denoise, {"enable_hr": True, "hr_upscaler": "Latent", "denoising_strength": 0.3,
                                    "seed": 7, "_mode": "txt2img"}, modes=("txt2img",)),
    Rule("masked-content-denoise", "Masked content from noise with a low denoising strength",
         "'latent noise' and 'latent nothing' start the masked area from scratch: use denoising 0.75 or more.",
         _masked_noise_denoise, {"inpainting_fill": "latent noise", "denoising_strength": 0.5, "_mode": "inpaint"},
         modes=("inpaint",)),
    Rule("sdxl-vae-fp16", "SDXL in fp16 without an fp16-fixed VAE",
         "SDXL's VAE overflows fp16: decoded in float32 it costs time and memory, decoded in fp16 it gives NaNs (a "
         "black image; the NaN guard then decodes again in float32). An fp16-fixed VAE (sdxl-vae-fp16-fix) decodes "
         "in fp16 with the same images.",
         _sdxl_vae_fp16, {"sd_vae": "Automatic", "_mode": "txt2img"},
         HintContext(family="sdxl", native=1024, half=True, vaes=("sdxl-vae-fp16-fix.safetensors",))),
    *filter(None, (band_rule(spec) for name, spec in PARAMS.items()
                   if name not in NOT_BAND_RULES and advised_modes(spec))),
)


# ----------------------------------------------------------------------------------------------
# Checking.

def _limit_errors(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[Finding]]:
    """Values typed as their specs say. A value the job would refuse (past the hard limits, not a number, not one
    of the choices) is an error finding whose fix is the nearest valid value; the other rules see that value."""
    typed, errors = dict(values), []
    for name, value in values.items():
        spec = PARAMS.get(name)
        if spec is None or value is None:
            continue
        if spec.kind == "choice" and spec.choices and not spec.extra.get("open") and value not in spec.choices():
            errors.append(Finding("limits", "error", name, f"{spec.label} {value!r} is not one of: "
                                  f"{', '.join(map(str, spec.choices()))}.", {name: spec.default},
                                  f"Set {spec.label} to {fmt(spec.default)}"))
            typed[name] = spec.default
        if spec.kind not in ("int", "float"):
            continue
        try:
            x = float(value)
        except (TypeError, ValueError):
            errors.append(Finding("limits", "error", name, f"{spec.label}: {value!r} is not a number."))
            typed[name] = spec.default
            continue
        lo = spec.minimum if spec.minimum is not None else -math.inf
        hi = spec.maximum if spec.maximum is not None else math.inf
        fixed = min(max(x, lo), hi)
        if spec.multiple_of:
            fixed = max(lo, round(fixed / spec.multiple_of) * spec.multiple_of)
        fixed = int(fixed) if spec.kind == "int" else float(fixed)
        typed[name] = fixed
        if fixed != x:
            why = f"outside the limits {fmt(spec.minimum)}-{fmt(spec.maximum)}" if not lo <= x <= hi else \
                f"not a multiple of {spec.multiple_of}"
            errors.append(Finding("limits", "error", name, f"{spec.label} {fmt(value)} is {why}: the job would "
                                  "be refused.", {name: fixed}, f"Set {spec.label} to {fmt(fixed)}"))
    return typed, errors


def situation(values: Mapping[str, Any], ctx: HintContext,
              count_tokens: Callable[[str], int] | None = None) -> tuple[Situation, list[Finding]]:
    mode = ctx.mode if ctx.mode in MODES else "txt2img"
    merged = {**defaults(mode), **{k: v for k, v in values.items() if not k.startswith("_")}}
    if merged.get("sampler_name"):  # A1111's combined names ("DPM++ 2M Karras") and aliases
        merged["sampler_name"] = samplers.split_name(str(merged["sampler_name"]))[0]
    typed, errors = _limit_errors(merged)
    return Situation(typed, ctx, count_tokens or approx_tokens, frozenset(f.field for f in errors)), errors


def check(values: Mapping[str, Any], ctx: HintContext, count_tokens: Callable[[str], int] | None = None,
          rules: Iterable[Rule] = RULES) -> list[Finding]:
    """Every finding for these settings, errors first, then warnings, then notes."""
    s, found = situation(values, ctx, count_tokens)
    for rule in rules:
        if s.mode in rule.modes:
            finding = rule.check(s)
            if finding is not None:
                found.append(finding)
    return sorted(found, key=lambda f: SEVERITY_ORDER[f.severity])


def apply_fixes(values: Mapping[str, Any], findings: Iterable[Finding]) -> dict[str, Any]:
    """`values` with every finding's fix applied (the first fix of a field wins)."""
    out, done = dict(values), set()
    for f in findings:
        for k, v in f.fix.items():
            if k not in done:
                out[k] = v
                done.add(k)
    return out


def rule(rule_id: str) -> Rule:
    return next(r for r in RULES if r.id == rule_id)


__all__ = ["Finding", "Rule", "RULES", "Situation", "apply_fixes", "check", "contradictions", "deterministic",
           "rule", "trim_to_chunk"]
