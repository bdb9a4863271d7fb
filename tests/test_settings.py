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
