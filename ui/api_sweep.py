"""Sweeps (X/Y/Z plot) over the API: A1111's `script_name: "x/y/z plot"` convention on POST /sdapi/v1/txt2img,
and our readable endpoints `POST /studio/v1/sweep` and `POST /studio/v1/sweep/plan` (the cost, nothing run).

A1111's script_args, in its `run` order: [x_type, x_values, x_values_dropdown, y_type, y_values,
y_values_dropdown, z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids,
no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode] (versions before 1.7 sent
[..., no_fixed_seeds, margin_size, csv_mode, raw_mode]; both are read). A type is A1111's integer index into its
txt2img axis list, or a label. The answer is A1111's: `images` = the grid (with several Z values: the combined
grid, then the sub-grids if include_sub_grids), then every cell if include_lone_images; `info` lists their
infotexts in the same order. Pure Python: no torch import here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, create_model

from pipelines.jobs import EventKind
from pipelines.studio import BadRequest, Studio, describe_validation
from pipelines.sweep.axes import AXES, a1111_labels
from pipelines.sweep.plan import SweepOptions, axis_type
from pipelines.sweep.run import sweep_info
from ui.api_common import ERRORS, ApiError, Route, body_doc, client_id, encode_png, json_body, submit_job, wait_job

SCRIPT_NAMES = frozenset({"x/y/z plot", "xyz plot", "x/y/z_plot", "xyz_plot"})
# txt2img request body -> (request, txt2img params dict, model name or None, warnings); ui/api.py supplies it
ParseParams = Callable[[Any], tuple[Any, dict[str, Any], "str | None", list[str]]]


def is_xyz(script_name: Any) -> bool:
    return isinstance(script_name, str) and script_name.strip().lower() in SCRIPT_NAMES


def script_axes(args: Any) -> tuple[list[tuple[Any, Any]], SweepOptions, bool]:
    """A1111's script_args -> (axes, options, include_lone_images). 400 naming an axis type we lack."""
    if not isinstance(args, list):
        raise ApiError(400, "BadSweep", "script_args: expected A1111's X/Y/Z plot argument list")
    a = list(args)
    old = len(a) == 16 and not isinstance(a[13], bool)  # before 1.7: margin_size where vary_seeds_x is now
    if old:
        a = [*a[:13], False, False, False, *a[13:15]]
    a += [None] * (18 - len(a))
    csv_mode = bool(a[17])
    axes = []
    for i, letter in enumerate("xyz"):
        kind, text, dropdown = a[3 * i:3 * i + 3]
        kind = 0 if kind in (None, "") else kind
        try:
            t = axis_type(kind)
        except ValueError as e:
            raise ApiError(400, "UnsupportedAxis", f"script_args {letter}_type: {e}") from None
        if t.has_choices and not csv_mode and isinstance(dropdown, list) and dropdown:
            text = dropdown  # A1111 reads choice axes from the dropdown unless csv_mode
        axes.append((t.name, text if text is not None else ""))
    options = SweepOptions(draw_legend=a[9] is None or bool(a[9]), include_sub_grids=bool(a[11]),
                           keep_random_seeds=bool(a[12]), vary_seeds=(bool(a[13]), bool(a[14]), bool(a[15])),
                           margin=max(0, min(500, int(a[16] or 0))) if isinstance(a[16], (int, float)) else 0)
    return axes, options, bool(a[10])


def submit_sweep(studio: Studio, params: dict[str, Any], axes: Any, *, model: str | None, owner: str,
                 options: SweepOptions) -> Any:
    return submit_job(lambda: studio.submit_sweep(params, axes, model=model, owner=owner, options=options), 400,
                      "BadSweep")


def outcome(events: list[Any]) -> tuple[list[tuple[Any, dict]], list[tuple[Any, dict]], Any]:
    """(grids, cells, result or None) of a finished or interrupted sweep job; each image as (image, payload)."""
    last = events[-1]
    if last.kind is EventKind.FINISHED:
        r = last.result
        return [(g.image, {"infotext": g.infotext, "path": str(g.path), "z": g.z}) for g in r.grids], r.cell_images, r
    shown = [(ev.image, dict(ev.result or {})) for ev in events if ev.kind is EventKind.IMAGE]
    cells = sorted((x for x in shown if not x[1].get("grid")), key=lambda x: x[1].get("cell", 0))  # workers finish
    return [x for x in shown if x[1].get("grid")], cells, None  # cells in any order: answer them in plan order


def _info(result: Any, req_params: dict[str, Any], grids: list, cells: list, warnings: list[str]) -> dict:
    if result is not None:
        info = result.info()
    else:  # interrupted: what was finished, as A1111 does
        info = {"prompt": req_params.get("prompt", ""), "negative_prompt": req_params.get("negative_prompt", ""),
                "seed": cells[0][1].get("seed") if cells else req_params.get("seed"), "interrupted": True,
                "all_seeds": [p.get("seed") for _, p in cells]}
    info["infotexts"] = [p.get("infotext", "") for _, p in [*grids, *cells]]
    info["warnings"] = [*warnings, *getattr(result, "warnings", [])]
    return info


def run_xyz(studio: Studio, req: Any, params: dict[str, Any], model: str | None, warnings: list[str],
            owner: str) -> dict[str, Any]:
    """POST /sdapi/v1/txt2img with script_name "x/y/z plot": A1111's answer."""
    axes, options, lone = script_axes(req.script_args)
    events = wait_job(submit_sweep(studio, params, axes, model=model, owner=owner, options=options))
    grids, cells, result = outcome(events)
    shown = [*grids, *(cells if lone else [])]
    info = _info(result, params, grids, cells if lone else [], warnings)
    images = [encode_png(im, p.get("infotext")) for im, p in shown] if req.send_images else []
    return {"images": images, "parameters": req.model_dump(), "info": json.dumps(info)}


