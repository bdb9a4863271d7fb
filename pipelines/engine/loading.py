"""Load a checkpoint's components (UNet, VAE, text encoders, tokenizers, scheduler config).

Three sources, one result (`Components`):
- a diffusers folder: each component is loaded from its subfolder, local files only;
- a single `.safetensors`/`.ckpt` file: `<Pipeline>.from_single_file(path, config=<dir>, local_files_only=True)`
  where <dir> is this family's config set, materialised from `pipelines/configs/<family>/` plus the shared
  CLIP tokenizer files, so no network is needed (single files carry no configs or tokenizers);
- a hub id: the cached snapshot if complete, else `snapshot_download` of configs + one weights variant.
Failures come back as `LoadError` (a RuntimeError): "Could not load <name>: <short reason>".
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import shutil
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pipelines import hub
from pipelines.discovery import FAMILIES, CheckpointInfo, detect_family, hub_cached_folder, read_header
from pipelines.hub import MODEL_PARTS

log = logging.getLogger("studio.loading")

Progress = Callable[[str, int, int], None]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
PIPELINES = {
    "sd15": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sd2-v": "StableDiffusionPipeline",
    "sd15-inpaint": "StableDiffusionInpaintPipeline", "sd2-inpaint": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLPipeline", "sdxl-inpaint": "StableDiffusionXLInpaintPipeline",
}


class LoadError(RuntimeError):
    """A load failure with a message meant for the user (no stack dump needed)."""


@dataclass
class Components:
    """Everything a generation pipeline needs from one checkpoint."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    family: str
    text_encoder_2: Any = None
    tokenizer_2: Any = None

    @property
    def sdxl(self) -> bool:
        """SDXL's two text encoders, size conditioning and VAE rules (from the family, detected at load)."""
        return FAMILIES[self.family].sdxl

    @property
    def inpainting_unet(self) -> bool:
        """A 9-channel inpainting UNet: it always conditions on an image and a mask."""
        return self.unet.config.in_channels == 9

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules by name (for memory accounting and device moves)."""
        return {n: m for n in MODEL_PARTS if isinstance(m := getattr(self, n), torch.nn.Module)}


def pipeline_class(family: str) -> type:
    """The diffusers pipeline class that loads and runs a family's checkpoints."""
    import diffusers

    if family not in PIPELINES:
        raise ValueError(f"unknown model family {family!r}")
    return getattr(diffusers, PIPELINES[family])


# ---------------------------------------------------------------- config sets for single files


