"""Resolve --device / --precision / --attention into torch objects, and say what is active."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("studio.devices")


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    dtype: torch.dtype
    attention: str  # "sdpa" or "xformers"
    total_memory: int  # bytes of device memory (system RAM for the CPU)
    name: str

    def describe(self) -> str:
        gib = self.total_memory / 2**30
        return f"{self.name} · {str(self.dtype).removeprefix('torch.')} · attention {self.attention} · {gib:.1f} GiB"


def system_ram() -> int:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def resolve(device: str = "auto", precision: str = "auto", attention: str = "auto") -> Hardware:
    """The device, weights dtype and attention kernels for --device / --precision / --attention.

    Precision "auto" is fp16 on CUDA and MPS, fp32 on the CPU. fp16 stays the CUDA default even where the GPU
    has bf16: SD checkpoints and their VAEs are published and tuned for fp16 (fp16-fixed VAEs, fp16 LoRAs), and
    bf16 keeps 8 mantissa bits against fp16's 11, which shows as banding and small colour shifts in the VAE
    decode; fp16's narrower range is handled where it bites (the VAE NaN guard in generate.py). bf16 is there
    on request (--precision bf16, also on the CPU, where torch runs it and it halves memory); fp32 as well."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for but PyTorch sees no CUDA GPU")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise RuntimeError(f"--device {device}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps was asked for but this PyTorch has no MPS support")
    dev = torch.device(device)
    if precision == "auto":
        dtype = torch.float16 if dev.type in ("cuda", "mps") else torch.float32
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        total, name = props.total_memory, props.name
    else:
        total, name = system_ram(), "CPU" if dev.type == "cpu" else "Apple MPS"
    return Hardware(dev, dtype, _pick_attention(attention, dev), total, name)


def expand(devices: list[str]) -> list[str]:
    """The worker devices of --device: "all" is every CUDA GPU (cuda:0, cuda:1, ...; "auto" without one)."""
    if devices == ["all"]:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["auto"]
    return devices


def _pick_attention(choice: str, dev: torch.device) -> str:
    if choice == "sdpa":
        return "sdpa"
    usable = dev.type == "cuda" and _xformers_works()
    if choice == "xformers" and not usable:
        log.warning("xformers asked for but unusable here (needs CUDA and a build matching this torch): using SDPA")
    return "xformers" if usable else "sdpa"


def _xformers_works() -> bool:
    try:
        import torch as _t
        import xformers.ops  # noqa: F401

        q = _t.zeros(1, 8, 1, 8, device="cuda", dtype=_t.float16)
        xformers.ops.memory_efficient_attention(q, q, q)
        return True
    except Exception as e:  # import error, missing C++/CUDA extension, kernel mismatch
        log.info("xformers not usable: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False


def apply_attention(module: torch.nn.Module, attention: str) -> None:
    """Switch a UNet/VAE/ControlNet to xformers when chosen; SDPA is diffusers' default on torch 2."""
    if attention == "xformers" and hasattr(module, "enable_xformers_memory_efficient_attention"):
        module.enable_xformers_memory_efficient_attention()


def module_device(obj: object) -> torch.device | None:
    """The device of a module's first parameter; None for a module without parameters, or not a module."""
    if isinstance(obj, torch.nn.Module):
        for t in obj.parameters():
            return t.device
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; timings need this)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    """Collect garbage, release cached CUDA blocks, and give freed heap pages back to the OS."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """glibc keeps freed memory in its malloc arenas, so without this the process's RSS stays at its high-water
    mark after a model is dropped and can creep up with every model switch. No-op off Linux/glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return
    trim(0)
