"""Textual-inversion embeddings, listed the way A1111 lists them. No torch at import time.

Every `.pt`, `.safetensors` and `.bin` file under the embedding folders (models/embeddings and A1111's top-level
embeddings/, or --embeddings-dir) is an embedding named by its file stem; a prompt uses it by writing that name
(`EasyNegative`, `(EasyNegative:1.2)`). When two files share a stem, the first one found wins.

Formats (A1111's `create_embedding_from_data`):
- A1111 `.pt`: ``{"string_to_param": {"*": tensor[n, dim]}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"}``.
- `.safetensors` (or `.pt`) holding ``emb_params`` [n, dim] (SD 1.x / 2.x).
- SDXL: ``clip_l`` [n, 768] and ``clip_g`` [n, 1280], one tensor per text encoder.
- diffusers' learned_embeds.bin: ``{token: tensor[dim] or [n, dim]}`` (a single key).

Only shapes are read here: a safetensors header, or a pickle loaded onto the meta device with
`torch.load(weights_only=True)` (no tensor data, no code runs). Whether an embedding fits a model is decided by
widths, as A1111 does: one tensor as wide as an SD 1.x/2.x model's text encoder, or clip_l + clip_g as wide as
SDXL's two (an SD 1.x embedding is skipped on SDXL). `TI hashes` in the infotext is the first 12 hex digits of the
whole file's sha256 (cached in models/.cache/hashes.json, like the checkpoints' hashes).
"""

from __future__ import annotations

import json
import logging
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipelines import discovery
from pipelines.folders import preview_of, walk

log = logging.getLogger("studio.embeddings")

SUFFIXES = (".pt", ".safetensors", ".bin")
MAX_VECTORS = 75  # a prompt chunk's tokens: an embedding must fit in one chunk
SDXL_KEYS = ("clip_l", "clip_g")  # the SDXL format's tensor per text encoder, in the encoders' order
_FAMILIES = {(768,): "SD 1.x", (1024,): "SD 2.x", (768, 1280): "SDXL"}
_FAMILY_DIMS = {"sd15": (768,), "sd2": (1024,), "sdxl": (768, 1280)}  # by discovery's family name (prefix)
# single-file checkpoints: the token embedding of each text encoder, [vocab, width]
_TE_KEYS = {
    "sdxl": ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
             "conditioner.embedders.1.model.token_embedding.weight"),
    "sd15": ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",),
    "sd2": ("cond_stage_model.model.token_embedding.weight",),
}

TensorPath = tuple[str, ...]  # where a tensor sits in the loaded file: keys from the top


def tensor_paths(data: Mapping[str, Any], is_tensor) -> list[TensorPath]:
    """Where the vectors of each text encoder sit in a loaded embedding file (values: tensors or shapes):
    one path for SD 1.x/2.x formats, two (clip_l, clip_g) for SDXL's. ValueError when the format is unknown."""
    if not isinstance(data, Mapping):
        raise ValueError("not an embedding (no dictionary of tensors)")
    params = data.get("string_to_param")
    if params is not None:
        params = getattr(params, "_parameters", params)  # torch 1.11's ParameterDict
        if not isinstance(params, Mapping) or not params:
            raise ValueError("not an embedding (empty string_to_param)")
        if len(params) != 1:
            raise ValueError("embedding file has multiple terms in it")
        return [("string_to_param", next(iter(params)))]
    if all(k in data and is_tensor(data[k]) for k in SDXL_KEYS):
        return [(k,) for k in SDXL_KEYS]
    if "emb_params" in data and is_tensor(data["emb_params"]):
        return [("emb_params",)]
    tensors = [k for k, v in data.items() if is_tensor(v)]
    if len(tensors) == 1 and len(data) == 1:  # diffusers concept: {token: vector}
        return [(tensors[0],)]
    if tensors:
        raise ValueError(f"not an embedding format this studio knows ({len(tensors)} tensors: "
                         f"{', '.join(sorted(map(str, tensors))[:4])})")
    raise ValueError("not an embedding (no tensors)")


def at(data: Mapping[str, Any], path: TensorPath) -> Any:
    """The value at `path` (a tensor, or its shape when `data` is a safetensors header)."""
    for key in path:
        data = getattr(data, "_parameters", data)[key]
    return data


