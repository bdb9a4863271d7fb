"""LoRA and LyCORIS files: find them, tell their family and format from their keys, hash them like A1111. No torch.

A `.safetensors` file is classified from its JSON header alone (names and shapes; no tensor data is read); a
`.pt`/`.ckpt` pickle is opened on the meta device with `weights_only=True` (pipelines/discovery.py).

Key styles recognised (pipelines/engine/lora.py applies them):
- kohya / A1111: `lora_unet_<module path with _>`, `lora_te_...` (SD 1.x/2.x), `lora_te1_...` / `lora_te2_...` (SDXL);
  the UNet part in diffusers' block names (SD 1.x LoRAs) or the original ones (`input_blocks_4_1_...`, SDXL);
- diffusers / PEFT: `unet.<module path>.lora_A.weight`, `text_encoder.<...>.lora_B.weight` (and the older
  `.lora.down.weight` / `.lora.up.weight` spellings).
Formats, per module: LoRA (`lora_up` / `lora_down`, optional `lora_mid` for CP-decomposed convolutions), LoCon (the
same on convolutions), LoHa (`hada_*`), LoKr (`lokr_*`), full weight differences (`diff`), and DoRA's `dora_scale`.

Family: the cross-attention width the LoRA's `attn2.to_k` layers take (768 SD 1.x, 1024 SD 2.x, 2048 SDXL), else
the text encoder width, else SDXL's `lora_te2_` keys. A LoRA fits a checkpoint whose cross-attention has the same
width; that also holds for the tiny models the tests build.

Hashes (A1111's `Lora hashes`): the `sshs_model_hash` the trainer wrote in the metadata, else kohya's "addnet" hash
(sha256 of the file after its JSON header) for .safetensors, the plain sha256 otherwise; 12 hex digits.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pipelines import discovery
from pipelines.folders import preview_of, walk

log = logging.getLogger("studio.loras")

SUFFIXES = (".safetensors", ".pt", ".ckpt")
WIDTH_FAMILIES = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
FAMILY_LABELS = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "unknown": "unknown family"}


@dataclass
class LoraInfo:
    """One LoRA / LyCORIS file. `name` is its file stem, the name a `<lora:name:...>` tag uses."""

    name: str
    path: Path
    rel: str  # path under its folder (forward slashes), for display and search
    alias: str = ""  # the trainer's ss_output_name, also accepted in tags
    family: str = "unknown"
    context_dim: int | None = None  # the cross-attention width its attn2.to_k layers take
    text_dims: tuple[int, ...] = ()  # widths of the text encoders it changes (SDXL: two)
    formats: tuple[str, ...] = ()  # lora, locon, loha, lokr, full, dora
    modules: int = 0  # layers it changes
    metadata: dict = field(default_factory=dict)
    preview: Path | None = None
    sha256: str | None = None
    error: str | None = None

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:12] if self.sha256 else None

    @property
    def family_label(self) -> str:
        return FAMILY_LABELS.get(self.family, self.family)

    def to_dict(self) -> dict:
        """A1111's GET /sdapi/v1/loras entry (name, alias, path, metadata) plus what this studio knows."""
        return {"name": self.name, "alias": self.alias or self.name, "path": str(self.path), "metadata": self.metadata,
                "family": self.family, "formats": list(self.formats), "modules": self.modules,
                "short_hash": self.short_hash, "preview": str(self.preview) if self.preview else None,
                "error": self.error}


# ---------------------------------------------------------------- reading a file's keys


def read_metadata(path: Path) -> dict:
    """The `__metadata__` strings of a .safetensors header ({} for other files)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(length, 100 << 20)))
        meta = header.get("__metadata__") or {}
        return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    except (OSError, ValueError, struct.error):
        return {}


_WEIGHT_NAMES = ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight",
                 "lora.up.weight", "lora.down.weight", "alpha", "scale", "dora_scale", "hada_w1_a", "hada_w1_b",
                 "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2",
                 "lokr_w2_a", "lokr_w2_b", "lokr_t2", "diff", "diff_b")


def split_key(key: str) -> tuple[str, str] | None:
    """'lora_unet_x_attn2_to_k.lora_down.weight' -> ('lora_unet_x_attn2_to_k', 'lora_down.weight'); None if the key
    is no known LoRA weight."""
    for name in _WEIGHT_NAMES:
        if key.endswith("." + name):
            return key[: -len(name) - 1], name
    return None


def group(keys: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """Values (tensors or shapes) by module key, then by weight name."""
    out: dict[str, dict[str, object]] = {}
    for key, value in keys.items():
        parts = split_key(key)
        if parts:
            out.setdefault(parts[0], {})[parts[1]] = value
    return out


def in_features(weights: Mapping[str, Sequence[int]]) -> int | None:
    """The input width of the layer a module's weights change, from their shapes alone."""
    for name in ("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b", "diff"):
        if name in weights and len(weights[name]) >= 2:
            return int(weights[name][1])
    w1 = weights.get("lokr_w1") or weights.get("lokr_w1_b")
    w2 = weights.get("lokr_w2") or weights.get("lokr_w2_b")
    if w1 and w2 and len(w1) >= 2 and len(w2) >= 2:
        return int(w1[1]) * int(w2[1])
    return None


def module_format(weights: Mapping[str, object]) -> str:
    names = set(weights)
    if any(n.startswith("hada_") for n in names):
        return "loha"
    if any(n.startswith("lokr_") for n in names):
        return "lokr"
    if "diff" in names:
        return "full"
    down = weights.get("lora_down.weight") or weights.get("lora_A.weight") or weights.get("lora.down.weight")
    return "locon" if down is not None and len(down) == 4 and tuple(down[2:]) != (1, 1) else "lora"


