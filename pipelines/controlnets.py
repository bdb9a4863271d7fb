"""ControlNet models in models/ControlNet (as A1111's ControlNet extension reads it): listing, family, loading.

Single files (original `control_model.*` or diffusers layout), diffusers folders, hub ids (HF cache, else download).
Listing reads no tensor data (pickles go to the meta device with weights_only=True: pickles holding code are refused).
A single file's config: a sidecar `<stem>.json` (diffusers config) if present, else the family's shipped
`configs/controlnet-<family>` with every shape-bearing field read from the weights (SDXL "mid"/"small" load too),
heads by family convention (SD 1.x: 8, SD 2.x/XL: 64 channels each). Original keys go through diffusers'
`convert_controlnet_checkpoint` (+ SDXL `label_emb`); weights are assigned strictly (no silently random layer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipelines.discovery import read_header, walk_models

log = logging.getLogger("studio.controlnets")

Progress = Callable[[str, int, int], None]
SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")
FOLDER_WEIGHTS = tuple(f"diffusion_pytorch_model{v}.{e}" for e in ("safetensors", "bin") for v in ("", ".fp16"))
CONFIGS = Path(__file__).resolve().parent / "configs"
LDM = "control_model."
# hub ids not in the cache yet: family from the name (diffusers/controlnet-canny-sdxl-1.0, thibaud/controlnet-sd21-*)
HUB_NAME_FAMILIES = ((r"sdxl|(^|[-_/.])xl([-_/.]|$)", "sdxl"), (r"sd-?2[01x]?([-_/.]|$)|sd-?v?2[-_.]", "sd2"),
                     (r"sd-?(v?1[-_.]?5|15)|sd-controlnet|control_v1", "sd15"))
WHERE = ("put its files in models/ControlNet/ (a .safetensors/.pth file, or a folder holding config.json and "
         "diffusion_pytorch_model.safetensors)")


@dataclass
class ControlNetInfo:
    """One selectable ControlNet. `name` is the file stem, the folder name or the hub id."""

    name: str
    source: str  # "file" | "folder" | "hub"
    path: Path | None
    family: str | None  # "sd15" | "sd2" | "sdxl"; None if unknown
    hash: str | None  # A1111's legacy short hash of the weights file (None for hub ids)
    error: str | None = None

    @property
    def title(self) -> str:
        """What the A1111 ControlNet extension shows: "name [hash]"."""
        return f"{self.name} [{self.hash}]" if self.hash else self.name


def legacy_hash(path: Path) -> str:
    """A1111's old model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def folder_weights(folder: Path) -> Path | None:
    """The weights file of a diffusers ControlNet folder, if any."""
    return next((folder / n for n in FOLDER_WEIGHTS if (folder / n).is_file()), None)


def classify_weights(shapes: Mapping[str, Sequence[int]]) -> str:
    """"sd15" | "sd2" | "sdxl" from tensor names/shapes (either layout); ValueError if it is no full ControlNet."""
    if "lora_controlnet" in shapes or "difference" in shapes:
        raise ValueError("a Control-LoRA or 'difference' ControlNet, not a full ControlNet (not supported)")
    own = {k[len(LDM):]: s for k, s in shapes.items() if k.startswith(LDM)} or shapes  # old files also hold SD
    if not any(k.startswith(("input_hint_block.", "controlnet_cond_embedding.")) for k in own):
        raise ValueError("not a ControlNet (no hint/conditioning embedding weights: a T2I-Adapter, LLLite or LoRA?)")
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in own):
        return "sdxl"
    width = next((s[-1] for k, s in own.items() if k.endswith("attn2.to_k.weight")), 0)
    return {2048: "sdxl", 1024: "sd2"}.get(width, "sd15")


def classify_config(config: Mapping[str, Any]) -> str:
    """Family of a diffusers ControlNet config.json."""
    if config.get("_class_name", "ControlNetModel") != "ControlNetModel":
        raise ValueError(f"not a ControlNet ({config.get('_class_name')})")
    if config.get("addition_embed_type") == "text_time" or config.get("cross_attention_dim") == 2048:
        return "sdxl"
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd15"


def base_family(checkpoint_family: str) -> str:
    """The base of a checkpoint family: "sd15-inpaint" -> "sd15", "sd2-v" -> "sd2", "sdxl-inpaint" -> "sdxl"."""
    return (checkpoint_family or "unknown").split("-", 1)[0]


def compatible(cn: ControlNetInfo, checkpoint_family: str) -> bool:
    """Whether `cn` can steer a checkpoint of that family (an unknown family on either side is let through)."""
    base = base_family(checkpoint_family)
    return not cn.error and (cn.family is None or base not in ("sd15", "sd2", "sdxl") or cn.family == base)


def hub_cached_folder(repo_id: str, hub_cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of a hub ControlNet when its config.json and weights are in the cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache)
    except Exception:  # invalid id, unreadable cache
        return None
    return Path(found).parent if isinstance(found, str) and folder_weights(Path(found).parent) else None


