"""VAEs people bring (A1111's `sd_vae`): list them, pick the one a job uses, hash them like A1111. No torch.

Listed (A1111's `refresh_vae_list`): `*.vae.safetensors` / `.vae.pt` / `.vae.ckpt` among the checkpoints, then every
`.safetensors` / `.ckpt` / `.pt` file under models/VAE (or --vae-dir) as downloaded
(`vae-ft-mse-840000-ema-pruned.safetensors`), plus diffusers folders there (a folder holding config.json and
diffusion_pytorch_model weights). A VAE's name is A1111's: the file (or folder) name without its folder; when two
share a name the later one wins, as in A1111's dict (so models/VAE's over the checkpoints folder's).

A job's choice (the `sd_vae` parameter; empty means the `sd_vae` option, A1111's setting):
- "Automatic": `NAME.vae.safetensors` (or `.vae.pt`, `.vae.ckpt`) beside the checkpoint, same stem (a diffusers
  folder's stem is its folder name), else the checkpoint's own VAE;
- "None": the checkpoint's own (baked-in) VAE;
- a listed name: that VAE, whatever the checkpoint (A1111's default "sd_vae overrides per-model preferences").
`choose` answers None for "the checkpoint's own". pipelines/engine/vae.py loads the file with the checkpoint's VAE
config; the infotext then says `VAE hash: <first 10 hex of its sha256>, VAE: <name>`, as A1111 writes them.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipelines import discovery
from pipelines.folders import ModelFolders, walk

log = logging.getLogger("studio.vaes")

AUTOMATIC, NONE = "Automatic", "None"
SPECIAL = (AUTOMATIC, NONE)
SUFFIXES = (".safetensors", ".ckpt", ".pt")
BESIDE_SUFFIXES = discovery.VAE_SUFFIXES  # A1111: a checkpoint's own VAE file beside it (not listed as a checkpoint)
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                  "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
FP16_FIXED = re.compile(r"fp16[-_ .]?fix", re.IGNORECASE)  # sdxl-vae-fp16-fix, sdxl_vae_fp16fix...


def is_vae_file(name: str) -> bool:
    """A `NAME.vae.*` file: A1111 keeps these out of the checkpoint list."""
    return name.lower().endswith(BESIDE_SUFFIXES)


def fp16_fixed(name: str) -> bool:
    """A VAE named as fp16-fixed (madebyollin's sdxl-vae-fp16-fix and its copies): it decodes in fp16 without NaNs."""
    return FP16_FIXED.search(name or "") is not None


@dataclass(frozen=True)
class VaeFile:
    """One listed VAE: a file in the original (or diffusers) layout, or a diffusers folder."""

    name: str
    path: Path

    @property
    def folder(self) -> bool:
        return self.path.is_dir()

    @property
    def weights(self) -> Path:
        """The file whose sha256 is the VAE hash: the file itself, or a folder's weights."""
        if not self.path.is_dir():
            return self.path
        for name in FOLDER_WEIGHTS:
            if (self.path / name).is_file():
                return self.path / name
        raise FileNotFoundError(f"no diffusion_pytorch_model weights in {self.path}")

    def as_dict(self) -> dict[str, str]:
        """GET /sdapi/v1/sd-vae's entry."""
        return {"model_name": self.name, "filename": str(self.path)}


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in FOLDER_WEIGHTS)


def scan(folders: ModelFolders) -> list[VaeFile]:
    """Every VAE A1111 would list, sorted by name (walks follow the owner's symlinks)."""
    found: dict[str, VaeFile] = {}
    for path in walk(folders.checkpoints, BESIDE_SUFFIXES):
        found[path.name] = VaeFile(path.name, path)
    for path in walk(folders.vae, SUFFIXES, marker="config.json"):
        if path.is_dir() and not _has_weights(path):
            continue
        found[path.name] = VaeFile(path.name, path)
    return sorted(found.values(), key=lambda v: (v.name.lower(), v.name))


