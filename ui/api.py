"""The A1111-compatible REST API (`/sdapi/v1/...`), so existing A1111 clients work unchanged, plus our own
endpoints under `/studio/v1/...` for features A1111 only offers through positional script arguments
(the tiled SD upscale, outpainting: ui/api_outpaint.py, which also reads A1111's outpainting script_args).

`build_api(studio, auth)` returns an APIRouter that app.py mounts. Every endpoint is a thin adapter over the
`Studio` facade: parse and validate the request, submit a job to the shared queue, wait for it, and shape
the answer the way A1111 does. Generation defaults come from PARAMS (the UI's defaults), not from A1111's
API defaults. Errors answer {"error": <kind>, "detail": <reason>} with a 4xx/5xx status.
Pure Python: no torch import here (results are duck-typed).
"""

from __future__ import annotations

import html
import json
import logging
import re
import secrets
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Callable, ClassVar, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from pipelines.advisor.prompt_builder import UnknownStyle, apply_styles
from pipelines.jobs import EventKind
from pipelines.params import samplers
from pipelines.params.specs import (
    LATENT_UPSCALERS,
    PARAMS,
    ExtrasParams,
    Img2ImgParams,
    OutpaintParams,
    SdUpscaleParams,
    Txt2ImgParams,
    schedule_rules,
)
from pipelines.studio import MAX_INPUT_PIXELS, BadRequest, Studio
from ui.api_advisor import build_advisor_api
from ui.api_common import (  # noqa: F401  (ApiError and encode_png are imported from here by tests)
    ERRORS,
    IMAGE_SCHEMA,
    ApiError,
    Route,
    a1111_info,
    body_doc,
    client_id,
    decode_image,
    encode_png,
    json_body,
    submit_job,
    wait_job,
)
from ui.api_controlnet import AlwaysOnScripts, build_controlnet_api, detected_maps, units_from_request
from ui.api_outpaint import OutpaintRequest, is_outpaint, readable_body, readable_message, script_fields
from ui.api_sweep import build_sweep_api, is_xyz, run_xyz
from ui.api_zoom import build_zoom_api

log = logging.getLogger("studio.api")


# ----------------------------------------------------------------------------------------------
# Request models: our parameters (PARAMS defaults) plus the A1111 fields clients send.
# txt2img and img2img share the A1111 fields, the null/sampler_index/override handling and the warnings
# (`parse_request`); each mode adds its own fields and its own lists of silent and unsupported fields.


_IMAGE = WithJsonSchema(IMAGE_SCHEMA)
_SAMPLER_NAMES = WithJsonSchema({"anyOf": [{"type": "string", "enum": samplers.sampler_names()}, {"type": "null"}]})


