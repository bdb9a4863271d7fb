"""A real-size SD 1.5 single file in the original (LDM) layout loads offline with the shipped configs.

The checkpoint is built from tests/data/sd15-ldm-layout.json (UNet + VAE names and shapes as model sites
distribute them) plus CLIP ViT-L's text model under 'cond_stage_model.transformer.text_model.'. Its tensors
are zeros, so the file is written as a sparse .safetensors file (header, then a hole): 2.1 GB on paper,
no disk and no time, yet read through safetensors like any downloaded checkpoint.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.discovery import CheckpointInfo, scan
from pipelines.engine.loading import LoadError, hub_allow_patterns, load_components, materialize_config

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

LAYOUT = Path(__file__).resolve().parent / "data" / "sd15-ldm-layout.json"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
DTYPES = {torch.float16: ("F16", 2), torch.int64: ("I64", 8)}


def write_sparse_safetensors(path: Path, specs: dict[str, tuple[list[int], torch.dtype]],
                             data: dict[str, torch.Tensor] | None = None) -> None:
    """A valid .safetensors file: all tensors zero except those in `data`, zero regions left as holes."""
    header, offset = {}, 0
    for name, (shape, dtype) in specs.items():
        code, size = DTYPES[dtype]
        nbytes = size * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, tensor in (data or {}).items():
            f.seek(8 + len(raw) + header[name]["data_offsets"][0])
            f.write(tensor.contiguous().numpy().tobytes())
        f.truncate(8 + len(raw) + offset)


def sd15_specs() -> dict[str, tuple[list[int], torch.dtype]]:
    """Names/shapes of an SD 1.5 single file: UNet + VAE from the layout file, CLIP-L text model from transformers."""
    from transformers import CLIPTextConfig, CLIPTextModel

    layout = json.loads(LAYOUT.read_text())
    specs = {name: (shape, torch.float16) for name, shape in layout["tensors"].items()}
    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, max_position_embeddings=77, vocab_size=49408))
    for name, tensor in clip.state_dict().items():
        name = name if name.startswith("text_model.") else "text_model." + name  # transformers 5 drops the prefix
        if not name.endswith("position_ids"):
            specs["cond_stage_model.transformer." + name] = (list(tensor.shape), torch.float16)
    specs[POSITION_IDS] = ([1, 77], torch.int64)
    return specs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    root = models / "Stable-diffusion"
    root.mkdir()
    specs = sd15_specs()
    ids = {POSITION_IDS: torch.arange(77, dtype=torch.int64).unsqueeze(0)}
    write_sparse_safetensors(root / "sd15-zeros.safetensors", specs, ids)
    inpaint = dict(specs)
    inpaint[CONV_IN] = ([320, 9, 3, 3], torch.float16)
    (root / "inpaint").mkdir()
    write_sparse_safetensors(root / "inpaint" / "sd15-zeros-inpainting.safetensors", inpaint, ids)
    wrong = dict(specs)
    wrong["model.diffusion_model.time_embed.0.weight"] = ([1280, 300], torch.float16)
    write_sparse_safetensors(root / "wrong-shape.safetensors", wrong, ids)
    with open(root / "sd15-zeros.safetensors", "rb") as f, open(root / "cut.safetensors", "wb") as out:
        out.write(f.read(1 << 20))  # header intact, data missing
    yield models
    for f in root.rglob("*.safetensors"):
        f.unlink()


@pytest.fixture(scope="module")
def infos(models):
    return {i.name: i for i in scan(models)}


def test_file_is_a_real_size_checkpoint(models):
    from safetensors import safe_open

    path = models / "Stable-diffusion" / "sd15-zeros.safetensors"
    assert path.stat().st_size > 2_000_000_000
    with safe_open(str(path), "pt") as f:
        assert f.get_slice(CONV_IN).get_shape() == [320, 4, 3, 3]
        assert f.get_tensor(POSITION_IDS)[0, -1].item() == 76


def test_scan_detects_sd15_families(infos):
    base, inpaint = infos["sd15-zeros.safetensors"], infos["inpaint/sd15-zeros-inpainting.safetensors"]
    assert (base.family, base.native, base.inpainting, base.error) == ("sd15", 512, False, None)
    assert (inpaint.family, inpaint.native, inpaint.inpainting) == ("sd15-inpaint", 512, True)
    assert infos["cut.safetensors"].family == "unknown" and "truncated" in infos["cut.safetensors"].error


def test_loads_offline_and_generates(infos, tmp_path, no_network):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    stages = []
    parts = load_components(infos["sd15-zeros.safetensors"], dtype=torch.float32, config_root=tmp_path,
                            progress=lambda *a: stages.append(a))
    assert no_network == []
    assert parts.family == "sd15" and stages[-1] == ("loaded", 1, 1)
    assert parts.unet.config.in_channels == 4 and parts.unet.config.cross_attention_dim == 768
    assert parts.text_encoder.config.hidden_size == 768 and parts.text_encoder_2 is None
    assert parts.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert parts.scheduler_config["prediction_type"] == "epsilon"
    assert sum(p.numel() for m in parts.modules().values() for p in m.parameters()) > 1_000_000_000

    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=DDIMScheduler.from_config(parts.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a cat", num_inference_steps=1, height=64, width=64, guidance_scale=1.0,
                 output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_inpainting_variant_loads(infos, tmp_path, no_network):
    parts = load_components(infos["inpaint/sd15-zeros-inpainting.safetensors"], dtype=torch.float16,
                            config_root=tmp_path)
    assert parts.family == "sd15-inpaint" and parts.unet.config.in_channels == 9
    assert parts.unet.dtype == torch.float16 and no_network == []


def test_bad_checkpoints_give_short_errors(infos, tmp_path, no_network):
    with pytest.raises(LoadError, match=r"^Could not load cut.safetensors: .*truncated"):
        load_components(infos["cut.safetensors"], dtype=torch.float16, config_root=tmp_path)
    wrong = infos["wrong-shape.safetensors"]
    assert wrong.family == "sd15"  # the header looks fine; the shapes do not fit the architecture
    with pytest.raises(LoadError, match=r"^Could not load wrong-shape.safetensors: the weights do not fit") as err:
        load_components(wrong, dtype=torch.float16, config_root=tmp_path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert no_network == []


def test_uncached_hub_id_offline_names_the_fix(tmp_path, no_network):
    info = CheckpointInfo(name="someone/not-cached-model", source="hub", hub_id="someone/not-cached-model")
    with pytest.raises(RuntimeError, match=r"someone/not-cached-model.*models/Stable-diffusion"):
        load_components(info, dtype=torch.float16, config_root=tmp_path)
    assert no_network == []


def test_config_sets_materialize_once(tmp_path):
    from transformers import CLIPTokenizer

    sdxl = materialize_config("sdxl", tmp_path)
    for tok in ("tokenizer", "tokenizer_2"):
        assert {p.name for p in (sdxl / tok).iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    vocab = sdxl / "tokenizer_2" / "vocab.json"
    before = vocab.stat().st_mtime_ns
    materialize_config("sdxl", tmp_path)
    assert vocab.stat().st_mtime_ns == before  # up to date: untouched
    tok2 = CLIPTokenizer.from_pretrained(str(sdxl / "tokenizer_2"))
    assert tok2.pad_token == "!" and tok2.pad_token_id == 0  # OpenCLIP pads with "!"
    sd2 = materialize_config("sd2-v", tmp_path)
    assert json.loads((sd2 / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    with pytest.raises(ValueError):
        materialize_config("unknown", tmp_path)


def test_hub_allow_patterns_pick_one_variant():
    files = ["model_index.json", "v1-5-pruned.safetensors", "safety_checker/config.json",
             "safety_checker/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
             "vae/config.json", "vae/diffusion_pytorch_model.bin", "text_encoder/config.json",
             "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16-00001-of-00002.safetensors",
             "text_encoder_2/model.fp16-00002-of-00002.safetensors", "text_encoder_2/model.safetensors",
             "text_encoder_2/model.safetensors.index.fp16.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
             "scheduler/scheduler_config.json"]
    half = hub_allow_patterns(files, torch.float16)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in half
    assert "unet/diffusion_pytorch_model.safetensors" not in half and "unet/diffusion_pytorch_model.bin" not in half
    assert {"vae/diffusion_pytorch_model.bin", "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt"} <= set(half)
    assert {f for f in half if f.startswith("text_encoder_2/")} == {
        "text_encoder_2/model.fp16-00001-of-00002.safetensors", "text_encoder_2/model.fp16-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.fp16.json"}
    assert not any(f.startswith("safety_checker/") or f == "v1-5-pruned.safetensors" for f in half)
    full = hub_allow_patterns(files, torch.float32)
    assert "unet/diffusion_pytorch_model.safetensors" in full and "unet/diffusion_pytorch_model.fp16.safetensors" not in full
