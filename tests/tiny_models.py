"""Build tiny Stable-Diffusion-architecture models (random weights) and save them the ways users keep models.

Used by tests and bench scripts; nothing here downloads anything. The tokenizer is the real CLIP BPE
tokenizer shipped in pipelines/configs/clip-tokenizer, so prompt handling is exercised for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

CLIP_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "clip-tokenizer"
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), model_max_length=77)


def _text_encoder(hidden: int = 32, layers: int = 4, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=37, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=64,
    ).eval()
    with torch.no_grad():  # like a trained VAE, a near-deterministic posterior (log-variance at its floor)
        half = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[half:].zero_()
        vae.quant_conv.bias[half:].fill_(-30.0)
        # scaling_factor = 1 / std of the latents, the way SD's 0.18215 was chosen: unit-variance latents
        probe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        vae.register_to_config(scaling_factor=float(1 / vae.encode(probe).latent_dist.mode().std()))
    return vae


def _unet(in_channels: int = 4, cross_attention_dim: int = 32, sdxl: bool = False, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = {}
    if sdxl:
        extra = dict(
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32, transformer_layers_per_block=(1, 1),
            attention_head_dim=(2, 4), use_linear_projection=True,
        )
    else:
        extra = dict(attention_head_dim=8)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        norm_num_groups=32, **extra,
    ).eval()


def build_sd15(path: Path, *, inpainting: bool = False, seed: int = 0) -> Path:
    """A tiny SD 1.x-layout diffusers folder (native size 64 px). inpainting=True gives a 9-channel UNet."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe = cls(
        unet=_unet(9 if inpainting else 4, seed=seed), vae=_vae(seed), text_encoder=_text_encoder(seed=seed),
        tokenizer=_tokenizer(), scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


def build_sdxl(path: Path, *, seed: int = 0) -> Path:
    """A tiny SDXL-layout diffusers folder: two text encoders, text_time additional embeddings."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        unet=_unet(cross_attention_dim=64, sdxl=True, seed=seed), vae=_vae(seed),
        text_encoder=_text_encoder(seed=seed), text_encoder_2=_text_encoder(projection=True, seed=seed + 1),
        tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), scheduler=EulerDiscreteScheduler(**{
            k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")}),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


ZERO_CONVS = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out")
_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                  "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def to_original_layout(state_dict: dict) -> dict:
    """A diffusers-layout ControlNet state dict (any values: tensors or shapes) renamed to the original
    `control_model.*` layout of lllyasviel's checkpoints: the inverse of diffusers' `convert_controlnet_checkpoint`."""
    per_block = 1 + max(int(m[1]) for k in state_dict if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k)))
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    out = {}
    for key, value in state_dict.items():
        stem, kind = key.rsplit(".", 1)
        if stem in fixed:
            new = fixed[stem]
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", stem):
            new = f"input_hint_block.{2 * (int(m[1]) + 1)}"
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)", stem):
            new = f"zero_convs.{m[1]}.0"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", stem):
            new = f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", stem):
            index = 1 + int(m[1]) * (per_block + 1) + int(m[3])
            rest = _RESNET_TO_LDM.get(m[4], m[4]) if m[2] == "resnets" else m[4]
            new = f"input_blocks.{index}.{0 if m[2] == 'resnets' else 1}.{rest}"
        elif m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", stem):
            rest = _RESNET_TO_LDM.get(m[3], m[3]) if m[1] == "resnets" else m[3]
            new = f"middle_block.{2 * int(m[2]) if m[1] == 'resnets' else 1}.{rest}"
        else:
            raise KeyError(f"no original-layout name for {key}")
        out[f"control_model.{new}.{kind}"] = value
    return out


def build_controlnet(unet_source_dir: Path, out: Path, *, single_file: bool = False, original_layout: bool = False,
                     seed: int = 0) -> Path:
    """A tiny ControlNet made from a tiny model's UNet (`unet_source_dir` is a build_sd15/build_sdxl folder).

    single_file=False: `out` becomes a diffusers folder (config.json + diffusion_pytorch_model.safetensors).
    single_file=True: `out` is a .safetensors file in the diffusers layout (or, with original_layout=True, the
    `control_model.*` layout) with its diffusers config beside it as `<stem>.json`, the sidecar that
    pipelines.controlnets reads (tiny models do not follow the real families' head counts, so they need it).
    The zero convolutions get small random weights, so the ControlNet visibly steers a generation.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(str(Path(unet_source_dir) / "unet"))
    torch.manual_seed(seed)  # the conditioning embedding is freshly initialised: same seed, same ControlNet
    controlnet = ControlNetModel.from_unet(unet).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(ZERO_CONVS):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    out = Path(out)
    if not single_file:
        controlnet.save_pretrained(str(out), safe_serialization=True)
        return out
    state = {k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_original_layout(state) if original_layout else state, str(out))
    out.with_suffix(".json").write_text(controlnet.to_json_string(), encoding="utf-8")
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_original_layout(state_dict: dict) -> dict:
    """A diffusers AutoencoderKL state dict renamed to the original (LDM) layout VAE files are shared in
    (vae-ft-mse-840000-ema-pruned.safetensors): the inverse of diffusers' `convert_ldm_vae_checkpoint`. The mid-block
    attention's linear weights become 1x1 convolutions, as the original layout stores them."""
    ups = 1 + max(int(m[1]) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    out = {}
    for key, value in state_dict.items():
        new = key
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)",
                             key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value.reshape(*value.shape, 1, 1)
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(.+)", key):
            new = f"decoder.up.{ups - 1 - int(m[1])}.{m[2]}"
        new = (new.replace(".resnets.", ".block.").replace(".downsamplers.0.conv", ".downsample.conv")
               .replace(".upsamplers.0.conv", ".upsample.conv").replace(".conv_shortcut.", ".nin_shortcut.")
               .replace(".conv_norm_out.", ".norm_out."))
        out[new] = value
    return out


def build_vae_file(path: Path, *, seed: int = 1, original_layout: bool = True, prefix: str = "") -> Path:
    """A tiny VAE (`_vae(seed)`) saved as one .safetensors file, in the original layout VAEs are downloaded in (or
    diffusers' own), its keys under `prefix` (e.g. "first_stage_model."). Returns the path."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in _vae(seed).state_dict().items()}
    if original_layout:
        state = vae_to_original_layout(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return path
