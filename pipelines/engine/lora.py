"""Apply LoRA / LyCORIS files to cached components by patching weights in place, reversibly and exactly.

Semantics are A1111's (extensions-builtin/Lora/network_*.py), per changed layer with weight W:
- LoRA / LoCon: dW = up @ down (reshaped to W; with `lora_mid`, the CP rebuild), scale alpha / rank;
- LoHa: dW = (w1_a @ w1_b) * (w2_a @ w2_b) (Hadamard product; with t1/t2 the CP form), scale alpha / rank;
- LoKr: dW = kron(w1, w2) where w1 = w1_a @ w1_b when factored (likewise w2, or the CP form with t2); scale
  alpha / rank only when a factor is decomposed (the rank is that factor's), else 1;
- full: dW = diff (and diff_b on the bias), scale 1;
- DoRA (`dora_scale`): the merged weight W + dW is renormalised per input column to dora_scale, then dW is what
  that changes, before the scale;
and every dW is multiplied by the tag's text-encoder or UNet multiplier. Several LoRAs are applied in the order
the prompt names them, each on top of the last, as A1111 does.

The patcher (ComfyUI's weight patcher, in spirit) backs up only the weights it touches, on the CPU, the first time
it touches them, and copies them back bit for bit to restore. Nothing else is copied: a 2 GB UNet with a 150 MB
LoRA costs one copy of the touched layers. A job asking for the set of LoRAs already applied patches nothing; a
different set restores the touched layers and applies the new one. Patches live on the cached module objects, so
they follow the component cache and its device moves; parameters are changed in place (never replaced), so
offload hooks and compiled UNets keep seeing the same tensors.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from pipelines.networks.loras import LoraInfo, group

log = logging.getLogger("studio.lora")


@dataclass(frozen=True)
class LoraUse:
    """One LoRA as a job uses it: the file, the multipliers and the optional rank limit."""

    info: LoraInfo
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None

    def key(self) -> tuple:
        st = self.info.path.stat()
        return str(self.info.path), st.st_size, st.st_mtime_ns, self.te, self.unet, self.dyn


# ---------------------------------------------------------------- reading files


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a LoRA file on the CPU; pickles only as plain tensors (no code runs)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class FileCache:
    """Recently used LoRA files' tensors (CPU), so switching back and forth re-reads nothing."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, dict[str, dict[str, torch.Tensor]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, use: LoraUse) -> dict[str, dict[str, torch.Tensor]]:
        key = use.key()[:3]
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        modules = group(read_lora(use.info.path))
        with self._lock:
            self._items[key] = modules  # type: ignore[assignment]
            while len(self._items) > 1 and sum(_size(v) for v in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)
        return modules  # type: ignore[return-value]


def _size(modules: dict[str, dict[str, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for w in modules.values() for t in w.values())


# ---------------------------------------------------------------- where each key lands


_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
           "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0"}


def original_name(name: str, config: Any) -> str | None:
    """A diffusers UNet module path -> its name in the original (ldm / sgm) layout that SDXL kohya LoRAs use."""
    per = config.layers_per_block if isinstance(config.layers_per_block, int) else config.layers_per_block[0]
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if name in fixed:
        return fixed[name]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", name):
        return f"input_blocks.{(int(m[1]) + 1) * (per + 1)}.0.op"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        index = 1 + int(m[1]) * (per + 1) + int(m[3])
        rest = _RESNET.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"input_blocks.{index}.{0 if m[2] == 'resnets' else 1}.{rest}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name):
        rest = _RESNET.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"middle_block.{2 * int(m[2]) if m[1] == 'resnets' else 1}.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        index = int(m[1]) * (per + 1) + int(m[3])
        rest = _RESNET.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"output_blocks.{index}.{0 if m[2] == 'resnets' else 1}.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", name):
        block = int(m[1])
        has_attention = "CrossAttn" in config.up_block_types[block]
        return f"output_blocks.{block * (per + 1) + per}.{2 if has_attention else 1}.conv"
    return None


