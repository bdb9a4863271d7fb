"""The advisor: settings and the selected model in, findings out, each with a severity and a one-click fix.

The rules are data (`RULES`), next to the parameter definitions they build on:
- every parameter's bands (pipelines/params.py) are rules, `band:<name>`, judged exactly as the badges judge
  them: an "avoid" band is a warning, a "caution" band a note, and the fix moves the value into a best band;
- facts of RECOMMENDATIONS.md that cross fields or need their own fix are rules of their own (`rules.py`
  style below): size against the model's native size, hires target, ancestral samplers while refining a fixed
  seed, prompt/negative contradictions, people without anatomy guards, prompts past one 75-token chunk,
  finalizing before the composition is chosen.
Every rule carries `example`, settings built to trigger it: the tests check that each rule fires on its example
and stays silent on the recommended defaults, and the docs page shows them. Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

from pipelines import imageops, samplers
from pipelines.params import PARAMS, approx_tokens, defaults
from pipelines.prompt_builder import NEGATIVE_PRESETS
from pipelines.spec import VERDICT_ORDER, HintContext, ParamSpec

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MODES = ("txt2img", "img2img", "inpaint")
CHUNK_TOKENS = 75


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    field: str  # the field the finding is about (the UI links to it)
    message: str  # what is wrong and why, in one or two sentences
    fix: dict[str, Any] = dataclasses.field(default_factory=dict)  # field -> value; empty: no automatic fix
    fix_label: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Situation:
    """What a rule looks at: every field of the mode (defaults filled in), the model's context and a token
    counter (the CLIP tokenizer when the studio has one, else an estimate)."""

    values: Mapping[str, Any]
    ctx: HintContext
    count_tokens: Callable[[str], int] = approx_tokens
    invalid: frozenset[str] = frozenset()  # fields past their hard limits (reported as errors already)

    @property
    def mode(self) -> str:
        return self.ctx.mode

    def size(self) -> tuple[int, int] | None:
        w, h = self.values.get("width"), self.values.get("height")
        if w in (None, "") or h in (None, ""):
            return None if self.mode != "txt2img" else (self.ctx.native, self.ctx.native)
        return int(w), int(h)


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    why: str  # the study's reason, for the docs page
    check: Callable[[Situation], Finding | None]
    example: dict[str, Any]  # settings (over the defaults) that trigger it
    example_ctx: HintContext = HintContext()
    modes: tuple[str, ...] = MODES


# ----------------------------------------------------------------------------------------------
# Band rules: one per parameter, from its spec.

# Fields with rules of their own (size, hires target) or nothing to advise (seeds: any value is fine).
_NOT_BAND_RULES = {"width", "height", "hr_scale", "seed", "subseed", "hr_resize_x", "hr_resize_y", "scale_by"}


def _active(spec: ParamSpec, v: Mapping[str, Any], mode: str) -> bool:
    """Whether a parameter matters for these settings (hires settings only with hires fix on...)."""
    if mode not in spec.modes:
        return False
    if mode == "txt2img" and (spec.group == "hires" or spec.name == "denoising_strength"):
        return bool(v.get("enable_hr"))
    if spec.name == "inpaint_full_res_padding":
        return v.get("inpaint_full_res") == "Only masked"
    return True


def _band_distance(band: Any, x: float) -> float:
    lo = -math.inf if band.lo is None else band.lo
    hi = math.inf if band.hi is None else band.hi
    return 0.0 if lo <= x <= hi else min(abs(x - lo), abs(x - hi))


def _snap(spec: ParamSpec, x: float) -> float | int:
    if spec.step:
        x = round(round(x / spec.step) * spec.step, 6)
    return int(round(x)) if spec.kind == "int" else float(x)


def band_fix(spec: ParamSpec, value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Any:
    """The value a one-click fix sets: inside the nearest "best" band (the default when it lies in that band,
    else the band's nearest edge); for choices the default or the first best choice. None: no fix."""
    if spec.kind in ("int", "float"):
        best = [b for b in spec.bands_for(ctx) if b.verdict == "best" and not b.values]
        if not best:
            return None
        x = float(value)
        band = min(best, key=lambda b: _band_distance(b, x))
        if spec.default is not None and band.contains(spec.default):
            return spec.default
        lo = band.lo if band.lo is not None else x
        hi = band.hi if band.hi is not None else x
        target = _snap(spec, min(max(x, lo), hi))
        return target if band.contains(target) else _snap(spec, lo)
    if spec.kind == "bool":
        best = [b for b in spec.bands_for(ctx) if b.verdict == "best" and b.values]
        return best[0].values[0] == "True" if best else None
    if spec.kind == "choice":
        options = spec.choices() if spec.choices else []
        current = VERDICT_ORDER[spec.hint(value, ctx, others).verdict]
        candidates = [spec.default, *[x for b in spec.bands_for(ctx) if b.verdict == "best" for x in b.values]]
        scored = [(VERDICT_ORDER[spec.hint(c, ctx, others).verdict], c) for c in candidates
                  if c in options and c != value]
        better = [sc for sc in scored if sc[0] < current]
        return min(better, key=lambda sc: sc[0])[1] if better else None
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "(empty)"


def band_rule(spec: ParamSpec) -> Rule | None:
    """The rule of a parameter's bands; None when none of its values is ever advised against."""
    def check(s: Situation) -> Finding | None:
        if spec.name in s.invalid or not _active(spec, s.values, s.mode):
            return None
        value = s.values.get(spec.name)
        try:
            hint = spec.hint(value, s.ctx, s.values)
        except (TypeError, ValueError):
            return None
        if hint.verdict not in ("caution", "avoid"):
            return None
        fixed = band_fix(spec, value, s.ctx, s.values)
        fix = {spec.name: fixed} if fixed is not None else {}
        rec = f" Recommended: {hint.recommended}." if hint.recommended else ""
        severity = "warning" if hint.verdict == "avoid" and spec.kind != "text" else "info"
        return Finding(f"band:{spec.name}", severity, spec.name,
                       f"{spec.label} {_fmt(value)}: {hint.why}.{rec}", fix,
                       f"Set {spec.label} to {_fmt(fixed)}" if fix else "")

    example = _band_example(spec)
    if example is None:
        return None
    return Rule(f"band:{spec.name}", f"{spec.label} outside its recommended bands",
                "; ".join(f"{b.label}: {b.verdict}, {b.why}" for b in spec.bands_for(HintContext())
                          if b.verdict in ("caution", "avoid")),
                check, example, modes=tuple(m for m in MODES if m in spec.modes))


def _band_example(spec: ParamSpec) -> dict[str, Any] | None:
    """Settings putting the parameter in its worst band for an SD 1.x model (switched on where it needs to be);
    None when no value of it is ever advised against."""
    mode = next(m for m in MODES if m in spec.modes)
    ctx = HintContext(mode=mode)
    extra: dict[str, Any] = {}
    if mode == "txt2img" and (spec.group == "hires" or spec.name == "denoising_strength"):
        extra["enable_hr"] = True
    if spec.name == "inpaint_full_res_padding":
        extra["inpaint_full_res"] = "Only masked"
    if spec.kind == "choice":  # judged choices may take values beyond the list (e.g. upscalers found on disk)
        candidates: list[Any] = list(spec.choices() if spec.choices else []) + (["None"] if spec.judge else [])
    elif spec.kind == "bool":
        candidates = [False, True]
    elif spec.kind == "text":
        candidates = [""]
    else:
        candidates = [x for b in spec.bands_for(ctx) for x in (b.lo, b.hi) if x is not None]
        candidates = [int(x) if spec.kind == "int" else x for x in candidates]
    worst = max(candidates, key=lambda c: VERDICT_ORDER[spec.hint(c, ctx, {}).verdict])
    if spec.hint(worst, ctx, {}).verdict not in ("caution", "avoid"):
        return None
    return {spec.name: worst, **extra, "_mode": mode}


# ----------------------------------------------------------------------------------------------
# Rules of their own.

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


_WORD = re.compile(r"[a-z0-9']+")
# Modifiers of a negative phrase that make it a quality guard rather than a statement about the subject.
_GUARD_WORDS = frozenset("""bad poorly drawn deformed disfigured ugly blurry blurred extra missing mutated mutation
mutations malformed low worst quality lowres jpeg artifacts fused too many cropped out of frame duplicate morbid
mutilated gross proportions long error signature watermark username grainy noisy distorted disproportionate
unnatural weird strange cloned crooked asymmetric asymmetrical floating disconnected wrong messy""".split())


def _phrases(text: str) -> list[tuple[str, str]]:
    """(original segment, normalised words) for each comma/BREAK-separated phrase; emphasis syntax removed."""
    out = []
    for seg in re.split(r",|\bBREAK\b|\n", text or ""):
        clean = re.sub(r":\s*-?[\d.]+", " ", seg)
        words = " ".join(_WORD.findall(re.sub(r"[()\[\]{}]", " ", clean).lower()))
        if words:
            out.append((seg, words))
    return out


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def contradictions(prompt: str, negative: str) -> list[tuple[str, str]]:
    """(negative phrase, prompt phrase) pairs that fight: the same term in both, or the same thing (head noun)
    described differently ("denim jacket" vs "blue jacket": the model's denim is blue). Quality guards
    ("poorly drawn face", "low quality") are not contradictions."""
    prompt_phrases = [w for _, w in _phrases(prompt)]
    prompt_text = " " + " ".join(prompt_phrases) + " "
    found = []
    for seg, neg in _phrases(negative):
        words = neg.split()
        if f" {neg} " in prompt_text:
            found.append((seg.strip(), neg))
            continue
        head, modifiers = _singular(words[-1]), words[:-1]
        if not modifiers or all(m in _GUARD_WORDS for m in modifiers) or head in _GUARD_WORDS:
            continue
        for p in prompt_phrases:
            pw = p.split()
            if _singular(pw[-1]) == head and p != neg:
                found.append((seg.strip(), p))
                break
    return found


def _contradiction(s: Situation) -> Finding | None:
    prompt, negative = str(s.values.get("prompt") or ""), str(s.values.get("negative_prompt") or "")
    pairs = contradictions(prompt, negative)
    if not pairs:
        return None
    bad = {neg for neg, _ in pairs}
    kept = [seg.strip() for seg in negative.split(",") if seg.strip() and seg.strip() not in bad]
    described = "; ".join(f"“{neg}” against “{p}”" for neg, p in pairs)
    return Finding("prompt-contradiction", "warning", "negative_prompt",
                   f"The negative prompt fights the prompt: {described}. The model cannot both draw and avoid "
                   "the same thing; the result is muddled.", {"negative_prompt": ", ".join(kept)},
                   "Remove " + ", ".join(f"“{b}”" for b in sorted(bad)) + " from the negative prompt")


PEOPLE_WORDS = frozenset("""woman women man men girl girls boy boys person people portrait child children kid kids
lady ladies gentleman guy face faces selfie couple family warrior soldier knight princess prince queen king wizard
witch elf character model dancer bride groom teenager baby elderly student nurse doctor chef samurai ninja
astronaut cowboy cyborg viking businessman businesswoman mother father daughter son""".split())


def mentions_people(prompt: str) -> bool:
    return any(w in PEOPLE_WORDS for w in _WORD.findall((prompt or "").lower()))


def _people_negative(s: Situation) -> Finding | None:
    if str(s.values.get("negative_prompt") or "").strip() or not mentions_people(str(s.values.get("prompt"))):
        return None
    return Finding("people-negative", "warning", "negative_prompt",
                   "The prompt has people and the negative prompt is empty: anatomy errors (extra limbs, "
                   "mutated hands, blurry faces) are likely. Add anatomy guards.",
                   {"negative_prompt": NEGATIVE_PRESETS["people"]}, "Use the people negative preset")


SCENERY_WORDS = frozenset("""landscape landscapes scenery mountain mountains forest forests lake lakes sea ocean beach
coast cliff cliffs city cityscape skyline valley river desert field fields meadow sky sunset sunrise canyon waterfall
island village street architecture building buildings castle lighthouse harbor harbour countryside hills""".split())
ANATOMY_WORDS = frozenset("""limbs limb hands hand fingers finger anatomy face faces arms legs body proportions
neck eyes""".split())


def _anatomy_guards(negative: str) -> list[str]:
    return [seg.strip() for seg, words in _phrases(negative) if set(words.split()) & ANATOMY_WORDS]


def _scenery_negative(s: Situation) -> Finding | None:
    prompt, negative = str(s.values.get("prompt") or ""), str(s.values.get("negative_prompt") or "")
    words = set(_WORD.findall(prompt.lower()))
    guards = _anatomy_guards(negative)
    if len(guards) < 2 or not words & SCENERY_WORDS or mentions_people(prompt):
        return None
    kept = [seg.strip() for seg in negative.split(",") if seg.strip() and seg.strip() not in guards]
    fix = ", ".join(kept) if kept else NEGATIVE_PRESETS["landscapes"]
    return Finding("scenery-negative", "info", "negative_prompt",
                   f"Anatomy guards ({', '.join(guards[:3])}{'...' if len(guards) > 3 else ''}) in the negative "
                   "prompt of a scene without people: they spend tokens on nothing. For landscapes use e.g. 3d, "
                   "render, poorly drawn, low quality, blurry.", {"negative_prompt": fix},
                   "Remove the anatomy guards" if kept else "Use the landscapes negative preset")


def trim_to_chunk(prompt: str, count: Callable[[str], int], limit: int = CHUNK_TOKENS) -> str:
    """The longest run of whole comma-separated phrases that fits in `limit` tokens."""
    parts = [p.strip() for p in prompt.split(",") if p.strip()]
    kept: list[str] = []
    for part in parts:
        if count(", ".join([*kept, part])) > limit:
            break
        kept.append(part)
    return ", ".join(kept)


def _long_prompt(s: Situation) -> Finding | None:
    prompt = str(s.values.get("prompt") or "")
    n = s.count_tokens(prompt)
    if n <= CHUNK_TOKENS:
        return None
    trimmed = trim_to_chunk(prompt, s.count_tokens)
    chunks = -(-n // CHUNK_TOKENS)
    fix = {"prompt": trimmed} if trimmed and trimmed != prompt else {}
    return Finding("prompt-long", "info", "prompt",
                   f"~{n} tokens: the prompt is split into {chunks} chunks of {CHUNK_TOKENS}. Tokens near the start "
                   "weigh more, later chunks less, and a phrase cut at a boundary loses its meaning. Keep the "
                   "essentials in the first 75 tokens.", fix,
                   "Keep the phrases that fit in 75 tokens" if fix else "")


def _exploring_hires(s: Situation) -> Finding | None:
    v = s.values
    if s.mode != "txt2img" or not v.get("enable_hr") or int(v.get("seed") if v.get("seed") is not None else -1) >= 0:
        return None
    images = int(v.get("batch_size") or 1) * int(v.get("n_iter") or 1)
    return Finding("hires-while-exploring", "warning" if images > 1 else "info", "enable_hr",
                   f"Hires. fix on {images} random-seed image(s): the second pass is paid for every candidate "
                   "before one is chosen. Explore at native size, then hires-fix the seed you like.",
                   {"enable_hr": False}, "Turn Hires. fix off while exploring")


def _latent_upscaler_denoise(s: Situation) -> Finding | None:
    v = s.values
    if s.mode != "txt2img" or not v.get("enable_hr") or not str(v.get("hr_upscaler", "")).startswith("Latent"):
        return None
    d = float(v.get("denoising_strength") or 0)
    if d >= 0.5:
        return None
    return Finding("latent-upscaler-denoise", "info", "denoising_strength",
                   f"A latent upscaler with denoising {d:g}: latent upscaling is blurry unless the second pass "
                   "redraws at 0.5 or more. Raise the denoising, or use Lanczos / an ESRGAN model at 0.2-0.4.",
                   {"denoising_strength": 0.55}, "Set Denoising strength to 0.55")


def _masked_noise_denoise(s: Situation) -> Finding | None:
    v = s.values
    if s.mode != "inpaint" or v.get("inpainting_fill") not in ("latent noise", "latent nothing"):
        return None
    d = float(v.get("denoising_strength") or 0)
    if d >= 0.75:
        return None
    return Finding("masked-content-denoise", "info", "denoising_strength",
                   f"Masked content '{v['inpainting_fill']}' with denoising {d:g}: the masked area starts from "
                   "noise or nothing and needs 0.75 or more to become an image.",
                   {"denoising_strength": 0.8}, "Set Denoising strength to 0.8")


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
         _contradiction, {"prompt": "a man in a denim jacket", "negative_prompt": "blue jacket",
                          "_mode": "txt2img"}),
    Rule("people-negative", "People without anatomy guards",
         "Write the negative prompt for the subject: for people, anatomy guards (deformed, extra/missing limbs, "
         "mutated hands, blurry face, poorly drawn).",
         _people_negative, {"prompt": "portrait of a woman in a red coat", "_mode": "txt2img"}),
    Rule("scenery-negative", "Anatomy guards in a landscape's negative prompt",
         "Write the negative prompt for the subject: for landscapes anatomy guards are useless (use e.g. 3d, render, "
         "poorly drawn, low quality, worst quality, blurry).",
         _scenery_negative, {"prompt": "a misty mountain lake at sunrise",
                             "negative_prompt": NEGATIVE_PRESETS["people"], "_mode": "txt2img"}),
    Rule("prompt-long", "Prompt longer than one 75-token chunk",
         "Tokens near the start weigh more; prompts are encoded in chunks of 75 tokens and later chunks weigh "
         "less.", _long_prompt, {"prompt": _LONG, "_mode": "txt2img"}),
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
    *filter(None, (band_rule(spec) for name, spec in PARAMS.items()
                   if name not in _NOT_BAND_RULES and set(spec.modes) & set(MODES))),
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
                                  f"Set {spec.label} to {_fmt(spec.default)}"))
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
            why = f"outside the limits {_fmt(spec.minimum)}-{_fmt(spec.maximum)}" if not lo <= x <= hi else \
                f"not a multiple of {spec.multiple_of}"
            errors.append(Finding("limits", "error", name, f"{spec.label} {_fmt(value)} is {why}: the job would "
                                  "be refused.", {name: fixed}, f"Set {spec.label} to {_fmt(fixed)}"))
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
