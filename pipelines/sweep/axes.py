"""Sweep axes (the X/Y/Z plot): axis types as data and A1111's value and range syntax.

An axis type says which parameter(s) it sets, how its values are parsed and checked (numbers against the
ParamSpec limits in PARAMS / CONTROL_PARAMS, choices against the spec's choices or a list the studio
supplies), how a value is labelled in the grid ("CFG scale: 7") and whether changing it reloads a model.
`pipelines/sweep/plan.py` builds the plan from them. Pure Python: no torch. Errors are `ValueError`s naming the
axis and the bad value.

Value syntax (A1111's): comma-separated, csv-quoted where a value holds a comma; numbers also as ranges:
`1-5` -> 1..5, `1-10 (+2)` -> 1, 3, 5, 7, 9, `10-1 (-3)` -> 10, 7, 4, 1, `7-12 [4]` -> 4 evenly spaced values
(rounded on whole-number axes), `1.5-3 (+0.5)`, `0-1 [5]`; lists and ranges mix (`5, 10-20 (+5)`).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from pipelines.params import samplers
from pipelines.params.control import CONTROL_PARAMS
from pipelines.params.spec import ParamSpec
from pipelines.params.specs import PARAMS

Lists = Mapping[str, Callable[[], Sequence[str]]]  # choice lists the studio supplies ("checkpoint", "hr_upscaler", "vae")
@dataclass(frozen=True)
class AxisType:
    name: str  # our label; the grid shows "name: value"
    kind: str  # none, int, float, choice, size, checkpoint, prompt_sr
    fields: tuple[str, ...] = ()  # the parameters it sets
    aliases: tuple[str, ...] = ()  # A1111's labels and other spellings
    spec: ParamSpec | None = None  # limits / choices of the value
    list_key: str | None = None  # a studio-supplied choice list instead of the spec's choices
    show_name: bool = True  # label "CFG scale: 7"; False: the value alone (sampler, checkpoint, prompt)
    reloads_model: bool = False
    cost: float = 0.0  # A1111's: the costliest axis to change goes outermost
    needs: str = ""  # "hires": only with Hires. fix on; "controlnet": an enabled ControlNet unit

    @property
    def has_choices(self) -> bool:
        return self.kind in ("choice", "checkpoint")

    def label(self, value: Any) -> str:
        if self.kind == "none":
            return ""
        text = f"{value[0]}x{value[1]}" if self.kind == "size" else fmt(value)
        return f"{self.name}: {text}" if self.show_name else text


def _axis(name: str, kind: str, param: str | None = None, **kw: Any) -> AxisType:
    spec = (CONTROL_PARAMS if kw.pop("unit", False) else PARAMS)[param] if param else None
    return AxisType(name, kind, kw.pop("fields", (param,) if param else ()), spec=spec, **kw)


AXES: dict[str, AxisType] = {a.name: a for a in (
    _axis("Nothing", "none"),
    _axis("Seed", "int", "seed"),
    _axis("Var. seed", "int", "subseed", aliases=("Variation seed",)),
    _axis("Var. strength", "float", "subseed_strength", aliases=("Variation strength", "Variation seed strength")),
    _axis("Steps", "int", "steps", aliases=("Sampling steps",)),
    _axis("Hires steps", "int", "hr_second_pass_steps", needs="hires"),
    _axis("CFG scale", "float", "cfg_scale"),
    _axis("Prompt S/R", "prompt_sr", fields=("prompt", "negative_prompt"), show_name=False),
    _axis("Sampler", "choice", "sampler_name", fields=("sampler_name", "scheduler"), show_name=False),
    _axis("Hires sampler", "choice", "hr_sampler_name", needs="hires"),
    _axis("Schedule type", "choice", "scheduler", aliases=("Scheduler",)),
    _axis("Checkpoint name", "checkpoint", list_key="checkpoint", show_name=False, reloads_model=True, cost=1.0,
          aliases=("Checkpoint", "Model")),
    _axis("VAE", "choice", "sd_vae", list_key="vae", cost=0.7, aliases=("SD VAE",)),  # A1111's cost: loads a VAE
    _axis("Clip skip", "int", "clip_skip"),
    _axis("Denoising", "float", "denoising_strength", needs="hires", aliases=("Denoising strength",)),
    _axis("Hires upscaler", "choice", "hr_upscaler", list_key="hr_upscaler", needs="hires"),
    _axis("Hires upscale", "float", "hr_scale", needs="hires", aliases=("Upscale by",)),
    _axis("Size", "size", fields=("width", "height")),
    _axis("Width", "int", "width"),
    _axis("Height", "int", "height"),
    _axis("ControlNet weight", "float", "weight", unit=True, needs="controlnet", aliases=("Control weight",)),
    _axis("ControlNet guidance end", "float", "guidance_end", unit=True, needs="controlnet",
          aliases=("Ending control step",)),
)}
_BY_KEY = {k.casefold(): a for a in AXES.values() for k in (a.name, *a.aliases)}

# A1111's axis_options in order; [i2i] entries exist only in img2img, [t2i] only in txt2img. The API's integer
# x_type/y_type/z_type index the txt2img list.
A1111_AXES = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps[t2i]", "CFG Scale", "Image CFG Scale[i2i]",
    "Prompt S/R", "Prompt order", "Sampler[t2i]", "Hires sampler[t2i]", "Sampler[i2i]", "Checkpoint name",
    "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise", "Schedule type",
    "Schedule min sigma", "Schedule max sigma", "Schedule rho", "Eta", "Clip skip", "Denoising",
    "Initial noise multiplier", "Extra noise", "Hires upscaler[t2i]", "Cond. Image Mask Weight[i2i]", "VAE", "Styles",
    "UniPC Order", "Face restore", "Token merging ratio", "Token merging ratio high-res",
    "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at",
    "RNG source",
)


def a1111_labels(mode: str = "txt2img") -> list[str]:
    skip = "[i2i]" if mode == "txt2img" else "[t2i]"
    return [re.sub(r"\[.2i\]$", "", a) for a in A1111_AXES if not a.endswith(skip)]


def axis_type(key: Any, mode: str = "txt2img") -> AxisType:
    """An axis type by our name, an A1111 label (any case) or A1111's integer index of the `mode` list."""
    labels = a1111_labels(mode)
    if isinstance(key, bool) or key is None:
        raise ValueError(f"axis type {key!r}: give a name ({', '.join(AXES)}) or an A1111 index")
    if isinstance(key, (int, float)) or (isinstance(key, str) and key.strip().isdigit()):
        index = int(key)
        if not 0 <= index < len(labels):
            raise ValueError(f"axis type {index}: A1111's {mode} axes are numbered 0..{len(labels) - 1}")
        key = labels[index]
    found = _BY_KEY.get(str(key).strip().casefold())
    if found is not None:
        return found
    if str(key).strip().casefold() in {a.casefold() for a in labels}:
        raise ValueError(f"axis type '{key}' is not supported here; supported: {', '.join(AXES)}")
    raise ValueError(f"unknown axis type '{key}'; supported: {', '.join(AXES)}")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        value = round(value, 8)
        return str(int(value)) if value.is_integer() else f"{value:g}" if abs(value) < 1e15 else str(value)
    return str(value)


