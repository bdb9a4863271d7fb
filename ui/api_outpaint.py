"""Outpainting over the API (pipelines/engine/outpaint.py). Pure Python: no torch.

- `POST /sdapi/v1/img2img` with A1111's `script_name` "Outpainting mk2" or "Poor man's outpainting" and their
  positional `script_args` (`script_fields` reads them, in A1111's order):
  - mk2 (scripts/outpainting_mk_2.py): [info, pixels, mask_blur, direction, noise_q, color_variation]; `info` is
    the script's HTML note (any value; a list starting with a number is read without it). Matched-noise fill,
    the mask overlapping the image by mask_blur px.
  - poor man's (scripts/poor_mans_outpainting.py): [pixels, mask_blur, inpainting_fill, direction];
    inpainting_fill is an index (0 fill, 1 original, 2 latent noise, 3 latent nothing) or a name; the mask
    overlaps the image by 2 x mask_blur px.
  `direction`: a list of "left", "right", "up", "down" (default all four); `pixels` goes to each of them.
- `POST /studio/v1/outpaint`: readable fields: `image`, `left`/`right`/`up`/`down` (px), `fill`, `overlap`,
  `step`, `noise_q`, `color_variation` (or their `outpaint_` names), `mask_blur`, prompt and the usual
  img2img generation fields, `alwayson_scripts.controlnet` units, `styles`, `sd_model_checkpoint`.
Both answer like img2img. Bad values answer 4xx naming the field (`script_args[1] (pixels)`, `left`...).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, WithJsonSchema

from pipelines.params.specs import MASKED_CONTENT, OutpaintParams, schedule_rules
from ui.api_common import IMAGE_SCHEMA, ApiError

MK2 = "outpainting mk2"
POOR_MAN = "poor man's outpainting"
SCRIPT_NAMES = (MK2, POOR_MAN)
DIRECTIONS = ("left", "right", "up", "down")
# readable names of POST /studio/v1/outpaint -> the parameters' own names
SHORT_NAMES = {"left": "outpaint_left", "right": "outpaint_right", "up": "outpaint_up", "down": "outpaint_down",
               "fill": "outpaint_fill", "overlap": "outpaint_overlap", "step": "outpaint_step",
               "noise_q": "outpaint_noise_q", "color_variation": "outpaint_color_variation"}


def _schema(schema: dict[str, Any], cls: type) -> None:
    """The sampler/schedule rules, `image` required, and the readable names documented beside the parameters'
    own (send one or the other: both answer 422)."""
    schedule_rules(schema)
    props = schema.setdefault("properties", {})
    schema["required"] = sorted({*schema.get("required", []), *getattr(cls, "schema_required", ())})
    for short, name in SHORT_NAMES.items():
        if name in props:
            props[short] = {**props[name], "description": f"readable name of {name}: "
                                                          f"{props[name].get('description', '')}"}


class OutpaintRequest(OutpaintParams):
    """POST /studio/v1/outpaint: outpainting's parameters (readable names `left`, `right`, `up`, `down`, `fill`,
    `overlap`, `step`, `noise_q`, `color_variation` accepted for the `outpaint_` ones), the image, and A1111's
    usual request fields (styles, override_settings, alwayson_scripts for ControlNet units)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True, json_schema_extra=_schema)
    schema_required: ClassVar[tuple[str, ...]] = ("image",)

    image: Annotated[Any, WithJsonSchema(IMAGE_SCHEMA)] = None
    sd_model_checkpoint: str | None = Field(None, description="checkpoint; default: the current one")
    send_images: bool = True
    styles: list[str] = Field([], description="saved style names, applied in order")
    override_settings: dict[str, Any] = {}
    alwayson_scripts: dict[str, Any] = {}


def is_outpaint(script_name: Any) -> bool:
    return isinstance(script_name, str) and script_name.strip().lower() in SCRIPT_NAMES


def readable_body(body: Any) -> Any:
    """POST /studio/v1/outpaint's readable names turned into the parameters' names (422 when both are sent)."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    for short, name in SHORT_NAMES.items():
        if short in out:
            if name in out:
                raise ApiError(422, "ValidationError", f"{short}: sent twice (as {short} and {name})")
            out[name] = out.pop(short)
    return out


def readable_message(message: str, body: Any) -> str:
    """A validation message naming the field as the client sent it (`left`, not `outpaint_left`)."""
    if isinstance(body, dict):
        for short, name in SHORT_NAMES.items():
            if short in body:
                message = message.replace(name, short)
    return message


def _number(args: list[Any], i: int, what: str, lo: float, hi: float, default: Any, kind: type = int) -> Any:
    v = args[i] if i < len(args) and args[i] is not None else default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(422, "ValidationError", f"script_args[{i}] ({what}): expected a number, got {v!r}")
    if kind is int and float(v) != int(v):
        raise ApiError(422, "ValidationError", f"script_args[{i}] ({what}): expected a whole number, got {v!r}")
    if not lo <= v <= hi:
        raise ApiError(422, "ValidationError", f"script_args[{i}] ({what}): {v} is outside {lo}..{hi}")
    return kind(v)


def _directions(args: list[Any], i: int) -> list[str]:
    v = args[i] if i < len(args) and args[i] is not None else list(DIRECTIONS)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(d, str) and d.lower() in DIRECTIONS for d in v):
        raise ApiError(422, "ValidationError", f"script_args[{i}] (direction): expected a list of "
                                               f"{', '.join(DIRECTIONS)}, got {v!r}")
    if not v:
        raise ApiError(422, "ValidationError", f"script_args[{i}] (direction): choose at least one direction")
    return [d.lower() for d in v]


def script_fields(script_name: str, args: Any) -> dict[str, Any]:
    """A1111's outpainting script_args -> OutpaintParams fields (outpaint_*, mask_blur); 422 naming the argument."""
    if args is None:
        args = []
    if not isinstance(args, list):
        raise ApiError(422, "ValidationError", "script_args: expected a list (the script's arguments in order)")
    a = list(args)
    name = script_name.strip().lower()
    if name == MK2:
        if a and isinstance(a[0], (int, float)) and not isinstance(a[0], bool) and len(a) <= 5:
            a = [None, *a]  # sent without the script's HTML note
        pixels = _number(a, 1, "pixels", 8, 2048, 128)
        blur = _number(a, 2, "mask_blur", 0, 64, 8)
        sides = _directions(a, 3)
        fields = {"outpaint_fill": "matched noise", "outpaint_overlap": blur,
                  "outpaint_noise_q": _number(a, 4, "noise_q", 0, 4, 1.0, float),
                  "outpaint_color_variation": _number(a, 5, "color_variation", 0, 1, 0.05, float)}
    else:
        pixels = _number(a, 0, "pixels", 8, 2048, 128)
        blur = _number(a, 1, "mask_blur", 0, 64, 4)
        fill = a[2] if len(a) > 2 and a[2] is not None else 0
        if isinstance(fill, str) and fill in MASKED_CONTENT:
            fill = MASKED_CONTENT.index(fill)
        if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill < len(MASKED_CONTENT):
            raise ApiError(422, "ValidationError", f"script_args[2] (inpainting_fill): {fill!r} is not one of "
                                                   f"0..3 ({', '.join(MASKED_CONTENT)})")
        sides = _directions(a, 3)
        fields = {"outpaint_fill": MASKED_CONTENT[fill], "outpaint_overlap": min(2 * blur, 256)}
    fields.update({f"outpaint_{d}": (pixels if d in sides else 0) for d in DIRECTIONS}, mask_blur=blur,
                  outpaint_step=0)
    return fields
