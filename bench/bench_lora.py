"""LoRA apply / switch / remove cost, and generation with LoRAs, against plain diffusers on the same model.

The model is the SD 1.5 architecture with random weights (pipelines/configs/sd15), built in memory. Each LoRA is a
kohya-format file of rank 32 over every attention projection, feed-forward and resnet convolution of the UNet and
every projection of the text encoder, as real ones are (about 800 layers for SD 1.5).

Reports (JSON, then a table):
- the app's patcher (pipelines/engine/lora.py): first apply of 1 and of 3 LoRAs (file read + backup + patch), the
  same set again (must be a no-op), a switch to another LoRA (restore + patch) and the removal (restore), with
  the milliseconds per touched layer and the peak memory of each section (CUDA allocator peak, or peak RSS);
- plain diffusers on the same modules: `load_lora_weights` + `fuse_lora`, then `unfuse_lora` + `unload_lora_weights`;
- generation with one LoRA at 0.7: the same pipeline call with the app's patched weights, with diffusers' fused
  weights, and with diffusers' unfused PEFT layers (the median of --runs each), as ratios; and the largest pixel
  difference between the app's and diffusers' fused image (both apply up @ down * alpha / rank).

    python bench/bench_lora.py                          # CPU, 256 px, 4 steps
    python bench/bench_lora.py --device cuda --size 512 --steps 20 --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from bench_speed import Peak
from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from safetensors.torch import save_file

from pipelines.engine.lora import LoraPatcher, LoraUse
from pipelines.networks.loras import LoraInfo, classify


def random_sd15(device: str, dtype: torch.dtype):
    import diffusers
    import transformers

    from pipelines.engine.loading import materialize_config

    config = materialize_config("sd15", Path(tempfile.mkdtemp()) / "configs")
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel.from_config(diffusers.UNet2DConditionModel.load_config(config / "unet"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(config / "vae"))
        te = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(config / "text_encoder"))
    tok = transformers.CLIPTokenizer.from_pretrained(config / "tokenizer")
    sched = diffusers.EulerDiscreteScheduler.from_config(diffusers.EulerDiscreteScheduler.load_config(config / "scheduler"))
    pipe = diffusers.StableDiffusionPipeline(unet=unet.to(dtype).eval(), vae=vae.to(dtype).eval(),
                                             text_encoder=te.to(dtype).eval(), tokenizer=tok, scheduler=sched,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_lora(pipe, path: Path, rank: int, seed: int) -> int:
    """A kohya LoRA over every attention / feed-forward projection and resnet convolution; returns its layer count."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    parts = [("lora_unet_", pipe.unet, True), ("lora_te_text_model_", pipe.text_encoder, False)]
    for prefix, model, convs in parts:
        for name, m in model.named_modules():
            linear = isinstance(m, torch.nn.Linear) and ("attn" in name or ".ff." in name or "mlp" in name
                                                         or "proj" in name)
            conv = convs and isinstance(m, torch.nn.Conv2d) and ".resnets." in name
            if not (linear or conv):
                continue
            out_f, in_f = m.weight.shape[:2]
            kernel = list(m.weight.shape[2:])
            key = prefix + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = (torch.randn(rank, in_f, *kernel, generator=g) * 0.01).half()
            state[f"{key}.lora_up.weight"] = (torch.randn(out_f, rank, *([1, 1] if kernel else []), generator=g)
                                              * 0.01).half()
            state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(state, str(path))
    return len(state) // 3


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    pipe = random_sd15(args.device, dtype)
    files = [work / f"lora{i}.safetensors" for i in range(4)]
    layers = [write_lora(pipe, f, args.rank, seed=i) for i, f in enumerate(files)]
    infos = []
    for f in files:
        from pipelines.discovery import read_header

        fields = classify(read_header(f).shapes)
        infos.append(LoraInfo(name=f.stem, path=f, rel=f.name, **fields))
    comps = SimpleNamespace(unet=pipe.unet, text_encoder=pipe.text_encoder, text_encoder_2=None)
    patcher = LoraPatcher()
    out: dict = {"device": str(device), "dtype": args.dtype, "rank": args.rank, "layers_per_lora": layers[0],
                 "lora_file_mib": round(files[0].stat().st_size / 2**20, 1)}

    def section(name: str, uses: list[LoraUse]) -> None:
        with Peak(device) as peak:
            seconds, report = timed(lambda: patcher.activate(comps, uses), device)
        touched = max(report.layers, report.restored, 1)
        out[name] = {"seconds": round(seconds, 4), "layers_patched": report.layers, "layers_restored": report.restored,
                     "ms_per_layer": round(1000 * seconds / touched, 3), "unchanged": report.unchanged, **peak.report()}

    one = [LoraUse(infos[0], 0.7, 0.7)]
    three = [LoraUse(i, 0.5, 0.5) for i in infos[1:4]]
    section("apply_1_first", one)
    section("apply_1_same_again", one)
    section("remove_1", [])
    section("apply_1_cached_file", one)
    section("switch_to_3", three)
    section("same_3_again", three)
    section("remove_3", [])

    # plain diffusers on the same modules (PEFT): load + fuse, then unfuse + unload
    with Peak(device) as peak:
        t_load, _ = timed(lambda: pipe.load_lora_weights(str(files[0]), adapter_name="a"), device)
        t_fuse, _ = timed(lambda: pipe.fuse_lora(lora_scale=0.7), device)
    out["diffusers_load_and_fuse"] = {"load_seconds": round(t_load, 4), "fuse_seconds": round(t_fuse, 4),
                                      **peak.report()}

    def generate() -> np.ndarray:
        image = pipe(prompt="a castle on a hill", num_inference_steps=args.steps, height=args.size,
                     width=args.size, generator=torch.Generator("cpu").manual_seed(1), output_type="np").images[0]
        return image

    def median_of(fn) -> tuple[float, np.ndarray]:
        times, image = [], None
        for _ in range(args.runs):
            t, image = timed(fn, device)
            times.append(t)
        return statistics.median(times), image

    t_fused, img_fused = median_of(generate)
    pipe.unfuse_lora()
    t_unfused, _ = median_of(generate)  # PEFT layers active: an extra low-rank matmul per layer and step
    t_unload, _ = timed(lambda: pipe.unload_lora_weights(), device)
    out["diffusers_unload_seconds"] = round(t_unload, 4)
    patcher.activate(comps, [LoraUse(infos[0], 0.7, 0.7)])
    t_app, img_app = median_of(generate)
    patcher.activate(comps, [])
    out["generation"] = {"size": args.size, "steps": args.steps, "app_patched_s": round(t_app, 3),
                         "diffusers_fused_s": round(t_fused, 3), "diffusers_unfused_s": round(t_unfused, 3),
                         "app_over_fused": round(t_app / t_fused, 3), "app_over_unfused": round(t_app / t_unfused, 3),
                         "max_pixel_diff_vs_fused": int(np.abs(img_app.astype(np.float32) - img_fused).max() * 255)}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    print("\n| section | seconds | layers | ms/layer | peak |")
    print("|---|---|---|---|---|")
    for k, v in out.items():
        if isinstance(v, dict) and "ms_per_layer" in v:
            peak_key = next(x for x in v if x.endswith("peak_gib"))
            print(f"| {k} | {v['seconds']} | {max(v['layers_patched'], v['layers_restored'])} | {v['ms_per_layer']} "
                  f"| {v[peak_key]} GiB |")


if __name__ == "__main__":
    main()