def _documented(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """json_schema_extra of the request models: the sampler/schedule rules of the parameter models, and the fields
    the API requires though their Python default is None (a missing image answers 400 naming it, not 422)."""
    schedule_rules(schema)
    if "upscaling_resize_w" in schema.get("properties", {}) and "resize_mode" in schema["properties"]:
        # extras: resize_mode 1 (scale to) needs a width and/or a height above 0
        schema.setdefault("allOf", []).append({
            "if": {"properties": {"resize_mode": {"const": 1}}, "required": ["resize_mode"]},
            "then": {"anyOf": [{"properties": {side: {"minimum": 1}}, "required": [side]}
                               for side in ("upscaling_resize_w", "upscaling_resize_h")]}})
    required = [name for name in getattr(cls, "schema_required", ()) if name in schema.get("properties", {})]
    if required:
        schema["required"] = sorted({*schema.get("required", []), *required})


def _request_config() -> ConfigDict:
    return ConfigDict(extra="ignore", validate_assignment=True, json_schema_extra=_documented)


class OverrideSettings(BaseModel):
    """A1111's per-request settings; other keys are ignored with a warning."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = Field(None, description="checkpoint for this request (GET /sdapi/v1/sd-models)")
    CLIP_stop_at_last_layers: int | None = Field(
        None, ge=PARAMS["clip_skip"].minimum, le=PARAMS["clip_skip"].maximum,
        description="clip skip, where the request has no clip_skip")
    sd_vae: str | None = Field(None, description="VAE for this request, where the request has no sd_vae: Automatic, "
                                                 "None or a name from GET /sdapi/v1/sd-vae (unknown: 422)")
    randn_source: Literal["CPU", "GPU", "NV"] | None = Field(
        None, description="noise source for this request, where the request has no randn_source: CPU, GPU or NV "
                          "(case-insensitive; other: 422)")
    eta_noise_seed_delta: int | None = Field(
        None, ge=0, le=PARAMS["eta_noise_seed_delta"].maximum,
        description="ENSD for this request, where the request has no eta_noise_seed_delta (ancestral samplers)")
    eta_ancestral: float | None = Field(
        None, ge=PARAMS["eta"].minimum, le=PARAMS["eta"].maximum,
        description="eta for this request's k-diffusion sampler (Euler a, DPM2 a, DPM++ 2S a, DPM++ SDE family), "
                    "where the request has no eta")
    eta_ddim: float | None = Field(None, ge=PARAMS["eta"].minimum, le=PARAMS["eta"].maximum,
                                   description="eta for this request's DDIM sampler, where the request has no eta")
    sgm_noise_multiplier: bool | None = Field(
        None, description="SGM noise multiplier for this request, where the request has no sgm_noise_multiplier")
    always_discard_next_to_last_sigma: bool | None = Field(
        None, description="discard the next-to-last sigma for this request, where the request has no "
                          "always_discard_next_to_last_sigma")


def _passed_as_is(model: type[BaseModel]) -> Any:
    """A field validated as a plain dict (read later by hand) but documented as `model`."""
    return BeforeValidator(lambda v: v, json_schema_input_type=model)


class _A1111Common(BaseModel):
    """A1111 fields both generation endpoints accept besides our parameters."""

    model_config = _request_config()
    schema_required: ClassVar[tuple[str, ...]] = ()

    sampler_index: Annotated[str | None, _SAMPLER_NAMES] = Field(
        None, description="A1111's old name of sampler_name, used when sampler_name is absent")
    override_settings: Annotated[dict[str, Any], _passed_as_is(OverrideSettings)] = {}
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = True  # images are always saved, as in the UI
    styles: list[str] = Field([], description="saved style names (GET /sdapi/v1/prompt-styles), applied in order; "
                                              "an unknown name answers 400")
    restore_faces: bool | None = None
    tiling: bool | None = None
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    refiner_checkpoint: str | None = None
    script_name: str | None = Field(None, description="'x/y/z plot' runs a sweep over script_args (A1111's X/Y/Z "
                                                      "plot arguments); other scripts are ignored with a warning")
    script_args: list[Any] = []
    alwayson_scripts: Annotated[dict[str, Any], _passed_as_is(AlwaysOnScripts)] = {}


_SIZE_LIMIT = " width x height x batch_size must stay under 8.4 megapixels (2048 x 2048 x 2)."


class Txt2ImgRequest(Txt2ImgParams, _A1111Common):
    __doc__ = (Txt2ImgParams.__doc__ or "") + _SIZE_LIMIT
    model_config = _request_config()


class Img2ImgRequest(Img2ImgParams, _A1111Common):
    """img2img, or inpaint when `mask` is given. Images are base64 strings (a data: URL prefix is fine);
    they are decoded after validation so a bad one answers 400 naming its field."""

    model_config = _request_config()
    schema_required: ClassVar[tuple[str, ...]] = ("init_images",)

    init_images: Annotated[list[Any] | None, WithJsonSchema({"type": "array", "items": IMAGE_SCHEMA, "minItems": 1})] \
        = Field(None, description="the input image; the first is used (A1111 cycles several over the batch)")
    mask: Annotated[Any, WithJsonSchema({"anyOf": [IMAGE_SCHEMA, {"type": "null"}]})] = Field(
        None, description="white = repaint; null or \"\" = img2img")
    include_init_images: bool = False  # echo init_images and mask in "parameters" (A1111); else they are null
    # A1111's per-axis blur; used only when mask_blur is absent
    mask_blur_x: int | None = Field(None, ge=PARAMS["mask_blur"].minimum, le=PARAMS["mask_blur"].maximum)
    mask_blur_y: int | None = Field(None, ge=PARAMS["mask_blur"].minimum, le=PARAMS["mask_blur"].maximum)
    mask_round: bool = True
    initial_noise_multiplier: float | None = None
    image_cfg_scale: float | None = None  # instruct-pix2pix models only: no effect on the models we run
    subseed: int = Field(-1, ge=PARAMS["subseed"].minimum, le=PARAMS["subseed"].maximum)  # txt2img only here
    subseed_strength: float = Field(0.0, ge=PARAMS["subseed_strength"].minimum, le=PARAMS["subseed_strength"].maximum)


class ExtrasRequest(ExtrasParams):
    """A1111's extras (postprocessing) fields besides our ExtrasParams. resize_mode 0 scales by upscaling_resize
    (the w/h fields are ignored, as in A1111); 1 resizes to upscaling_resize_w x upscaling_resize_h (one side
    alone keeps the aspect ratio; both: cropped to fit). The result may not exceed the upscale limit a side."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True, json_schema_extra=_documented)
    schema_required: ClassVar[tuple[str, ...]] = ()

    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize; 1: resize to "
                                                         "upscaling_resize_w x upscaling_resize_h (one above 0)")
    show_extras_results: bool = True  # the API always answers the images (A1111 does too outside folder mode)
    gfpgan_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_weight: float = Field(0.0, ge=0, le=1)
    upscaling_crop: bool = True
    upscale_first: bool = False  # order of upscale and face restoration: no face restoration here


class ExtrasSingleRequest(ExtrasRequest):
    schema_required: ClassVar[tuple[str, ...]] = ("image",)

    image: Annotated[Any, _IMAGE] = None


class ImageListItem(BaseModel):
    data: Annotated[Any, _IMAGE]
    name: str | None = Field(None, description="shown in the answer's html_info")


class ExtrasBatchRequest(ExtrasRequest):
    schema_required: ClassVar[tuple[str, ...]] = ("imageList",)

    imageList: Annotated[list[Any] | None, _passed_as_is(Annotated[list[ImageListItem], Field(min_length=1)])] = \
        None  # [{"data": base64, "name": "a.png"}]


class SdUpscaleRequest(SdUpscaleParams):
    """POST /studio/v1/sd-upscale: the tiled SD upscale's parameters plus the image and an optional model."""

    model_config = _request_config()
    schema_required: ClassVar[tuple[str, ...]] = ("image",)

    image: Annotated[Any, _IMAGE] = None
    sd_model_checkpoint: str | None = None  # default: the current model
    send_images: bool = True