def vector_shape(shape: Sequence[int]) -> tuple[int, int]:
    """(vectors, width) of an embedding tensor's shape; a single vector may be stored 1-D."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2 and shape[0] > 0 and shape[1] > 0:
        return shape
    raise ValueError(f"not an embedding (a tensor of shape {list(shape)}, expected [vectors, width])")


@dataclass
class EmbeddingInfo:
    """One embedding file: its name in prompts, what its vectors look like, and what A1111's API reports."""

    name: str
    path: Path
    dims: tuple[int, ...] = ()  # width per text encoder: (768,) SD 1.x, (1024,) SD 2.x, (768, 1280) SDXL
    vectors: int = 0  # tokens it takes in a prompt
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    preview: Path | None = None
    sha256: str | None = None
    error: str | None = None

    @property
    def shape(self) -> int:
        """A1111's "shape": the width of the vectors (clip_l + clip_g for SDXL)."""
        return sum(self.dims)

    @property
    def short_hash(self) -> str | None:
        """A1111's TI hash: the first 12 hex digits of the file's sha256."""
        return self.sha256[:12] if self.sha256 else None

    @property
    def family(self) -> str | None:
        return _FAMILIES.get(self.dims)

    def api(self) -> dict[str, Any]:
        """A1111's `GET /sdapi/v1/embeddings` item."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint, "sd_checkpoint_name": self.sd_checkpoint_name,
                "shape": self.shape, "vectors": self.vectors}


def _read_pickle(path: Path) -> Any:
    """A .pt/.bin pickle onto the meta device, weights_only (like discovery.read_torch_header, without flattening)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():
            raise ValueError("not a plain tensor file (the pickle holds code; convert it to .safetensors)") from None
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
        raise ValueError(f"unreadable embedding ({detail[0] if detail else 'not a pickle'})") from None
    except Exception as e:  # zip/EOF/format errors from torch
        raise ValueError(f"unreadable embedding ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_embedding(path: Path, name: str | None = None) -> EmbeddingInfo:
    """An embedding file's description from its header or a meta-device load; `error` says why it is unusable."""
    path = Path(path)
    info = EmbeddingInfo(name=name or path.stem, path=path, preview=preview_of(path))
    try:
        if path.suffix.lower() == ".safetensors":
            shapes = discovery.read_safetensors_header(path).shapes
            found = [vector_shape(at(shapes, p)) for p in tensor_paths(shapes, lambda v: isinstance(v, tuple))]
        else:
            import torch

            data = _read_pickle(path)
            found = [vector_shape(tuple(at(data, p).shape))
                     for p in tensor_paths(data, lambda v: isinstance(v, torch.Tensor))]
            step = data.get("step")
            info.step = step if isinstance(step, int) and not isinstance(step, bool) else None
            info.sd_checkpoint, info.sd_checkpoint_name = (_text(data.get("sd_checkpoint")),
                                                            _text(data.get("sd_checkpoint_name")))
        counts = {n for n, _ in found}
        if len(counts) != 1:
            raise ValueError(f"its tensors hold different numbers of vectors ({sorted(counts)})")
        info.vectors, info.dims = counts.pop(), tuple(d for _, d in found)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        info.error = str(e) or type(e).__name__
    return info


def describe_encoders(dims: tuple[int, ...]) -> str:
    """"a 768-wide text encoder (SD 1.x)", "two text encoders, 768- and 1280-wide (SDXL)"."""
    family = _FAMILIES.get(tuple(dims))
    tail = f" ({family})" if family else ""
    if len(dims) == 1:
        return f"a {dims[0]}-wide text encoder{tail}"
    if len(dims) == 2:
        return f"two text encoders, {dims[0]}- and {dims[1]}-wide{tail}"
    return f"text encoders {'/'.join(map(str, dims))} wide{tail}"


def compatible(info: EmbeddingInfo, te_dims: tuple[int, ...] | None) -> str | None:
    """None when the embedding can be used with text encoders of these widths (one per encoder: (hidden,) for SD
    1.x/2.x, (hidden_l, hidden_g) for SDXL; None = unknown, anything readable goes), else the reason it cannot."""
    if info.error:
        return info.error
    if info.vectors > MAX_VECTORS:
        return f"it has {info.vectors} vectors; at most {MAX_VECTORS} fit in a prompt chunk"
    if te_dims is not None and tuple(info.dims) != tuple(te_dims):
        return f"made for {describe_encoders(info.dims)}; this model has {describe_encoders(tuple(te_dims))}"
    return None


# ---------------------------------------------------------------- a checkpoint's text-encoder widths


def _hidden_size(config: Path) -> int | None:
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def family_dims(family: str) -> tuple[int, ...] | None:
    """A family's text-encoder widths (discovery's family names: sd15, sd2-v, sdxl-inpaint...); None if unknown."""
    return next((dims for prefix, dims in _FAMILY_DIMS.items() if family.startswith(prefix)), None)


def checkpoint_te_dims(info: discovery.CheckpointInfo) -> tuple[int, ...] | None:
    """The widths of a checkpoint's text encoder(s) without loading it: a diffusers folder's text_encoder(_2) configs,
    a single file's token-embedding shapes, else (a hub id not downloaded) the family's. None when unknown."""
    path = info.path
    try:
        if path is not None and path.is_dir():
            first, second = (_hidden_size(path / sub / "config.json") for sub in ("text_encoder", "text_encoder_2"))
            if first is not None:
                return (first,) if second is None else (first, second)
        elif path is not None and path.is_file():
            shapes = discovery.read_header(path).shapes
            for keys in _TE_KEYS.values():  # SDXL's first: its first encoder's key is not SD 1.x's
                if all(len(shapes.get(k, ())) == 2 for k in keys):
                    return tuple(shapes[k][1] for k in keys)
    except (OSError, ValueError) as e:
        log.warning("could not read the text encoder width of %s: %s", info.name, e)
    return family_dims(info.family)


# ---------------------------------------------------------------- the listing


class Embeddings:
    """The embeddings in the embedding folders. Each `list()` walks the folders again (a file added, changed or
    removed is seen at the next job, as in A1111), reading only files it has not read at their current size and
    mtime; `refresh()` reads every file again. Safe to use from several threads."""

    def __init__(self, folders: Iterable[Path], hash_cache: Path | None = None):
        self.folders = tuple(Path(f) for f in folders)
        self.hash_cache = hash_cache
        self._lock = threading.Lock()
        self._read: dict[tuple[str, int, int], EmbeddingInfo] = {}  # (path, size, mtime_ns) -> info
        self._warned: set[str] = set()
        self._te_dims: dict[tuple[Any, ...], tuple[int, ...] | None] = {}

    def list(self) -> list[EmbeddingInfo]:
        """Every embedding once by name (the first file found wins), in folder then path order."""
        with self._lock:
            seen: dict[str, EmbeddingInfo] = {}
            fresh: dict[tuple[str, int, int], EmbeddingInfo] = {}
            for root in self.folders:
                for path in walk(root, SUFFIXES):
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    key = (str(path), st.st_size, st.st_mtime_ns)
                    info = self._read.get(key) or self._describe(path)
                    fresh[key] = info
                    if info.name in seen:
                        if str(path) not in self._warned:
                            self._warned.add(str(path))
                            log.warning("embedding %s ignored: %s has the same name", path, seen[info.name].path)
                        continue
                    seen[info.name] = info
            self._read = fresh
            return list(seen.values())

    def _describe(self, path: Path) -> EmbeddingInfo:
        info = read_embedding(path)
        info.sha256 = discovery.cached_sha256(path, self.hash_cache)
        if info.error:
            log.warning("embedding %s cannot be used: %s", path, info.error)
        return info

    def refresh(self) -> list[EmbeddingInfo]:
        """Read every file again (A1111's refresh-embeddings)."""
        with self._lock:
            self._read.clear()
            self._warned.clear()
        return self.list()

    def usable(self, te_dims: tuple[int, ...] | None) -> list[EmbeddingInfo]:
        return [e for e in self.list() if compatible(e, te_dims) is None]

    def split(self, te_dims: tuple[int, ...] | None) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's `GET /sdapi/v1/embeddings` answer for text encoders of these widths; skipped ones carry a
        "reason" (an addition to A1111's answer)."""
        loaded: dict[str, dict[str, Any]] = {}
        skipped: dict[str, dict[str, Any]] = {}
        for e in self.list():
            reason = compatible(e, te_dims)
            if reason is None:
                loaded[e.name] = e.api()
            else:
                skipped[e.name] = {**e.api(), "reason": reason}
        return {"loaded": loaded, "skipped": skipped}

    def hash_of(self, info: EmbeddingInfo) -> str:
        """The file's sha256 (computed once, then cached by size and mtime)."""
        if info.sha256 is None:
            info.sha256 = discovery.sha256_of(info.path, self.hash_cache)
        return info.sha256

    def ti_hashes(self, used: Iterable[EmbeddingInfo]) -> str | None:
        """A1111's `TI hashes` infotext value, "name: hash, name2: hash", or None when no embedding was used."""
        parts = []
        for info in {e.name: e for e in used}.values():
            try:
                short = self.hash_of(info)[:12]
            except OSError as e:  # removed since it was read: the image is still made
                log.warning("could not hash embedding %s: %s", info.path, e)
                continue
            parts.append(f"{info.name.replace(':', '').replace(',', '')}: {short}")
        return ", ".join(parts) or None

    def te_dims(self, info: discovery.CheckpointInfo) -> tuple[int, ...] | None:
        """`checkpoint_te_dims`, remembered per checkpoint file (size and mtime): a .ckpt takes a while to read."""
        key: tuple[Any, ...] = (info.name, info.family)
        if info.path is not None and info.path.exists():
            st = info.path.stat()
            key += (str(info.path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._te_dims:
                return self._te_dims[key]
        dims = checkpoint_te_dims(info)
        with self._lock:
            self._te_dims[key] = dims
        return dims