def _kohya(name: str) -> str:
    return name.replace(".", "_")


def targets(comps: Any) -> dict[str, tuple[str, torch.nn.Module]]:
    """kohya-style module key -> (component, layer) for every Linear / Conv2d a LoRA may change."""
    out: dict[str, tuple[str, torch.nn.Module]] = {}
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    for name, module in comps.unet.named_modules():
        if isinstance(module, layers):
            out["lora_unet_" + _kohya(name)] = ("unet", module)
            if (ldm := original_name(name, comps.unet.config)) is not None:
                out.setdefault("lora_unet_" + _kohya(ldm), ("unet", module))
    encoders = [("text_encoder", comps.text_encoder, ("lora_te_", "lora_te1_"))]
    if comps.text_encoder_2 is not None:
        encoders.append(("text_encoder_2", comps.text_encoder_2, ("lora_te2_",)))
    for part, encoder, prefixes in encoders:
        for name, module in encoder.named_modules():
            if isinstance(module, layers):
                full = name if name.startswith("text_model.") else "text_model." + name
                for prefix in prefixes:
                    out[prefix + _kohya(full)] = (part, module)
    return out


def kohya_key(key: str) -> str:
    """diffusers / PEFT module keys ('unet.down_blocks.0...to_q', old '...attn1.processor.to_q_lora') -> kohya's."""
    for prefix, kohya in (("unet.", "lora_unet_"), ("text_encoder_2.", "lora_te2_"), ("text_encoder.", "lora_te1_")):
        if key.startswith(prefix):
            name = key[len(prefix):].replace(".processor.", ".")
            name = re.sub(r"\.(to_q|to_k|to_v|to_out)_lora$", r".\1", name)
            name = re.sub(r"\.to_out$", ".to_out.0", name)
            if prefix != "unet." and not name.startswith("text_model."):
                name = "text_model." + name
            return kohya + _kohya(name)
    return key.replace(".", "_")


# ---------------------------------------------------------------- A1111's weight deltas


def _conventional(up: torch.Tensor, down: torch.Tensor, shape: Sequence[int], dyn: int | None = None) -> torch.Tensor:
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    if dyn is not None:
        up, down = up[:, :dyn], down[:dyn, :]
    return (up @ down).reshape(shape)


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def _cp_rebuild(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up, down)


