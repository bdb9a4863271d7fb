"""The advisor over HTTP: `POST /advisor/check` (settings in, findings out) and `GET /advisor/rules`.

The body is the settings themselves, as a txt2img/img2img request would send them (A1111 field names; unknown
fields such as `send_images` are ignored), plus optionally `mode` ("txt2img", "img2img", "inpaint") and the
model (`model`, or `override_settings.sd_model_checkpoint` as A1111 clients send it). A `{"settings": {...}}`
wrapper is accepted too. The answer lists findings (errors first), the settings with every fix applied, and
the model context the advice was judged for.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from pipelines.advisor import rules as advisor
from pipelines.advisor.findings import MODES
from pipelines.studio import BadRequest, Studio
from ui.api_common import ERRORS, ApiError, Route, body_doc, json_body

_META = ("mode", "model", "sd_model_checkpoint", "override_settings", "settings")


class AdvisorCheckRequest(BaseModel):
    """The settings to check (txt2img / img2img fields, A1111 names; unknown fields are ignored), either as the
    body itself or under `settings`."""

    model_config = ConfigDict(extra="allow")

    mode: str | None = Field(None, description="default: img2img when init_images is given (inpaint with a mask), "
                                               "else txt2img", json_schema_extra={"enum": [*MODES, None]})
    model: str | None = Field(None, description="checkpoint the advice is for (default: the current one)")
    settings: dict[str, Any] | None = Field(None, description="the settings, when not given as the body itself")
    mask: Any = Field(None, description="with init_images, its presence selects inpaint (the image is not read)")
    init_images: Any = Field(None, description="its presence selects img2img (the images are not read)")


def _split(body: Any) -> tuple[dict[str, Any], str, str | None]:
    if not isinstance(body, dict):
        raise ApiError(422, "ValidationError", "body: expected a JSON object of settings")
    settings = body if body.get("settings") is None else body["settings"]  # null: as if absent
    if not isinstance(settings, dict):
        raise ApiError(422, "ValidationError", "settings: expected a JSON object")
    overrides = body.get("override_settings") or {}
    model = body.get("model") or body.get("sd_model_checkpoint") or (
        overrides.get("sd_model_checkpoint") if isinstance(overrides, dict) else None)
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "ValidationError", f"model: expected a checkpoint name, got {type(model).__name__}")
    mode = body.get("mode") or ("img2img" if "init_images" in body else "txt2img")
    if mode == "img2img" and body.get("mask"):
        mode = "inpaint"
    return {k: v for k, v in settings.items() if k not in _META}, str(mode), model


def build_advisor_api(studio: Studio, deps: list[Any]) -> APIRouter:
    router = APIRouter(prefix="/advisor", tags=["Advisor"], dependencies=deps, route_class=Route, responses=ERRORS)

    @router.post("/check", openapi_extra=body_doc(AdvisorCheckRequest))
    def check(body: Any = Depends(json_body)) -> dict[str, Any]:
        settings, mode, model = _split(body)
        try:
            ctx, findings = studio.advise(settings, mode, model)
        except BadRequest as e:
            raise ApiError(400, "BadRequest", str(e)) from None
        counts = {sev: sum(f.severity == sev for f in findings) for sev in advisor.SEVERITY_ORDER}
        return {
            "mode": mode,
            "context": {"family": ctx.family, "native": ctx.native, "distilled": ctx.distilled},
            "ok": not any(f.severity in ("error", "warning") for f in findings),
            "counts": counts,
            "findings": [f.as_dict() for f in findings],
            "fixed": advisor.apply_fixes(settings, findings),
        }

    @router.get("/rules")
    def rules() -> list[dict[str, Any]]:
        return [{"id": r.id, "title": r.title, "why": r.why, "modes": list(r.modes),
                 "example": {k: v for k, v in r.example.items() if not k.startswith("_")}} for r in advisor.RULES]

    return router
