"""Band rules: every parameter's bands (pipelines/params/specs.py) as advisor rules, `band:<name>`, judged exactly as
the badges judge them: a value in an "avoid" band is a warning, in a "caution" band a note, and the fix moves it
into the nearest "best" band. Pure Python: no torch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pipelines.advisor.findings import MODES, Finding, Rule, Situation, fmt
from pipelines.params.spec import VERDICT_ORDER, HintContext, ParamSpec

# Fields with rules of their own (size, hires target, the VAE) or nothing to advise (seeds: any value is fine).
NOT_BAND_RULES = {"width", "height", "hr_scale", "seed", "subseed", "hr_resize_x", "hr_resize_y", "scale_by", "sd_vae"}


def advised_modes(spec: ParamSpec) -> tuple[str, ...]:
    """The advisor modes a parameter is checked in: its own; outpainting's settings (mode "outpaint") in inpaint,
    when the settings hold them (outpainting is inpainting, pipelines/engine/outpaint.py)."""
    return tuple(m for m in MODES if m in spec.modes) or (("inpaint",) if "outpaint" in spec.modes else ())


def _active(spec: ParamSpec, v: Mapping[str, Any], mode: str) -> bool:
    """Whether a parameter matters for these settings (hires settings only with hires fix on...)."""
    if mode not in advised_modes(spec) or (mode not in spec.modes and spec.name not in v):
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
                       f"{spec.label} {fmt(value)}: {hint.why}.{rec}", fix,
                       f"Set {spec.label} to {fmt(fixed)}" if fix else "")

    example = _band_example(spec)
    if example is None:
        return None
    return Rule(f"band:{spec.name}", f"{spec.label} outside its recommended bands",
                "; ".join(f"{b.label}: {b.verdict}, {b.why}" for b in spec.bands_for(HintContext())
                          if b.verdict in ("caution", "avoid")),
                check, example, modes=advised_modes(spec))


def _band_example(spec: ParamSpec) -> dict[str, Any] | None:
    """Settings putting the parameter in its worst band for an SD 1.x model (switched on where it needs to be);
    None when no value of it is ever advised against."""
    mode = advised_modes(spec)[0]
    ctx = HintContext(mode=mode)
    extra: dict[str, Any] = {}
    if mode == "txt2img" and (spec.group == "hires" or spec.name == "denoising_strength"):
        extra["enable_hr"] = True
    if spec.name == "inpaint_full_res_padding":
        extra["inpaint_full_res"] = "Only masked"
    if spec.name == "eta":  # judged for a sampler that takes it
        extra["sampler_name"] = "Euler a"
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