def delta(w: dict[str, torch.Tensor], weight: torch.Tensor, dyn: int | None = None) -> tuple[torch.Tensor, int | None]:
    """(dW before scale and multiplier, in float32 on the weight's device; the rank A1111 divides alpha by)."""
    dev = weight.device

    def get(name: str) -> torch.Tensor | None:
        t = w.get(name)
        return None if t is None else t.to(dev, torch.float32)

    down = get("lora_down.weight") if "lora_down.weight" in w else get("lora_A.weight") \
        if "lora_A.weight" in w else get("lora.down.weight")
    up = get("lora_up.weight") if "lora_up.weight" in w else get("lora_B.weight") \
        if "lora_B.weight" in w else get("lora.up.weight")
    if up is not None and down is not None:
        shape = [up.size(0), down.size(1)]
        if (mid := get("lora_mid.weight")) is not None:
            return _cp_rebuild(up, down, mid).reshape(weight.shape), down.shape[0]
        if down.dim() == 4:
            shape += list(down.shape[2:])
        return _conventional(up, down, shape, dyn), down.shape[0]
    if "hada_w1_a" in w:
        w1a, w1b, w2a, w2b = (get(n) for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        shape = [w1a.size(0), w1b.size(1)]
        if (t1 := get("hada_t1")) is not None:
            shape = [w1a.size(1), w1b.size(1)] + list(t1.shape[2:])
            one = _cp(t1, w1a, w1b)
        else:
            if w1b.dim() == 4:
                shape += list(w1b.shape[2:])
            one = _conventional(w1a, w1b, shape)
        t2 = get("hada_t2")
        two = _cp(t2, w2a, w2b) if t2 is not None else _conventional(w2a, w2b, shape)
        return one * two, w1b.shape[0]
    if any(n.startswith("lokr_") for n in w):
        rank = None
        if (w1 := get("lokr_w1")) is None:
            w1 = get("lokr_w1_a") @ get("lokr_w1_b")
            rank = w["lokr_w1_b"].shape[0]
        if (w2 := get("lokr_w2")) is None:
            w2a, w2b = get("lokr_w2_a"), get("lokr_w2_b")
            t2 = get("lokr_t2")
            w2 = _cp(t2, w2a, w2b) if t2 is not None else w2a @ w2b
            rank = w["lokr_w2_b"].shape[0]
        if w2.dim() == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        return torch.kron(w1, w2.contiguous()).reshape(weight.shape), rank
    if "diff" in w:
        return get("diff").reshape(weight.shape), None
    raise ValueError(f"unsupported LoRA module with weights {sorted(w)}")


def _scale(w: dict[str, torch.Tensor], rank: int | None, dyn: int | None) -> float:
    """A1111's calc_scale: an explicit `scale`, else alpha / rank (the rank in use), else 1."""
    if "scale" in w:
        return float(w["scale"])
    if "alpha" in w and rank is not None:
        return float(w["alpha"]) / (min(rank, dyn) if dyn else rank)
    return 1.0


def scaled_delta(w: dict[str, torch.Tensor], weight: torch.Tensor, multiplier: float,
                 dyn: int | None = None) -> torch.Tensor:
    """dW as A1111 adds it: the delta, DoRA's renormalisation, times scale (alpha / rank) times the multiplier."""
    updown, rank = delta(w, weight, dyn)
    if updown.numel() == weight.numel():
        updown = updown.reshape(weight.shape)
    if "dora_scale" in w:
        orig = weight.to(torch.float32)
        merged = updown + orig
        dims = orig.dim() - 1
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *[1] * dims).transpose(0, 1)
        updown = merged * (w["dora_scale"].to(orig.device, torch.float32) / norm) - orig
    return updown.mul_(_scale(w, rank, dyn) * multiplier)