def find(listed: Sequence[VaeFile], name: str) -> VaeFile | None:
    """A listed VAE by its name; then ignoring case; then by its name without the extension."""
    name = (name or "").strip()
    for match in (lambda v: v.name == name, lambda v: v.name.casefold() == name.casefold(),
                  lambda v: Path(v.name).stem.casefold() == name.casefold() and not v.folder):
        hit = next((v for v in listed if match(v)), None)
        if hit is not None:
            return hit
    return None


def special(name: str | None) -> str | None:
    """"Automatic" or "None" for those choices (any case; empty = Automatic), else None."""
    text = (name or "").strip()
    if not text:
        return AUTOMATIC
    return next((s for s in SPECIAL if s.casefold() == text.casefold()), None)


def beside(checkpoint: discovery.CheckpointInfo | None) -> VaeFile | None:
    """A1111's "Automatic": `NAME.vae.safetensors|.vae.pt|.vae.ckpt` beside a local checkpoint with its stem."""
    if checkpoint is None or checkpoint.source == "hub" or checkpoint.path is None:
        return None
    path = Path(checkpoint.path)
    stem = path.name if path.is_dir() else path.stem
    for suffix in BESIDE_SUFFIXES:
        candidate = path.parent / f"{stem}{suffix}"
        if candidate.is_file():
            return VaeFile(candidate.name, candidate)
    return None


class VaeLibrary:
    """The listed VAEs (scanned on first use and on refresh), shared by the studio (names it checks before a job
    is queued) and the engine (the file a job loads)."""

    def __init__(self, folders: ModelFolders, hash_cache: Path | None = None):
        self.folders = folders
        self.hash_cache = hash_cache
        self._lock = threading.Lock()
        self._listed: list[VaeFile] | None = None
        self._hashes: dict[tuple[str, int, int], str] = {}

    def refresh(self) -> list[VaeFile]:
        found = scan(self.folders)
        with self._lock:
            self._listed = found
        log.info("%d VAEs", len(found))
        return list(found)

    def list(self) -> list[VaeFile]:
        with self._lock:
            listed = self._listed
        return list(listed) if listed is not None else self.refresh()

    def names(self) -> list[str]:
        """What `sd_vae` may be: Automatic, None, then every listed name."""
        return [*SPECIAL, *(v.name for v in self.list())]

    def find(self, name: str) -> VaeFile | None:
        return find(self.list(), name)

    def unknown(self, name: Any) -> str:
        """The message for a VAE name that is not listed."""
        listed = ", ".join(self.names()[:40]) + (", ..." if len(self.names()) > 40 else "")
        return (f"Unknown VAE '{name}'. Available: {listed}. Put VAE files into {self.folders.vae} and refresh "
                "(POST /sdapi/v1/refresh-vae).")

    def check(self, name: Any) -> str:
        """The canonical spelling of a `sd_vae` value ("Automatic", "None" or a listed name); ValueError naming the
        available ones otherwise."""
        if name is not None and not isinstance(name, str):
            raise ValueError(f"sd_vae: expected a VAE name, got {type(name).__name__}")
        if chosen := special(name):
            return chosen
        found = self.find(name)
        if found is None:
            raise ValueError(self.unknown(name))
        return found.name

    def choose(self, name: str | None, checkpoint: discovery.CheckpointInfo | None) -> VaeFile | None:
        """The VAE a job with this `sd_vae` uses on `checkpoint`; None: the checkpoint's own. A name not listed is
        looked for again after a re-scan (a file added since), then ValueError."""
        chosen = special(name)
        if chosen == AUTOMATIC:
            return beside(checkpoint)
        if chosen == NONE:
            return None
        found = self.find(name or "")
        if found is None:
            self.refresh()
            found = self.find(name or "")
        if found is None:
            raise ValueError(self.unknown(name))
        return found

    def sha256(self, vae: VaeFile) -> str:
        """The VAE's sha256 (of a folder's weights file), kept in the hash cache like a checkpoint's."""
        target = vae.weights
        st = target.stat()
        key = (str(target.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._hashes.get(key)
        if hit is None:
            hit = discovery.sha256_of(target, self.hash_cache)
            with self._lock:
                self._hashes[key] = hit
        return hit

    def short_hash(self, vae: VaeFile) -> str:
        """A1111's `VAE hash`: the first 10 hex digits of the sha256."""
        return self.sha256(vae)[:10]
