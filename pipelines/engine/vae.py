"""Load an external VAE (A1111's `sd_vae`) as the checkpoint's VAE.

A1111 loads a VAE file's weights into the loaded model's own first-stage model, so the model's VAE config (its
scaling factor, latents mean/std, block sizes) stays. Here the file becomes an `AutoencoderKL` built from the
checkpoint's VAE config (`config_folder`: that config written under the engine's config root), through diffusers'
own `AutoencoderKL.from_single_file`: it converts the original layout (`first_stage_model.` / `vae.` prefixes
stripped, a `state_dict` nesting unwrapped; a file already in diffusers' layout is taken as it is) and reads
pickles with `weights_only=True`. A diffusers folder (config.json + weights) loads with its own config.

One difference from the checkpoint's VAE: `force_upcast` is off for a file, so an fp16 model decodes in fp16, as
A1111 does (an fp16-fixed SDXL VAE is worth having only then); a VAE that overflows fp16 trips the engine's NaN
guard, which decodes again in float32 and says so (`Engine.decode`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from pipelines.discovery import read_safetensors_header
from pipelines.engine.loading import LoadError, _short_reason, _weights_variant
from pipelines.networks.vaes import VaeFile


def file_config(base: Mapping[str, Any]) -> dict[str, Any]:
    """The config an external VAE file loads with: the checkpoint VAE's (`vae.config`), decoding in the model's
    precision."""
    config = {k: v for k, v in dict(base).items() if not k.startswith("_")}
    return json.loads(json.dumps({"_class_name": "AutoencoderKL", **config, "force_upcast": False}))


def config_digest(base: Mapping[str, Any]) -> str:
    """A short digest of `file_config(base)`: one cached VAE per (file, checkpoint config)."""
    text = json.dumps(file_config(base), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_folder(base: Mapping[str, Any], config_root: Path) -> Path:
    """`<config_root>/vae/<digest>/config.json` holding `file_config(base)` (written once, atomically)."""
    folder = Path(config_root) / "vae" / config_digest(base)
    target = folder / "config.json"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".config.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(file_config(base), indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target)
    return folder


def load_vae(vae: VaeFile, base: Mapping[str, Any], *, dtype: torch.dtype, config_root: Path) -> Any:
    """`vae` as an AutoencoderKL in `dtype` on the CPU, for a checkpoint whose own VAE has the config `base` (a file
    loads with it). LoadError ("Could not load VAE <name>: <reason>") when it cannot be read or does not fit."""
    from diffusers import AutoencoderKL

    try:
        if vae.folder:
            model = AutoencoderKL.from_pretrained(str(vae.path), torch_dtype=dtype, local_files_only=True,
                                                  variant=_weights_variant(vae.path, dtype))
        else:
            if vae.path.suffix.lower() == ".safetensors":
                read_safetensors_header(vae.path)  # a clear message for a truncated or corrupt file
            model = AutoencoderKL.from_single_file(str(vae.path), config=str(config_folder(base, config_root)),
                                                   local_files_only=True, torch_dtype=dtype)
    except Exception as e:
        raise LoadError(f"Could not load VAE {vae.name}: {_short_reason(e)}") from e
    channels = (model.config.latent_channels, base.get("latent_channels", 4))
    if channels[0] != channels[1]:
        raise LoadError(f"VAE {vae.name} does not fit this model: its latents have {channels[0]} channels, the "
                        f"model's {channels[1]} (a VAE of another model family?)")
    return model.eval()
