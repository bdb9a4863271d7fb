"""Annotator weight downloads against a real local HTTP server (Range requests, X-Linked-ETag sha256)."""

from __future__ import annotations

import hashlib
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from extensions.annotators import ANNOTATOR_REPO, CHUNK, AnnotatorMissing, annotator_path, fetch
from extensions.base import ExtensionContext, NoHooks

pytestmark = pytest.mark.unit  # pure Python, no model

NAME = "dpt_hybrid-midas-501f0c75.pt"
SIZE = 3 * CHUNK + 12345  # several chunks, and a short last one


class Hub:
    """What the local server serves and how it behaves; records every request as (path, Range header)."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.sha: str | None = None  # announced sha256; None = the real one
        self.ranges = True  # honour Range requests
        self.truncate_at: int | None = None  # stop sending the body after this many bytes
        self.redirect = False  # like Hugging Face: 302 (with X-Linked-ETag) to a CDN path that has no sha header
        self.url = ""


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        hub: Hub = self.server.hub  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        hub.requests.append((self.path, rng))
        prefix, cdn = f"/{ANNOTATOR_REPO}/resolve/main/", "/cdn/"
        name = next((self.path[len(p):] for p in (prefix, cdn) if self.path.startswith(p)), None)
        file = hub.root / unquote(name) if name else None
        if file is None or not file.is_file():
            self.send_error(404, "Entry not found")
            return
        data = file.read_bytes()
        sha = hub.sha or hashlib.sha256(data).hexdigest()
        if hub.redirect and self.path.startswith(prefix):
            self.send_response(302)
            self.send_header("Location", cdn + name)
            self.send_header("X-Linked-ETag", f'"{sha}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # the CDN sends an ETag that is not a sha256; the resolve URL sends the sha256 as X-Linked-ETag
        sha_headers = {"ETag": '"0123abcd"'} if self.path.startswith(cdn) else {"X-Linked-ETag": f'"{sha}"',
                                                                                 "ETag": '"not-a-sha"'}
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and hub.ranges:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                for k, v in sha_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        for k, v in sha_headers.items():
            self.send_header(k, v)
        self.end_headers()
        body = data[start:]
        if hub.truncate_at is not None:
            body = body[:hub.truncate_at]
        for i in range(0, len(body), 256 * 1024):
            self.wfile.write(body[i:i + 256 * 1024])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    h = Hub(root)
    server.hub = h  # type: ignore[attr-defined]
    h.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield h
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def payload(hub) -> bytes:
    data = random.Random(0).randbytes(SIZE)
    (hub.root / NAME).write_bytes(data)
    return data


class Recorder(NoHooks):
    def __init__(self, cancel_after: int | None = None):
        self.calls: list[tuple[int, int, str | None]] = []
        self.checks = 0
        self.cancel_after = cancel_after

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        self.calls.append((step, total, label))

    def check(self) -> None:
        self.checks += 1
        if self.cancel_after is not None and self.checks > self.cancel_after:
            raise Cancelled("interrupted")


class Cancelled(Exception):
    pass


def make_ctx(tmp_path: Path, endpoint: str | None, hooks=None) -> ExtensionContext:
    return ExtensionContext(device="cpu", dtype=None, models_dir=tmp_path / "models", hub_endpoint=endpoint,
                            hooks=hooks or NoHooks())


def target(tmp_path: Path) -> Path:
    return tmp_path / "models" / "annotators" / NAME


def part_of(tmp_path: Path) -> Path:
    return target(tmp_path).with_name(NAME + ".part")


def test_download_writes_file_and_reports_progress(tmp_path, hub, payload):
    hooks = Recorder()
    path = fetch(NAME, make_ctx(tmp_path, hub.url, hooks))
    assert path == target(tmp_path)
    assert path.read_bytes() == payload
    assert not part_of(tmp_path).exists()
    assert hub.requests == [(f"/{ANNOTATOR_REPO}/resolve/main/{NAME}", None)]
    assert len(hooks.calls) >= 4  # several chunks reported
    assert hooks.calls[-1] == (SIZE, SIZE, f"downloading {NAME}")
    steps = [c[0] for c in hooks.calls]
    assert steps == sorted(steps) and all(c[1] == SIZE for c in hooks.calls)
    assert hooks.checks >= 3


def test_existing_file_makes_no_request(tmp_path, hub, payload, no_network):
    final = target(tmp_path)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"already here")
    assert fetch(NAME, make_ctx(tmp_path, hub.url)) == final
    assert final.read_bytes() == b"already here"
    assert hub.requests == [] and no_network == []


def test_resume_sends_range_and_appends(tmp_path, hub, payload):
    n = CHUNK + 777
    part = part_of(tmp_path)
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:n])
    hooks = Recorder()
    path = fetch(NAME, make_ctx(tmp_path, hub.url, hooks))
    assert path.read_bytes() == payload
    assert [r[1] for r in hub.requests] == [f"bytes={n}-"]
    assert hooks.calls[0][0] == n and hooks.calls[-1][:2] == (SIZE, SIZE)
    assert not part.exists()


def test_resume_starts_over_when_server_ignores_range(tmp_path, hub, payload):
    hub.ranges = False
    part = part_of(tmp_path)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    path = fetch(NAME, make_ctx(tmp_path, hub.url))
    assert path.read_bytes() == payload
    assert [r[1] for r in hub.requests] == ["bytes=5000-"]


def test_complete_part_is_verified_and_kept(tmp_path, hub, payload):
    part = part_of(tmp_path)
    part.parent.mkdir(parents=True)
    part.write_bytes(payload)  # downloaded in full, but the rename never happened: the server answers 416
    assert fetch(NAME, make_ctx(tmp_path, hub.url)).read_bytes() == payload
    assert len(hub.requests) == 1

    other = annotator_path(tmp_path / "models", "other.pt")
    (hub.root / other.name).write_bytes(b"right")
    other.with_name("other.pt.part").write_bytes(b"wrong")  # same size, other bytes: the sha check catches it
    with pytest.raises(RuntimeError, match="corrupt"):
        fetch(other.name, make_ctx(tmp_path, hub.url))
    assert not other.exists()


def test_redirect_keeps_range_and_sha_from_first_response(tmp_path, hub, payload):
    hub.redirect = True
    n = 2 * CHUNK + 5
    part = part_of(tmp_path)
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:n])
    assert fetch(NAME, make_ctx(tmp_path, hub.url)).read_bytes() == payload
    assert [r[1] for r in hub.requests] == [f"bytes={n}-", f"bytes={n}-"]
    assert hub.requests[1][0] == f"/cdn/{NAME}"

    (hub.root / "other.pt").write_bytes(b"z" * 999)
    hub.sha = "cd" * 32  # announced only on the redirect: it must still be checked
    with pytest.raises(RuntimeError, match="cd" * 32):
        fetch("other.pt", make_ctx(tmp_path, hub.url))
    assert not (tmp_path / "models" / "annotators" / "other.pt").exists()


def test_wrong_sha_deletes_part_and_raises(tmp_path, hub, payload):
    hub.sha = "ab" * 32
    with pytest.raises(RuntimeError) as err:
        fetch(NAME, make_ctx(tmp_path, hub.url))
    msg = str(err.value)
    assert NAME in msg and "ab" * 32 in msg and hashlib.sha256(payload).hexdigest() in msg
    assert not target(tmp_path).exists() and not part_of(tmp_path).exists()


def test_offline_names_file_path_and_url(tmp_path, no_network):
    with pytest.raises(AnnotatorMissing) as err:
        fetch(NAME, make_ctx(tmp_path, None))
    msg = str(err.value)
    assert NAME in msg
    assert str(target(tmp_path)) in msg
    assert f"https://huggingface.co/{ANNOTATOR_REPO}/resolve/main/{NAME}" in msg
    assert err.value.path == target(tmp_path)
    assert no_network == []
    assert not (tmp_path / "models" / "annotators").exists()


def test_missing_in_repo_is_a_clear_error(tmp_path, hub):
    with pytest.raises(AnnotatorMissing) as err:
        fetch("scannet.pt", make_ctx(tmp_path, hub.url))
    msg = str(err.value)
    assert "scannet.pt" in msg and "404" in msg and ANNOTATOR_REPO in msg
    assert f"{hub.url}/{ANNOTATOR_REPO}/resolve/main/scannet.pt" in msg
    assert not (tmp_path / "models" / "annotators" / "scannet.pt").exists()
    assert not (tmp_path / "models" / "annotators" / "scannet.pt.part").exists()


def test_unreachable_server_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(AnnotatorMissing) as err:
        fetch(NAME, make_ctx(tmp_path, f"http://127.0.0.1:{port}"))
    assert "download failed" in str(err.value) and str(target(tmp_path)) in str(err.value)


def test_interrupted_download_keeps_part_then_resumes(tmp_path, hub, payload):
    hub.truncate_at = CHUNK + 100  # the connection drops before the announced length
    with pytest.raises(AnnotatorMissing, match="resume"):
        fetch(NAME, make_ctx(tmp_path, hub.url))
    assert not target(tmp_path).exists()
    kept = part_of(tmp_path).stat().st_size
    assert 0 < kept <= CHUNK + 100
    hub.truncate_at = None
    assert fetch(NAME, make_ctx(tmp_path, hub.url)).read_bytes() == payload
    assert hub.requests[-1][1] == f"bytes={kept}-"


def test_cancel_keeps_part_and_next_fetch_resumes(tmp_path, hub, payload):
    hooks = Recorder(cancel_after=1)
    with pytest.raises(Cancelled):
        fetch(NAME, make_ctx(tmp_path, hub.url, hooks))
    assert not target(tmp_path).exists()
    kept = part_of(tmp_path).stat().st_size
    assert 0 < kept < SIZE
    assert payload.startswith(part_of(tmp_path).read_bytes())
    assert fetch(NAME, make_ctx(tmp_path, hub.url)).read_bytes() == payload
    assert hub.requests[-1][1] == f"bytes={kept}-"


@pytest.mark.parametrize("bad", ["", ".", "..", "../x.pt", "a/b.pt", "a\\b.pt", "sub/../x.pt"])
def test_annotator_path_rejects_non_plain_names(tmp_path, bad):
    with pytest.raises(ValueError):
        annotator_path(tmp_path, bad)


def test_annotator_path(tmp_path):
    assert annotator_path(tmp_path, "scannet.pt") == tmp_path / "annotators" / "scannet.pt"
