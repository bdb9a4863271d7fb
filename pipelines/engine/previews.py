"""Live previews during denoising: the latents of the running step -> a small RGB image.

Two decoders, chosen by --preview-decoder:
- "latent": a linear map of the 4 latent channels to RGB (no model, nearly free, blurry colours).
- "taesd": the tiny VAE decoder TAESD (madebyollin) through diffusers' `AutoencoderTiny`: a real image at a
  fraction of the VAE's cost. Its weights are optional and never downloaded; they are looked up where A1111
  keeps them, `models/VAE-approx/`, either as A1111's decoder-only files (`taesd_decoder.pth` for SD 1.x/2.x,
  `taesdxl_decoder.pth` for SDXL, or `.safetensors`) or as the diffusers folders published as madebyollin/taesd
  and madebyollin/taesdxl (`models/VAE-approx/taesd/` with config.json + diffusion_pytorch_model.safetensors).
- "auto": TAESD when its weights for the model's family are there, else the linear map.

TAESD works on the latents exactly as the pipeline holds them (already multiplied by the VAE's scaling factor;
AutoencoderTiny's own scaling_factor is 1.0), so no unscaling happens before it.
"""

from __future__ import annotations

import logging
import re
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch
from PIL import Image

from extensions.weights import read_weights

log = logging.getLogger("studio.previews")

VAE_APPROX = "VAE-approx"
MODES = ("auto", "taesd", "latent")
# Linear latent -> RGB factors for cheap live previews (no VAE decode), per latent space.
_LATENT_RGB = {
    "sd": [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]],
    "sdxl": [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
             [-0.3730, -0.2499, -0.2088]],
}

Preview = Callable[[torch.Tensor], Image.Image]


def latent_preview(latents: torch.Tensor, sdxl: bool, size: tuple[int, int]) -> Image.Image:
    """The first latent of a batch through the linear latent -> RGB map, enlarged to `size`."""
    factors = torch.tensor(_LATENT_RGB["sdxl" if sdxl else "sd"], dtype=torch.float32)
    rgb = torch.einsum("lhw,lr->hwr", latents[0].float().cpu(), factors)
    arr = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    return Image.fromarray(arr).resize(size, Image.Resampling.NEAREST)


# -- TAESD weights ---------------------------------------------------------------------------------------
def taesd_weights(models_dir: Path, sdxl: bool) -> Path | None:
    """The TAESD weights for a family in models/VAE-approx: a diffusers folder first, then A1111's files."""
    root = Path(models_dir) / VAE_APPROX
    name = "taesdxl" if sdxl else "taesd"
    candidates = [root / name / "config.json", root / f"{name}_decoder.safetensors", root / f"{name}_decoder.pth"]
    for c in candidates:
        if c.is_file():
            return c.parent if c.name == "config.json" else c
    return None


