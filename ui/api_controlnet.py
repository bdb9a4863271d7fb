"""The A1111 ControlNet extension's API: units in `alwayson_scripts.controlnet.args` on txt2img/img2img, and
the `/controlnet/...` endpoints (model_list, module_list, control_types, detect, version, settings).

Existing clients of that extension work unchanged: unit fields keep its names, integer resize and control
modes are accepted, `input_image` is the old name of `image`, and detected maps are appended to the answer's
images after the generated ones (the extension's default). Our addition: a unit may carry `pose_json`
(OpenPose-format keypoints), rendered to a skeleton and used with preprocessor "none".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from pipelines.params.control import CONTROL_PARAMS, MAX_UNITS, module_names
from pipelines.params.spec import pydantic_field
from pipelines.studio import MAX_INPUT_PIXELS, Studio
from ui.api_common import (
    ERRORS,
    IMAGE_SCHEMA,
    ApiError,
    Route,
    body_doc,
    client_id,
    decode_image,
    encode_png,
    json_body,
    submit_job,
    wait_job,
)

API_VERSION = 2  # what the extension's /controlnet/version answers; clients check it
# Unit fields of the extension that change nothing here; accepted without a warning.
_SILENT = {"low_vram", "lowvram", "hr_option", "save_detected_map", "is_ui", "input_mode", "batch_images",
           "output_dir", "loopback", "use_preview_as_input", "generated_image", "processor_res_low_vram"}
# Unit fields we do not implement: (in use?, what happens instead).
_IGNORED = {"mask": "masks restricting a unit are not supported; the unit acts on the whole image",
            "mask_image": "masks restricting a unit are not supported; the unit acts on the whole image",
            "effective_region_mask": "effective-region masks are not supported",
            "guessmode": "use control_mode 'ControlNet is more important'",
            "guess_mode": "use control_mode 'ControlNet is more important'",
            "ipadapter_input": "IP-Adapter is not supported", "union_control_type": "union models are not supported",
            "inpaint_crop_input_image": "ignored"}
_RENAMED = {"input_image": "image", "lowvram": "low_vram"}


# -- the request schema (documentation: `units_from_request` and ControlUnit validate) ------------------------------
_IMAGE_FORMS = [IMAGE_SCHEMA, {
    "type": "object", "properties": {"image": IMAGE_SCHEMA, "mask": {"description": "unused"}}, "required": ["image"],
    "description": "the extension's {image, mask} form; the mask is not used"}]
_IMAGE = WithJsonSchema({"anyOf": [*_IMAGE_FORMS, {"type": "null"}]})
_ACCEPTED = WithJsonSchema({"description": "accepted and ignored (it changes nothing here)"})

ControlNetUnitRequest: type[BaseModel] = create_model(
    "ControlNetUnitRequest",
    __config__=ConfigDict(extra="forbid"),
    __doc__="One ControlNet unit as the A1111 ControlNet extension sends it (alwayson_scripts.controlnet.args[i]). "
            "An enabled unit needs a `model` from GET /controlnet/model_list and, in txt2img, an `image` (or "
            "`pose_json`). `guidance_start` must not be after `guidance_end`.",
    image=(Annotated[Any, _IMAGE], Field(None, description="the control image; in img2img, empty = the input")),
    input_image=(Annotated[Any, _IMAGE], Field(None, description="old name of `image`")),
    pose_json=(Annotated[Any, WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "array"}, {"type": "string"}]})],
               Field(None, description="OpenPose-format keypoints (JSON), rendered to a skeleton map; sets module "
                                       "'none'")),
    **{name: pydantic_field(spec) for name, spec in CONTROL_PARAMS.items()},
    **{name: (Annotated[Any, _ACCEPTED], None) for name in sorted(_SILENT | set(_IGNORED) | {"lowvram"})},
)


class ControlNetScript(BaseModel):
    args: list[ControlNetUnitRequest] = Field(default_factory=list,  # type: ignore[valid-type]
                                              description="the units, stacked in order")


class AlwaysOnScripts(BaseModel):
    """A1111's alwayson_scripts: `controlnet` runs; other scripts are not installed here and are ignored with a
    warning."""

    model_config = ConfigDict(extra="allow")

    controlnet: ControlNetScript | list[ControlNetUnitRequest] | None = Field(  # type: ignore[valid-type]
        None, description="{\"args\": [unit, ...]} (or the list of units itself)")


class DetectRequest(BaseModel):
    """POST /controlnet/detect."""

    controlnet_module: str = Field("none", description="the preprocessor (GET /controlnet/module_list)",
                                   json_schema_extra={"enum": module_names()})
    controlnet_input_images: list[Annotated[Any, WithJsonSchema({"anyOf": _IMAGE_FORMS})]] = Field(
        min_length=1, description="images to detect on")
    controlnet_processor_res: int | None = Field(
        512, ge=CONTROL_PARAMS["processor_res"].minimum, le=CONTROL_PARAMS["processor_res"].maximum,
        description="short side the preprocessor works at (-1 or null: 512)")
    controlnet_threshold_a: float | None = Field(
        None, ge=CONTROL_PARAMS["threshold_a"].minimum, le=CONTROL_PARAMS["threshold_a"].maximum,
        description=CONTROL_PARAMS["threshold_a"].description)
    controlnet_threshold_b: float | None = Field(
        None, ge=CONTROL_PARAMS["threshold_b"].minimum, le=CONTROL_PARAMS["threshold_b"].maximum,
        description=CONTROL_PARAMS["threshold_b"].description)


def _image_of(value: Any, where: str) -> Any:
    """A unit image: base64, or the extension's {"image": base64, "mask": base64} form (the mask is unused)."""
    if isinstance(value, dict):
        value = value.get("image")
    return decode_image(value, where, MAX_INPUT_PIXELS)


