"""Hub downloads without torch: which files of a diffusers repo a load fetches, and how many bytes that is.

`select_files` is the one selection rule (configs and tokenizers, one weights variant per model part, no safety
checker, no root-level single files); the loader downloads exactly those files (pipelines/engine/loading.py) and
`HubSizes` adds up their sizes from the Hub's file listing, so the UI can say how much the first Generate will
download before it starts. No torch here: the UI and the studio use it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

MODEL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
WEIGHTS = (".safetensors", ".bin")


def is_fp16(filename: str) -> bool:
    """diffusers/transformers 'fp16' variant files: model.fp16.safetensors, model.fp16-00001-of-00002.safetensors."""
    return re.search(r"\.fp16[.-]", filename) is not None


def select_files(files: Sequence[str], fp16: bool) -> list[str]:
    """Which files of a diffusers hub repo to fetch: configs/tokenizers and one weights variant per model part
    (the fp16 files when the weights are wanted in fp16 and the repo has them, else the full-precision ones;
    .safetensors before .bin). Skips root-level single files, the safety checker and the variant not wanted."""
    keep = [f for f in files if f.endswith((".json", ".txt")) and not f.startswith("safety_checker/")
            and ("/" in f or f == "model_index.json")]
    for part in MODEL_PARTS:
        weights = [f for f in files if f.startswith(part + "/") and f.endswith(WEIGHTS)]
        groups = [[f for f in weights if f.endswith(".safetensors") and is_fp16(f)],
                  [f for f in weights if f.endswith(".safetensors") and not is_fp16(f)],
                  [f for f in weights if f.endswith(".bin") and not is_fp16(f)],
                  [f for f in weights if f.endswith(".bin") and is_fp16(f)]]
        if not fp16:
            groups[0], groups[1] = groups[1], groups[0]
        keep += next((g for g in groups if g), [])
    return sorted(set(keep))


def sibling_sizes(model_info: Any) -> dict[str, int | None]:
    """File name -> size in bytes (None when the Hub did not say) from `HfApi.model_info(files_metadata=True)`."""
    sizes: dict[str, int | None] = {}
    for s in getattr(model_info, "siblings", None) or ():
        size = getattr(s, "size", None)
        if size is None and getattr(s, "lfs", None) is not None:
            size = getattr(s.lfs, "size", None)
        sizes[s.rfilename] = int(size) if size is not None else None
    return sizes


def repo_files(repo: str, endpoint: str | None = None, timeout: float | None = 10) -> dict[str, int | None]:
    """The files of a hub repo with their sizes (one `model_info(files_metadata=True)` call)."""
    from huggingface_hub import HfApi

    return sibling_sizes(HfApi(endpoint=endpoint).model_info(repo, files_metadata=True, timeout=timeout))


def human_size(n: int) -> str:
    """Bytes as people read download sizes: "6.9 GB", "335 MB" (decimal units, as the Hub shows them)."""
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.0f} MB"
    return f"{max(n, 0) / 10**3:.0f} kB"


def short_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class DownloadSize:
    """What loading a hub id would fetch: the selected files and their total size; `error` says why it is not
    known (offline, no network, not a diffusers repo...), then `bytes` is None."""

    repo: str
    fp16: bool
    files: tuple[str, ...] = ()
    bytes: int | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        """"~6.9 GB" or "" when unknown."""
        return f"~{human_size(self.bytes)}" if self.bytes is not None else ""

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "fp16": self.fp16, "files": list(self.files), "bytes": self.bytes,
                "size": self.text or None, "error": self.error}


def download_size(repo: str, sizes: Mapping[str, int | None], fp16: bool) -> DownloadSize:
    """The download of `repo` given its files and sizes: exactly the files `select_files` picks."""
    if "model_index.json" not in sizes:
        return DownloadSize(repo, fp16, error="not a diffusers repository (no model_index.json)")
    files = tuple(select_files(list(sizes), fp16))
    if not any(f.endswith(WEIGHTS) for f in files):
        return DownloadSize(repo, fp16, files, error="no weights found in the repository")
    unknown = [f for f in files if sizes.get(f) is None]
    if unknown:
        return DownloadSize(repo, fp16, files, error=f"the Hub did not give the size of {unknown[0]}")
    return DownloadSize(repo, fp16, files, sum(int(sizes[f] or 0) for f in files))


class HubSizes:
    """Download sizes of hub ids, asked of the Hub once per (repo, fp16) and kept; a failed lookup is kept for
    `retry_after` seconds (a page load must not wait on a dead network each time). `endpoint` None: offline,
    nothing is asked. `fetch(repo, endpoint)` -> {file: size}; default `repo_files`."""

    def __init__(self, endpoint: str | None,
                 fetch: Callable[[str, str | None], Mapping[str, int | None]] | None = None,
                 retry_after: float = 300):
        self.endpoint = endpoint
        self._fetch = fetch or repo_files
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._known: dict[tuple[str, bool], tuple[float, DownloadSize]] = {}

    def size(self, repo: str, fp16: bool) -> DownloadSize:
        if self.endpoint is None:
            return DownloadSize(repo, fp16, error="offline (--offline or HF_HUB_OFFLINE=1): nothing can be downloaded")
        key = (repo, fp16)
        with self._lock:
            hit = self._known.get(key)
        if hit is not None and (hit[1].error is None or time.monotonic() - hit[0] < self.retry_after):
            return hit[1]
        try:
            answer = download_size(repo, self._fetch(repo, self.endpoint), fp16)
        except Exception as e:  # network down, unknown repo, gated repo, rate limit...
            answer = DownloadSize(repo, fp16, error=f"could not ask the Hugging Face Hub ({short_reason(e)})")
        with self._lock:
            self._known[key] = (time.monotonic(), answer)
        return answer
