"""/openapi.json tells the truth: schemathesis generates requests from the real server's schema and sends them.

Every operation, with data the schema calls valid and data it calls invalid: never a server error (5xx). The fast
operations, with data the schema calls valid: accepted (`positive_data_acceptance`: 2xx, or 404 for a name that
is not there). What no static schema can know is filled in before sending: images (any base64 string is
schema-valid, only real image data decodes), names that exist only at run time (saved styles, checkpoints,
upscaler and ControlNet models) and sweep axis values. Generation requests are cut to 64x64 pixels, 1-2 steps and
one image before they are sent, so jobs stay cheap on the CPU. derandomized: the same cases every run.
Plain checks besides: every `$ref` resolves, and the txt2img schema carries the ParamSpecs' limits and choices.
"""

from __future__ import annotations

import base64
import io
import shutil
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pipelines.params import samplers
from pipelines.params.specs import PARAMS
from pipelines.sweep.axes import axis_type
from tests.conftest import Server

pytestmark = pytest.mark.server

T = 60  # seconds; every HTTP call is bounded
MODEL = "tiny-sd15"
# Generation operations: their valid cases run real jobs (made tiny by `cheap`).
GENERATION = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/studio/v1/hires-fix", "/studio/v1/sd-upscale",
              "/studio/v1/sweep", "/studio/v1/zoom", "/studio/v1/outpaint")
# Cases per operation. The coverage phase (schemathesis' boundary values and one-violation cases) runs on the fast
# operations only: on the generation ones its hundreds of cases would cost minutes of jobs.
ANY_EXAMPLES, VALID_EXAMPLES = 6, 10


def _runs(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _png(size: int = 16) -> str:
    info = PngInfo()
    info.add_text("parameters", "a cube\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64")
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 140, 200)).save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


PNG = _png()


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / MODEL)
    with Server(root / "models", root / "outputs", "--api", "--nowebui", "--ckpt", MODEL) as s:
        yield s


@pytest.fixture(scope="module")
def openapi(server) -> dict[str, Any]:
    r = requests.get(server.url + "/openapi.json", timeout=T)
    assert r.status_code == 200, r.text
    return r.json()


def _config(mode: str, max_examples: int, coverage: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "generation": {"max-examples": max_examples, "mode": mode, "deterministic": True},
        "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": coverage}},
        "request-timeout": T,
    })


@pytest.fixture(scope="module")
def any_data_schema(server):
    """Every operation; valid and invalid data."""
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=_config("all", ANY_EXAMPLES, coverage=False), timeout=T)


@pytest.fixture(scope="module")
def valid_data_schema(server):
    """The operations that run no generation job; valid data only."""
    config = _config("positive", VALID_EXAMPLES, coverage=True)
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=config, timeout=T)


# -- filling in what the schema cannot know ----------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A number, also one sent as a numeric string (validation coerces those); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _cap(body: dict[str, Any], field: str, cap: float) -> None:
    """Lower a valid but costly value to `cap`; values outside the spec's limits stay, to be refused."""
    v = _number(body.get(field))
    spec = PARAMS.get(field)
    lo, hi = (spec.minimum, spec.maximum) if spec else (None, None)
    if v is not None and v > cap and (hi is None or v <= hi) and (lo is None or v >= lo):
        body[field] = type(body[field])(cap) if not isinstance(body[field], str) else str(cap)


def cheap(body: Any) -> Any:
    """A generation request made tiny: 64x64, 1-2 steps, one image, small upscales. Invalid values stay."""
    if not isinstance(body, dict):
        return body
    for field, cap in (("width", 64), ("height", 64), ("steps", 2), ("batch_size", 1), ("n_iter", 1),
                       ("hr_second_pass_steps", 1), ("hr_scale", 1.5), ("hr_resize_x", 96), ("hr_resize_y", 96),
                       ("upscaling_resize", 2), ("upscaling_resize_w", 128), ("upscaling_resize_h", 128),
                       ("tile_width", 64), ("tile_height", 64), ("tile_padding", 8),
                       ("seams_fix_width", 16), ("seams_fix_padding", 8), ("zoom_keyframes", 2),
                       ("zoom_frames_per_keyframe", 2), ("outpaint_left", 16), ("outpaint_right", 16),
                       ("outpaint_up", 16), ("outpaint_down", 16), ("left", 16), ("right", 16), ("up", 16),
                       ("down", 16)):
        _cap(body, field, cap)
    if isinstance(body.get("params"), dict):  # a sweep's txt2img fields, and one small axis
        cheap(body["params"])
        if isinstance(body.get("axes"), list):
            body["axes"] = [{"type": "Steps", "values": "1, 2"}]
    if isinstance(body.get("script_args"), list) and str(body.get("script_name", "")).lower().strip() in (
            "x/y/z plot", "xyz plot", "x/y/z_plot", "xyz_plot"):
        body["script_args"] = ["Steps", "1, 2"]
    return body