def decoder_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a TAESD decoder file in the layout of diffusers' `DecoderTiny` ("layers.N...").

    A1111/madebyollin's `taesd_decoder.pth` is the state dict of an `nn.Sequential` whose item 0 is a
    parameterless Clamp (tanh(x / 3) * 3): "1.weight", "3.conv.0.weight", ... DecoderTiny applies that clamp in
    its forward and numbers the rest from 0, so A1111's item N is `layers.{N-1}`. A diffusers-layout file
    (whole model: "decoder.layers.N...") keeps its decoder part."""
    if any(k.startswith("decoder.layers.") for k in sd):
        return {k.removeprefix("decoder."): v for k, v in sd.items() if k.startswith("decoder.")}
    out = {}
    for k, v in sd.items():
        index, _, rest = k.partition(".")
        if not index.isdigit() or int(index) < 1:
            raise ValueError(f"not a TAESD decoder state dict (unexpected key '{k}')")
        out[f"layers.{int(index) - 1}.{rest}"] = v
    return out


def decoder_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """AutoencoderTiny decoder settings read off a DecoderTiny state dict: a conv in, then per stage some
    blocks ("layers.N.conv.0.weight") closed by a plain conv ("layers.N.weight"); the last conv makes RGB."""
    indices = sorted({int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))})
    channels, blocks, count = [], [], 0
    for i in indices[1:]:
        if f"layers.{i}.conv.0.weight" in sd:
            count += 1
        elif f"layers.{i}.weight" in sd:  # a stage's closing conv: its input width is the stage's width
            channels.append(int(sd[f"layers.{i}.weight"].shape[1]))
            blocks.append(count)
            count = 0
    last = sd[f"layers.{indices[-1]}.weight"]
    return dict(latent_channels=int(sd["layers.0.weight"].shape[1]), out_channels=int(last.shape[0]),
                decoder_block_out_channels=tuple(channels), num_decoder_blocks=tuple(blocks))


def load_taesd(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """An AutoencoderTiny (on the CPU, in `dtype`, eval mode) from a diffusers folder or a decoder file."""
    from diffusers import AutoencoderTiny

    path = Path(path)
    with torch.inference_mode(False):  # loaded from a step callback: ordinary tensors, not inference ones
        if path.is_dir():
            return AutoencoderTiny.from_pretrained(str(path), torch_dtype=dtype).eval()
        sd = decoder_state_dict(read_weights(path))
        # the encoder is never used for previews: the smallest one the config allows
        tiny = AutoencoderTiny(**decoder_config(sd), encoder_block_out_channels=(1,), num_encoder_blocks=(1,))
        tiny.decoder.load_state_dict(sd)
        return tiny.to(dtype).eval()


def taesd_preview(tiny: Any, latents: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """The first latent of a batch through TAESD; the pipeline's (scaled) latents go in as they are."""
    with torch.inference_mode():
        x = tiny.decode(latents[:1].to(tiny.device, tiny.dtype)).sample[0]
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr)
    return img if img.size == tuple(size) else img.resize(size, Image.Resampling.BICUBIC)


def identity(path: Path) -> str:
    """A cache key for the weights at `path` that changes when the file changes."""
    f = path / "diffusion_pytorch_model.safetensors" if path.is_dir() else path
    st = f.stat() if f.exists() else path.stat()
    return f"taesd::{path}@{st.st_size}-{int(st.st_mtime)}"


# -- choosing a decoder for one denoising pass ---------------------------------------------------------------
@contextmanager
def previewer(mode: str, models_dir: Path, sdxl: bool, size: tuple[int, int], *, dtype: torch.dtype,
              cache: Callable[[str, Callable[[], Any]], ContextManager[Any]],
              once: Callable[[str], bool]) -> Iterator[Preview]:
    """A latents -> preview image function for one denoising pass. TAESD is taken from the engine's component
    cache (`cache(key, load)`, so it loads once and counts against the memory budget) on the first preview
    and stays pinned until the pass ends. "taesd" without weights warns once (per family: `once(key)` is true the
    first time a key is asked for in the process) and uses "latent"."""
    if mode not in MODES:
        raise ValueError(f"unknown preview decoder '{mode}': choose {', '.join(MODES)}")
    path = None if mode == "latent" else taesd_weights(models_dir, sdxl)
    if path is None:
        family = "taesdxl" if sdxl else "taesd"
        if mode == "taesd" and once(family):
            log.warning("--preview-decoder taesd: no %s weights in %s (%s_decoder.pth/.safetensors or a %s/ "
                        "diffusers folder); live previews use the latent approximation", family,
                        Path(models_dir) / VAE_APPROX, family, family)
        yield lambda latents: latent_preview(latents, sdxl, size)
        return
    with ExitStack() as pinned:
        loaded: list[Any] = []

        def preview(latents: torch.Tensor) -> Image.Image:
            if not loaded:
                loaded.append(pinned.enter_context(cache(identity(path), lambda: load_taesd(path, dtype))))
            return taesd_preview(loaded[0], latents, size)

        yield preview
