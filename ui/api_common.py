"""What every API route module shares: the error type and its JSON answer, image encoding and decoding,
and waiting on jobs. Pure Python: no torch import here."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import time
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, Field

from pipelines.jobs import EventKind, QueueFull
from pipelines.params.infotext import VERSION
from pipelines.studio import BadRequest

WAIT_S = 3600.0  # longest wait for one job event (model download, very long step); never forever
SCHEMA_REF = "#/components/schemas/{model}"  # where request models' nested models land in /openapi.json
IMAGE_SCHEMA: dict[str, Any] = {  # an image field of a request: base64 data, never a path or URL
    "type": "string", "contentEncoding": "base64", "contentMediaType": "image/*", "minLength": 1,
    "pattern": r"^\s*(data:[^,]*,)?[A-Za-z0-9+/]+={0,2}\s*$",
    "description": "base64-encoded PNG, JPEG or WEBP (a data: URL prefix is fine); paths and URLs are refused"}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


class Route(APIRoute):
    """Turns ApiError into its JSON answer (an APIRouter cannot register exception handlers)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def run(request: Request):
            try:
                return await handler(request)
            except ApiError as e:
                return e.response()

        return run


class ErrorAnswer(BaseModel):
    """What every refused request answers (4xx) and every failed job (5xx): the kind of error and why."""

    error: str = Field(description="the kind of error, e.g. ValidationError, BadImage, ModelNotFound")
    detail: str = Field(description="why, naming the field and its limit where one is at fault")


ERRORS: dict[int | str, dict[str, Any]] = {"4XX": {"model": ErrorAnswer, "description": "refused, with the reason"}}


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads its JSON body itself (`json_body`): the body is required and is
    `model` (its nested models' schemas are `#/components/schemas/...` refs; `install_openapi` puts them there)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema(ref_template=SCHEMA_REF)}}}}


def install_openapi(app: Any) -> None:
    """Make the app's /openapi.json self-contained: the request-body schemas routes attach by hand (`body_doc`)
    move into `components/schemas`, with the models nested in them, and the operations refer to them by `$ref`.
    Call once, after the API routes are included."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _hoist_body_schemas(base())  # base() builds the schema and caches it as app.openapi_schema
        return app.openapi_schema

    app.openapi = openapi


def _hoist_body_schemas(spec: dict[str, Any]) -> None:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})

    def add(name: str, schema: dict[str, Any]) -> None:
        if schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different request schemas are named {name!r}")

    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            content = (op.get("requestBody") or {}).get("content", {}) if isinstance(op, dict) else {}
            for media in content.values():
                schema = media.get("schema")
                if not isinstance(schema, dict) or "$ref" in schema:
                    continue
                for name, sub in schema.pop("$defs", {}).items():
                    add(name, sub)
                if "title" in schema:
                    add(schema["title"], schema)
                    media["schema"] = {"$ref": SCHEMA_REF.format(model=schema["title"])}


def encode_png(image: Any, parameters: str | None = None) -> str:
    pnginfo = None
    if parameters:
        pnginfo = PngInfo()
        pnginfo.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: Any, field: str = "image", max_pixels: int | None = None) -> Image.Image:
    """A base64 image (a data: URL prefix is fine) -> PIL image. 400 naming `field` when it is not one;
    413 when it has more than `max_pixels` (read from the header, before the pixels are decoded)."""
    if not isinstance(data, str) or not data.strip():
        raise ApiError(400, "BadImage", f"{field}: expected a base64-encoded image string")
    text = data.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if ":" in text or "\\" in text:  # never in base64: a URL ("file://", "http://") or a Windows path
        raise ApiError(400, "BadImage", f"{field}: expected base64 image data, not a URL or a file path (the API "
                                        "reads no files and fetches no URLs)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, "BadImage", f"{field}: invalid base64 ({e})") from None

    def too_large(size: str) -> ApiError:
        limit = f"; the limit is {max_pixels / 1e6:.1f} megapixels" if max_pixels else ""
        return ApiError(413, "ImageTooLarge", f"{field}: the image is {size}{limit}. Downscale it first.")

    unreadable = ApiError(400, "BadImage", f"{field}: {len(raw)} bytes that are not a readable image "
                                           "(expected PNG, JPEG or WEBP)")
    try:
        image = Image.open(io.BytesIO(raw))
        if max_pixels and image.width * image.height > max_pixels:
            raise too_large(f"{image.width}x{image.height}")
        image.load()
    except Image.DecompressionBombError:  # beyond PIL's own limit (about 179 megapixels)
        raise too_large("far too large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise unreadable from None
    return image


def job_error(job: Any) -> ApiError:
    """Map a failed job to a status: out of memory / bad checkpoint -> 4xx, anything else -> 500."""
    exc, message = job.exception, job.error or "job failed"
    if type(exc).__name__ == "OutOfMemory" or "out of memory" in message.lower():
        return ApiError(422, "OutOfMemory", message)
    if isinstance(exc, BadRequest):
        return ApiError(422, "BadRequest", message)
    if type(exc).__name__ == "AnnotatorMissing":  # preprocessor weights neither on disk nor downloadable
        return ApiError(424, "AnnotatorMissing", message)
    if type(exc).__name__ in ("LoadError", "NotAnUpscaler") or job.kind == "load-model":  # a bad model file
        return ApiError(422, "ModelLoadError", message)
    return ApiError(500, type(exc).__name__ if exc else "JobFailed", message)


def wait_job(job: Any) -> list[Any]:
    """Wait for a job's end; return its events (image events included). Raises ApiError on failure."""
    events = []
    try:
        for ev in job.events(timeout=WAIT_S):
            events.append(ev)
    except TimeoutError as e:
        raise ApiError(504, "Timeout", str(e)) from None
    if events[-1].kind is EventKind.FAILED:
        raise job_error(job)
    return events


def client_id(request: Request) -> str:
    """Who is asking, for the job queue: each client has its own cap on queued jobs, and its interrupt, skip,
    progress and queue listing are about its own jobs only.

    An `X-Client-Id` header names the client (any string up to 128 characters; scripts sharing one machine
    send one each to be told apart); without it, the client is its host address (behind a reverse proxy on
    the same machine, uvicorn takes it from X-Forwarded-For). The HTTP login is not used: there is one
    login, shared by everyone, so it tells no clients apart. This identifies, it does not authenticate: a
    client that sends another's id acts as that client (protect the server with --auth or --api-auth)."""
    named = request.headers.get("x-client-id", "").strip()
    if named:
        return "client:" + named[:128]
    return "host:" + (request.client.host if request.client else "unknown")


async def json_body(request: Request) -> Any:
    """The request body as JSON, whatever the content type says. 422 naming the problem when it is not JSON (NaN
    and Infinity included: they are not JSON numbers), is nested too deeply to read, or holds a string that is
    not valid Unicode (a lone surrogate escape such as "\\ud800", which no tokenizer or PNG chunk can take)."""
    raw = await request.body()
    try:
        body = json.loads(raw or b"null", parse_constant=_not_a_number, parse_float=_finite)
    except ValueError as e:
        raise ApiError(422, "JSONDecodeError", f"body: malformed JSON ({e})") from None
    except RecursionError:
        raise ApiError(422, "JSONDecodeError", "body: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):
        _check_unicode(body)
    return body


def _not_a_number(token: str) -> float:
    raise ValueError(f"{token} is not a JSON number")  # Python's json reads NaN and Infinity; JSON has neither


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token[:40]} is too large for a number")
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_unicode(body: Any) -> None:
    stack: list[tuple[str, Any]] = [("body", body)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())
            stack.extend((f"{where} key", k) for k in value)
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, "InvalidUnicode", f"{where[:200]}: not valid Unicode (a lone surrogate "
                                                      "escape such as \\ud800)") from None