def _axis_types() -> dict[str, Any]:
    """The axis types a sweep takes: our names and aliases, A1111's labels of those, or A1111's txt2img indices."""
    labels = a1111_labels("txt2img")
    names = [*AXES, *(alias for a in AXES.values() for alias in a.aliases)]
    known = {n.casefold() for n in names}
    names += [label for label in labels if label.casefold() in known and label not in names]
    return {"anyOf": [{"type": "string", "enum": names},
                      {"type": "integer", "enum": [i for i, label in enumerate(labels) if label.casefold() in known],
                       "description": "index into A1111's txt2img axis list"}]}


class AxisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Annotated[str | int, WithJsonSchema(_axis_types())] = Field(
        description="axis type: our name (e.g. 'CFG scale'), an A1111 label or its index")
    values: str | list[str | int | float] = Field(
        "", description="values as the axis type takes them (numbers within the parameter's limits, names of its "
                        "choices): '5, 7, 9', '1-10 (+2)', '7-12 [4]' or a list; at most 100 cells in all")


_ACTIVE_AXIS = {"properties": {"type": {"not": {"enum": ["Nothing", 0]}},
                               "values": {"minLength": 1, "pattern": r"\S", "minItems": 1}},
                "required": ["type", "values"]}


class OptionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    draw_legend: bool = True
    include_sub_grids: bool = False
    keep_random_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin: int = Field(0, ge=0, le=500)


class SweepRequest(BaseModel):
    """POST /studio/v1/sweep and /studio/v1/sweep/plan."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict, description="txt2img fields, as POST /sdapi/v1/txt2img")
    axes: list[AxisRequest] = Field(
        min_length=1, max_length=3, json_schema_extra={"contains": _ACTIVE_AXIS},
        description="X, then Y, then Z; at least one sweeps a parameter (not Nothing) over some values, each "
                    "parameter along one axis only. Hires steps/sampler/upscaler/upscale and Denoising need Hires. fix "
                    "on in params, ControlNet weight/guidance end an enabled ControlNet unit, Var. seed a variation "
                    "strength above 0")
    options: OptionsRequest = Field(default_factory=OptionsRequest)
    model: str | None = Field(None, description="checkpoint; default: the current one")
    send_images: bool = True


def build_sweep_api(studio: Studio, deps: list[Any], parse_params: ParseParams,
                    params_model: type[BaseModel] | None = None) -> APIRouter:
    """`params_model`: the txt2img request model `parse_params` reads, published as the schema of `params`."""
    own = APIRouter(prefix="/studio/v1", tags=["Studio API"], dependencies=deps, route_class=Route, responses=ERRORS)
    documented = SweepRequest
    if params_model is not None:
        documented = create_model("SweepRequest", __base__=SweepRequest, __doc__=SweepRequest.__doc__, params=(
            Annotated[dict[str, Any], BeforeValidator(lambda v: v, json_schema_input_type=params_model)],
            SweepRequest.model_fields["params"]))
    doc = body_doc(documented)

    def parse(body: Any) -> tuple[SweepRequest, dict[str, Any], str | None, list[str], list[tuple[Any, Any]]]:
        if not isinstance(body, dict):
            raise ApiError(422, "ValidationError", "body: expected a JSON object {params, axes, options}")
        try:
            sreq = SweepRequest.model_validate(body)
        except ValidationError as e:
            raise ApiError(422, "ValidationError", describe_validation(e)) from None
        data = dict(sreq.params)
        if sreq.model:  # as A1111 clients pick a model per request
            data["override_settings"] = {**(data.get("override_settings") or {}), "sd_model_checkpoint": sreq.model}
        _, params, model, warnings = parse_params(data)
        return sreq, params, model, warnings, [(a.type, a.values) for a in sreq.axes]

    def options_of(sreq: SweepRequest) -> SweepOptions:
        return SweepOptions(**sreq.options.model_dump())

    @own.post("/sweep/plan", openapi_extra=doc)
    def plan(body: Any = Depends(json_body)) -> dict[str, Any]:
        """What a sweep would run and cost (cells, images, denoising steps, checkpoint switches); nothing runs."""
        sreq, params, model, warnings, axes = parse(body)
        try:
            p = studio.plan_sweep(params, axes, model=model, options=options_of(sreq))
        except BadRequest as e:
            raise ApiError(400, "BadSweep", str(e)) from None
        return {**sweep_info(p), "warnings": warnings}

    @own.post("/sweep", openapi_extra=doc)
    def run(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """Run a sweep: {"grids": [base64 PNG...], "images": [every cell...], "info": {...}}; the grid and cell
        PNGs carry their parameters. An interrupted sweep answers what finished, info.interrupted true."""
        sreq, params, model, warnings, axes = parse(body)
        job = submit_sweep(studio, params, axes, model=model, owner=client_id(request), options=options_of(sreq))
        grids, cells, result = outcome(wait_job(job))
        info = _info(result, params, grids, cells, warnings)

        def enc(items: list) -> list[str]:
            return [encode_png(im, p.get("infotext")) for im, p in items] if sreq.send_images else []

        return {"grids": enc(grids), "images": enc(cells), "info": info, "parameters": sreq.model_dump()}

    return own
