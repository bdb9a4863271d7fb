"""Annotator weights (depth, normal, openpose... from `lllyasviel/Annotators`), fetched on first use.

`fetch(filename, ctx)` returns `models/annotators/<filename>`. When the file is missing it is downloaded from
`ctx.hub_endpoint` into `<filename>.part` (resumed with a Range request after an interruption or a cancel),
checked against the size and the sha256 the server announces, then renamed into place. Offline
(`hub_endpoint=None`) a missing file raises `AnnotatorMissing`, which says where to get it and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import quote

import requests

from extensions.base import ExtensionContext

ANNOTATOR_REPO = "lllyasviel/Annotators"
DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20  # bytes per read, and how often progress is reported
TIMEOUT = (10, 60)  # seconds: connect, read
_SHA256 = re.compile(r'(?:W/)?"?([0-9a-fA-F]{64})"?')
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+)")


class AnnotatorMissing(RuntimeError):
    """An annotator file is not on disk and could not be downloaded; the message says how to get it by hand."""

    def __init__(self, filename: str, path: Path, url: str, reason: str | None = None):
        self.filename, self.path, self.url, self.reason = filename, path, url, reason
        why = reason or "this machine is offline (no hub endpoint is configured)"
        super().__init__(f"Annotator weights {filename!r} are missing: {why}.\n"
                         f"Download {url}\nand save it as {path}")


def annotator_path(models_dir: Path, filename: str) -> Path:
    """`models_dir/annotators/<filename>`; `filename` must be a plain file name."""
    if not filename or filename == "." or ".." in filename or any(c in filename for c in "/\\:\0"):
        raise ValueError(f"Invalid annotator file name {filename!r}: expected a plain file name")
    return Path(models_dir) / "annotators" / filename


def file_url(filename: str, repo: str = ANNOTATOR_REPO, endpoint: str | None = None) -> str:
    return f"{(endpoint or DEFAULT_ENDPOINT).rstrip('/')}/{quote(repo)}/resolve/main/{quote(filename)}"


def fetch(filename: str, ctx: ExtensionContext, *, repo: str = ANNOTATOR_REPO) -> Path:
    """Path of the annotator file, downloaded first if it is missing (see the module docstring)."""
    final = annotator_path(ctx.models_dir, filename)
    if final.is_file():
        return final
    url = file_url(filename, repo, ctx.hub_endpoint)
    if ctx.hub_endpoint is None:
        raise AnnotatorMissing(filename, final, url)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    try:
        expected_sha, total = _download(url, part, filename, ctx.hooks)
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else None
        reason = (f"it is not in the repository {repo} (HTTP 404)" if code == 404
                  else f"the server answered HTTP {code}")
        raise AnnotatorMissing(filename, final, url, reason) from e
    except requests.RequestException as e:
        raise AnnotatorMissing(filename, final, url, f"the download failed ({e}); run again to resume") from e

    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise AnnotatorMissing(filename, final, url, f"the download is incomplete ({size} of {total} bytes)")
    if expected_sha is not None:
        got = _sha256_of(part)
        if got != expected_sha:
            part.unlink()
            raise RuntimeError(f"Annotator weights {filename!r} are corrupt: sha256 expected {expected_sha}, "
                               f"got {got}; the partial download was deleted, try again")
    os.replace(part, final)
    return final


def _download(url: str, part: Path, filename: str, hooks) -> tuple[str | None, int | None]:
    """Stream `url` into `part`, appending when the server honours the Range request.
    Returns (announced sha256 or None, announced total size or None)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Accept-Encoding": "identity"}  # byte counts must match what the server announces
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as resp:
        sha = _announced_sha256(resp)
        if resp.status_code == 416 and offset:  # nothing left to fetch: the .part is whole, or stale
            total = _range_total(resp)
            if total == offset:
                return sha, total
            part.unlink()
            return _download(url, part, filename, hooks)
        resp.raise_for_status()
        if resp.status_code == 206:
            start, total = _range(resp)
            if start != offset:
                part.unlink()
                raise requests.ConnectionError(f"the server resumed at byte {start} instead of {offset}")
        else:  # 200: the whole file, start over
            offset, total = 0, _int(resp.headers.get("Content-Length"))
        label = f"downloading {filename}"
        done = reported = offset
        hooks.progress(done, total or 0, label=label)
        with open(part, "ab" if offset else "wb") as f:
            for chunk in resp.iter_content(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if done - reported >= CHUNK:
                    hooks.progress(done, total or 0, label=label)
                    reported = done
                hooks.check()  # raises to cancel; the .part stays for the next try
        if done != reported:
            hooks.progress(done, total or 0, label=label)
    return sha, total


def _announced_sha256(resp: requests.Response) -> str | None:
    """The LFS sha256 Hugging Face sends as X-Linked-ETag (on the redirect), else a sha256-shaped ETag."""
    for name in ("X-Linked-ETag", "ETag"):
        for r in (*resp.history, resp):
            m = _SHA256.fullmatch(r.headers.get(name, "").strip())
            if m:
                return m.group(1).lower()
    return None


def _range(resp: requests.Response) -> tuple[int, int]:
    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    if not m or m.group(1) is None:
        raise requests.ConnectionError(f"bad Content-Range {resp.headers.get('Content-Range')!r}")
    return int(m.group(1)), int(m.group(2))


def _range_total(resp: requests.Response) -> int | None:
    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    return int(m.group(2)) if m else None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