def submit_job(submit: Callable[[], Any], status: int = 422, error: str = "BadRequest") -> Any:
    """Call a Studio submit_* function: a full queue answers 429, input it refuses `status` (422 by default)
    with its reason."""
    try:
        return submit()
    except QueueFull as e:
        raise ApiError(429, "QueueFull", str(e)) from None
    except BadRequest as e:
        raise ApiError(status, error, str(e)) from None


def a1111_info(result: Any) -> dict[str, Any]:
    """A1111's `info` object of a generation result (the API returns it JSON-encoded). A sweep's result shapes its
    own (pipelines/sweep/run.py)."""
    if hasattr(result, "info"):
        return result.info()
    p, seeds, subseeds = result.parameters, result.seeds, result.subseeds
    return {
        "prompt": p.get("prompt", ""), "all_prompts": [p.get("prompt", "")] * len(seeds),
        "negative_prompt": p.get("negative_prompt", ""),
        "all_negative_prompts": [p.get("negative_prompt", "")] * len(seeds),
        "seed": seeds[0] if seeds else p.get("seed"), "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else p.get("subseed"), "all_subseeds": subseeds,
        "subseed_strength": p.get("subseed_strength", 0), "width": p.get("width"), "height": p.get("height"),
        "sampler_name": p.get("sampler_name"), "scheduler": p.get("scheduler"), "cfg_scale": p.get("cfg_scale"),
        "steps": p.get("steps"), "batch_size": p.get("batch_size"), "n_iter": p.get("n_iter"),
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": result.model,
        "sd_model_hash": p.get("model_hash"), "sd_vae_name": getattr(result, "vae", None),
        "sd_vae_hash": getattr(result, "vae_hash", None),
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": p.get("denoising_strength", 0),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": result.infotexts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": p.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False, "version": VERSION,
    }