# -- parsing values -------------------------------------------------------------------------------------

_NUM = r"[+-]?\s*\d+"
_FNUM = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(\s*([+-]?\d+)\s*\))?\s*")
_RANGE_COUNT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*\[\s*(\d+)\s*\]\s*")
_FRANGE = re.compile(rf"\s*({_FNUM})\s*-\s*({_FNUM})(?:\s*\(\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\))?\s*")
_FRANGE_COUNT = re.compile(rf"\s*({_FNUM})\s*-\s*({_FNUM})\s*\[\s*(\d+)\s*\]\s*")
_SIZE = re.compile(r"\s*(\d+)\s*[x×X*]\s*(\d+)\s*")


def split_values(text: str | Sequence[Any]) -> list[str]:
    """Comma (or line) separated values, csv-quoted where a value holds a comma; empty items dropped."""
    if isinstance(text, (int, float)):  # one number sent as a number (API clients)
        text = str(text)
    if not isinstance(text, str):
        items = [str(v) for v in text if v is not None]
    else:
        items = [v for row in csv.reader(text.splitlines(), skipinitialspace=True) for v in row]
    return [v.strip() for v in items if v.strip()]


def _number(text: str, whole: bool, where: str) -> float | int:
    try:
        v = float(text.replace(" ", ""))
    except ValueError:
        raise ValueError(f"{where}: '{text}' is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: '{text}' is not a number")
    if whole:
        if not v.is_integer():
            raise ValueError(f"{where}: '{text}' is not a whole number")
        return int(v)
    return v


def expand_numbers(items: Iterable[str], whole: bool, where: str = "values") -> list[float | int]:
    """Numbers and A1111 ranges -> the list of numbers (ints when `whole`)."""
    out: list[Any] = []
    for item in items:
        count = (_RANGE_COUNT if whole else _FRANGE_COUNT).fullmatch(item)
        step_m = (_RANGE if whole else _FRANGE).fullmatch(item)
        if count:
            a, b = _number(count.group(1), whole, where), _number(count.group(2), whole, where)
            n = int(count.group(3))
            if n < 1:
                raise ValueError(f"{where}: '{item}' asks for {n} values; use [1] or more")
            vals = [a + (b - a) * i / (n - 1) for i in range(n)] if n > 1 else [a]
            out += [math.floor(v + 0.5) for v in vals] if whole else [round(v, 10) for v in vals]
        elif step_m:
            a, b = _number(step_m.group(1), whole, where), _number(step_m.group(2), whole, where)
            step = _number(step_m.group(3), whole, where) if step_m.group(3) else (1 if b >= a else -1)
            if step == 0:
                raise ValueError(f"{where}: '{item}' has a step of 0")
            if (b - a) * step < 0:
                raise ValueError(f"{where}: '{item}' gives no values: the step goes the wrong way")
            n = int(math.floor((b - a) / step + 1e-9)) + 1
            out += [a + i * step if whole else round(a + i * step, 10) for i in range(n)]
        else:
            out.append(_number(item, whole, where))
    return out


