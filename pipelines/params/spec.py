"""The machinery of parameter definitions: bands with verdicts, hints, and `ParamSpec`.

`pipelines/params/specs.py` (generation parameters) and `pipelines/params/control.py` (ControlNet units) declare their
parameters with these; `pydantic_field` turns a spec into a Pydantic field so limits are declared once.
Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from pydantic import Field

if TYPE_CHECKING:
    from pipelines.params.networks import Networks

Verdict = Literal["best", "ok", "caution", "avoid"]
VERDICT_ORDER: dict[str, int] = {"best": 0, "ok": 1, "caution": 2, "avoid": 3}


@dataclass(frozen=True)
class Band:
    """A recommended (or discouraged) zone of a parameter with its verdict and a one-line reason."""

    verdict: Verdict
    why: str
    lo: float | None = None  # inclusive
    hi: float | None = None  # inclusive
    values: tuple[str, ...] = ()  # for choice parameters

    @property
    def label(self) -> str:
        if self.values:
            return ", ".join(self.values)
        if self.lo is not None and self.hi is not None:
            return _num(self.lo) if self.lo == self.hi else f"{_num(self.lo)}-{_num(self.hi)}"
        if self.lo is not None:
            return f">= {_num(self.lo)}"
        if self.hi is not None:
            return f"<= {_num(self.hi)}"
        return "any"

    def contains(self, value: Any) -> bool:
        if self.values:
            return str(value) in self.values
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        return (self.lo is None or v >= self.lo - 1e-9) and (self.hi is None or v <= self.hi + 1e-9)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class HintContext:
    """What a verdict depends on besides the value: the selected model."""

    family: str = "sd15"
    native: int = 512  # native training size of the model family, pixels per side
    distilled: bool = False  # turbo / LCM / lightning models want few steps and low CFG
    mode: str = "txt2img"  # txt2img, img2img or inpaint: denoising advice differs between the last two
    half: bool = False  # the models run in fp16, where SDXL's own VAE overflows (decoded in float32 instead)
    vaes: tuple[str, ...] = ()  # the VAE files listed (GET /sdapi/v1/sd-vae), for advice that names one
    # the LoRAs / embeddings / checkpoints listed and whether each fits the model (the studio fills it in for the
    # advisor and the LoRA tags' verdicts; None: not known, and the rules about them stay silent)
    networks: Networks | None = None
    workers: int = 1  # device workers serving the studio: a draft batch is split into a batch count over them


@dataclass(frozen=True)
class Hint:
    verdict: Verdict
    why: str
    band: str  # label of the band the value fell in
    recommended: str  # labels of the "best" bands

    def as_text(self) -> str:
        return f"{self.verdict.upper()} ({self.band}): {self.why}"


Bands = tuple[Band, ...]
BandsFn = Callable[[HintContext], Bands]
JudgeFn = Callable[[Any, HintContext, Mapping[str, Any]], Band]


@dataclass(frozen=True)
class ParamSpec:
    name: str  # A1111 API field name; also the Pydantic field name
    label: str
    kind: Literal["text", "int", "float", "choice", "bool"]
    default: Any
    description: str
    bands: Bands | BandsFn
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    multiple_of: int | None = None
    choices: Callable[[], list[str]] | None = None
    infotext_key: str | None = None  # key in the A1111 "parameters" text
    group: str = "main"
    judge: JudgeFn | None = None  # custom band picker (e.g. size looks at both sides)
    measure: Callable[[Any], float] | None = None  # what the bands are over, if not the value (e.g. tokens)
    unit: str = ""  # unit of the measured quantity, shown with band labels
    nullable: bool = False  # None means "derived" (e.g. the model's native size)
    modes: frozenset[str] = frozenset({"txt2img", "img2img", "inpaint"})
    extra: dict[str, Any] = field(default_factory=dict)

    def bands_for(self, ctx: HintContext | None = None) -> Bands:
        ctx = ctx or HintContext()
        return self.bands(ctx) if callable(self.bands) else self.bands

    def recommended(self, ctx: HintContext | None = None) -> str:
        return " or ".join(b.label for b in self.bands_for(ctx) if b.verdict == "best")

    def hint(self, value: Any, ctx: HintContext | None = None, others: Mapping[str, Any] | None = None) -> Hint:
        ctx = ctx or HintContext()
        if self.judge is not None:
            band = self.judge(value, ctx, others or {})
        else:
            measured = self.measure(value) if self.measure else value
            band = next((b for b in self.bands_for(ctx) if b.contains(measured)), None)
            if band is None:
                band = Band("avoid", "outside every recommended band")
            if self.measure and measured:
                band = Band(band.verdict, f"~{_num(measured)} {self.unit}: {band.why}", band.lo, band.hi)
        return Hint(band.verdict, band.why, band.label, self.recommended(ctx))


def json_schema(spec: ParamSpec) -> dict[str, Any]:
    """What the API schema says about a spec besides its type, limits and description: a choice parameter with a
    fixed list (not `extra["open"]`) is an enum of its names, or an index into that list (as A1111 clients send
    resize and mask modes; `extra["by_index"] = False` where a model takes names only); an open one (upscalers,
    models: names known only at run time) lists its built-in names as examples. Limits come from
    `ge`/`le`/`multiple_of` in `pydantic_field`."""
    if spec.kind != "choice" or spec.choices is None:
        return {}
    names = list(spec.choices())
    if spec.extra.get("open"):
        return {"examples": names}
    if not spec.extra.get("by_index", True):
        return {"enum": names}
    return {"anyOf": [{"type": "string", "enum": names},
                      {"type": "integer", "minimum": 0, "maximum": len(names) - 1,
                       "description": "index into the list of names"}]}


def pydantic_field(spec: ParamSpec) -> tuple[Any, Any]:
    """A spec as a Pydantic field: type, default, description, limits, and (in the JSON schema the API publishes)
    the choice names, so validation, the API schema, the UI and docs/parameters.md read one definition."""
    py_type: Any = {"text": str, "int": int, "float": float, "choice": str, "bool": bool}[spec.kind]
    if spec.nullable:
        py_type = py_type | None
    extra = json_schema(spec)
    return (
        py_type,
        Field(
            default=spec.default,
            description=spec.description,
            ge=spec.minimum,
            le=spec.maximum,
            multiple_of=spec.multiple_of,
            title=spec.label,
            json_schema_extra=_replace_type(extra) if "anyOf" in extra else extra or None,
        ),
    )


def _replace_type(extra: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """json_schema_extra that puts `extra`'s anyOf in place of the field's own `type` (string) schema."""

    def apply(schema: dict[str, Any]) -> None:
        schema.pop("type", None)
        schema.update(extra)

    return apply
