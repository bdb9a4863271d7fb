"""Find checkpoints under models/Stable-diffusion, tell their family from the weights, hash them like A1111.

No torch at import time. A `.safetensors` file is classified from its JSON header alone (tensor names and
shapes, no tensor data is read); a `.ckpt`/`.pt` pickle is opened lazily with
`torch.load(weights_only=True)` onto the meta device, so pickles that carry code are refused. Diffusers
folders are classified from `model_index.json` and the UNet/scheduler configs.

Family rules (same keys diffusers' `infer_diffusers_model_type` looks at):
- SDXL: an OpenCLIP-bigG text encoder at `conditioner.embedders.1.model.*` (or, with no text encoder in the
  file, a UNet `label_emb` / `add_embedding` taking 2816 features or a 2048-wide cross-attention).
- SD 2.x: an OpenCLIP-H text encoder at `cond_stage_model.model.*` (or a 1024-wide cross-attention).
- SD 1.x: a CLIP-L text encoder at `cond_stage_model.transformer.*` (or a 768-wide cross-attention).
- Inpainting: the UNet's first conv (`input_blocks.0.0.weight`) takes 9 input channels instead of 4.
- SD 2.x epsilon vs v-prediction: an A1111-style sidecar `<stem>.yaml` decides (`parameterization: "v"`);
  without one, diffusers' rule is used (`global_step == 875000` -> epsilon, the 512 "base" models), then
  the file name ("512"/"base"/"turbo" -> epsilon; SD-Turbo is a 512 px epsilon distillation), else v-prediction
  768 px like diffusers' default for SD 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping, Sequence

from pipelines.folders import check_name, walk

log = logging.getLogger("studio.discovery")

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
VAE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")  # a VAE beside its checkpoint: not a checkpoint (A1111)
UNET = "model.diffusion_model."


@dataclass(frozen=True)
class Family:
    """A model family: what the UI needs to pick sizes, pipelines and prompt handling."""

    name: str
    label: str
    native: int  # training resolution in px (square)
    kinds: tuple[str, ...]  # pipeline kinds the family serves
    prediction: str = "epsilon"
    sdxl: bool = False
    inpainting: bool = False


_ALL = ("txt2img", "img2img", "inpaint")
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd15", "Stable Diffusion 1.x", 512, _ALL),
    Family("sd15-inpaint", "Stable Diffusion 1.x inpainting", 512, ("inpaint",), inpainting=True),
    Family("sd2", "Stable Diffusion 2.x (512, epsilon)", 512, _ALL),
    Family("sd2-v", "Stable Diffusion 2.x (768, v-prediction)", 768, _ALL, prediction="v_prediction"),
    Family("sd2-inpaint", "Stable Diffusion 2.x inpainting", 512, ("inpaint",), inpainting=True),
    Family("sdxl", "Stable Diffusion XL", 1024, _ALL, sdxl=True),
    Family("sdxl-inpaint", "Stable Diffusion XL inpainting", 1024, ("inpaint",), sdxl=True, inpainting=True),
    Family("unknown", "Unknown", 512, ()),
)}

# Well-known hub ids -> family (and native size where it differs from the family's), used until downloaded.
HUB_FAMILIES: dict[str, tuple[str, int | None]] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("sd15", None),
    "runwayml/stable-diffusion-v1-5": ("sd15", None),
    "compvis/stable-diffusion-v1-4": ("sd15", None),
    "stable-diffusion-v1-5/stable-diffusion-inpainting": ("sd15-inpaint", None),
    "runwayml/stable-diffusion-inpainting": ("sd15-inpaint", None),
    "stabilityai/stable-diffusion-2-1": ("sd2-v", None),
    "stabilityai/stable-diffusion-2": ("sd2-v", None),
    "stabilityai/stable-diffusion-2-1-base": ("sd2", None),
    "stabilityai/stable-diffusion-2-base": ("sd2", None),
    "stabilityai/stable-diffusion-2-inpainting": ("sd2-inpaint", None),
    "stabilityai/stable-diffusion-xl-base-1.0": ("sdxl", None),
    "stabilityai/sdxl-turbo": ("sdxl", 512),
    "stabilityai/sd-turbo": ("sd2", None),  # SD 2.1 distilled (ADD): 512 px, epsilon, 1-4 steps without CFG
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": ("sdxl-inpaint", None),
}

_DISTILLED = re.compile(r"turbo|lcm|lightning|hyper", re.IGNORECASE)


@dataclass
class CheckpointInfo:
    """One selectable model. `name` is the path under models/Stable-diffusion (forward slashes) or the hub id."""

    name: str
    source: str  # "file" | "folder" | "hub"
    path: Path | None = None
    hub_id: str | None = None
    family: str = "unknown"
    native: int = 512
    inpainting: bool = False
    distilled: bool = False
    sha256: str | None = None
    error: str | None = None

    @property
    def short_hash(self) -> str | None:
        """A1111's "Model hash": the first 10 hex digits of the full-file sha256."""
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        """A1111's checkpoint title, "name [shorthash]" once the hash is known."""
        return f"{self.name} [{self.short_hash}]" if self.sha256 else self.name

    @property
    def model_name(self) -> str:
        """A1111's infotext "Model:" value: the file stem (folder name, last part of a hub id)."""
        if self.source == "file":
            return PurePosixPath(self.name).stem
        return PurePosixPath(self.name).name

    def to_dict(self) -> dict:
        """JSON-friendly view including the derived fields."""
        return {
            "name": self.name, "title": self.title, "model_name": self.model_name, "source": self.source,
            "path": str(self.path) if self.path else None, "hub_id": self.hub_id, "family": self.family,
            "native": self.native, "inpainting": self.inpainting, "distilled": self.distilled,
            "sha256": self.sha256, "short_hash": self.short_hash, "error": self.error,
        }


