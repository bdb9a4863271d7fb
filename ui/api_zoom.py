"""The infinite zoom over the API: `POST /studio/v1/zoom` (run it) and `POST /studio/v1/zoom/plan` (its cost,
nothing run). Pure Python: no torch import here (results are duck-typed).

The answer: {"video": base64 or null, "video_path", "video_format", "gif": base64 or null, "gif_path",
"keyframes": [base64 PNG with its parameters chunk...], "infotexts": [...], "info": {frames, width, height, fps,
cost, warnings, stopped, interrupted, job_id}}. An interrupted zoom answers the keyframes finished and their
video (info.interrupted true). `send_video: false` leaves the base64 files out (the paths are always given).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field, ValidationError, WithJsonSchema

from pipelines.jobs import EventKind
from pipelines.params.specs import ZoomParams
from pipelines.studio import MAX_INPUT_PIXELS, BadRequest, Studio, describe_validation
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


class ZoomRequest(ZoomParams):
    """POST /studio/v1/zoom: the zoom's parameters (the prompt may be a schedule "0: forest, 4: castle"), an
    optional starting image (none: keyframe 0 is a txt2img image) and an optional model."""

    model_config = ConfigDict(extra="forbid")
    schema_required: ClassVar[tuple[str, ...]] = ()

    image: Annotated[Any, WithJsonSchema({"anyOf": [IMAGE_SCHEMA, {"type": "null"}]})] = Field(
        None, description="keyframe 0 (fitted to width x height); null: a txt2img image")
    sd_model_checkpoint: str | None = Field(None, description="checkpoint; default: the current one")
    send_images: bool = Field(True, description="answer the keyframes as base64 PNGs")
    send_video: bool = Field(True, description="answer the video and the GIF as base64 (the paths always)")


def _b64(path: Any) -> str | None:
    return base64.b64encode(Path(path).read_bytes()).decode() if path else None


def build_zoom_api(studio: Studio, deps: list[Any]) -> APIRouter:
    own = APIRouter(prefix="/studio/v1", tags=["Studio API"], dependencies=deps, route_class=Route, responses=ERRORS)
    doc = body_doc(ZoomRequest)

    def parse(body: Any) -> tuple[ZoomRequest, Any, Any]:
        if not isinstance(body, dict):
            raise ApiError(422, "ValidationError", "body: expected a JSON object")
        data = {k: v for k, v in body.items() if v is not None or k in ("image", "sd_model_checkpoint")}
        try:
            req = ZoomRequest.model_validate(data)
        except ValidationError as e:
            raise ApiError(422, "ValidationError", describe_validation(e)) from None
        except ValueError as e:  # sampler / schedule type checks
            raise ApiError(422, "ValidationError", str(e)) from None
        params = ZoomParams.model_construct(**req.model_dump(include=set(ZoomParams.model_fields)))
        try:
            studio.parse_zoom(params)
        except BadRequest as e:
            raise ApiError(422, "ValidationError", str(e)) from None
        image = decode_image(req.image, "image", MAX_INPUT_PIXELS) if req.image else None
        return req, params, image

    @own.post("/zoom/plan", openapi_extra=doc)
    def plan(body: Any = Depends(json_body)) -> dict[str, Any]:
        """What a zoom would cost: keyframes, inpaint passes, denoising steps, frames, seconds; nothing runs."""
        req, params, image = parse(body)
        return studio.zoom_cost(params, image is not None)

    @own.post("/zoom", openapi_extra=doc)
    def run(request: Request, body: Any = Depends(json_body)) -> dict[str, Any]:
        """Run an infinite zoom: the video (MP4/WebM), an animated GIF and the keyframes with their infotexts,
        all saved under outputs/zoom/DAY too."""
        req, params, image = parse(body)
        model = None
        if req.sd_model_checkpoint:
            try:
                model = studio.find_model(req.sd_model_checkpoint).name
            except BadRequest as e:
                raise ApiError(404, "ModelNotFound", str(e)) from None
        job = submit_job(lambda: studio.submit_zoom(params, image, model=model, owner=client_id(request)))
        events = wait_job(job)
        result = events[-1].result if events[-1].kind is EventKind.FINISHED else job.details.get("zoom")
        if result is None:  # cancelled before keyframe 0 was done
            shown = [ev for ev in events if ev.kind is EventKind.IMAGE]
            return {"video": None, "video_path": None, "video_format": req.zoom_format, "gif": None, "gif_path": None,
                    "keyframes": [encode_png(ev.image, (ev.result or {}).get("infotext")) for ev in shown]
                    if req.send_images else [],
                    "infotexts": [(ev.result or {}).get("infotext", "") for ev in shown],
                    "info": {"interrupted": True, "stopped": "interrupted", "frames": 0, "job_id": job.id,
                             "warnings": []}}
        w, h = result.size
        return {
            "video": _b64(result.video) if req.send_video else None, "video_path": str(result.video),
            "video_format": req.zoom_format, "gif": _b64(result.gif) if req.send_video else None,
            "gif_path": str(result.gif),
            "keyframes": [encode_png(im, t) for im, t in zip(result.images, result.infotexts)] if req.send_images
            else [],
            "infotexts": list(result.infotexts),
            "info": {"frames": result.frames, "width": w, "height": h, "fps": req.zoom_fps,
                     "keyframes": len(result.images), "seeds": list(result.seeds), "cost": result.cost,
                     "denoising_steps": result.denoising_steps, "warnings": list(result.warnings),
                     "stopped": result.stopped, "interrupted": result.stopped == "interrupted", "job_id": job.id},
        }

    return own