def _images(body: dict[str, Any]) -> None:
    """Real image data wherever the schema asks for an image string."""
    for field in ("image", "mask"):
        if isinstance(body.get(field), str):
            body[field] = PNG
    for field in ("init_images", "controlnet_input_images"):
        if isinstance(body.get(field), list):
            body[field] = [PNG for _ in body[field]]
    if isinstance(body.get("imageList"), list):
        body["imageList"] = [{**item, "data": PNG} if isinstance(item, dict) else item for item in body["imageList"]]


_UPSCALERS = ("None", "Lanczos", "Nearest")


def _valid_axis(axis: dict[str, Any], params: dict[str, Any], used: set[str]) -> dict[str, Any]:
    """An axis of the same type with values that type takes (a free-text mini-language the schema only describes)."""
    t = axis_type(axis["type"])
    if t.name in used or t.needs == "controlnet":
        return {"type": "Nothing", "values": ""}
    used.add(t.name)
    if t.needs == "hires":
        params["enable_hr"] = True
    if t.name == "Var. seed":
        params["subseed_strength"] = 0.5
    if t.kind == "prompt_sr":
        params["prompt"] = "a cat"
        return {"type": axis["type"], "values": "cat, dog"}
    values = {"none": "", "size": "64x64", "checkpoint": MODEL, "choice": "Euler"}.get(t.kind)
    if t.name == "Schedule type":
        values = "Automatic"
    elif t.name == "Hires upscaler":
        values = "Latent"
    elif t.name == "VAE":
        values = "None"  # the checkpoint's own VAE: always a valid choice
    elif values is None:
        values = str(t.spec.minimum if t.spec and t.spec.minimum is not None else 1)
    return {"type": axis["type"], "values": values}


def valid(path: str, body: Any) -> Any:
    """Schema-valid data made valid for this server: images decode, names exist, sweep axes parse."""
    if not isinstance(body, dict):
        return body
    _images(body)
    if path == "/sdapi/v1/extra-single-image" or path == "/sdapi/v1/extra-batch-images":
        for field in ("upscaler_1", "upscaler_2"):
            if field in body and body[field] not in _UPSCALERS:
                body[field] = "Lanczos"
        for field in ("upscaling_resize_w", "upscaling_resize_h"):
            if isinstance(body.get(field), int) and body[field] > 64:
                body[field] = 64
    if path == "/controlnet/detect" and body.get("controlnet_module") not in ("none", "canny"):
        body["controlnet_module"] = "canny"  # the others need annotator weights, not downloadable here
    if path == "/advisor/check" and isinstance(body.get("model"), str):
        body["model"] = MODEL
    if path == "/studio/v1/sweep/plan":
        params = body.setdefault("params", {})
        cheap(params)
        params.update(styles=[], alwayson_scripts={})
        params.pop("override_settings", None)
        if params.get("hr_upscaler") is not None:
            params["hr_upscaler"] = "Latent"
        if isinstance(body.get("model"), str):
            body["model"] = MODEL
        used: set[str] = set()
        body["axes"] = [_valid_axis(a, params, used) for a in body["axes"]]
        if all(a["type"] == "Nothing" for a in body["axes"]):
            body["axes"][0] = {"type": "Steps", "values": "1, 2"}
    return body


# -- the schemathesis runs -----------------------------------------------------------------------------------

any_data = schemathesis.pytest.from_fixture("any_data_schema")
valid_data = schemathesis.pytest.from_fixture("valid_data_schema").exclude(path=list(GENERATION))


@_runs(ANY_EXAMPLES)
@any_data.parametrize()
def test_no_server_error(case):
    """Valid and invalid data alike: a 4xx with its reason, never a 5xx (valid generation requests run tiny)."""
    if case.path in GENERATION:
        case.body = cheap(case.body)
        if case.path == "/studio/v1/zoom" and isinstance(case.body, dict):  # its defaults are minutes of work
            for field, value in (("steps", 2), ("zoom_keyframes", 2), ("zoom_frames_per_keyframe", 2), ("width", 64),
                                 ("height", 64)):
                if case.body.get(field) is None:
                    case.body[field] = value
        if case.meta and case.meta.generation.mode.is_positive and isinstance(case.body, dict):
            _images(case.body)
    case.call_and_validate(checks=[not_a_server_error])