def units_from_request(alwayson: Any, warnings: list[str]) -> list[dict[str, Any]]:
    """`alwayson_scripts` -> ControlUnit dicts with decoded images (validated later with the request).
    Other scripts are reported in `warnings`; bad images answer 400 naming the unit."""
    if not alwayson:
        return []
    if not isinstance(alwayson, dict):
        raise ApiError(422, "ValidationError", "alwayson_scripts: expected an object of script names")
    units: list[dict[str, Any]] = []
    for script, value in alwayson.items():
        if script.lower() != "controlnet":
            warnings.append(f"alwayson_scripts.{script} ignored: that script is not installed")
            continue
        args = value.get("args", []) if isinstance(value, dict) else value
        if not isinstance(args, list) or not all(isinstance(a, dict) for a in args):
            raise ApiError(422, "ValidationError", "alwayson_scripts.controlnet.args: expected a list of unit objects")
        for i, raw in enumerate(args):
            units.append(_unit(raw, i, warnings))
    return units


def _unit(raw: dict[str, Any], i: int, warnings: list[str]) -> dict[str, Any]:
    where = f"alwayson_scripts.controlnet.args[{i}]"
    unit: dict[str, Any] = {}
    for key, value in raw.items():
        key = _RENAMED.get(key, key)
        if key in _SILENT or value is None:
            continue
        if key in _IGNORED:
            if value not in (False, "", [], {}, 0):
                warnings.append(f"{where}.{key} ignored: {_IGNORED[key]}")
            continue
        unit[key] = value
    if unit.get("enabled", True) is False:
        return {"enabled": False}
    if "pose_json" in unit:
        from extensions.openpose_json import render_pose_json

        try:
            unit["image"] = render_pose_json(unit.pop("pose_json"))
        except ValueError as e:
            raise ApiError(400, "BadPose", f"{where}.pose_json: {e}") from None
        unit["module"] = "none"
    elif unit.get("image") not in (None, ""):
        unit["image"] = _image_of(unit["image"], f"{where}.image")
    else:
        unit.pop("image", None)
    return unit


def detected_maps(result: Any) -> list[Any]:
    """Maps of the units whose preprocessor ran (not "none"), appended to the answer's images."""
    return list((getattr(result, "control_maps", None) or {}).values())


def build_controlnet_api(studio: Studio, deps: list[Any]) -> APIRouter:
    cn = APIRouter(prefix="/controlnet", tags=["ControlNet (A1111 extension API)"], dependencies=deps,
                   route_class=Route, responses=ERRORS)

    def family() -> str | None:
        try:
            return studio.current_model().family
        except Exception:  # no checkpoint: list everything
            return None

    @cn.get("/version")
    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @cn.get("/settings")
    def settings() -> dict[str, int]:
        return {"control_net_unit_count": MAX_UNITS, "control_net_max_models_num": MAX_UNITS}

    @cn.get("/model_list")
    def model_list(update: bool = True) -> dict[str, list[str]]:
        """Every usable ControlNet model (all families, as the extension does); `update` rescans the folder."""
        studio.controlnet.models(refresh=update)
        return {"model_list": studio.controlnet.model_titles()}

    @cn.get("/module_list")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        return {"module_list": studio.controlnet.modules(), "module_detail": studio.controlnet.module_detail()}

    @cn.get("/control_types")
    def control_types() -> dict[str, Any]:
        return {"control_types": studio.controlnet.control_types(family())}

    @cn.post("/detect", openapi_extra=body_doc(DetectRequest))
    def detect(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """Run a preprocessor: {"controlnet_module", "controlnet_input_images": [base64], "controlnet_processor_res",
        "controlnet_threshold_a", "controlnet_threshold_b"} -> {"images": [base64], "info": "Success"}."""
        if not isinstance(body, dict):
            raise ApiError(422, "ValidationError", "body: expected a JSON object")
        images = body.get("controlnet_input_images") or []
        if not isinstance(images, list) or not images:
            raise ApiError(422, "ValidationError", "controlnet_input_images: at least one base64 image is required")
        decoded = [_image_of(x, f"controlnet_input_images[{i}]") for i, x in enumerate(images)]

        def number(key: str, default: Any) -> Any:
            value = body.get(key, default)
            return None if value in (None, -1) else value

        module = body.get("controlnet_module", "none")
        job = submit_job(lambda: studio.submit_detect(
            module, decoded, processor_res=number("controlnet_processor_res", 512) or 512,
            threshold_a=number("controlnet_threshold_a", None), threshold_b=number("controlnet_threshold_b", None),
            owner=client_id(request)))
        events = wait_job(job)
        maps = events[-1].result if events[-1].result is not None else []
        return {"images": [encode_png(m) for m in maps], "info": "Success"}

    return cn

