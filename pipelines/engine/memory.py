"""Memory modes: how much of a job lives on the device, picked from free device memory or set by --memory.

Every component is shared between jobs through the model manager, so whatever a mode changes for one
pipeline call (offload hooks, VAE tiling and slicing, attention processors, where modules live) is undone
when the call ends. On a CPU device RAM *is* the device: offloading means nothing there (diffusers refuses
it), so only the slicing and tiling parts apply.

Automatic choice (`pick_mode`), from the device memory free at start-up. The mode is picked before any
model is chosen, so the thresholds are sized for the largest family we run, SDXL in fp16 (weights ~6.9 GiB:
UNet 5.1, text encoders 1.6, VAE 0.2; 1024x1024 batch 1 needs ~2-3 GiB more for the UNet's activations and
the VAE decode). SD 1.x/2.x weights are ~2.1 GiB in fp16 and fit every mode from "normal" up with room:

    free >= 12 GiB   high     SDXL at 1024x1024 with batch size 2-4, everything resident
    free >=  8 GiB   normal   SDXL resident; images above 1024x1024 px decode in VAE tiles
    free >=  5 GiB   low      one whole model on the device at a time (SDXL UNet 5.1 GiB); SD 1.5 would fit
                              whole but the OOM retry covers that direction, not this one
    below            minimal  layer-by-layer offload: slow, but SDXL runs in ~2-3 GiB

Large images: the VAE decoder's biggest activations are full-resolution 128-channel maps, roughly 1 KiB per
output pixel in fp16 over the few live at once: ~1 GiB at 1024x1024, ~2.3 GiB at 1536x1536, ~4 GiB at
2048x2048. Tiling changes pixels slightly (blended tile seams), so "normal" and "low" tile only above
1024x1024 px (SDXL's native size and SD 1.5's 2x hires fix stay untiled); "minimal" always tiles (diffusers
only tiles latents larger than the VAE's own tile size anyway).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

import torch

from pipelines.engine.devices import module_device

log = logging.getLogger("studio.memory")

MODES = ("high", "normal", "low", "minimal")  # most resident (fastest) first
DESCRIPTIONS = {
    "high": "everything resident on the device",
    "normal": "everything resident; VAE tiling for images above 1024x1024",
    "low": "model CPU offload (one model on the device at a time), VAE slicing, tiling for large images",
    "minimal": "sequential CPU offload (layer by layer), attention slicing, VAE tiling and slicing",
}
GIB = 2**30
AUTO_THRESHOLDS = ((12 * GIB, "high"), (8 * GIB, "normal"), (5 * GIB, "low"))  # free device bytes -> mode
LARGE_IMAGE = 1024 * 1024  # pixels above which "normal" and "low" decode in VAE tiles


def pick_mode(setting: str, hw: Any, free_bytes: int | None = None) -> tuple[str, str]:
    """(mode, why) for `--memory setting` on hardware `hw` (a devices.Hardware). "auto" reads the free device
    memory (torch.cuda.mem_get_info) unless `free_bytes` is given; CPU and MPS devices get "high", since
    their models live in system RAM that offloading could not spare."""
    if setting in MODES:
        return setting, "set by --memory"
    if setting != "auto":
        raise ValueError(f"unknown memory mode '{setting}': choose auto, {', '.join(MODES)}")
    if hw.device.type != "cuda":
        return "high", f"auto: {hw.device.type.upper()} device, models live in system RAM"
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(hw.device)
    for threshold, mode in AUTO_THRESHOLDS:
        if free_bytes >= threshold:
            return mode, f"auto: {free_bytes / GIB:.1f} GiB free on the device (>= {threshold / GIB:.0f} GiB)"
    return "minimal", f"auto: {free_bytes / GIB:.1f} GiB free on the device (< {AUTO_THRESHOLDS[-1][0] / GIB:.0f} GiB)"


def lower(mode: str) -> str | None:
    """The next mode that holds less on the device, or None below "minimal"."""
    i = MODES.index(mode)
    return MODES[i + 1] if i + 1 < len(MODES) else None


def offloads(mode: str) -> bool:
    """Whether the mode keeps the models in CPU RAM and moves them to the device only to run."""
    return mode in ("low", "minimal")


def oom_message(size: tuple[int, int], batch_size: int, mode: str, retried: bool) -> str:
    w, h = size
    tried = " (after a retry in that mode)" if retried else ""
    hint = f"or start with --memory {lower(mode)}" if lower(mode) else "or free device memory used by other programs"
    return (f"Out of device memory at {w}x{h}, batch size {batch_size} in {mode} memory mode{tried}: "
            f"lower the size or batch size, {hint}. Memory was freed; images finished so far are saved.")


def usage(device: torch.device) -> dict[str, Any]:
    """Device memory in use right now, A1111's /sdapi/v1/memory shape: {"ram": {...}, "cuda": {...}}."""
    import os

    import psutil

    proc = psutil.Process(os.getpid())
    vm = psutil.virtual_memory()
    rss = proc.memory_info().rss
    out: dict[str, Any] = {"ram": {"free": vm.available, "used": rss, "total": vm.total}}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        s = torch.cuda.memory_stats(device)

        def pair(name: str) -> dict[str, int]:
            return {"current": s.get(f"{name}.all.current", 0), "peak": s.get(f"{name}.all.peak", 0)}

        out["cuda"] = {"system": {"free": free, "used": total - free, "total": total},
                       "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                       "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                       "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)}}
    else:
        out["cuda"] = {"error": "unavailable"}
    return out


class OffloadChain:
    """Job-long model CPU offload for components the manager handed out in CPU RAM: accelerate hooks move each
    module to the device when it runs (forward, or the VAE's encode/decode) and the previous one in the chain
    back to RAM. Work outside a pipeline call (prompt encoding, img2img's VAE encode, hires decode) needs this:
    the pipeline's own offload lives only for its call."""

    def __init__(self, modules: Sequence[torch.nn.Module], device: torch.device):
        self.modules = [m for m in modules if isinstance(m, torch.nn.Module)]
        self.device = torch.device(device)
        self._hooks: list[Any] = []

    def install(self) -> None:
        from accelerate import cpu_offload_with_hook

        hook = None
        for m in self.modules:
            _, hook = cpu_offload_with_hook(m, self.device, prev_module_hook=hook)
            self._hooks.append(hook)

    def remove(self) -> None:
        """Every module back in CPU RAM, hooks gone."""
        from accelerate.hooks import remove_hook_from_module

        for hook in self._hooks:
            hook.offload()
        for m in self.modules:
            remove_hook_from_module(m, recurse=True)
        self._hooks.clear()

    @property
    def installed(self) -> bool:
        return bool(self._hooks)

    @contextmanager
    def active(self) -> Iterator["OffloadChain"]:
        self.install()
        try:
            yield self
        finally:
            self.remove()


@contextmanager
def applied(pipe: Any, mode: str, device: torch.device | str, size: tuple[int, int], *,
            offload: bool | None = None, chain: OffloadChain | None = None) -> Iterator[list[str]]:
    """Apply `mode` to the pipeline view `pipe` for one call of `size` (w, h), and undo all of it afterwards.
    Yields what was applied. `offload` None: offload only on a non-CPU device. `chain`: the job's offload hooks,
    if its components live in CPU RAM (then "low" needs nothing more; "minimal" swaps them for the
    pipeline's layer-by-layer offload during the call and puts them back after)."""
    device = torch.device(device)
    offload = device.type != "cpu" if offload is None else offload
    large = size[0] * size[1] > LARGE_IMAGE
    done: list[str] = []
    with ExitStack() as undo:
        modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        if offloads(mode) and offload:
            if mode == "minimal" and chain is not None and chain.installed:
                chain.remove()  # everything back in RAM, hooks off: sequential offload needs bare modules
                undo.callback(chain.install)  # runs last
            where = {n: module_device(m) for n, m in modules.items()}

            def restore() -> None:
                pipe.remove_all_hooks()  # sequential offload's hooks put the weights back where they were
                for n, m in modules.items():
                    if where[n] is not None and module_device(m) != where[n]:
                        m.to(where[n])  # where the manager believes it is

            if mode == "low" and chain is not None and chain.installed:
                done.append("model CPU offload (job)")
            else:
                undo.callback(restore)
                if mode == "low":
                    pipe.enable_model_cpu_offload(device=device)
                    done.append("model CPU offload")
                else:
                    pipe.enable_sequential_cpu_offload(device=device)
                    done.append("sequential CPU offload")
        if mode == "minimal":
            saved = {n: m.attn_processors for n, m in modules.items()
                     if hasattr(m, "attn_processors") and hasattr(m, "set_attn_processor")}

            def processors_back() -> None:
                for n, procs in saved.items():
                    modules[n].set_attn_processor(procs)

            undo.callback(processors_back)
            pipe.enable_attention_slicing()
            done.append("attention slicing")
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            tiling, slicing = mode == "minimal" or (mode in ("normal", "low") and large), offloads(mode)
            was = (vae.use_tiling, vae.use_slicing)
            undo.callback(_set_vae, vae, *was)
            _set_vae(vae, tiling or was[0], slicing or was[1])
            done += ["VAE tiling"] * tiling + ["VAE slicing"] * slicing
        yield done


def _set_vae(vae: Any, tiling: bool, slicing: bool) -> None:
    (vae.enable_tiling if tiling else vae.disable_tiling)()
    (vae.enable_slicing if slicing else vae.disable_slicing)()
