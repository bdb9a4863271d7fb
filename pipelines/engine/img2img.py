"""img2img and inpaint jobs: the `Plan` that turns an input image (and mask) into pipeline arguments.

Reads in the order the work happens:
1. `resolve`: output size (given, "resize by", or the input's aspect ratio near the model's native size),
   the mask (resized with a warning if needed, inverted, blurred) and, for "Only masked", the crop box.
2. `call`: the working image (resized, or the crop) with its masked content prepared: pixel "fill", or
   "latent noise"/"latent nothing" written into the encoded latents; strength = denoising strength.
3. `finish`: paste the crop back and composite over the input through the blurred mask, so every pixel
   outside the mask is the user's own pixel, byte for byte.
Regular checkpoints inpaint through diffusers' masked img2img path (4-channel UNet), dedicated inpainting
checkpoints (9-channel UNet) through the same pipeline class with their extra conditioning.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import imageops
from pipelines.discovery import CheckpointInfo
from pipelines.engine.plans import Plan, inpaint_everywhere
from pipelines.engine.request import Resolved, Run
from pipelines.params import cost
from pipelines.params.specs import IMG2IMG_FIELDS, INPAINT_FIELDS

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.engine.loading import Components

LATENT_UPSCALE = imageops.RESIZE_MODES[3]
INPAINT_ONLY = frozenset(set(INPAINT_FIELDS) - set(IMG2IMG_FIELDS))


class Img2ImgPlan(Plan):
    def __init__(self, image: Image.Image, mask: Image.Image | None = None):
        self.source = imageops.to_rgb(image)  # transparency flattened onto white, as A1111 does
        self.raw_mask = mask
        self.mode = "img2img" if mask is None else "inpaint"
        self.base: Image.Image | None = None  # what the output is composited over (input, possibly resized)
        self.mask: Image.Image | None = None  # blurred mask at the base's size
        self.box: tuple[int, int, int, int] | None = None  # "Only masked" crop box in base coordinates
        self.work: Image.Image | None = None  # what the pipeline starts from (width x height)
        self.work_mask: Image.Image | None = None

    # 1. Sizes, mask, crop box --------------------------------------------------------------------
    def resolve(self, params: Any, info: CheckpointInfo, run: Run) -> Resolved:
        p = params
        size = imageops.output_size(self.source.size, p.width, p.height, p.scale_by, info.native)
        r = dataclasses.replace(super().resolve(params, info, run), width=size[0], height=size[1],
                                strength=p.denoising_strength,
                                steps=cost.schedule_length(p.steps, p.denoising_strength))
        only_masked = self.raw_mask is not None and p.inpaint_full_res == "Only masked"
        # "Only masked" keeps the input's size and regenerates a crop; otherwise the input is resized first.
        self.base = self.source if only_masked else imageops.resize_image(self.source, *size, p.resize_mode)
        if self.raw_mask is None:
            self.work = self.base
            # mask settings mean nothing without a mask: keep them out of the infotext
            return dataclasses.replace(r, dropped=INPAINT_ONLY)
        mask, warnings = imageops.prepare_mask(self.raw_mask, self.source.size, invert=False, blur=0)
        for w in warnings:
            run.note(w)
        if not only_masked:
            mask = imageops.resize_image(mask.convert("RGB"), *size, p.resize_mode).convert("L")
        invert = p.inpainting_mask_invert == "Inpaint not masked"
        binary, _ = imageops.prepare_mask(mask, self.base.size, invert=invert, blur=0)
        self.mask, _ = imageops.prepare_mask(mask, self.base.size, invert=invert, blur=p.mask_blur)
        if imageops.mask_is_empty(binary):
            raise ValueError("The mask is empty: paint over the part to repaint (or use img2img).")
        if imageops.mask_is_full(binary):
            run.note("The whole image is masked: everything is repainted, as in img2img.")
        if only_masked:
            self.box = imageops.masked_region(binary, p.inpaint_full_res_padding, size, self.base.size)
            self.work = imageops.crop_for_region(self.base, self.box, size)
            self.work_mask = imageops.crop_for_region(binary.convert("RGB"), self.box, size).convert("L")
        else:
            self.work, self.work_mask = self.base, binary
        if p.inpainting_fill == "fill":
            self.work = imageops.fill_masked(self.work, self.work_mask)
        return r

    @property
    def control_source(self) -> Image.Image:
        return self.source

    def control_frame(self, image: Image.Image, resize_mode: str, size: tuple[int, int]) -> Image.Image:
        """"Only masked" generates a crop of the input: the map is fitted to the input, then cropped alike."""
        if self.box is None:
            return super().control_frame(image, resize_mode, size)
        full = imageops.fit_control_map(image, self.base.width, self.base.height, resize_mode)
        return imageops.crop_for_region(full, self.box, size)

    def steps(self, r: Resolved) -> int:
        """Steps actually run: int(steps x strength), as in A1111 and diffusers, but at least one."""
        return cost.strength_steps(r.params.steps, r.strength)

    def shortcut(self, r: Resolved) -> list[Image.Image] | None:
        if r.strength == 0:  # nothing to denoise: the (resized) input is the result
            return [self.work.copy() for _ in range(r.params.batch_size)]
        return None

    # 2. Pipeline arguments -------------------------------------------------------------------------
    def call(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
             subseeds: list[int]) -> tuple[str, dict[str, Any]]:
        extra: dict[str, Any] = dict(strength=r.strength)
        if self.raw_mask is None:
            if kind := inpaint_everywhere(comps, extra, self.work):  # an inpainting checkpoint: all is masked
                return kind, extra
            image: Any = self.work
            if r.params.resize_mode == LATENT_UPSCALE:
                image = self._latent_upscale(engine, comps, r)
            extra.update(image=image)
            return "img2img", extra
        extra.update(image=self.work, mask_image=self.work_mask)
        if r.params.inpainting_fill in ("latent noise", "latent nothing"):
            extra.update(self._latent_fill(engine, comps, r, seeds))
        return "inpaint", extra

    @staticmethod
    def _encode(engine: "Engine", comps: "Components", image: Image.Image) -> torch.Tensor:
        from diffusers.image_processor import VaeImageProcessor

        pixels = VaeImageProcessor().preprocess(image).to(engine.hw.device, engine.hw.dtype)
        with torch.inference_mode():
            latents = comps.vae.encode(pixels).latent_dist.mode()
        return latents * comps.vae.config.scaling_factor

    def _latent_upscale(self, engine: "Engine", comps: "Components", r: Resolved) -> torch.Tensor:
        """A1111's "Just resize (latent upscale)": encode at the input's size, resize the latents."""
        iw, ih = self.source.size
        small = self.source.resize((imageops.snap8(iw), imageops.snap8(ih)), Image.Resampling.LANCZOS)
        latents = self._encode(engine, comps, small)
        return F.interpolate(latents.float(), size=(r.height // 8, r.width // 8), mode="bilinear",
                             antialias=True).to(latents.dtype)

    def _latent_fill(self, engine: "Engine", comps: "Components", r: Resolved, seeds: list[int]) -> dict[str, Any]:
        """Start the masked area from noise or from an empty latent (the rest from the input's latents)."""
        latents = self._encode(engine, comps, self.work)
        m = torch.from_numpy(np.asarray(self.work_mask, dtype=np.float32) / 255.0).to(latents)
        m = F.interpolate(m[None, None], size=latents.shape[-2:], mode="nearest")
        if r.params.inpainting_fill == "latent noise":
            fill = engine.noise(r.params, seeds, tuple(latents.shape[1:])).to(latents)
        else:
            fill = torch.zeros((len(seeds), *latents.shape[1:]), device=latents.device, dtype=latents.dtype)
        start = latents * (1 - m) + fill * m
        masked = latents if not comps.inpainting_unet else self._encode(
            engine, comps, Image.composite(Image.new("RGB", self.work.size), self.work, self.work_mask))
        return {"image": start, "masked_image_latents": masked.repeat(len(seeds), 1, 1, 1)
                if masked.shape[0] == 1 else masked}

    # 3. Back onto the user's pixels -----------------------------------------------------------------
    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        if self.mask is None:
            return images
        out = []
        for img in images:
            full = imageops.paste_region(self.base, img, self.box) if self.box else img
            out.append(imageops.composite(self.base, full, self.mask))
        return out
