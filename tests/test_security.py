"""Security defaults on the real server: loopback-only bind, the UI and API logins, the request size limit,
names that try to leave the models folder, pickles that carry code, and Gradio's file route.

One server is shared by the module, started with a UI login (--auth), a separate API login (--api-auth) and a
2 MB body limit. Its models folder holds the tiny SD 1.5 model, code-carrying pickles (a checkpoint, an ESRGAN
upscaler, a ControlNet) whose payload would create a marker file, and a symlink to a valid model kept OUTSIDE
the models folder. The owner's link is listed under its own name (shared model folders), but no other name
(relative, absolute, encoded, through the link) may select what lies outside.
Covered elsewhere: Settings defaults (127.0.0.1 unless --listen) in test_settings.py; the API under --auth
alone in test_api.py::test_auth; weights_only loading in test_discovery.py, test_controlnet_models.py and
test_upscalers.py (in-process); resolve_model_path in test_discovery.py.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests import tiny_upscalers
from tests.conftest import Server

pytestmark = pytest.mark.server  # the real app over HTTP

T = 120  # seconds; every HTTP call is bounded
UI_LOGIN, API_LOGIN = ("ui", "ui-secret"), ("api", "api-secret")
LIMIT_MB = 2


def png_b64(size: int = 64, noise: bool = False) -> str:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if noise else np.zeros((size, size, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def root(tiny_store, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("security")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copytree(tiny_store / "tiny-sd15", sd / "tiny-sd15")
    # a valid model outside models/: selecting it by any name would answer 200 instead of a refusal
    shutil.copytree(tiny_store / "tiny-sd15", root / "outside" / "tiny-outside")
    (sd / "linked").symlink_to(root / "outside" / "tiny-outside", target_is_directory=True)
    marker = root / "code-ran"
    for path in (sd / "evil.ckpt", sd.parent / "ESRGAN" / "evil.pth", sd.parent / "ControlNet" / "evil.pth"):
        tiny_upscalers.code_pickle(path, marker)  # unpickled unsafely, it would `touch` the marker
    return root


@pytest.fixture(scope="module")
def server(root):
    args = ("--api", "--ckpt", "tiny-sd15", "--auth", ":".join(UI_LOGIN), "--api-auth", ":".join(API_LOGIN),
            "--max-upload-mb", str(LIMIT_MB))
    with Server(root / "models", root / "outputs", *args) as server:
        yield server


def api(server, method: str, path: str, body=None, **kw) -> requests.Response:
    kw.setdefault("auth", API_LOGIN)
    if body is not None:
        kw["json"] = body
    return requests.request(method, server.url + path, timeout=T, **kw)


def ui_session(server) -> requests.Session:
    s = requests.Session()
    r = s.post(server.url + "/login", data=dict(zip(("username", "password"), UI_LOGIN)), timeout=T)
    assert r.status_code == 200, r.text
    return s


def assert_serving(server) -> None:
    r = api(server, "GET", "/sdapi/v1/options")
    assert r.status_code == 200 and r.json()["sd_model_checkpoint"].startswith("tiny-sd15"), r.text


# -- bind address -------------------------------------------------------------------------------------------


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port`, from the kernel's tables (Linux)."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if int(hexport, 16) != port or state != "0A":  # 0A = LISTEN
                continue
            raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))
            found.append(socket.inet_ntop(family, raw))
    return found


def test_binds_loopback_only(server):
    assert listening_addresses(server.port) == ["127.0.0.1"]
    assert f"on http://127.0.0.1:{server.port}" in server.log.read_text()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet is sent: just picks a route
        try:
            probe.connect(("192.0.2.1", 9))
            own_ip = probe.getsockname()[0]
        except OSError:
            own_ip = None  # no network interface besides loopback: the kernel table above is the check
    if own_ip and not own_ip.startswith("127."):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{own_ip}:{server.port}/", timeout=5)


# -- logins -------------------------------------------------------------------------------------------------


def test_api_needs_the_api_login(server):
    for auth in (None, UI_LOGIN, ("api", "wrong")):
        for method, path in (("GET", "/sdapi/v1/sd-models"), ("POST", "/sdapi/v1/txt2img"),
                             ("POST", "/sdapi/v1/interrupt"), ("POST", "/studio/v1/sweep/plan"),
                             ("GET", "/controlnet/model_list"), ("GET", "/sdapi/v1/upscalers")):
            r = requests.request(method, server.url + path, auth=auth, json={}, timeout=T)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), (auth, path, r.text)
    assert api(server, "GET", "/sdapi/v1/sd-models").status_code == 200


def test_ui_needs_the_ui_login(server):
    assert requests.get(server.url + "/config", timeout=T).status_code == 401
    assert requests.get(server.url + "/gradio_api/info", timeout=T).status_code == 401
    wrong = requests.Session()
    r = wrong.post(server.url + "/login", data={"username": API_LOGIN[0], "password": API_LOGIN[1]}, timeout=T)
    assert r.status_code == 400  # the API login does not open the UI
    assert wrong.get(server.url + "/config", timeout=T).status_code == 401
    assert ui_session(server).get(server.url + "/config", timeout=T).status_code == 200


# -- request size -------------------------------------------------------------------------------------------


def test_oversized_bodies_get_413_with_a_reason(server):
    big = b"x" * (LIMIT_MB * 2**20 + 4096)

    def refused(r: requests.Response) -> None:
        assert r.status_code == 413, r.text[:300]
        err = r.json()
        assert err["error"] == "PayloadTooLarge" and f"{LIMIT_MB} MB (--max-upload-mb)" in err["detail"], err

    refused(api(server, "POST", "/sdapi/v1/txt2img", data=big))  # declared length
    refused(requests.post(server.url + "/sdapi/v1/txt2img", data=big, timeout=T))  # no login needed to be refused
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no length: counted while read, then cut off
    refused(api(server, "POST", "/sdapi/v1/png-info", data=chunks,
                headers={"Content-Type": "application/json"}))
    upload = {"files": ("big.png", big, "image/png")}  # Gradio's own upload route
    refused(ui_session(server).post(server.url + "/gradio_api/upload", files=upload, timeout=T))

    # under the limit: a 1.5 MB body is read as usual, and the app keeps serving
    image = png_b64(720, noise=True)
    assert 2**20 < len(image) < LIMIT_MB * 2**20
    r = api(server, "POST", "/sdapi/v1/png-info", {"image": image})
    assert r.status_code == 200 and r.json()["info"] == "", r.text[:300]
    r = ui_session(server).post(server.url + "/gradio_api/upload", files={"files": ("ok.png", b"y" * 1000)},
                                timeout=T)
    assert r.status_code == 200, r.text
    assert_serving(server)


# -- names that try to leave the models folder ----------------------------------------------------------------

NAMES = ["../../../etc/passwd", "/etc/passwd", "..\\..\\x.safetensors", "models/../../x",
         "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Foutside%2Ftiny-outside", "tiny-sd15\x00/../../etc/passwd",
         "\x00", "file:///etc/passwd", "http://127.0.0.1/x.safetensors",
         "../../outside/tiny-outside", "tiny-sd15/../../../outside/tiny-outside", "{outside}",
         "{outside}/model_index.json", "linked/unet", "linked/../../../outside/tiny-outside",
         "evil.ckpt/../tiny-sd15/../../../outside/tiny-outside"]


def name_requests(name: str) -> dict[str, tuple[str, dict]]:
    """Every place a request names a model, an upscaler, a style or a preprocessor."""
    img, base = png_b64(), {"prompt": "x", "steps": 1}
    unit = {"enabled": True, "image": img, "module": "none", "model": name}
    return {
        "options": ("/sdapi/v1/options", {"sd_model_checkpoint": name}),
        "txt2img override": ("/sdapi/v1/txt2img", {**base, "override_settings": {"sd_model_checkpoint": name}}),
        "img2img override": ("/sdapi/v1/img2img", {**base, "init_images": [img],
                                                   "override_settings": {"sd_model_checkpoint": name}}),
        "sd-upscale model": ("/studio/v1/sd-upscale", {**base, "image": img, "sd_model_checkpoint": name}),
        "hires-fix model": ("/studio/v1/hires-fix", {**base, "image": img, "sd_model_checkpoint": name,
                                                     "enable_hr": True, "hr_upscaler": "Lanczos"}),
        "hr_upscaler": ("/sdapi/v1/txt2img", {**base, "enable_hr": True, "hr_upscaler": name}),
        "upscaler_1": ("/sdapi/v1/extra-single-image", {"image": img, "upscaler_1": name, "upscaling_resize": 2}),
        "styles": ("/sdapi/v1/txt2img", {**base, "styles": [name]}),
        "controlnet model": ("/sdapi/v1/txt2img", {**base, "alwayson_scripts": {"controlnet": {"args": [unit]}}}),
        "controlnet module": ("/controlnet/detect", {"controlnet_module": name, "controlnet_input_images": [img]}),
        "sweep model": ("/studio/v1/sweep/plan", {"params": base, "model": name, "axes": [{"type": "Seed",
                                                                                          "values": "1, 2"}]}),
        "sweep checkpoint axis": ("/studio/v1/sweep/plan", {"params": base, "axes": [
            {"type": "Checkpoint name", "values": [name]}]}),
        "sweep hr_upscaler axis": ("/studio/v1/sweep/plan", {"params": {**base, "enable_hr": True}, "axes": [
            {"type": "Hires upscaler", "values": [name]}]}),
    }


@pytest.mark.parametrize("name", NAMES)
def test_names_cannot_leave_the_models_folder(server, root, name):
    name = name.format(outside=root / "outside" / "tiny-outside")
    for where, (path, body) in name_requests(name).items():
        r = api(server, "POST", path, body)
        assert 400 <= r.status_code < 500, (where, name, r.status_code, r.text[:300])
        err = r.json()
        assert set(err) == {"error", "detail"} and err["detail"], (where, err)
    assert_serving(server)  # still the listed model
    listed = [m["filename"] for m in api(server, "GET", "/sdapi/v1/sd-models").json()]
    assert not any("outside" in str(f) for f in listed), listed
    # the owner's symlink is followed and listed under its own name (shared model folders); nothing else is
    assert any(str(f).endswith("Stable-diffusion/linked") for f in listed), listed
    assert not (root / "code-ran").exists()


def test_unknown_model_answers_name_the_listed_ones(server, root):
    r = api(server, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": str(root / "outside" / "tiny-outside")})
    assert r.status_code == 404 and "tiny-sd15" in r.json()["detail"], r.text
    r = api(server, "POST", "/sdapi/v1/extra-single-image", {"image": png_b64(), "upscaler_1": "../ESRGAN/evil"})
    assert r.status_code == 422 and "Unknown upscaler" in r.json()["detail"], r.text


# -- image fields read no files and fetch no URLs ----------------------------------------------------------------


def test_image_fields_take_base64_only(server, root):
    real = root / "real.png"  # a readable image on disk: reading paths would turn these into 200s
    Image.new("RGB", (64, 64), "red").save(real)
    for value in (str(real), f"file://{real}", "file:///etc/passwd", "/etc/passwd", "../../real.png",
                  "http://127.0.0.1:1/x.png", f"data:image/png;base64,file://{real}", "C:\\real.png"):
        unit = {"enabled": True, "image": value, "module": "none", "model": "x"}
        for where, (path, body) in {
            "img2img": ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [value]}),
            "mask": ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [png_b64()], "mask": value}),
            "png-info": ("/sdapi/v1/png-info", {"image": value}),
            "extras": ("/sdapi/v1/extra-single-image", {"image": value}),
            "extras batch": ("/sdapi/v1/extra-batch-images", {"imageList": [{"data": value, "name": "a.png"}]}),
            "sd-upscale": ("/studio/v1/sd-upscale", {"image": value}),
            "hires-fix": ("/studio/v1/hires-fix", {"image": value}),
            "controlnet unit": ("/sdapi/v1/txt2img", {"prompt": "x", "alwayson_scripts": {"controlnet": {
                "args": [unit]}}}),
            "controlnet detect": ("/controlnet/detect", {"controlnet_module": "canny",
                                                         "controlnet_input_images": [value]}),
        }.items():
            r = api(server, "POST", path, body)
            assert r.status_code == 400 and r.json()["error"] == "BadImage", (where, value, r.text[:300])
    assert_serving(server)


# -- pickles that carry code ----------------------------------------------------------------------------------


def test_code_carrying_pickles_never_run(server, root):
    marker = root / "code-ran"
    models = {m["model_name"]: m for m in api(server, "GET", "/sdapi/v1/sd-models").json()}
    assert "evil" in models  # listed (the user sees it), but it cannot be used:
    r = api(server, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "evil.ckpt"})
    assert r.status_code == 422 and "holds code" in r.json()["detail"], r.text
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1,
                                                  "override_settings": {"sd_model_checkpoint": "evil"}})
    assert r.status_code == 422 and "holds code" in r.json()["detail"], r.text

    assert "evil" in [u["name"] for u in api(server, "GET", "/sdapi/v1/upscalers").json()]
    r = api(server, "POST", "/sdapi/v1/extra-single-image", {"image": png_b64(), "upscaler_1": "evil",
                                                             "upscaling_resize": 2})
    assert r.status_code == 422 and r.json()["error"] == "ModelLoadError", r.text
    assert "refused to unpickle" in r.json()["detail"]
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "enable_hr": True,
                                                  "hr_upscaler": "evil", "hr_second_pass_steps": 1})
    assert r.status_code == 422 and "refused to unpickle" in r.json()["detail"], r.text

    assert api(server, "GET", "/controlnet/model_list").json()["model_list"] == []  # not offered
    unit = {"enabled": True, "image": png_b64(), "module": "none", "model": "evil"}
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1,
                                                  "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert r.status_code == 422 and "holds code" in r.json()["detail"], r.text

    assert not marker.exists()
    assert_serving(server)
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "seed": 3})
    assert r.status_code == 200 and len(r.json()["images"]) == 1, r.text[:300]


# -- Gradio's file route ----------------------------------------------------------------------------------------


def test_gradio_file_route_serves_outputs_only(server, root):
    r = api(server, "POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "seed": 5})
    assert r.status_code == 200, r.text[:300]
    saved = sorted(server.outputs_dir.glob("txt2img/*/*-5.png"))[-1]
    session = ui_session(server)
    ok = session.get(server.url + f"/gradio_api/file={saved}", timeout=T)
    assert ok.status_code == 200 and ok.content == saved.read_bytes()  # the route works: refusals below mean it
    assert requests.get(server.url + f"/gradio_api/file={saved}", timeout=T).status_code in (401, 403)

    model_file = root / "models" / "Stable-diffusion" / "tiny-sd15" / "model_index.json"
    for target in ("/etc/passwd", "%2Fetc%2Fpasswd", "../../../../../etc/passwd", "file:///etc/passwd",
                   str(model_file), f"{server.outputs_dir}/../models/Stable-diffusion/tiny-sd15/model_index.json",
                   f"{server.outputs_dir}/%2e%2e/models/Stable-diffusion/tiny-sd15/model_index.json",
                   str(root / "outside" / "tiny-outside" / "model_index.json"), "app.py", "tests/conftest.py"):
        for prefix in ("/gradio_api/file=", "/file="):
            r = session.get(server.url + prefix + target, timeout=T)
            assert r.status_code in (403, 404), (prefix + target, r.status_code, r.text[:200])
            assert b"root:" not in r.content and b"_class_name" not in r.content