class HiresFixRequest(Txt2ImgParams):
    """POST /studio/v1/hires-fix: finalize an image txt2img made, with Hires. fix's second pass over it (its first
    pass is not run again). Send the image's own parameters (its infotext, e.g. through /sdapi/v1/png-info) with
    the hires settings; width and height come from the image."""

    model_config = _request_config()
    schema_required: ClassVar[tuple[str, ...]] = ("image",)

    image: Annotated[Any, _IMAGE] = None
    sd_model_checkpoint: str | None = None  # default: the current model
    send_images: bool = True


class OptionsUpdate(BaseModel):
    """POST /sdapi/v1/options: A1111 option names and values; a checkpoint change loads it before answering."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = Field(None, description="select this checkpoint (GET /sdapi/v1/sd-models)")
    sd_vae: str | None = Field(None, description="the VAE of requests that name none: Automatic (a NAME.vae.* file "
                                                 "beside the checkpoint, else its own), None (the checkpoint's own) "
                                                 "or a name from GET /sdapi/v1/sd-vae (unknown: 404)")
    randn_source: Literal["CPU", "GPU", "NV"] | None = Field(
        None, description="the noise source of requests that name none: CPU (the same image on any hardware), NV "
                          "(A1111's NVIDIA noise on any hardware) or GPU (this device's generator); other: 422")
    eta_noise_seed_delta: int | None = Field(None, ge=0, le=PARAMS["eta_noise_seed_delta"].maximum,
                                             description="the ENSD of requests that name none (0 = off)")
    eta_ancestral: float | None = Field(None, ge=PARAMS["eta"].minimum, le=PARAMS["eta"].maximum,
                                        description="the eta of k-diffusion samplers in requests that name none "
                                                    "(default 1)")
    eta_ddim: float | None = Field(None, ge=PARAMS["eta"].minimum, le=PARAMS["eta"].maximum,
                                   description="the eta of DDIM in requests that name none (default 0)")
    sgm_noise_multiplier: bool | None = Field(None, description="txt2img's first noise scaled by sqrt(1 + "
                                                                "sigma_max^2) in requests that name none (default "
                                                                "false)")
    always_discard_next_to_last_sigma: bool | None = Field(
        None, description="every sampler drops the next-to-last sigma in requests that name none (default false)")


class PngInfoRequest(BaseModel):
    image: Annotated[Any, _IMAGE]


# A1111 fields accepted and ignored without a warning: they change nothing unless a feature we lack is on.
_SILENT_COMMON = frozenset({
    "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "do_not_save_samples", "do_not_save_grid",
    "disable_extra_networks", "comments", "force_task_id", "infotext", "distilled_cfg_scale", "sampler_index",
    "refiner_switch_at",
})
_SILENT = {
    "txt2img": _SILENT_COMMON | {"firstphase_width", "firstphase_height", "hr_scheduler", "hr_cfg",
                                 "hr_distilled_cfg", "firstpass_image", "hr_checkpoint_name"},
    "img2img": _SILENT_COMMON,
    "extra-single-image": frozenset(),
    "extra-batch-images": frozenset(),
    "sd-upscale": frozenset({"sampler_index"}),
    "hires-fix": frozenset({"sampler_index"}),
    "outpaint": frozenset({"sampler_index"}),
}

# Fields we do not implement yet: (is it in use?, what happens instead).
_Unsupported = dict[str, tuple[Callable[[Any], bool], str]]
_UNSUPPORTED_COMMON: _Unsupported = {
    "restore_faces": (bool, "face restoration is not implemented yet"),
    "tiling": (bool, "tiling is not implemented yet"),
    "script_name": (bool, "scripts are not implemented yet"),
    "refiner_checkpoint": (bool, "refiner is not implemented yet"),
    "seed_resize_from_h": (lambda v: v > 0, "seed resize is not implemented yet"),
    "seed_resize_from_w": (lambda v: v > 0, "seed resize is not implemented yet"),
    "save_images": (lambda v: not v, "images are always saved"),
    "override_settings_restore_afterwards": (lambda v: not v, "overrides apply to this request only"),
}
_UNSUPPORTED: dict[str, _Unsupported] = {
    "txt2img": {**_UNSUPPORTED_COMMON,  # the X/Y/Z plot script runs a sweep (ui/api_sweep.py)
                "script_name": (lambda v: bool(v) and not is_xyz(v), "only the X/Y/Z plot script is implemented")},
    "img2img": {
        **_UNSUPPORTED_COMMON,
        "subseed_strength": (lambda v: v > 0, "variation seeds are not supported in img2img"),
        "initial_noise_multiplier": (lambda v: v is not None and v != 1, "the initial noise is not scaled"),
        "mask_round": (lambda v: not v, "the mask is always binarised (any painted value repaints)"),
        "script_name": (lambda v: bool(v) and not is_outpaint(v),  # the outpainting scripts: ui/api_outpaint.py
                        "only the outpainting scripts (Outpainting mk2, Poor man's outpainting) are implemented"),
    },
    "sd-upscale": {},
    "hires-fix": {},
    "outpaint": {},
}
_UNSUPPORTED["extra-single-image"] = _UNSUPPORTED["extra-batch-images"] = {
    "gfpgan_visibility": (lambda v: v > 0, "face restoration is not implemented yet"),
    "codeformer_visibility": (lambda v: v > 0, "face restoration is not implemented yet"),
}
_REQUESTS: dict[str, type[BaseModel]] = {"txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest,
                                         "extra-single-image": ExtrasSingleRequest,
                                         "extra-batch-images": ExtrasBatchRequest, "sd-upscale": SdUpscaleRequest,
                                         "hires-fix": HiresFixRequest, "outpaint": OutpaintRequest}
_OVERRIDES = {"sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae", "randn_source", "eta_noise_seed_delta",
              "eta_ancestral", "eta_ddim", "sgm_noise_multiplier", "always_discard_next_to_last_sigma"}


def parse_request(body: Any, mode: str = "txt2img") -> tuple[BaseModel, str | None, list[str]]:
    """Validate a request body of one of the `_REQUESTS` modes (txt2img, img2img, extra-single-image,
    extra-batch-images, sd-upscale) -> (request, model override or None, warnings).
    Raises ApiError 422 naming the field and its limit. Images are not decoded here."""
    if not isinstance(body, dict):
        raise ApiError(422, "ValidationError", "body: expected a JSON object")
    cls = _REQUESTS[mode]
    fields = cls.model_fields
    # null means "default" for fields that have a non-null default (A1111 clients send nulls)
    data = {k: v for k, v in body.items() if not (v is None and k in fields and fields[k].default is not None)}
    if not data.get("sampler_name") and data.get("sampler_index"):
        data["sampler_name"] = data["sampler_index"]
    overrides = data.get("override_settings") or {}
    if isinstance(overrides, dict) and overrides.get("CLIP_stop_at_last_layers") is not None \
            and data.get("clip_skip") is None:
        data["clip_skip"] = overrides["CLIP_stop_at_last_layers"]
    if isinstance(overrides, dict) and overrides.get("sd_vae") is not None and data.get("sd_vae") is None \
            and "sd_vae" in fields:
        data["sd_vae"] = overrides["sd_vae"]  # checked against the listed VAEs by the studio, before queueing
    for name in ("randn_source", "eta_noise_seed_delta"):  # the request's own field wins, as for sd_vae
        if isinstance(overrides, dict) and overrides.get(name) not in (None, "") and data.get(name) in (None, "") \
                and name in fields:
            data[name] = overrides[name]  # validated with the request (CPU/GPU/NV; 0..2**32-1)
    if isinstance(overrides, dict) and data.get("eta") in (None, "") and "eta" in fields:
        sampler = data.get("sampler_name") or fields["sampler_name"].default
        option = samplers.eta_option(str(sampler)) if isinstance(sampler, str) else "eta_ancestral"
        if overrides.get(option) not in (None, ""):  # eta_ancestral or eta_ddim, by the sampler's kind (A1111)
            data["eta"] = overrides[option]
    for name in ("sgm_noise_multiplier", "always_discard_next_to_last_sigma"):
        if isinstance(overrides, dict) and overrides.get(name) is not None and data.get(name) is None \
                and name in fields:
            data[name] = overrides[name]
    warnings = []
    blur_xy = [v for v in (data.get("mask_blur_x"), data.get("mask_blur_y")) if type(v) is int]
    if mode == "img2img" and data.get("mask_blur") is None and blur_xy:  # A1111: mask_blur sets both axes
        data["mask_blur"] = max(blur_xy)
        if len(set(blur_xy)) > 1:
            warnings.append(f"mask_blur_x/mask_blur_y differ: one blur for both axes, mask_blur={max(blur_xy)}")
    scale_to = mode.startswith("extra-") and data.get("resize_mode") in (1, "1")
    if mode in ("txt2img", "img2img", "outpaint"):  # ControlNet units come as the A1111 extension sends them
        if data.pop("controlnet", None) is not None:
            warnings.append("controlnet ignored: send units in alwayson_scripts.controlnet.args")
        data["controlnet"] = units_from_request(data.get("alwayson_scripts"), warnings)
    if mode.startswith("extra-"):  # A1111: resize_mode 0 ignores the w/h fields, 1 ignores the factor
        if scale_to:
            data.pop("upscaling_resize", None)
        else:
            data.update(upscaling_resize_w=0, upscaling_resize_h=0)
    try:
        req = Studio.validate(cls, data)
    except BadRequest as e:
        raise ApiError(422, "ValidationError", str(e)) from None

    warnings += [f"{name}={getattr(req, name)!r} ignored: {why}"
                 for name, (used, why) in _UNSUPPORTED[mode].items() if used(getattr(req, name))]
    if scale_to:
        if not (req.upscaling_resize_w or req.upscaling_resize_h):
            raise ApiError(422, "ValidationError", "upscaling_resize_w/upscaling_resize_h: resize_mode 1 (scale to) "
                                                   "needs a width and/or a height above 0")
        if req.upscaling_resize_w and req.upscaling_resize_h and not req.upscaling_crop:
            warnings.append("upscaling_crop=False ignored: the result is always cropped to fit both sides")
    overrides = getattr(req, "override_settings", {})
    if other := sorted(set(overrides) - _OVERRIDES):
        warnings.append(f"override_settings ignored: {', '.join(other)}")
    if unknown := sorted(set(body) - set(fields) - _SILENT[mode] - {"controlnet"}):
        warnings.append(f"unknown fields ignored: {', '.join(unknown)}")
    model = overrides.get("sd_model_checkpoint") or getattr(req, "sd_model_checkpoint", None) or None
    return req, (str(model) if model else None), warnings


# ----------------------------------------------------------------------------------------------
# Helpers


def _find_model(studio: Studio, name: str) -> Any:
    try:
        return studio.find_model(name)
    except BadRequest as e:
        raise ApiError(404, "ModelNotFound", str(e)) from None


def _find_vae(studio: Studio, name: Any) -> str:
    try:
        return studio.check_vae(name)
    except BadRequest as e:
        raise ApiError(404, "VaeNotFound", str(e)) from None


def apply_request_styles(studio: Studio, req: Any, params: dict[str, Any]) -> None:
    """The request's `styles` (saved style names) applied to params' prompt and negative prompt, in order, as
    A1111 does before a job runs (`{prompt}` placeholder honoured; hires prompts are left as sent). An unknown
    name answers 400 naming it and listing the saved styles."""
    if not req.styles:
        return
    try:
        styles = studio.styles.pick(req.styles)
    except UnknownStyle as e:
        raise ApiError(400, "UnknownStyle", str(e)) from None
    params["prompt"], params["negative_prompt"] = apply_styles(params["prompt"], params["negative_prompt"], styles)


def run_generation(submit: Callable[[], Any], req: Any, warnings: list[str]) -> dict[str, Any]:
    """Submit a generation job (txt2img, img2img, inpaint, sd-upscale), wait for it and shape A1111's answer:
    {"images": [base64 PNG with its parameters chunk], "parameters": request, "info": JSON string}. The info
    holds `warnings`: the request's and the engine's (e.g. a resized mask), and `job_id`: the job's id in the queue
    (GET /studio/v1/queue; ids grow in arrival order)."""
    job = submit_job(submit)
    events = wait_job(job)
    last = events[-1]
    if last.kind is EventKind.FINISHED:
        result = last.result
        images, texts, info = result.images, result.infotexts, a1111_info(result)
        maps = detected_maps(result)
        images, texts = [*images, *maps], [*texts, *[""] * len(maps)]
        warnings = [*warnings, *getattr(result, "warnings", [])]
    else:  # interrupted: what was finished so far, as A1111 does
        done = [ev for ev in events if ev.kind is EventKind.IMAGE]
        images = [ev.image for ev in done]
        texts = [(ev.result or {}).get("infotext", "") for ev in done]
        seeds = [(ev.result or {}).get("seed") for ev in done]
        info = {"prompt": req.prompt, "negative_prompt": req.negative_prompt, "seed": seeds[0] if seeds else req.seed,
                "all_seeds": seeds, "infotexts": texts, "steps": req.steps, "sampler_name": req.sampler_name,
                "scheduler": req.scheduler, "cfg_scale": req.cfg_scale,
                "width": images[0].width if images else getattr(req, "width", None),
                "height": images[0].height if images else getattr(req, "height", None),
                "denoising_strength": getattr(req, "denoising_strength", 0), "interrupted": True}
    if images and info.get("width") is None:  # jobs whose parameters have no size (sd-upscale)
        info.update(width=images[0].width, height=images[0].height)
    info.update(warnings=warnings, job_id=job.id)
    return {"images": [encode_png(im, t) for im, t in zip(images, texts)] if req.send_images else [],
            "parameters": req.model_dump(), "info": json.dumps(info)}


def run_extras(submit: Callable[[], Any], warnings: list[str]) -> tuple[list[str], str]:
    """Submit an extras job, wait for it -> (base64 PNGs with their parameters chunks, html_info). A1111's
    html_info is the last image's infotext as HTML; our warnings follow it (extras have no info JSON)."""
    events = wait_job(submit_job(submit))
    last = events[-1]
    if last.kind is EventKind.FINISHED:
        images, texts = last.result.images, last.result.infotexts
        warnings = [*warnings, *getattr(last.result, "warnings", [])]
    else:  # interrupted: the images finished so far
        done = [ev for ev in events if ev.kind is EventKind.IMAGE]
        images, texts = [ev.image for ev in done], [(ev.result or {}).get("infotext", "") for ev in done]
        warnings = [*warnings, f"interrupted after {len(images)} image(s)"]
    lines = [*(texts[-1].splitlines() if texts else []), *(f"Warning: {w}" for w in warnings)]
    info = "<p>" + "<br>\n".join(html.escape(line) for line in lines) + "</p>"
    return [encode_png(im, t) for im, t in zip(images, texts)], info


