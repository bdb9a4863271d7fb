"""First run with an empty models folder: which hub model suits this machine, and what to tell the user.

`recommended_model(device, total_memory)` is the rule (no torch: app.py passes the facts from
pipelines/engine/devices.py's `Hardware`):
- a CUDA (or other) GPU with about 8 GB or more: SDXL base (1024 px; fp16 weights ~6.9 GB);
- a smaller GPU: SD 1.5 (512 px; ~2 GB in fp16);
- Apple MPS shares the system's memory: SDXL from 16 GB, else SD 1.5;
- the CPU: SD-Turbo, an SD 2.1 distillation that makes a 512 px image in 1-4 steps with CFG off, the one kind of
  model that is usable without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD_TURBO = "stabilityai/sd-turbo"

GIB = 2**30
# "8 GB" cards report a little less (an RTX 3070 shows 7.8 GiB, some laptop parts 7.6): SDXL from 7.5 GiB.
SDXL_MIN_GPU_MEMORY = int(7.5 * GIB)
SDXL_MIN_UNIFIED_MEMORY = 16 * GIB  # MPS: the system RAM, shared with everything else
ACCEPTED = ".safetensors or .ckpt file, or a diffusers folder (one with model_index.json)"


def recommended_model(device: str, total_memory: int) -> str:
    """The hub id that suits a device type ("cuda", "mps", "cpu", ...) with `total_memory` bytes of memory."""
    if device == "cpu":
        return SD_TURBO
    needed = SDXL_MIN_UNIFIED_MEMORY if device == "mps" else SDXL_MIN_GPU_MEMORY
    return SDXL_BASE if total_memory >= needed else SD15


@dataclass(frozen=True)
class Machine:
    """The hardware facts the first-run choice and the download size depend on (from devices.Hardware)."""

    device: str  # "cuda" | "mps" | "cpu"
    total_memory: int  # bytes of device memory (system RAM for the CPU and MPS)
    fp16: bool  # weights are used in fp16: a repo's fp16 files are the ones downloaded

    @property
    def recommended(self) -> str:
        return recommended_model(self.device, self.total_memory)


def offline_text(name: str, folder: str) -> str:
    """What to do when a hub id is not downloaded and nothing may be downloaded."""
    return (f"{name} is not downloaded and this studio is offline (--offline or HF_HUB_OFFLINE=1), so it cannot be "
            f"fetched. Put a checkpoint into {folder}: a {ACCEPTED}; then press 🔄 (or POST "
            f"/sdapi/v1/refresh-checkpoints).")


def download_text(name: str, size: str, why_unknown: str | None = None) -> str:
    """What the first Generate with a hub id not downloaded yet will do."""
    if size:
        return f"{name} is not downloaded yet: {size} will be downloaded on the first Generate."
    reason = f" (download size unknown: {why_unknown})" if why_unknown else ""
    return f"{name} is not downloaded yet: it will be downloaded on the first Generate{reason}."


def no_model_text(folder: str) -> str:
    return f"No checkpoint found. Put a {ACCEPTED} into {folder}, then press 🔄."