@_runs(VALID_EXAMPLES)
@valid_data.parametrize()
def test_valid_data_is_accepted(case):
    case.body = valid(case.path, case.body)
    case.call_and_validate(checks=[not_a_server_error, positive_data_acceptance])


# -- the schema itself -----------------------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [*([node["$ref"]] if isinstance(node.get("$ref"), str) else []),
                *(r for v in node.values() for r in _refs(v))]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _body_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    body = doc["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    return _resolve(doc, schema["$ref"]) if "$ref" in schema else schema


def test_every_ref_resolves(openapi):
    refs = _refs(openapi)
    assert "#/components/schemas/ControlNetUnitRequest" in refs and "#/components/schemas/AxisRequest" in refs
    for ref in refs:
        _resolve(openapi, ref)
    assert "$defs" not in str(openapi)


def test_request_bodies_are_required(openapi):
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                assert op["requestBody"].get("required") is True, f"{method.upper()} {path}"


def test_txt2img_schema_carries_the_specs(openapi):
    props = _body_schema(openapi, "/sdapi/v1/txt2img")["properties"]
    for name in ("steps", "cfg_scale", "batch_size", "n_iter", "clip_skip", "seed", "hr_scale", "denoising_strength"):
        spec = PARAMS[name]
        assert (props[name]["minimum"], props[name]["maximum"]) == (spec.minimum, spec.maximum), name
        assert props[name]["description"] == spec.description and props[name]["default"] == spec.default
    width = next(s for s in props["width"]["anyOf"] if s.get("type") == "integer")
    assert (width["minimum"], width["maximum"], width["multipleOf"]) == (
        PARAMS["width"].minimum, PARAMS["width"].maximum, PARAMS["width"].multiple_of)

    def names(field: str) -> list[str]:
        return next(s for s in props[field]["anyOf"] if s.get("type") == "string")["enum"]

    assert names("sampler_name") == PARAMS["sampler_name"].choices() == samplers.sampler_names()
    assert names("scheduler") == PARAMS["scheduler"].choices()
    assert "controlnet" not in props  # units come in alwayson_scripts.controlnet.args
    unit = openapi["components"]["schemas"]["ControlNetUnitRequest"]["properties"]
    assert (unit["weight"]["minimum"], unit["weight"]["maximum"]) == (0, 2)


def test_img2img_schema_limits(openapi):
    schema = _body_schema(openapi, "/sdapi/v1/img2img")
    assert "init_images" in schema["required"]
    props = schema["properties"]
    spec = PARAMS["denoising_strength"]
    assert (props["denoising_strength"]["minimum"], props["denoising_strength"]["maximum"]) == (spec.minimum,
                                                                                               spec.maximum)
    modes = next(s for s in props["resize_mode"]["anyOf"] if s.get("type") == "string")["enum"]
    assert modes == PARAMS["resize_mode"].choices()


def test_sampler_schedule_rules_match_the_api(server, openapi):
    """The schema's if/then rules say which schedule types a sampler refuses; the API refuses exactly those."""
    rules = _body_schema(openapi, "/sdapi/v1/txt2img")["allOf"]
    limited = {s: r["then"]["properties"]["scheduler"]["enum"] for r in rules
               for s in r["if"]["properties"].get("sampler_name", {}).get("enum", []) if isinstance(s, str)}
    assert limited and set(limited) < set(samplers.sampler_names())
    sampler = next(iter(limited))
    refused = next(s for s in samplers.schedule_names() if s not in limited[sampler])
    r = requests.post(server.url + "/studio/v1/sweep/plan", timeout=T, json={
        "params": {"sampler_name": sampler, "scheduler": refused, "width": 64, "height": 64},
        "axes": [{"type": "Steps", "values": "1, 2"}]})
    assert r.status_code == 422 and "not available" in r.json()["detail"], r.text
    ok = requests.post(server.url + "/studio/v1/sweep/plan", timeout=T, json={
        "params": {"sampler_name": sampler, "scheduler": limited[sampler][-1], "width": 64, "height": 64},
        "axes": [{"type": "Steps", "values": "1, 2"}]})
    assert ok.status_code == 200, ok.text