# ---------------------------------------------------------------- reading weights without loading them


@dataclass
class WeightsHeader:
    """Tensor names -> shapes of a single-file checkpoint, plus the training step when the file records one."""

    shapes: dict[str, tuple[int, ...]]
    global_step: int | None = None


def read_safetensors_header(path: Path) -> WeightsHeader:
    """Parse the 8-byte length + JSON header of a .safetensors file; check the data is all there."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > min(size - 8, 100 << 20):
            raise ValueError("not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()}
            end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a safetensors file (bad header: {e})") from None
    if 8 + length + end > size:
        raise ValueError(f"truncated safetensors file ({size} bytes, header needs {8 + length + end})")
    return WeightsHeader(shapes)


def read_torch_header(path: Path) -> WeightsHeader:
    """Tensor shapes of a .ckpt/.pt pickle, loaded onto the meta device with weights_only=True (no code runs)."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise ValueError("not a plain tensor checkpoint (the pickle holds code; convert it to .safetensors)") from None
        raise ValueError(f"not a plain tensor checkpoint ({str(e).splitlines()[0]})") from None
    except Exception as e:  # zip/EOF/format errors from torch
        raise ValueError(f"unreadable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a plain tensor checkpoint (no state dict)")
    step = obj.get("global_step")
    while isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    shapes = {k: tuple(v.shape) for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return WeightsHeader(shapes, step if isinstance(step, int) else None)


def read_header(path: Path) -> WeightsHeader:
    """Tensor names/shapes of any single-file checkpoint."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_safetensors_header(path)
    return read_torch_header(path)


# ---------------------------------------------------------------- family detection


def _cross_attention_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return None


def _is_v_parameterization(yaml_text: str | None, global_step: int | None, name: str) -> bool:
    if yaml_text is not None:
        return re.search(r"""^\s*parameterization:\s*["']?v["']?\s*(#.*)?$""", yaml_text, re.M) is not None
    if global_step == 875000:  # diffusers: SD 2.x "base" checkpoints (epsilon, 512 px)
        return False
    return not re.search(r"512|base|turbo", PurePosixPath(name).stem, re.IGNORECASE)


def classify_weights(shapes: Mapping[str, Sequence[int]], *, global_step: int | None = None,
                     yaml_text: str | None = None, name: str = "") -> tuple[str, int, bool]:
    """(family, native px, inpainting) from the tensor names/shapes of a single-file checkpoint."""
    keys = shapes.keys()
    if not any(k.startswith((UNET, "down_blocks.", "conv_in.")) for k in keys):
        raise ValueError("not a Stable Diffusion checkpoint (no UNet weights; a LoRA, VAE or embedding?)")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight") or shapes.get("conv_in.weight")
    in_channels = conv_in[1] if conv_in and len(conv_in) == 4 else 4
    if in_channels not in (4, 9):
        raise ValueError(f"unsupported UNet with {in_channels} input channels (depth or instruct model?)")
    inpainting = in_channels == 9

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    label_emb = shapes.get(UNET + "label_emb.0.0.weight") or shapes.get("add_embedding.linear_1.weight")
    width = _cross_attention_width(shapes)
    if has("conditioner.embedders.0.model.") and not has("conditioner.embedders.1."):
        raise ValueError("SDXL refiner checkpoints are not supported")
    if has("conditioner.embedders.1.model."):
        base = "sdxl"
    elif has("cond_stage_model.model."):
        base = "sd2"
    elif has("cond_stage_model.transformer."):
        base = "sd15"
    elif (label_emb and label_emb[-1] == 2816) or width == 2048:
        base = "sdxl"
    elif width == 1024:
        base = "sd2"
    elif width == 768:
        base = "sd15"
    else:
        raise ValueError("unrecognised architecture (not SD 1.x, 2.x or XL)")

    if inpainting:
        family = base + "-inpaint"
    elif base == "sd2" and _is_v_parameterization(yaml_text, global_step, name):
        family = "sd2-v"
    else:
        family = base
    return family, FAMILIES[family].native, inpainting


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"bad JSON in {path.name}: {e}") from None


def classify_folder(path: Path) -> tuple[str, int, bool]:
    """(family, native px, inpainting) of a diffusers folder, by structure (works for tiny test models too)."""
    index = _read_json(path / "model_index.json")
    unet = _read_json(path / "unet" / "config.json")
    if not unet:
        raise ValueError("diffusers folder without unet/config.json")
    if "text_encoder_2" in index and "text_encoder" not in index:
        raise ValueError("SDXL refiner folders are not supported")
    sdxl = "text_encoder_2" in index or unet.get("addition_embed_type") == "text_time"
    in_channels = int(unet.get("in_channels", 4))
    if in_channels not in (4, 9):
        raise ValueError(f"unsupported UNet with {in_channels} input channels")
    inpainting = in_channels == 9
    if sdxl:
        base = "sdxl"
    else:
        text = _read_json(path / "text_encoder" / "config.json")
        openclip = unet.get("cross_attention_dim") == 1024 or text.get("hidden_act") == "gelu"
        base = "sd2" if openclip else "sd15"
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    if inpainting:
        family = base + "-inpaint"
    elif base == "sd2" and scheduler.get("prediction_type") == "v_prediction":
        family = "sd2-v"
    else:
        family = base
    sample = unet.get("sample_size")
    native = int(sample) * 8 if isinstance(sample, int) else FAMILIES[family].native
    return family, native, inpainting


def detect_family(path: Path) -> tuple[str, int, bool]:
    """(family, native px, inpainting) of a single-file checkpoint or diffusers folder; ValueError if unreadable."""
    path = Path(path)
    if path.is_dir():
        return classify_folder(path)
    header = read_header(path)
    sidecar = path.with_suffix(".yaml")
    yaml_text = sidecar.read_text(encoding="utf-8", errors="replace") if sidecar.is_file() else None
    return classify_weights(header.shapes, global_step=header.global_step, yaml_text=yaml_text, name=path.name)


FAMILY_CONTEXT = {"sd15": 768, "sd15-inpaint": 768, "sd2": 1024, "sd2-v": 1024, "sd2-inpaint": 1024, "sdxl": 2048,
                  "sdxl-inpaint": 2048}


def context_width(info: CheckpointInfo) -> int | None:
    """The width of the checkpoint's cross-attention (what a LoRA's attn2.to_k layers must take): from the UNet
    config of a folder, the weights' header of a file, else the family's (a hub id not downloaded yet)."""
    try:
        if info.path is not None and Path(info.path).is_dir():
            width = _read_json(Path(info.path) / "unet" / "config.json").get("cross_attention_dim")
            return int(width) if isinstance(width, int) else None
        if info.path is not None:
            return _cross_attention_width(read_header(Path(info.path)).shapes)
    except (OSError, ValueError):
        return None
    return FAMILY_CONTEXT.get(info.family)


# ---------------------------------------------------------------- hashes


def default_hash_cache(models_dir: Path) -> Path:
    return Path(models_dir) / ".cache" / "hashes.json"


def hash_target(path: Path) -> Path:
    """The file whose sha256 is the model hash: the file itself, or a diffusers folder's UNet weights."""
    path = Path(path)
    if path.is_file():
        return path
    unet = path / "unet"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"):
        if (unet / name).is_file():
            return unet / name
    raise FileNotFoundError(f"no UNet weights in {path}")


def _cache_key(target: Path) -> tuple[str, int, int]:
    st = target.stat()
    return str(target.resolve()), st.st_size, st.st_mtime_ns


def _load_cache(cache_file: Path | None) -> dict:
    if cache_file is None:
        return {}
    try:
        data = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_sha256(path: Path, cache_file: Path | None, *, addnet: bool = False) -> str | None:
    """The cached sha256 of `path` if the cache entry matches its current size and mtime, else None."""
    try:
        key, size, mtime = _cache_key(hash_target(path))
    except OSError:
        return None
    entry = _load_cache(cache_file).get(key + ("#addnet" if addnet else ""))
    if isinstance(entry, dict) and entry.get("size") == size and entry.get("mtime_ns") == mtime:
        return entry.get("sha256")
    return None


def sha256_of(path: Path, cache_file: Path | None = None, *, addnet: bool = False) -> str:
    """Full-file sha256 (1 MiB blocks), cached in `cache_file` keyed by path + size + mtime.

    `addnet=True`: kohya's "addnet" hash of a .safetensors file, the sha256 of everything after its JSON header
    (A1111 hashes LoRA safetensors this way, so metadata edits keep the hash)."""
    hit = cached_sha256(path, cache_file, addnet=addnet)
    if hit:
        return hit
    target = hash_target(path)
    key, size, mtime = _cache_key(target)
    digest = hashlib.sha256()
    with open(target, "rb") as f:
        if addnet:
            (length,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + length)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if cache_file is not None:
        cache_file = Path(cache_file)
        cache = _load_cache(cache_file)  # re-read: another process may have added entries
        cache[key + ("#addnet" if addnet else "")] = {"size": size, "mtime_ns": mtime, "sha256": value}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, cache_file)
    return value


