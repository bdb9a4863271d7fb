"""Build tiny Stable-Diffusion-architecture models (random weights) and save them the ways users keep models.

Used by tests and bench scripts; nothing here downloads anything. The tokenizer is the real CLIP BPE
tokenizer shipped in pipelines/configs/clip-tokenizer, so prompt handling is exercised for real.
"""

from __future__ import annotations

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