def low_rank(w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(up, down) of a plain LoRA / LoCon module (no CP mid, no DoRA), the case `W += s * up @ down` covers."""
    if "lora_mid.weight" in w or "dora_scale" in w:
        return None
    for up, down in (("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight"),
                     ("lora.up.weight", "lora.down.weight")):
        if up in w and down in w:
            return w[up], w[down]
    return None


# ---------------------------------------------------------------- the patcher


@dataclass
class _Patched:
    """What one cached component carries: the applied set, and the original weights of the touched layers."""

    applied: tuple = ()
    # id(layer) -> (layer, a CPU copy of its weight, of its bias or None). Keyed by the layer, not the Parameter:
    # sequential offload's hooks may give a layer new Parameter objects (same values) when they are removed.
    backups: dict[int, tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)


@dataclass
class PatchReport:
    applied: tuple[str, ...] = ()
    layers: int = 0
    restored: int = 0
    seconds: float = 0.0
    unchanged: bool = False
    unmatched: dict[str, int] = field(default_factory=dict)  # LoRA name -> keys that matched no layer


class LoraPatcher:
    """Applies a job's LoRAs to a checkpoint's cached components, remembering per component what is applied."""

    def __init__(self, files: FileCache | None = None):
        self.files = files or FileCache()
        self._state: weakref.WeakKeyDictionary[torch.nn.Module, _Patched] = weakref.WeakKeyDictionary()
        self._targets: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()

    def applied(self, module: torch.nn.Module) -> tuple:
        state = self._state.get(module)
        return state.applied if state else ()

    def activate(self, comps: Any, uses: Sequence[LoraUse]) -> PatchReport:
        """Make the components carry exactly `uses` (none: the checkpoint's own weights)."""
        start = time.perf_counter()
        parts = {"unet": comps.unet, "text_encoder": comps.text_encoder, "text_encoder_2": comps.text_encoder_2}
        parts = {k: v for k, v in parts.items() if v is not None}
        wanted = {part: tuple(u.key() for u in uses if (u.te if part != "unet" else u.unet) != 0) for part in parts}
        report = PatchReport(applied=tuple(u.info.name for u in uses))
        stale = [p for p, m in parts.items() if self.applied(m) != wanted[p]]
        if not stale:
            report.unchanged = True
            return report
        for part in stale:
            state = self._state.setdefault(parts[part], _Patched())
            report.restored += self._restore(state)
        table = self._targets.get(comps.unet)
        if table is None:
            table = self._targets[comps.unet] = targets(comps)
        with torch.no_grad():
            for use in uses:
                modules = self.files.get(use)
                unmatched = 0
                for key, weights in modules.items():
                    target = table.get(key) or table.get(kohya_key(key))
                    if target is None:
                        unmatched += 1
                        continue
                    part, layer = target
                    multiplier = use.unet if part == "unet" else use.te
                    if part not in stale or multiplier == 0:
                        continue
                    self._patch(self._state[parts[part]], layer, weights, multiplier, use.dyn)
                    report.layers += 1
                if unmatched:
                    report.unmatched[use.info.name] = unmatched
        for part in stale:
            self._state[parts[part]].applied = wanted[part]
        report.seconds = time.perf_counter() - start
        log.info("LoRA set %s: %d layers patched, %d restored in %.3f s", list(report.applied) or "none",
                 report.layers, report.restored, report.seconds)
        return report

    @staticmethod
    def _restore(state: _Patched) -> int:
        with torch.no_grad():
            for layer, weight, bias in state.backups.values():
                layer.weight.copy_(weight)
                if bias is not None:
                    layer.bias.copy_(bias)
        count = len(state.backups)
        state.backups.clear()
        state.applied = ()
        return count

    @staticmethod
    def _patch(state: _Patched, layer: torch.nn.Module, weights: dict[str, torch.Tensor], multiplier: float,
               dyn: int | None) -> None:
        weight = layer.weight
        if id(layer) not in state.backups:  # the first touch keeps the original, on the CPU
            bias = layer.bias.detach().to("cpu", copy=True) if layer.bias is not None else None
            state.backups[id(layer)] = (layer, weight.detach().to("cpu", copy=True), bias)
        factors = low_rank(weights)
        fused = weight.is_contiguous() and (weight.dtype == torch.float32 or weight.device.type == "cuda")
        if factors is not None and fused:
            # W += s * up @ down in one in-place matmul: no full-size delta is ever allocated
            up, down = factors
            rank = down.shape[0]
            up = up.reshape(up.shape[0], -1)[:, :dyn] if dyn else up.reshape(up.shape[0], -1)
            down = down.reshape(rank, -1)[:dyn] if dyn else down.reshape(rank, -1)
            weight.view(weight.shape[0], -1).addmm_(up.to(weight.device, weight.dtype),
                                                    down.to(weight.device, weight.dtype),
                                                    alpha=_scale(weights, rank, dyn) * multiplier)
        else:
            update = scaled_delta(weights, weight, multiplier, dyn)
            if weight.dtype == torch.float32:
                weight.add_(update)
            else:  # add in float32, round once (A1111)
                weight.copy_((weight.to(torch.float32) + update).to(weight.dtype))
        if "diff_b" in weights and layer.bias is not None:
            extra = weights["diff_b"].to(layer.bias.device, torch.float32) * multiplier
            layer.bias.copy_((layer.bias.to(torch.float32) + extra).to(layer.bias.dtype))

    def release(self, modules: Iterable[torch.nn.Module]) -> int:
        """Restore the given components' original weights (e.g. before they are saved or merged)."""
        return sum(self._restore(s) for m in modules if (s := self._state.get(m)) is not None)


__all__ = ["FileCache", "LoraPatcher", "LoraUse", "PatchReport", "delta", "original_name", "read_lora",
           "scaled_delta", "targets"]
