"""Where each kind of model lives, and how a model folder is walked. No torch.

The defaults follow A1111's tree under `models/` (Stable-diffusion, Lora, LyCORIS, embeddings, VAE, ControlNet,
ESRGAN), plus A1111's top-level `embeddings/` beside `models/`. A1111's flags (`--ckpt-dir`, `--lora-dir`,
`--vae-dir`, `--embeddings-dir`, `--controlnet-dir`, `--esrgan-models-path`) point a kind elsewhere, so an
existing A1111 / Forge models tree is used as it is.

Symlinks the owner placed are followed, for files and for folders (a models tree shared between UIs is
usually linked in). A folder reached twice through links is walked once, so a link loop ends. What a client
may name is only ever what a walk listed: `check_name` refuses `..`, absolute and drive-letter names before
any lookup.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence


@dataclass(frozen=True)
class ModelFolders:
    """The folder (or folders) of each kind of model, as the settings chose them."""

    models: Path
    checkpoints: Path
    lora: tuple[Path, ...]
    embeddings: tuple[Path, ...]
    vae: Path
    controlnet: Path
    esrgan: Path | None = None  # None: models/{ESRGAN,RealESRGAN,SwinIR,DAT} (extensions/upscalers.py)

    @classmethod
    def under(cls, models: Path, *, checkpoints: Path | None = None, lora: Path | None = None,
              lyco: Path | None = None, embeddings: Path | None = None, vae: Path | None = None,
              controlnet: Path | None = None, esrgan: Path | None = None) -> "ModelFolders":
        """A1111's layout under `models`, with any kind pointed elsewhere."""
        models = Path(models)
        return cls(
            models=models,
            checkpoints=Path(checkpoints) if checkpoints else models / "Stable-diffusion",
            lora=tuple(dict.fromkeys([Path(lora) if lora else models / "Lora",
                                      Path(lyco) if lyco else models / "LyCORIS"])),
            embeddings=(Path(embeddings),) if embeddings else (models / "embeddings", models.parent / "embeddings"),
            vae=Path(vae) if vae else models / "VAE",
            controlnet=Path(controlnet) if controlnet else models / "ControlNet",
            esrgan=Path(esrgan) if esrgan else None,
        )


def check_name(name: str, what: str = "model") -> str:
    """A name as a client sent it, with forward slashes; ValueError for names that try to leave a folder."""
    clean = str(name).replace("\\", "/")
    rel = PurePosixPath(clean)
    if not clean or "\x00" in clean or rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", clean):
        raise ValueError(f"invalid {what} name {name!r}: it must be a name from the list")
    return clean


def walk(root: Path, suffixes: Sequence[str], marker: str | None = None) -> Iterator[Path]:
    """Weight files (by suffix) and folder models (a folder holding `marker`, not entered) under `root`, sorted,
    hidden entries skipped. Symlinked files and folders are followed; each real folder is walked once."""
    root = Path(root)
    if not root.is_dir():
        return
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:  # a link loop, or the same folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        if marker and here != root and marker in filenames:
            dirnames[:] = []
            yield here
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and fn.lower().endswith(tuple(suffixes)) and (here / fn).is_file():
                yield here / fn


def preview_of(path: Path) -> Path | None:
    """A1111's card thumbnail beside a model file: NAME.preview.png (or .jpg/.webp), else NAME.png."""
    path = Path(path)
    stem = path.name if path.is_dir() else path.stem
    for name in (f"{stem}.preview.png", f"{stem}.preview.jpg", f"{stem}.preview.webp", f"{stem}.png",
                 f"{stem}.jpg", f"{stem}.webp"):
        candidate = path.parent / name
        if candidate.is_file():
            return candidate
    return None