def _text_part(key: str) -> int | None:
    """Which text encoder a module key belongs to (1 or 2), None for the UNet."""
    if key.startswith(("lora_te2_", "text_encoder_2.")):
        return 2
    if key.startswith(("lora_te_", "lora_te1_", "text_encoder.")):
        return 1
    return None


def classify(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> dict:
    """family, context_dim, text_dims, formats and module count of a LoRA file, from its names and shapes.
    ValueError when the file holds no LoRA weights (a checkpoint, a VAE, an embedding...)."""
    modules = group(shapes)
    if not modules:
        raise ValueError("no LoRA weights in this file (is it a checkpoint, a VAE or an embedding?)")
    context = None
    text: dict[int, int] = {}
    for key, weights in modules.items():
        part = _text_part(key)
        width = in_features(weights)  # type: ignore[arg-type]
        if width is None:
            continue
        if part is None and re.search(r"attn2[._]to_k$", key):
            context = context or width
        elif part is not None and re.search(r"(q_proj|self_attn[._]q_proj)$", key):
            text.setdefault(part, width)
    metadata = metadata or {}
    if context in WIDTH_FAMILIES:
        family = WIDTH_FAMILIES[context]
    elif 2 in text or str(metadata.get("ss_base_model_version", "")).startswith("sdxl"):
        family = "sdxl"
    elif context is None and text.get(1) in (768, 1024):
        family = "sd15" if text[1] == 768 else "sd2"
    else:
        family = "unknown"
    formats = sorted({module_format(w) for w in modules.values()} |
                     ({"dora"} if any("dora_scale" in w for w in modules.values()) else set()))
    return {"family": family, "context_dim": context, "text_dims": tuple(text[k] for k in sorted(text)),
            "formats": tuple(formats), "modules": len(modules)}


def inspect(path: Path, root: Path) -> LoraInfo:
    rel = path.relative_to(root).as_posix()
    info = LoraInfo(name=path.stem, path=path, rel=rel, preview=preview_of(path))
    try:
        info.metadata = read_metadata(path)
        info.alias = info.metadata.get("ss_output_name", "") or ""
        fields = classify(discovery.read_header(path).shapes, info.metadata)
        for k, v in fields.items():
            setattr(info, k, v)
    except Exception as e:  # one bad file must not break the list
        info.error = str(e) or type(e).__name__
        log.warning("could not read LoRA %s: %s", rel, info.error)
    return info


def scan(roots: Sequence[Path]) -> list[LoraInfo]:
    """Every LoRA / LyCORIS file under `roots` (sub-folders and the owner's symlinks too), first name wins."""
    found: dict[str, LoraInfo] = {}
    for root in roots:
        for path in walk(root, SUFFIXES):
            if path.stem not in found:
                found[path.stem] = inspect(path, Path(root))
    return sorted(found.values(), key=lambda i: i.name.lower())


def lora_hash(info: LoraInfo, cache_file: Path | None) -> str:
    """A1111's LoRA hash (see the module docstring); computed once, then cached by path, size and mtime."""
    if info.sha256 is None:
        info.sha256 = info.metadata.get("sshs_model_hash") or discovery.sha256_of(
            info.path, cache_file, addnet=info.path.suffix.lower() == ".safetensors")
    return info.sha256


def incompatibility(info: LoraInfo, model_family: str, model_context: int | None) -> str | None:
    """Why a LoRA cannot be used with a checkpoint (family and cross-attention width), or None."""
    sdxl_model = model_family.startswith("sdxl")
    if info.family == "sdxl" and not sdxl_model and info.context_dim is None:
        return f"it is an SDXL LoRA (two text encoders); the model is {discovery.FAMILIES[model_family].label}"
    if info.context_dim and model_context and info.context_dim != model_context:
        fam = info.family_label if info.family != "unknown" else f"a {info.context_dim}-wide cross-attention"
        return (f"it was trained for {fam} ({info.context_dim}-wide cross-attention); the model is "
                f"{discovery.FAMILIES.get(model_family, discovery.FAMILIES['unknown']).label} "
                f"({model_context}-wide)")
    return None


class LoraLibrary:
    """The listed LoRA / LyCORIS files, refreshed on demand; shared by the studio (checks, lists) and the engine."""

    def __init__(self, roots: Sequence[Path], hash_cache: Path | None = None):
        self.roots = tuple(Path(r) for r in roots)
        self.hash_cache = hash_cache
        self._lock = threading.Lock()
        self._items: list[LoraInfo] | None = None

    def refresh(self) -> list[LoraInfo]:
        items = scan(self.roots)
        with self._lock:
            self._items = items
        log.info("%d LoRA / LyCORIS files", len(items))
        return list(items)

    def list(self) -> list[LoraInfo]:
        with self._lock:
            items = self._items
        return list(items) if items is not None else self.refresh()

    def find(self, name: str) -> LoraInfo | None:
        """By file stem, then the trainer's alias, then the path under its folder (with or without suffix)."""
        items = self.list()
        for test in (lambda i: i.name == name, lambda i: i.alias == name,
                     lambda i: name in (i.rel, i.rel.rsplit(".", 1)[0]), lambda i: i.name.lower() == name.lower()):
            for info in items:
                if test(info):
                    return info
        return None

    def hash(self, info: LoraInfo) -> str:
        return lora_hash(info, self.hash_cache)