def ensure_hash(info: CheckpointInfo, cache_file: Path | None = None) -> str | None:
    """Compute (once, then cached) and store the sha256 of a local checkpoint; None for undownloaded hub ids."""
    if info.sha256 is None and info.path is not None:
        info.sha256 = sha256_of(info.path, cache_file)
    return info.sha256


# ---------------------------------------------------------------- scanning


def models_root(models_dir: Path) -> Path:
    return Path(models_dir) / "Stable-diffusion"


def resolve_model_path(root: Path, name: str) -> Path:
    """`root`/<name> for a name a client sent; ValueError for `..`, absolute or drive-letter names. Symlinks the
    owner placed under `root` are followed (shared model folders); a name still has to be one that `scan` listed."""
    return Path(root) / check_name(name)


def walk_models(root: Path, marker: str = "model_index.json",
                suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> Iterator[Path]:
    """Weight files and diffusers folders (a folder holding `marker`, not entered) under root, following the
    owner's symlinks (pipelines/folders.py)."""
    return walk(root, suffixes, marker)


def _inspect_local(root: Path, path: Path, hash_cache: Path | None) -> CheckpointInfo:
    name = path.relative_to(root).as_posix()
    info = CheckpointInfo(name=name, source="folder" if path.is_dir() else "file", path=path,
                          distilled=bool(_DISTILLED.search(name)))
    try:
        info.family, info.native, info.inpainting = detect_family(path)
        info.sha256 = cached_sha256(path, hash_cache)
    except Exception as e:  # one bad file must not break the list
        info.family, info.native, info.error = "unknown", FAMILIES["unknown"].native, str(e) or type(e).__name__
        log.warning("could not classify %s: %s", name, info.error)
    return info


def hub_cached_folder(repo_id: str, hub_cache: Path | None = None) -> Path | None:
    """The local snapshot folder of a hub id when its model_index.json and UNet config are cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=hub_cache)
    except Exception:  # invalid id, unreadable cache
        return None
    if isinstance(found, str) and (Path(found).parent / "unet" / "config.json").is_file():
        return Path(found).parent
    return None


def _inspect_hub(repo_id: str, hub_cache: Path | None, hash_cache: Path | None) -> CheckpointInfo:
    info = CheckpointInfo(name=repo_id, source="hub", hub_id=repo_id, distilled=bool(_DISTILLED.search(repo_id)))
    folder = hub_cached_folder(repo_id, hub_cache)
    try:
        if folder is not None:
            info.path = folder
            info.family, info.native, info.inpainting = classify_folder(folder)
            info.sha256 = cached_sha256(folder, hash_cache)
        else:
            family, native = HUB_FAMILIES.get(repo_id.lower(), ("unknown", None))
            fam = FAMILIES[family]
            info.family, info.native, info.inpainting = family, native or fam.native, fam.inpainting
    except Exception as e:
        info.family, info.error = "unknown", str(e)
    return info


def scan(models_dir: Path, hub_ids: Sequence[str] = (), *, hub_cache: Path | None = None,
         hash_cache: Path | None = None, root: Path | None = None) -> list[CheckpointInfo]:
    """All checkpoints under `root` (default models_dir/Stable-diffusion; `--ckpt-dir`) plus the given hub ids,
    sorted by name.

    Nothing is hashed here; hashes already in the cache (default models_dir/.cache/hashes.json) are filled in.
    """
    root = Path(root) if root is not None else models_root(models_dir)
    hash_cache = hash_cache if hash_cache is not None else default_hash_cache(models_dir)
    infos = [_inspect_local(root, p, hash_cache) for p in walk_models(root)
             if not p.name.lower().endswith(VAE_SUFFIXES)] if root.is_dir() else []
    infos += [_inspect_hub(h, hub_cache, hash_cache) for h in dict.fromkeys(hub_ids)]
    return sorted(infos, key=lambda i: (i.name.lower(), i.name))


def find_checkpoint(infos: Sequence[CheckpointInfo], key: str) -> CheckpointInfo | None:
    """Look up by name, title, model name, short hash or full sha256 (as A1111's API accepts)."""
    for info in infos:
        if key in (info.name, info.title, info.model_name) or (info.sha256 and key in (info.short_hash, info.sha256)):
            return info
    return None