def _check_number(spec: ParamSpec | None, v: float | int, where: str) -> None:
    if spec is None:
        return
    lo, hi = spec.minimum, spec.maximum
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{where}: {fmt(v)} is outside the limits of {spec.label} ({fmt(lo)} to {fmt(hi)})")
    if spec.multiple_of and int(v) % spec.multiple_of:
        raise ValueError(f"{where}: {fmt(v)} is not a multiple of {spec.multiple_of} ({spec.label})")


def _match(value: str, options: Sequence[str], where: str, what: str) -> str:
    def key(s: str) -> str:
        return s.split(" [")[0].strip().casefold()

    for o in options:
        if value.casefold() == o.casefold() or key(value) == key(o):
            return o
    listed = ", ".join(options[:30]) + (", ..." if len(options) > 30 else "")
    raise ValueError(f"{where}: '{value}' is not a known {what}; choose from: {listed or 'none available'}")


def choices_of(axis: AxisType, lists: Lists | None = None) -> list[str]:
    """The values a choice axis may take (what the UI's fill button puts in); [] for other axes."""
    if not axis.has_choices:
        return []
    if axis.list_key and lists and axis.list_key in lists:
        return list(lists[axis.list_key]())
    if axis.name in ("Sampler", "Hires sampler"):
        return samplers.sampler_names()
    return list(axis.spec.choices()) if axis.spec is not None and axis.spec.choices else []


def parse_values(axis: AxisType, text: str | Sequence[Any], base: Mapping[str, Any], *, lists: Lists | None = None,
                 where: str = "values") -> list[Any]:
    """The values of one axis, checked. `base`: the sweep's base txt2img values (Prompt S/R looks at them)."""
    where = f"{where} ({axis.name})"
    if axis.kind == "none":
        return [None]
    items = split_values(text)
    if not items:
        raise ValueError(f"{where}: no values given")
    if axis.needs == "hires" and not base.get("enable_hr"):
        raise ValueError(f"{where}: this only changes images made with Hires. fix: enable Hires. fix, or pick "
                         "another axis")
    if axis.needs == "controlnet" and not any(_enabled(u) for u in base.get("controlnet") or ()):
        raise ValueError(f"{where}: no ControlNet unit is enabled: enable one, or pick another axis")
    if axis.kind in ("int", "float"):
        values = expand_numbers(items, axis.kind == "int", where)
        for v in values:
            _check_number(axis.spec, v, where)
        return [float(v) for v in values] if axis.kind == "float" else values
    if axis.kind == "size":
        out = []
        for item in items:
            m = _SIZE.fullmatch(item) or re.fullmatch(r"\s*(\d+)\s*", item)
            if m is None:
                raise ValueError(f"{where}: '{item}' is not a size; write it as 512x768")
            w, h = int(m.group(1)), int(m.group(m.lastindex or 1))
            _check_number(PARAMS["width"], w, where)
            _check_number(PARAMS["height"], h, where)
            out.append((w, h))
        return out
    if axis.kind == "prompt_sr":
        search = items[0]
        if search not in str(base.get("prompt") or "") and search not in str(base.get("negative_prompt") or ""):
            raise ValueError(f"{where}: '{search}' does not occur in the prompt or the negative prompt (the first "
                             "value is the text to search for; each value replaces it)")
        return items
    if axis.name in ("Sampler", "Hires sampler"):
        out = []
        for item in items:
            name, schedule = samplers.split_name(item)
            name = _match(name, samplers.sampler_names(), where, "sampler")
            out.append(f"{name} {schedule}" if schedule and axis.name == "Sampler" else name)
        return out
    what = {"checkpoint": "checkpoint", "hr_upscaler": "upscaler"}.get(axis.list_key or "", axis.name.lower())
    return [_match(item, choices_of(axis, lists), where, what) for item in items]


def _enabled(unit: Any) -> bool:
    return bool(unit.get("enabled", True) if isinstance(unit, Mapping) else getattr(unit, "enabled", False))


# -- applying a value to a cell ---------------------------------------------------------------------------

def apply(axis: AxisType, p: dict[str, Any], value: Any, values: Sequence[Any]) -> None:
    """Set `axis`'s parameters in the cell's values `p` (a copy of the base values) to `value`."""
    if axis.kind == "none":
        return
    if axis.kind == "size":
        p["width"], p["height"] = value
    elif axis.kind == "prompt_sr":
        for f in axis.fields:
            p[f] = str(p.get(f) or "").replace(values[0], value)
    elif axis.kind == "checkpoint":
        p["__checkpoint__"] = value
    elif axis.name == "Sampler":
        p["sampler_name"], schedule = samplers.split_name(value)
        if schedule:
            p["scheduler"] = schedule
    elif axis.needs == "controlnet":  # the first enabled unit
        units = list(p.get("controlnet") or ())
        i = next(i for i, u in enumerate(units) if _enabled(u))
        u, name = units[i], axis.fields[0]
        units[i] = dict(u, **{name: value}) if isinstance(u, Mapping) else u.model_copy(update={name: value})
        p["controlnet"] = units
    else:
        p[axis.fields[0]] = value