def _inspect(path: Path | None, hub_id: str | None = None) -> ControlNetInfo:
    folder = path is not None and path.is_dir()
    name = hub_id or (path.name if folder else path.stem)
    info = ControlNetInfo(name, "hub" if hub_id else "folder" if folder else "file", path, None, None)
    try:
        if path is None:  # hub id not in the cache: go by its name
            info.family = next((fam for pattern, fam in HUB_NAME_FAMILIES if re.search(pattern, name, re.I)), None)
        elif folder:
            weights = folder_weights(path) or path / FOLDER_WEIGHTS[0]  # missing: the error names it
            info.hash = None if hub_id else legacy_hash(weights)
            info.family = classify_config(json.loads((path / "config.json").read_text("utf-8")))
        else:
            info.hash = legacy_hash(path)
            info.family = classify_weights(read_header(path).shapes)
    except Exception as e:  # one bad file must not break the list
        info.error = str(e) or type(e).__name__
        log.warning("could not read ControlNet %s: %s", name, info.error)
    return info


def scan(models_dir: Path, hub_ids: Sequence[str] = (), *, hub_cache: Path | None = None,
         root: Path | None = None) -> list[ControlNetInfo]:
    """Everything under `root` (default models_dir/ControlNet; --controlnet-dir), recursively and through the
    owner's symlinks, plus the given hub ids, sorted by name."""
    root = Path(root) if root is not None else Path(models_dir) / "ControlNet"
    infos = [_inspect(p) for p in walk_models(root, "config.json", SUFFIXES)] if root.is_dir() else []
    ids = dict.fromkeys(h.strip() for h in hub_ids if h.strip())
    infos += [_inspect(hub_cached_folder(h, hub_cache), h) for h in ids]
    return sorted(infos, key=lambda i: (i.name.lower(), i.name))


def find(infos: Sequence[ControlNetInfo], key: str) -> ControlNetInfo | None:
    """By title, name, or name with the " [hash]" stripped (a title whose hash changed); case-insensitive."""
    wanted = (key or "").strip().lower()
    bare = re.sub(r"\s*\[[0-9a-f]{8}\]$", "", wanted)
    return next((i for c in (wanted, bare) if wanted not in ("", "none") for i in infos
                 if c in (i.title.lower(), i.name.lower())), None)


def _read_state_dict(path: Path, dtype) -> dict:
    """The ControlNet tensors of a single file (prefix dropped), in `dtype`; pickles with weights_only=True."""
    import torch

    from extensions.weights import read_weights
    obj = read_weights(path)
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    own = [k for k in tensors if k.startswith(LDM)] or list(tensors)
    return {k.removeprefix(LDM): tensors[k].to(dtype, copy=True) for k in own}


