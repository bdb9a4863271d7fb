"""Command line: every A1111-style flag parses, documents itself, and defaults are safe."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.settings import parse_args

pytestmark = pytest.mark.unit  # pure Python, no model

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--models-dir", "--outputs-dir", "--port", "--listen", "--auth", "--api", "--nowebui", "--device",
         "--precision", "--attention"]


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    for flag in FLAGS:
        assert flag in out


def test_defaults_bind_localhost_only():
    s = parse_args([])
    assert (s.host, s.port, s.api, s.auth) == ("127.0.0.1", 7860, False, None)
    assert s.models_dir == Path("models") and s.outputs_dir == Path("outputs")
    assert (s.device, s.precision, s.attention) == ("auto", "auto", "auto")


def test_flags():
    s = parse_args(["--listen", "--port", "9000", "--auth", "me:secret", "--nowebui", "--device", "cpu",
                    "--precision", "fp32", "--attention", "sdpa", "--models-dir", "/m", "--hub-model", "a/b"])
    assert s.host == "0.0.0.0" and s.port == 9000 and s.auth == ("me", "secret")
    assert s.nowebui and s.api  # API only implies the API
    assert s.checkpoints_dir == Path("/m/Stable-diffusion") and s.hub_models == ("a/b",)


@pytest.mark.parametrize("bad", [["--auth", "nopassword"], ["--device", "tpu"], ["--precision", "fp8"]])
def test_bad_flags_are_refused(bad):
    with pytest.raises(SystemExit):
        parse_args(bad)


def test_device_lists_start_a_worker_each():
    from pipelines.settings import device_list

    assert parse_args([]).device == "auto"
    assert parse_args(["--device", "cpu,cpu"]).device == "cpu,cpu"
    assert device_list(parse_args(["--device", "CUDA:0, cuda:1"]).device) == ["cuda:0", "cuda:1"]
    assert device_list("all") == ["all"]
    for bad in ("gpu", "cuda:x", "cpu:1", "all,cpu"):
        with pytest.raises(SystemExit):
            parse_args(["--device", bad])


def test_a_studio_open_to_the_network_without_a_login_says_so():
    assert parse_args([]).open_to_network is None
    assert "anyone who can reach this machine" in parse_args(["--listen"]).open_to_network
    assert parse_args(["--listen", "--auth", "a:b"]).open_to_network is None
    ui_only = parse_args(["--listen", "--api", "--api-auth", "a:b"]).open_to_network  # the API has a login, the UI not
    assert "the UI" in ui_only and "the API" not in ui_only
    assert "the UI and the API" in parse_args(["--listen", "--api"]).open_to_network
    assert parse_args(["--listen", "--nowebui", "--api-auth", "a:b"]).open_to_network is None
