"""Building a device's Engine from the settings: app.py does it once per --device entry, a Ray replica
(pipelines/engine/replica.py) once for its own device."""

from __future__ import annotations

import logging
import threading
from typing import Any

from pipelines.engine import memory
from pipelines.engine.devices import Hardware
from pipelines.engine.generate import Engine
from pipelines.engine.manager import ModelManager
from pipelines.settings import Settings

log = logging.getLogger("studio")
GIB = 2**30


def make_engine(settings: Settings, hw: Hardware, writer: Any, *, device_budget: int, ram_budget: int,
                loras: Any = None, embeddings: Any = None, vaes: Any = None,
                load_lock: threading.Lock | None = None) -> Engine:
    """One engine with its own model cache (`device_budget` bytes on the device, `ram_budget` in RAM)."""
    manager = ModelManager(device=hw.device, device_budget=device_budget, cpu_budget=ram_budget)
    mode, why = memory.pick_mode(settings.memory, hw)
    log.info("%s: memory mode %s (%s): %s", hw.device, mode, why, memory.DESCRIPTIONS[mode])
    return Engine(hw, manager, writer, config_root=settings.cache_dir / "configs",
                  hash_cache=settings.cache_dir / "hashes.json", rng=settings.rng,
                  models_dir=settings.models_dir, preview_every=settings.preview_every,
                  hub_endpoint=settings.hub_endpoint, memory_mode=mode, oom_retry=settings.oom_retry,
                  channels_last=settings.channels_last if settings.channels_last is not None
                  else hw.device.type == "cuda",
                  compile_unet=settings.compile, preview_decoder=settings.preview_decoder,
                  esrgan_dir=settings.esrgan_models_path, loras=loras, embeddings=embeddings, vaes=vaes,
                  checkpoints_dir=settings.checkpoints_dir, round_pixels=settings.round_pixels, load_lock=load_lock)


def device_budget(settings: Settings, hw: Hardware, ram: int, cpu_workers: int) -> int:
    """Bytes of cached models on `hw`'s device: --vram-budget-gb or 85% of a GPU; on the CPU (one tier: models live
    in RAM) --ram-budget-gb or 60% of RAM shared by the CPU workers."""
    if hw.device.type == "cpu":
        return int(settings.ram_budget_gb * GIB) if settings.ram_budget_gb else int(ram * 0.6) // max(cpu_workers, 1)
    return int(settings.vram_budget_gb * GIB) if settings.vram_budget_gb else int(hw.total_memory * 0.85)


def ram_budget(settings: Settings, ram: int, cpu_workers: int) -> int:
    """Bytes of RAM for models moved off the device: --ram-budget-gb or 40% of RAM shared by the CPU workers."""
    return int(settings.ram_budget_gb * GIB) if settings.ram_budget_gb else int(ram * 0.4) // max(cpu_workers, 1)