def to_diffusers_layout(state_dict: dict) -> dict:
    """Original (`input_blocks`, `zero_convs`, `input_hint_block`) keys -> diffusers keys; diffusers keys pass."""
    if "time_embed.0.weight" not in state_dict:
        return state_dict
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    blocks = {k.split(".")[1] for k in state_dict if k.startswith("input_blocks.")}
    downsamplers = sum(1 for k in state_dict if re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", k))
    layers = (len(blocks) - 1 - downsamplers) // (downsamplers + 1)
    converted = convert_controlnet_checkpoint(state_dict, {"layers_per_block": layers})
    for k, v in state_dict.items():  # SDXL's label_emb, which the converter skips
        if m := re.fullmatch(r"label_emb\.0\.([02])\.(weight|bias)", k):
            converted[f"add_embedding.linear_{1 + int(m[1]) // 2}.{m[2]}"] = v
    return {k: v for k, v in converted.items() if v is not None}


def infer_config(family: str, shapes: Mapping[str, Sequence[int]], *, global_pool: bool = False) -> dict:
    """A ControlNetModel config for diffusers-layout weights: the family's shipped config, shapes from the weights."""
    cfg = json.loads((CONFIGS / f"controlnet-{family}" / "config.json").read_text("utf-8"))

    def count(pattern: str) -> int:
        found = {int(m[1]) for k in shapes if (m := re.match(pattern, k))}
        return max(found) + 1 if found else 0

    n = count(r"down_blocks\.(\d+)\.")
    blocks = [shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n)]
    attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in shapes) for i in range(n)]
    depth = [count(rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") if a else 1
             for i, a in enumerate(attn)]
    mid_attn = any(k.startswith("mid_block.attentions.") for k in shapes)
    if mid_attn and not attn[-1]:  # the mid block takes the last block's depth
        depth[-1] = count(r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    proj_in = next((s for k, s in shapes.items() if k.endswith("attentions.0.proj_in.weight")), ())
    embed = [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + [
        shapes[f"controlnet_cond_embedding.blocks.{2 * j + 1}.weight"][0]
        for j in range(count(r"controlnet_cond_embedding\.blocks\.(\d+)\.") // 2)]
    if blocks != cfg["block_out_channels"]:
        cfg["attention_head_dim"] = 8 if family == "sd15" else [max(1, c // 64) for c in blocks]
    add = shapes.get("add_embedding.linear_1.weight")
    width = next((s[-1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), 0)
    cfg.update(
        in_channels=shapes["conv_in.weight"][1], block_out_channels=blocks, global_pool_conditions=global_pool,
        conditioning_channels=shapes["controlnet_cond_embedding.conv_in.weight"][1],
        conditioning_embedding_out_channels=embed, layers_per_block=count(r"down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        transformer_layers_per_block=depth, mid_block_type="UNetMidBlock2DCrossAttn" if mid_attn else "UNetMidBlock2D",
        cross_attention_dim=width or cfg["cross_attention_dim"], use_linear_projection=len(proj_in) == 2,
        addition_embed_type="text_time" if add else None, projection_class_embeddings_input_dim=add[1] if add else None,
        addition_time_embed_dim=(cfg["addition_time_embed_dim"] or 256) if add else None,
    )
    return cfg


def _load_file(path: Path, dtype, family: str | None = None):
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel
    header = read_header(path)  # clear errors for truncated files; refuses pickles that hold code
    state = to_diffusers_layout(_read_state_dict(path, dtype))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    sidecar, yaml = path.with_suffix(".json"), path.with_suffix(".yaml")
    if sidecar.is_file():
        classify_config(config := json.loads(sidecar.read_text("utf-8")))
    else:
        pool = yaml.is_file() and re.search(r"^\s*global_average_pooling:\s*true\b", yaml.read_text(
            encoding="utf-8", errors="replace"), re.M | re.I) is not None
        try:
            config = infer_config(family or classify_weights(header.shapes), shapes, global_pool=pool)
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"cannot work out the architecture (no {e}); put its diffusers config.json next to "
                             f"it as {sidecar.name}") from None
    with init_empty_weights():
        model = ControlNetModel.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if bad := sorted(k for k in expected.keys() | shapes.keys() if expected.get(k) != shapes.get(k)):
        raise ValueError(f"the weights do not fit the architecture ({len(bad)} tensors differ, e.g. {bad[0]}: "
                         f"expected {list(expected.get(bad[0], ['none']))}, got {list(shapes.get(bad[0], ['none']))})")
    model.load_state_dict(state, strict=True, assign=True)  # tensors already in dtype (.to(dtype) would warn)
    return model


def _load_folder(folder: Path, dtype, family: str | None = None):
    from diffusers import ControlNetModel

    from pipelines.engine.loading import _weights_variant
    return ControlNetModel.from_pretrained(str(folder), torch_dtype=dtype, variant=_weights_variant(folder, dtype),
                                           local_files_only=True)


def _load_hub(info: ControlNetInfo, dtype, hub_cache: Path | None):
    import huggingface_hub.constants
    import torch
    from diffusers import ControlNetModel
    folder = info.path if info.path and folder_weights(Path(info.path)) else hub_cached_folder(info.name, hub_cache)
    if folder is not None:
        return _load_folder(Path(folder), dtype)
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise OSError("not in the local Hugging Face cache, and hub downloads are off (HF_HUB_OFFLINE)")
    for variant in ("fp16", None) if dtype == torch.float16 else (None,):
        try:
            return ControlNetModel.from_pretrained(info.name, torch_dtype=dtype, variant=variant, cache_dir=hub_cache)
        except OSError:  # no fp16 variant in that repo: try the plain weights
            if variant is None:
                raise


def load_controlnet(info: ControlNetInfo, *, dtype, config_root: Path, progress: Progress | None = None,
                    hub_cache: Path | None = None):
    """Load `info` as a ControlNetModel in `dtype` on the CPU, eval mode; files and folders never touch the network.
    (`config_root`: kept for symmetry with `loading.load_components`; the shipped JSON configs are read directly.)"""
    from pipelines.engine.loading import LoadError, _short_reason
    start = time.perf_counter()
    (report := progress or (lambda *a: None))("loading ControlNet", 0, 1)
    try:
        if info.source == "hub":
            model = _load_hub(info, dtype, hub_cache)
        elif info.error or info.path is None:
            raise ValueError(info.error or "no path")
        else:
            model = (_load_folder if Path(info.path).is_dir() else _load_file)(Path(info.path), dtype, info.family)
    except Exception as e:
        hint = f" To use it offline, {WHERE}." if info.source == "hub" else ""
        raise LoadError(f"Could not load ControlNet {info.name}: {_short_reason(e).rstrip('.')}.{hint}") from e
    report("loaded", 1, 1)
    log.info("loaded ControlNet %s (%s, %s) in %.1fs", info.name, info.source, info.family, time.perf_counter() - start)
    return model.eval()