def _native_scale(name: str) -> int | None:
    """An upscaler model's factor from its file name ("4x-UltraSharp", "ESRGAN_4x", "RealESRGAN_x4plus"),
    without loading it; None when the name does not tell."""
    m = re.search(r"(?:^|[_\- .])([1-8])x", name, re.I) or re.search(r"x([1-8])(?:plus|$|[_\- .])", name, re.I)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------------------------
# Endpoints


WAITING_THREADS = 1000  # requests that may wait for their jobs at once (Starlette's default pool: 40)


@asynccontextmanager
async def _waiting_threads(app: Any) -> AsyncIterator[None]:
    """The routes are plain functions, run in Starlette's worker threads, and a generation request holds its
    thread while its job waits in the queue and runs. With the default 40 threads the 41st waiting request would
    not even be queued until one ended, and /progress, /interrupt and the queue listing would stall meanwhile.
    A waiting thread is idle (it blocks on its job's events), so allow many."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = WAITING_THREADS
    yield


def build_api(studio: Studio, auth: tuple[str, str] | None = None) -> APIRouter:
    deps = []
    if auth:
        basic = HTTPBasic(auto_error=False)

        def check_auth(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
            ok = credentials is not None and (
                secrets.compare_digest(credentials.username.encode(), auth[0].encode())
                & secrets.compare_digest(credentials.password.encode(), auth[1].encode()))
            if not ok:
                raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

        deps.append(Depends(check_auth))
    api = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"], dependencies=deps, route_class=Route, responses=ERRORS)
    own = APIRouter(prefix="/studio/v1", tags=["Studio API"], dependencies=deps, route_class=Route, responses=ERRORS)
    doc = body_doc

    def model_name(name: str | None) -> str | None:
        return _find_model(studio, name).name if name else None

    @api.post("/txt2img", openapi_extra=doc(Txt2ImgRequest))
    def txt2img(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        req, model, warnings = parse_request(body, "txt2img")
        for w in warnings:
            log.warning("txt2img: %s", w)
        model = model_name(model)
        params = dict(req.model_dump(include=set(Txt2ImgParams.model_fields)), controlnet=req.controlnet)
        apply_request_styles(studio, req, params)
        if is_xyz(req.script_name):  # A1111's X/Y/Z plot script: a sweep, answered with the grid (and cells)
            return run_xyz(studio, req, params, model, warnings, owner=client_id(request))
        typed = Txt2ImgParams.model_construct(**params)  # validated once, as the request; not again
        return run_generation(lambda: studio.submit_txt2img(typed, model=model, owner=client_id(request)),
                              req, warnings)

    def sweep_params(body: Any) -> tuple[Any, dict[str, Any], str | None, list[str]]:
        """A sweep's base parameters: a txt2img body read as POST /txt2img reads it (styles applied)."""
        req, model, warnings = parse_request(body, "txt2img")
        params = dict(req.model_dump(include=set(Txt2ImgParams.model_fields)), controlnet=req.controlnet)
        apply_request_styles(studio, req, params)
        return req, params, model_name(model), warnings

    @api.post("/img2img", openapi_extra=doc(Img2ImgRequest))
    def img2img(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """img2img, or inpaint when `mask` is given. `parameters` echoes the request with init_images and mask
        set to null unless include_init_images is true (A1111 does the same)."""
        req, model, warnings = parse_request(body, "img2img")
        if not req.init_images:
            raise ApiError(422, "ValidationError", "init_images: at least one base64-encoded image is required")
        image = decode_image(req.init_images[0], "init_images[0]", MAX_INPUT_PIXELS)
        if len(req.init_images) > 1:
            warnings.append(f"init_images: {len(req.init_images)} images sent, only the first is used")
        mask = decode_image(req.mask, "mask", MAX_INPUT_PIXELS) if req.mask else None
        for w in warnings:
            log.warning("img2img: %s", w)
        model = model_name(model)
        params = dict(req.model_dump(include=set(Img2ImgParams.model_fields)), controlnet=req.controlnet)
        apply_request_styles(studio, req, params)
        if is_outpaint(req.script_name):  # A1111's outpainting scripts (ui/api_outpaint.py)
            if mask is not None:
                warnings.append("mask ignored: the outpainting scripts make their own")
            try:
                outpaint = studio.parse_outpaint({**params, **script_fields(req.script_name, req.script_args)})
            except BadRequest as e:
                raise ApiError(422, "ValidationError", str(e)) from None
            answer = run_generation(lambda: studio.submit_outpaint(outpaint, image, model=model,
                                                                   owner=client_id(request)), req, warnings)
            if not req.include_init_images:
                answer["parameters"].update(init_images=None, mask=None)
            return answer
        typed = Img2ImgParams.model_construct(**params)  # validated once, as the request; not again
        answer = run_generation(
            lambda: studio.submit_img2img(typed, image, mask, model=model, owner=client_id(request)), req, warnings)
        if not req.include_init_images:
            answer["parameters"].update(init_images=None, mask=None)
        return answer

    @api.get("/prompt-styles")
    def prompt_styles() -> list[dict[str, str]]:
        """The saved styles (styles.csv), as A1111 answers them."""
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in studio.styles.list()]

    @api.get("/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return [{"title": m.title, "model_name": m.model_name, "hash": m.short_hash, "sha256": m.sha256,
                 "filename": str(m.path) if m.path else m.hub_id, "config": None} for m in studio.models()]

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        studio.refresh_models()

    @own.get("/first-run")
    def first_run(model: str | None = None) -> dict[str, Any]:
        """What the first Generate with `model` (default: the current one) involves: for a hub id not downloaded
        yet, the download ("download": {"bytes", "size", "files", "error"}: exactly the files the loader fetches,
        sizes from the Hub), or offline, where to put a checkpoint ("checkpoints_dir", "accepted"); "notice" is
        the sentence the UI shows ("" when there is nothing to say); "recommended" the hub id that suits this
        machine. 404 for an unknown model."""
        try:
            return studio.first_run(model or None)
        except BadRequest as e:
            raise ApiError(404, "ModelNotFound", str(e)) from None

    @api.get("/loras")
    def loras() -> list[dict[str, Any]]:
        """A1111's LoRA list (name, alias, path, metadata), plus family, formats and the card's preview file."""
        return [i.to_dict() for i in studio.lora_list()]

    @api.post("/refresh-loras")
    def refresh_loras() -> None:
        studio.lora_list(refresh=True)

    @api.get("/embeddings")
    def embeddings() -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's textual-inversion list for the current checkpoint: "loaded" and "skipped" (with a "reason")."""
        return studio.embeddings()

    @api.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        studio.refresh_embeddings()

    @api.get("/sd-vae")
    def sd_vae() -> list[dict[str, str]]:
        """The VAE files (A1111's list: models/VAE, or --vae-dir, and NAME.vae.* files among the checkpoints):
        `model_name` is what sd_vae takes (besides Automatic and None), `filename` the full path."""
        return [v.as_dict() for v in studio.vae_list()]

    @api.post("/refresh-vae")
    def refresh_vae() -> None:
        """Scan the VAE folders again."""
        studio.vae_list(refresh=True)

    @api.get("/samplers")
    def list_samplers() -> list[dict[str, Any]]:
        return samplers.a1111_samplers()

    @api.get("/schedulers")
    def list_schedulers() -> list[dict[str, Any]]:
        return samplers.a1111_schedulers()

    @api.get("/options")
    def get_options() -> dict[str, Any]:
        return studio.options()

    @api.post("/options", openapi_extra=doc(OptionsUpdate))
    def set_options(body: Any = Depends(json_body)) -> bool:
        if not isinstance(body, dict):
            raise ApiError(422, "ValidationError", "body: expected a JSON object of option names and values")
        if body.get("sd_model_checkpoint"):
            body["sd_model_checkpoint"] = _find_model(studio, str(body["sd_model_checkpoint"])).name
        if "sd_vae" in body:
            body["sd_vae"] = _find_vae(studio, body["sd_vae"])
        try:  # randn_source CPU/GPU/NV (A1111 clients send "GPU"), eta_noise_seed_delta 0..2**32-1
            body = studio.check_noise_options(body)
        except BadRequest as e:
            raise ApiError(422, "ValidationError", str(e)) from None
        job = submit_job(lambda: studio.set_options(body))
        if job is not None:
            wait_job(job)  # the previous model stays selected when this load fails
        return True

    # -- the queue: each client (`client_id`: X-Client-Id header, else host) sees and stops its own jobs --------
    @api.get("/progress")
    def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
        """A1111's answer about the caller's job: running (progress, ETA, live preview) or queued (progress 0,
        textinfo "Queued: N job(s) ahead", `queue_position` N). A caller with no job sees the running job, without
        its preview (that goes to its owner only), and `queue_position` null. `state.job_count`: all jobs waiting
        or running."""
        p = studio.progress(client_id(request))
        image = p.get("current_image")
        p["current_image"] = encode_png(image) if image is not None and not skip_current_image else None
        return p

    @api.post("/interrupt")
    def interrupt(request: Request) -> dict[str, bool]:
        """Stop the caller's running job (the images finished so far are answered to its request, as in A1111);
        when it has none running, cancel the first of its queued jobs. Other clients' jobs are never touched: a
        caller with nothing to stop gets {"interrupted": false} (still 200, as A1111's answer to an idle server).
        One call stops one job; DELETE /studio/v1/queue/{id} cancels a given one."""
        return {"interrupted": studio.interrupt(client_id(request))}

    @api.post("/skip")
    def skip(request: Request) -> dict[str, bool]:
        """Abandon the current image of the caller's running job and go on with its next one; {"skipped": false}
        when the caller has no job running (queued jobs have nothing to skip)."""
        return {"skipped": studio.skip(client_id(request))}

    @own.get("/queue")
    def queue(request: Request) -> dict[str, Any]:
        """The caller's jobs still running or queued, in running order: {"queue_length": all clients' jobs,
        "jobs": [{"id", "kind", "status": "running" | "queued", "position": jobs ahead (0 = running),
        "queued_at", "started_at"}]}. Nothing about other clients' jobs beyond their number."""
        return studio.queue_of(client_id(request))

    @own.delete("/queue/{job_id}")
    def cancel_job(request: Request, job_id: int) -> dict[str, bool]:
        """Cancel one of the caller's jobs, queued or running (a running one answers its request with the images
        finished so far). 404 when the caller has no such job still queued or running."""
        if not studio.cancel(job_id, client_id(request)):
            raise ApiError(404, "NotFound", f"job {job_id}: no such job of yours is queued or running")
        return {"interrupted": True}

    @api.post("/png-info", openapi_extra=doc(PngInfoRequest))
    def png_info(body: Any = Depends(json_body)) -> dict[str, Any]:
        image = decode_image(body.get("image") if isinstance(body, dict) else None)
        info = studio.png_info(image)
        info["items"] = {k: v for k, v in info["items"].items() if k != "parameters"}
        return info

    @api.get("/memory")
    def memory() -> dict[str, Any]:
        return studio.memory()

    # -- upscaling ------------------------------------------------------------------------------
    @api.get("/upscalers")
    def list_upscalers() -> list[dict[str, Any]]:
        from extensions import upscalers  # no torch import; models are listed, not loaded

        return [{"name": u.name, "model_name": u.name if path else None, "model_path": str(path) if path else None,
                 "model_url": None, "scale": _native_scale(u.name) if path else None}
                for u in upscalers.all_upscalers(studio.settings.models_dir) for path in [getattr(u, "path", None)]]

    @api.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, str]]:
        return [{"name": name} for name in LATENT_UPSCALERS]

    def extras(request: Request, mode: str, req: Any, images: list[tuple[str, Any]],
               warnings: list[str]) -> tuple[list[str], str]:
        for w in warnings:
            log.warning("%s: %s", mode, w)
        params = req.model_dump(include=set(ExtrasParams.model_fields))
        return run_extras(lambda: studio.submit_extras(params, images, owner=client_id(request)), warnings)

    @api.post("/extra-single-image", openapi_extra=doc(ExtrasSingleRequest))
    def extra_single_image(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """Upscale one image (A1111 extras). Face restoration fields are accepted, warned about in html_info."""
        req, _, warnings = parse_request(body, "extra-single-image")
        image = decode_image(req.image, "image", MAX_INPUT_PIXELS)
        images, info = extras(request, "extra-single-image", req, [("image", image)], warnings)
        return {"html_info": info, "image": images[0] if images else None}

    @api.post("/extra-batch-images", openapi_extra=doc(ExtrasBatchRequest))
    def extra_batch_images(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """Upscale several images: imageList = [{"data": base64, "name": "a.png"}]; saved to outputs/extras."""
        req, _, warnings = parse_request(body, "extra-batch-images")
        if not req.imageList:
            raise ApiError(422, "ValidationError", "imageList: at least one {\"data\": base64, \"name\": ...} "
                                                   "image is required")
        images = []
        for i, item in enumerate(req.imageList):
            if not isinstance(item, dict):
                raise ApiError(400, "BadImage", f"imageList[{i}]: expected an object {{\"data\": base64, "
                                                f"\"name\": ...}}")
            image = decode_image(item.get("data"), f"imageList[{i}].data", MAX_INPUT_PIXELS)
            images.append((str(item.get("name") or f"image {i + 1}"), image))
        encoded, info = extras(request, "extra-batch-images", req, images, warnings)
        return {"html_info": info, "images": encoded}

    def one_image(request: Request, body: Any, mode: str, fields: Any, submit: Callable[..., Any]) -> dict[str, Any]:
        """A studio route over one uploaded `image` (sd-upscale, hires-fix): validated by `parse_request(body,
        mode)`, `fields` passed to `submit(params, image, model=, owner=)`; answers like img2img with the image left
        out of `parameters`."""
        req, model, warnings = parse_request(body, mode)
        image = decode_image(req.image, "image", MAX_INPUT_PIXELS)
        for w in warnings:
            log.warning("%s: %s", mode, w)
        model = model_name(model)
        params = req.model_dump(include=set(fields))
        answer = run_generation(lambda: submit(params, image, model=model, owner=client_id(request)), req, warnings)
        answer["parameters"]["image"] = None
        return answer

    @own.post("/sd-upscale", openapi_extra=doc(SdUpscaleRequest))
    def sd_upscale(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """The tiled SD upscale (A1111's "SD upscale" / "Ultimate SD upscale" img2img scripts, with named
        fields instead of script_args). Answers like img2img; `parameters` echoes the request, image null."""
        return one_image(request, body, "sd-upscale", SdUpscaleParams.model_fields, studio.submit_sd_upscale)

    @own.post("/outpaint", openapi_extra=doc(OutpaintRequest))
    def outpaint(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """Outpainting (A1111's "Outpainting mk2" / "Poor man's outpainting", with readable fields): `image`
        extended by left/right/up/down px; the input's pixels stay identical. Answers like img2img, image null."""
        try:
            req, model, warnings = parse_request(readable_body(body), "outpaint")
        except ApiError as e:
            raise ApiError(e.status, e.error, readable_message(e.detail, body)) from None
        image = decode_image(req.image, "image", MAX_INPUT_PIXELS)
        params = dict(req.model_dump(include=set(OutpaintParams.model_fields)), controlnet=req.controlnet)
        apply_request_styles(studio, req, params)
        try:
            typed = studio.parse_outpaint(params)
        except BadRequest as e:
            raise ApiError(422, "ValidationError", readable_message(str(e), body)) from None
        model = model_name(model)
        try:
            answer = run_generation(lambda: studio.submit_outpaint(typed, image, model=model,
                                                                   owner=client_id(request)), req, warnings)
        except ApiError as e:
            raise ApiError(e.status, e.error, readable_message(e.detail, body)) from None
        answer["parameters"]["image"] = None
        return answer

    @own.post("/hires-fix", openapi_extra=doc(HiresFixRequest))
    def hires_fix(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """Finalize a chosen image (the guided workflow's last step): answers like txt2img, image null."""
        return one_image(request, body, "hires-fix", Txt2ImgParams.model_fields, studio.submit_hires_fix)

    root = APIRouter(lifespan=_waiting_threads)
    root.include_router(api)
    root.include_router(own)
    root.include_router(build_controlnet_api(studio, deps))
    root.include_router(build_sweep_api(studio, deps, sweep_params, Txt2ImgRequest))
    root.include_router(build_advisor_api(studio, deps))
    root.include_router(build_zoom_api(studio, deps))
    return root
