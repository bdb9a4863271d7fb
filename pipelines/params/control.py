"""ControlNet units: one definition per unit parameter, the `ControlUnit` request model, and the infotext form.

Field names follow the A1111 ControlNet extension's API (`alwayson_scripts.controlnet.args`), so a unit dict
from an existing client validates as is (integer resize/control modes and the extension's spellings are
accepted). The specs reuse `ParamSpec`, so the UI shows each with its recommended band like every other
parameter, and docs/parameters.md lists them. Pure Python: no torch.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from pipelines.params.spec import Band, HintContext, ParamSpec, pydantic_field

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")  # A1111 0..2
CONTROL_RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")  # A1111 0..2
MAX_UNITS = 3  # units shown in the UI; the API accepts more
_UNIT = frozenset({"controlnet"})


def module_names() -> list[str]:
    from extensions.preprocessors import registry  # no torch at import

    return list(registry())


def canonical_module(name: Any) -> str:
    from extensions.preprocessors import ALIASES

    key = str(name or "none").strip()
    key = ALIASES.get(key.lower(), key)
    return "none" if key.lower() in ("", "none") else key


def _threshold_judge(which: str):
    """Bands of threshold_a/threshold_b depend on the unit's preprocessor (Canny thresholds, normal background)."""

    def judge(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
        module = canonical_module(others.get("module"))
        bands = _THRESHOLD_BANDS.get((module, which))
        if bands is None:
            return Band("best", f"not used by the '{module}' preprocessor")
        if value is None or value == -1:
            return Band("best", "the preprocessor's default")
        return next((b for b in bands if b.contains(value)), Band("avoid", "outside the preprocessor's range"))

    return judge


def _module_judge(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    if canonical_module(value) == "none":
        return Band("ok", "the image is used as the map: it must already look like one (edges, depth, skeleton)")
    return Band("best", "the map is detected from the image")


def _model_judge(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
    from extensions.preprocessors import registry

    if value in (None, "", "None"):
        return Band("avoid", "no model selected: an enabled unit cannot run")
    pre = registry().get(canonical_module(others.get("module")))
    if pre is not None and pre.model_keywords and not any(k in str(value).lower() for k in pre.model_keywords):
        return Band("caution", f"the name does not say {'/'.join(pre.model_keywords)}: a model expects the map type "
                               "it was trained on")
    return Band("best", "made for this map type")


_THRESHOLD_BANDS: dict[tuple[str, str], tuple[Band, ...]] = {
    ("canny", "a"): (
        Band("caution", "very low: texture and noise become edges, the map gets busy", 1, 49),
        Band("best", "keeps outlines and main inner lines", 50, 150),
        Band("caution", "high: only the strongest edges survive, loose control", 151, 255),
    ),
    ("canny", "b"): (
        Band("caution", "low: weak texture edges are kept; busy map", 1, 99),
        Band("best", "clean outlines", 100, 250),
        Band("caution", "only the very strongest edges start a line", 251, 255),
    ),
    ("normal_midas", "a"): (
        Band("caution", "background normals kept: flat areas get noisy structure", 0, 0.19),
        Band("best", "separates the subject from a flat background", 0.2, 0.6),
        Band("caution", "parts of the subject are cut away as background", 0.61, 1),
    ),
}


def _processor_res_bands(ctx: HintContext) -> tuple[Band, ...]:
    n = ctx.native
    return (
        Band("caution", "coarse map: fine edges and small limbs are lost", 64, n // 2 - 1),
        Band("ok", "rough map: fine for big shapes and depth", n // 2, n - 1),
        Band("best", "about the generation size: map detail matches what the model can use", n, 2 * n),
        Band("ok", "slower detection; detail beyond the generation size is thrown away", 2 * n + 1, 4096),
    )


CONTROL_PARAMS: dict[str, ParamSpec] = {
    p.name: p
    for p in [
        ParamSpec(
            "enabled", "Enable", "bool", True,
            "Use this unit. Disabled units are ignored (their settings are kept).",
            (Band("best", "on", values=("True",)), Band("best", "off", values=("False",))),
            group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "module", "Preprocessor", "choice", "none",
            "Turns the control image into a map: canny (edges), depth_midas (depth), normal_bae/normal_midas "
            "(surface normals), openpose* (body skeleton, with hands/face). 'none' for a ready-made map such as an "
            "edited OpenPose skeleton.",
            (Band("best", "the map is detected from the image"), Band("ok", "'none': the image already is a map")),
            judge=_module_judge, choices=module_names, group="controlnet", modes=_UNIT,
            extra={"by_index": False},  # names and aliases only
        ),
        ParamSpec(
            "model", "Model", "choice", "None",
            "ControlNet checkpoint from models/ControlNet, matching the preprocessor (a canny model for canny "
            "maps) and the checkpoint's family (SD 1.x or SDXL).",
            (Band("best", "a model trained for this map type and family"),
             Band("caution", "a model for another map type"), Band("avoid", "no model")),
            judge=_model_judge, group="controlnet", modes=_UNIT, extra={"open": True},
        ),
        ParamSpec(
            "weight", "Control weight", "float", 1.0,
            "How strongly the map steers the image. 1 follows it closely; lower leaves the prompt more freedom.",
            (
                Band("caution", "no effect: the unit only costs time", 0, 0),
                Band("ok", "loose guidance: rough layout only", 0.01, 0.49),
                Band("best", "follows the map and leaves room for the prompt", 0.5, 1.2),
                Band("caution", "over-constrained: harsh lines, burned colours", 1.21, 1.5),
                Band("avoid", "artifacts: the map overpowers the model", 1.51, 2),
            ),
            minimum=0, maximum=2, step=0.05, group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "guidance_start", "Starting control step", "float", 0.0,
            "Fraction of the steps after which the unit starts acting. Later starts let the model choose its own "
            "composition first.",
            (
                Band("best", "from the first step: the layout follows the map", 0, 0.1),
                Band("ok", "the model sketches freely first, details follow the map", 0.11, 0.4),
                Band("caution", "the layout is set before the control starts: little effect", 0.41, 1),
            ),
            minimum=0, maximum=1, step=0.01, group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "guidance_end", "Ending control step", "float", 1.0,
            "Fraction of the steps after which the unit stops. Ending early frees the last steps to refine "
            "texture without the map's hard edges.",
            (
                Band("caution", "stops before the layout settles: drifts from the map", 0, 0.49),
                Band("ok", "layout from the map, free final details", 0.5, 0.79),
                Band("best", "control through (almost) every step", 0.8, 1),
            ),
            minimum=0, maximum=1, step=0.01, group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "control_mode", "Control mode", "choice", "Balanced",
            "Balanced: map and prompt as trained. 'My prompt is more important': the map's influence fades towards "
            "the deep layers. 'ControlNet is more important': the map also steers away from the negative side of "
            "CFG, so it wins over the prompt.",
            (Band("best", "as trained", values=("Balanced",)),
             Band("ok", "prompt wins conflicts", values=("My prompt is more important",)),
             Band("ok", "map wins conflicts; raise CFG moderately", values=("ControlNet is more important",))),
            choices=lambda: list(CONTROL_MODES), group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "resize_mode", "Resize mode", "choice", "Crop and resize",
            "How the map is fitted to the generation size when their aspect ratios differ.",
            (Band("best", "fills the frame, keeps proportions (edges may be cropped)", values=("Crop and resize",)),
             Band("ok", "keeps the whole map, pads the borders", values=("Resize and fill",)),
             Band("caution", "stretches the map when aspects differ: distorted poses and shapes",
                  values=("Just resize",))),
            choices=lambda: list(CONTROL_RESIZE_MODES), group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "processor_res", "Preprocessor resolution", "int", 512,
            "Short side, in pixels, the preprocessor works at. Pixel perfect sets it from the generation size.",
            _processor_res_bands, minimum=64, maximum=2048, step=8, group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "pixel_perfect", "Pixel perfect", "bool", False,
            "Run the preprocessor at exactly the resolution the map is used at (computed from the image and "
            "generation sizes), instead of the fixed preprocessor resolution.",
            (Band("best", "map resolution matches the generation", values=("True",)),
             Band("ok", "uses the preprocessor resolution above", values=("False",))),
            group="controlnet", modes=_UNIT,
        ),
        ParamSpec(
            "threshold_a", "Threshold A", "float", None,
            "The preprocessor's first setting: Canny low threshold (1-255, default 100), normal_midas background "
            "threshold (0-1, default 0.4). Empty or -1 = the preprocessor's default.",
            (), judge=_threshold_judge("a"), minimum=-1, maximum=255, nullable=True, group="controlnet", modes=_UNIT,
            extra={"bands_by_module": {m: b for (m, w), b in _THRESHOLD_BANDS.items() if w == "a"}},
        ),
        ParamSpec(
            "threshold_b", "Threshold B", "float", None,
            "The preprocessor's second setting: Canny high threshold (1-255, default 200). Empty or -1 = default.",
            (), judge=_threshold_judge("b"), minimum=-1, maximum=255, nullable=True, group="controlnet", modes=_UNIT,
            extra={"bands_by_module": {m: b for (m, w), b in _THRESHOLD_BANDS.items() if w == "b"}},
        ),
    ]
}

_INDEXED = {"control_mode": CONTROL_MODES, "resize_mode": CONTROL_RESIZE_MODES}
_SPELLINGS = {"just resize": "Just resize", "crop and resize": "Crop and resize", "resize and fill": "Resize and fill",
              "envelope (outer fit)": "Resize and fill", "scale to fit (inner fit)": "Crop and resize",
              "balanced": "Balanced", "my prompt is more important": "My prompt is more important",
              "controlnet is more important": "ControlNet is more important"}


class _UnitBase(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _canonical(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, names in _INDEXED.items():
            v = data.get(key)
            if isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.strip().isdigit():
                if not 0 <= int(v) < len(names):
                    raise ValueError(f"{key}: {v} is not one of 0..{len(names) - 1} ({', '.join(names)})")
                data[key] = names[int(v)]
            elif isinstance(v, str):
                data[key] = _SPELLINGS.get(v.strip().lower(), v)
                if data[key] not in names:
                    raise ValueError(f"{key}: {v!r} is not one of: {', '.join(names)}")
        if "module" in data:
            data["module"] = canonical_module(data["module"])
            if data["module"] not in module_names():
                raise ValueError(f"module: unknown preprocessor {data['module']!r}; available: "
                                 f"{', '.join(module_names())}")
        for key in ("threshold_a", "threshold_b"):
            if data.get(key) == -1:
                data[key] = None
        if data.get("processor_res") in (-1, None):
            data.pop("processor_res", None)
        if data.get("model") in (None, ""):
            data["model"] = "None"
        return data

    @model_validator(mode="after")
    def _window(self) -> "_UnitBase":
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) must not be after guidance_end "
                             f"({self.guidance_end})")
        return self


ControlUnit: type[BaseModel] = create_model(
    "ControlUnit",
    __base__=_UnitBase,
    __doc__="One ControlNet unit. `image` is the control image (PIL); it is never part of the infotext.",
    image=(Any, Field(default=None, exclude=True, description="Control image (PIL); in img2img, None = the input")),
    **{name: pydantic_field(spec) for name, spec in CONTROL_PARAMS.items()},
)


def active_units(units: list[Any]) -> list[tuple[int, Any]]:
    """(index, unit) of the enabled units, numbered as the user sees them."""
    return [(i, u) for i, u in enumerate(units) if u.enabled]


# -- infotext: 'ControlNet 0: "Module: canny, Model: name [hash], Weight: 1, ..."' (the A1111 extension's form) --
_INFO_KEYS = [("Module", "module"), ("Model", "model"), ("Weight", "weight"), ("Resize Mode", "resize_mode"),
              ("Processor Res", "processor_res"), ("Threshold A", "threshold_a"), ("Threshold B", "threshold_b"),
              ("Guidance Start", "guidance_start"), ("Guidance End", "guidance_end"),
              ("Pixel Perfect", "pixel_perfect"), ("Control Mode", "control_mode")]
_UNIT_KEY = re.compile(r"^ControlNet(?: (\d+))?$")


def unit_infotext(unit: Any, model_title: str | None = None) -> str:
    values = unit.model_dump()
    values["model"] = model_title or values["model"]
    parts = []
    for label, key in _INFO_KEYS:
        v = values.get(key)
        if v is None:
            continue
        parts.append(f"{label}: {v:g}" if isinstance(v, float) else f"{label}: {v}")
    return ", ".join(parts)


def parse_unit_infotext(text: str) -> dict[str, Any]:
    """One unit's infotext back into a ControlUnit dict (values as strings are converted by validation)."""
    labels = {label.lower(): key for label, key in _INFO_KEYS}
    out: dict[str, Any] = {"enabled": True}
    # split before each ", Label: " (values themselves never contain a capitalised "Word: " after a comma)
    for part in re.split(r",\s*(?=[A-Z][A-Za-z ]*: )", text.strip().strip('"')):
        label, _, value = part.partition(":")
        key = labels.get(label.strip().lower())
        if key is None:
            continue
        value = value.strip()
        if key == "pixel_perfect":
            out[key] = value.lower() == "true"
        elif key in ("weight", "guidance_start", "guidance_end", "threshold_a", "threshold_b"):
            out[key] = float(value)
        elif key == "processor_res":
            out[key] = int(float(value))
        else:
            out[key] = value
    return out


def units_from_infotext(extra: Mapping[str, str]) -> dict[int, dict[str, Any]]:
    """Unit number -> unit dict of every "ControlNet N" entry of a parsed infotext's `extra`, in unit order."""
    found = {}
    for key, value in extra.items():
        m = _UNIT_KEY.match(str(key))
        if m:
            found[int(m.group(1) or 0)] = parse_unit_infotext(value)
    return dict(sorted(found.items()))
