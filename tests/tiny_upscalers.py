"""Tiny random-weight upscaler files with the real key layouts, built from spandrel's own architecture classes."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def esrgan_state_dict(scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Old-arch ESRGAN (RRDBNet: `model.0.weight`, `model.1.sub.0.RDB1.conv1.0.weight`...), 8 filters, 1 block.
    spandrel reads the scale from the number of upconv stages. The last bias is lifted so outputs vary."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    state = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).state_dict()
    last = max(int(k.split(".")[1]) for k in state if k.startswith("model."))
    state[f"model.{last}.bias"] += 0.4
    return state


def compact_state_dict(scale: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real-ESRGAN compact (SRVGGNetCompact: `body.N.weight`); scale comes from the pixel-shuffle channels."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale).state_dict()


def save_pth(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def save_safetensors(state: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def unet_safetensors(path: Path) -> Path:
    """A tiny diffusers UNet (a Stable Diffusion part, not an upscaler) saved as safetensors."""
    from tests.tiny_models import _unet

    return save_safetensors(_unet().state_dict(), path)


class _RunsCode:
    """Pickles as a call to os.system: loading it unsafely would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def code_pickle(path: Path, marker: Path) -> Path:
    """A .pth whose pickle calls os.system (never unpickle it with weights_only=False)."""
    return save_pth({"model.0.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