def _sync(src: Path, dst: Path, link: bool = False) -> None:
    """Make dst a copy of src (hardlink when asked and possible), atomically; skip if already identical."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if not link:
            raise OSError
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def materialize_config(family: str, config_root: Path) -> Path:
    """`<config_root>/<family>/`: the shipped JSON configs plus the CLIP vocab/merges in each tokenizer folder."""
    src = CONFIGS / family
    if not (src / "model_index.json").is_file():
        raise ValueError(f"no shipped configs for model family {family!r}")
    dst = Path(config_root) / family
    for f in src.rglob("*.json"):
        _sync(f, dst / f.relative_to(src))
    for tok in ("tokenizer", "tokenizer_2"):
        if (src / tok).is_dir():
            for name in TOKENIZER_FILES:
                _sync(CONFIGS / "clip-tokenizer" / name, dst / tok / name, link=True)
    return dst


# ---------------------------------------------------------------- loaders


_is_fp16 = hub.is_fp16  # model.fp16.safetensors, model.fp16-00001-of-00002.safetensors


def _weights_variant(folder: Path, dtype: torch.dtype) -> str | None:
    """'fp16' when a component folder only has fp16 weights, or has them and fp16 is wanted."""
    files = [p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")]
    fp16 = any(_is_fp16(f) for f in files)
    plain = any(not _is_fp16(f) for f in files)
    return "fp16" if fp16 and (not plain or dtype == torch.float16) else None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _load_folder(path: Path, family: str, dtype: torch.dtype, progress: Progress | None) -> Components:
    """Load each component of a diffusers folder directly (no safety checker, no network)."""
    import diffusers
    import transformers

    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    wanted = [n for n in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2") if n in index]
    parts: dict[str, Any] = {}
    for i, name in enumerate(wanted):
        if progress:
            progress(f"loading {name}", i, len(wanted))
        library, class_name = index[name]
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        sub = path / name
        if name.startswith("tokenizer"):
            parts[name] = cls.from_pretrained(sub, local_files_only=True)
        elif library == "diffusers":
            parts[name] = cls.from_pretrained(sub, torch_dtype=dtype, variant=_weights_variant(sub, dtype),
                                              local_files_only=True)
        else:
            parts[name] = cls.from_pretrained(sub, dtype=dtype, variant=_weights_variant(sub, dtype),
                                              local_files_only=True)
        if hasattr(parts[name], "eval"):
            parts[name].eval()
    if progress:
        progress("loaded", len(wanted), len(wanted))
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return Components(scheduler_config=scheduler, family=family, **parts)


def _load_single_file(path: Path, family: str, dtype: torch.dtype, config_root: Path,
                      progress: Progress | None) -> Components:
    """Load an original-layout checkpoint offline with this family's shipped configs."""
    if path.suffix.lower() == ".safetensors":
        read_header(path)  # clear message for truncated/corrupt files before diffusers tries
    config = materialize_config(family, config_root)
    if progress:
        progress("loading checkpoint", 0, 1)
    pipe = pipeline_class(family).from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=dtype,
    )
    if progress:
        progress("loaded", 1, 1)
    scheduler = json.loads((config / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    parts = {n: getattr(pipe, n, None) for n in ("unet", "vae", "text_encoder", "tokenizer",
                                                 "text_encoder_2", "tokenizer_2")}
    return Components(scheduler_config=scheduler, family=family, **parts)


def hub_allow_patterns(files: list[str], dtype: torch.dtype) -> list[str]:
    """Which files of a diffusers hub repo to fetch: configs/tokenizers and one weights variant per model part
    (pipelines/hub.py `select_files`, the rule the UI's download size is computed with)."""
    return hub.select_files(files, fp16=dtype == torch.float16)


def _tqdm_to(progress: Progress | None, label: str, expected: int = 0) -> type:
    """A tqdm class for `snapshot_download` whose byte counts reach `progress(label, bytes done, bytes in all)`.

    huggingface_hub drives three bars with it: bytes received, bytes written ("Reconstructing...") and files
    fetched. Only the bytes written are forwarded (every file, plain or Xet, reports them), against `expected`
    (the size of the selected files) while the bar's own total is still growing as files start."""
    from tqdm.auto import tqdm

    class Forwarding(tqdm):
        def __init__(self, *args, **kwargs):
            # what the bar counts, kept here: a disabled tqdm keeps neither its description nor its count
            desc = str(kwargs.get("desc") or "")
            self._bytes_written = kwargs.get("unit") == "B" and not desc.lower().startswith("downloading")
            self._written = int(kwargs.get("initial") or 0)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            shown = super().update(n)
            if progress and self._bytes_written:
                self._written += int(n or 0)
                progress(label, self._written, max(expected, int(getattr(self, "total", 0) or 0), self._written, 1))
            return shown

    return Forwarding


def _hub_folder(info: CheckpointInfo, dtype: torch.dtype, progress: Progress | None,
                checkpoints_dir: Path | None = None, hub_endpoint: str | None = None, offline: bool = False) -> Path:
    """A complete local snapshot of a hub id (cached, or downloaded now from `hub_endpoint`, default the
    huggingface_hub's). Offline, or when the download fails, the LoadError names `checkpoints_dir` (where a
    checkpoint can be put instead) and the kinds of files accepted."""
    if info.path is not None and (info.path / "model_index.json").is_file() and _has_weights(info.path / "unet"):
        return info.path
    repo = info.hub_id or info.name
    where = str(checkpoints_dir) if checkpoints_dir is not None else "models/Stable-diffusion"
    try:
        from huggingface_hub import constants, snapshot_download

        if offline or constants.HF_HUB_OFFLINE:
            cached = hub_cached_folder(repo)  # downloaded since the list was made
            if cached is not None and _has_weights(cached / "unet"):
                return cached
            raise LoadError(f"{repo} is not downloaded and this studio is offline (--offline or HF_HUB_OFFLINE=1). "
                            f"Put a checkpoint into {where}: a .safetensors or .ckpt file, or a diffusers folder "
                            f"(one with model_index.json).")
        sizes = hub.repo_files(repo, hub_endpoint)
        plan = hub.download_size(repo, sizes, fp16=dtype == torch.float16)
        if not any(f.endswith(hub.WEIGHTS) for f in plan.files):  # not a diffusers repo, or no weights in it
            raise ValueError(plan.error or "no weights found in the repository")
        tqdm_class = _tqdm_to(progress, f"download {repo}", sum(sizes.get(f) or 0 for f in plan.files))
        return Path(snapshot_download(repo, allow_patterns=list(plan.files), tqdm_class=tqdm_class,
                                      endpoint=hub_endpoint))
    except LoadError:
        raise
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LoadError(
            f"Could not download {repo} from the Hugging Face Hub ({textwrap.shorten(reason, 200)}). To use it offline, put the "
            f"model (a .safetensors or .ckpt file, or a diffusers folder) in {where}."
        ) from e


def _short_reason(e: BaseException) -> str:
    """One line a user can act on, from whatever diffusers/transformers/safetensors raised."""
    text = re.sub(r"torch\.Size\((\[.*?\])\)", r"\1", str(e).strip()) or type(e).__name__
    shape = re.search(r"(\S+) expected shape (\[.*?\]), but got (\[.*?\])", text)
    if shape:
        return f"the weights do not fit the architecture ({shape[1]}: expected {shape[2]}, got {shape[3]})"
    if "meta tensor" in text:
        return "incomplete checkpoint (some weights are missing)"
    if "HeaderTooLarge" in text or "deserializ" in text or "incomplete metadata" in text.lower():
        return f"corrupt or truncated file ({text.splitlines()[0][:200]})"
    return text.splitlines()[0][:300]


def load_components(info: CheckpointInfo, *, dtype: torch.dtype, config_root: Path,
                    progress: Progress | None = None, checkpoints_dir: Path | None = None,
                    hub_endpoint: str | None = None, offline: bool = False) -> Components:
    """Load `info`'s components in `dtype` on the CPU. Files and folders never touch the network; a hub id not
    downloaded yet is fetched from `hub_endpoint` unless `offline` (then the error names `checkpoints_dir`)."""
    start = time.perf_counter()
    try:
        if info.source == "hub":
            path = _hub_folder(info, dtype, progress, checkpoints_dir, hub_endpoint, offline)
            family = detect_family(path)[0]
        else:
            if info.path is None:
                raise ValueError("no path")
            path = Path(info.path)
            family = info.family if info.family in PIPELINES else detect_family(path)[0]
        if family not in PIPELINES:
            raise ValueError(f"unsupported model family {family!r}")
        if path.is_dir():
            components = _load_folder(path, family, dtype, progress)
        else:
            components = _load_single_file(path, family, dtype, Path(config_root), progress)
    except LoadError:
        raise
    except Exception as e:
        raise LoadError(f"Could not load {info.name}: {_short_reason(e)}") from e
    log.info("loaded %s (source %s, family %s, %s) in %.1f s", info.name, info.source, family,
             FAMILIES[family].label, time.perf_counter() - start)
    return components
