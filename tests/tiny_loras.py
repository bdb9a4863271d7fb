"""LoRA / LyCORIS files in the real key formats, built for a model's actual layers, with the weight change each one
means (computed here from the formats' definitions, independently of pipelines/engine/lora.py).

`build(unet, text_encoders, fmt, rank=4, seed=0)` -> (state dict to save, {(part, module path): dW at multiplier 1}).
Formats: "lora" (kohya: linear layers + LoCon 3x3 convolutions), "loha", "lokr", "peft" (diffusers/PEFT lora_A /
lora_B, no alpha), "dora" (kohya LoRA + dora_scale), "full" (diff). `sdxl_names=True` writes the UNet keys in the
original (sgm) layout and the text encoders as lora_te1_ / lora_te2_, as SDXL kohya files have them.
"""

from __future__ import annotations

import torch

from tests.tiny_models import to_original_layout

LINEAR_PARTS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "q_proj", "k_proj", "v_proj",
                "out_proj", "fc1", "fc2")


def _layers(model: torch.nn.Module, convs: bool) -> list[tuple[str, torch.nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(LINEAR_PARTS):
            out.append((name, m))
        elif convs and isinstance(m, torch.nn.Conv2d) and name.endswith("conv1"):
            out.append((name, m))
    return out


def _factor(n: int) -> int:
    return next((d for d in (2, 3, 4, 5, 7) if n % d == 0 and n // d > 1), 1)


def build(unet, text_encoders, fmt: str, *, rank: int = 4, seed: int = 0, sdxl_names: bool = False,
          unet_only_down_mid: bool = False) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    ldm = {}
    if sdxl_names:
        keys = {k: None for k in unet.state_dict()}
        keys = {k: v for k, v in keys.items() if k.startswith(("down_blocks.", "mid_block.", "conv_in", "time_emb",
                                                              "add_emb"))}
        for src, dst in zip(keys, to_original_layout(keys)):
            ldm[src.rsplit(".", 1)[0]] = dst.removeprefix("control_model.").rsplit(".", 1)[0]
    parts = [("unet", unet)] + [(f"text_encoder{'_2' if i else ''}", te) for i, te in enumerate(text_encoders)]
    state: dict[str, torch.Tensor] = {}
    deltas: dict[tuple[str, str], torch.Tensor] = {}
    for part, model in parts:
        for name, layer in _layers(model, convs=part == "unet" and fmt in ("lora", "loha")):
            if part == "unet" and unet_only_down_mid and not name.startswith(("down_blocks.", "mid_block.")):
                continue
            W = layer.weight.detach()
            out_f, in_f = W.shape[0], W.shape[1]
            kernel = tuple(W.shape[2:])
            if fmt == "peft":
                prefix = {"unet": "unet.", "text_encoder": "text_encoder.", "text_encoder_2": "text_encoder_2."}[part]
                A, B = rnd(rank, in_f), rnd(out_f, rank)
                full = name if part == "unet" or name.startswith("text_model.") else "text_model." + name
                state[f"{prefix}{full}.lora_A.weight"], state[f"{prefix}{full}.lora_B.weight"] = A, B
                deltas[(part, name)] = B @ A
                continue
            if part == "unet":
                key = "lora_unet_" + (ldm.get(name, name) if sdxl_names else name).replace(".", "_")
            else:
                full = name if name.startswith("text_model.") else "text_model." + name
                te = ("lora_te1_" if part == "text_encoder" else "lora_te2_") if sdxl_names else "lora_te_"
                key = te + full.replace(".", "_")
            alpha = rank / 2
            if fmt in ("lora", "dora"):
                down = rnd(rank, in_f, *kernel)
                up = rnd(out_f, rank, *([1, 1] if kernel else []))
                dW = (up.reshape(out_f, rank) @ down.reshape(rank, -1)).reshape(W.shape) * (alpha / rank)
                state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                              f"{key}.alpha": torch.tensor(alpha)})
                if fmt == "dora":  # A1111: renormalise W + dW (unscaled) per input column, then scale
                    raw = dW / (alpha / rank)
                    magnitude = W.norm(dim=0, keepdim=True) * (1 + rnd(1, in_f, scale=0.1))
                    merged = W + raw
                    dW = (merged * (magnitude / merged.norm(dim=0, keepdim=True)) - W) * (alpha / rank)
                    state[f"{key}.dora_scale"] = magnitude
            elif fmt == "loha":
                flat = in_f * (kernel[0] * kernel[1] if kernel else 1)
                w1a, w1b, w2a, w2b = rnd(out_f, rank), rnd(rank, flat), rnd(out_f, rank), rnd(rank, flat)
                dW = ((w1a @ w1b) * (w2a @ w2b)).reshape(W.shape) * (alpha / rank)
                state.update({f"{key}.hada_w1_a": w1a, f"{key}.hada_w1_b": w1b, f"{key}.hada_w2_a": w2a,
                              f"{key}.hada_w2_b": w2b, f"{key}.alpha": torch.tensor(alpha)})
            elif fmt == "lokr":
                a, b = _factor(out_f), _factor(in_f)
                w1 = rnd(a, b, scale=1.0)
                w2a, w2b = rnd(out_f // a, rank), rnd(rank, in_f // b)
                dW = torch.kron(w1, w2a @ w2b) * (alpha / rank)
                state.update({f"{key}.lokr_w1": w1, f"{key}.lokr_w2_a": w2a, f"{key}.lokr_w2_b": w2b,
                              f"{key}.alpha": torch.tensor(alpha)})
            elif fmt == "full":
                dW = rnd(*W.shape, scale=0.02)
                state[f"{key}.diff"] = dW
            else:
                raise ValueError(fmt)
            deltas[(part, name)] = dW
    return {k: v.contiguous() for k, v in state.items()}, deltas


def merge(model: torch.nn.Module, part: str, deltas: dict[tuple[str, str], torch.Tensor], multiplier: float) -> None:
    """Add multiplier * dW to a model's weights in place (the hand-merged reference)."""
    layers = dict(model.named_modules())
    with torch.no_grad():
        for (p, name), dW in deltas.items():
            if p == part:
                w = layers[name].weight
                w.copy_(w + dW * multiplier)
