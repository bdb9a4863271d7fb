"""Hires. fix: txt2img at the model's native size, then upscale and run a second img2img pass.

1. `resolve`: the final size from "Upscale by" or "Resize width/height to" (multiples of 8).
2. First pass: plain txt2img; with a latent upscaler it stops at the latents (no decode).
3. `after`: enlarge (latent interpolation, or a pixel upscaler: Lanczos/Nearest/ESRGAN-family models from
   models/ESRGAN through extensions.upscalers) and redraw at the final size with the hires steps, sampler,
   prompt and denoising strength. The first-pass image is saved too when asked.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import imageops
from pipelines.discovery import CheckpointInfo
from pipelines.engine.plans import Pass, Passes, Plan, Txt2ImgPlan, inpaint_everywhere
from pipelines.engine.request import Resolved, Run
from pipelines.params import cost
from pipelines.params.specs import LATENT_UPSCALERS

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.engine.loading import Components


_LATENT_MODES = {  # A1111's latent upscale modes -> F.interpolate(mode, antialias)
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True), "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True), "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def target_size(w: int, h: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    return imageops.scaled_size((w, h), scale, resize_x, resize_y)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize latents to cover (w/8, h/8) and center-crop the excess (aspect kept when resize-to differs)."""
    interp, antialias = _LATENT_MODES[mode]
    tw, th = size[0] // 8, size[1] // 8
    lh, lw = latents.shape[-2:]
    k = max(tw / lw, th / lh)
    cw, ch = max(tw, round(lw * k)), max(th, round(lh * k))
    kw = dict(antialias=True) if antialias else {}
    if interp in ("bilinear", "bicubic"):
        kw["align_corners"] = False
    up = F.interpolate(latents.float(), size=(ch, cw), mode=interp, **kw).to(latents.dtype)
    top, left = (ch - th) // 2, (cw - tw) // 2
    return up[..., top:top + th, left:left + tw]


class HiresPlan(Txt2ImgPlan):
    def __init__(self) -> None:
        self.latent = False  # a latent upscaler: the first pass stops at the latents

    def resolve(self, params: Any, info: CheckpointInfo, run: Run) -> Resolved:
        r = Plan.resolve(self, params, info, run)  # keeps the hires settings (plain txt2img drops them)
        self.latent = params.hr_upscaler in LATENT_UPSCALERS
        return dataclasses.replace(r, hr_size=target_size(r.width, r.height, params.hr_scale, params.hr_resize_x,
                                                          params.hr_resize_y))

    def infotext_extra(self, r: Resolved) -> dict[str, Any]:
        if r.params.hr_resize_x or r.params.hr_resize_y:
            return {"Hires resize": f"{r.hr_size[0]}x{r.hr_size[1]}"}
        return {}

    def second_pass_steps(self, r: Resolved) -> int:
        return cost.hires_steps(r.values())

    def steps(self, r: Resolved) -> int:
        return r.steps + self.second_pass_steps(r)

    def first_pass_steps(self, r: Resolved) -> int:
        return r.steps

    def call(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
             subseeds: list[int]) -> tuple[str, dict[str, Any]]:
        kind, extra = super().call(engine, run, comps, r, seeds, subseeds)
        if self.latent:
            extra["output_type"] = "latent"
        return kind, extra

    def passes(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
               subseeds: list[int]) -> Passes:
        """txt2img (stopping at the latents with a latent upscaler), then the second pass over its output."""
        output = yield from super().passes(engine, run, comps, r, seeds, subseeds)
        return (yield self.second_pass(engine, run, comps, r, output, seeds))

    def second_pass(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, output: Any,
                    seeds: list[int]) -> Pass:
        """Enlarge the first pass's output (latents or images), then img2img at the final size with the hires
        sampler, steps, prompt and denoising strength."""
        p, ctx = r.params, run.ctx
        tw, th = r.hr_size
        ctx.check()
        if self.latent:
            if p.hr_keep_first_pass:
                run.keep += list(zip(engine.decode(comps, output, run.warnings), seeds))
            image: Any = upscale_latents(output, (tw, th), p.hr_upscaler)
        else:
            if p.hr_keep_first_pass:
                run.keep += list(zip(output, seeds))
            from extensions import upscalers

            up = upscalers.get_upscaler(p.hr_upscaler, engine.models_dir, engine.esrgan_dir)
            ext = engine.extension_context(ctx)
            scale = max(tw / r.width, th / r.height)
            image = [imageops.resize_image(up.upscale(img, scale, ext), tw, th, "Crop and resize") for img in output]
            ctx.progress(run.done, run.total, label="hires pass")
        steps = p.hr_second_pass_steps or r.steps
        second = r.for_pass(width=tw, height=th, sampler=p.hr_sampler_name or r.sampler,
                            scheduler="Automatic" if p.hr_sampler_name else r.scheduler,
                            steps=cost.schedule_length(steps, p.denoising_strength), strength=p.denoising_strength,
                            sample_steps=steps, fixed_steps=True)  # A1111 runs all `steps` in the hires pass
        embeds = prompt = None
        if p.hr_prompt or p.hr_negative_prompt:
            prompt = p.hr_prompt or p.prompt  # A1111: the hires pass runs with its own prompt's LoRAs
            embeds = engine.encode(comps, prompt, p.hr_negative_prompt or p.negative_prompt, p.clip_skip, run=run)
        if comps.inpainting_unet and self.latent:  # 9-channel UNets condition on pixels: decode first
            image = engine.decode(comps, image, run.warnings)
        extra: dict[str, Any] = dict(image=image, strength=p.denoising_strength)
        kind = inpaint_everywhere(comps, extra, image) or "img2img"
        return Pass(kind, second, extra, self.second_pass_steps(r), embeds=embeds, prompt=prompt, hires=True,
                    label=": hires pass")


class HiresOnImagePlan(HiresPlan):
    """Finalize a chosen image: Hires. fix's second pass over an image txt2img already made, so its first pass is
    not run again. `params` are the image's own (its infotext) with hires fix on; with a pixel upscaler the result
    is the image txt2img + Hires. fix gives for that seed (the second pass draws the same noise)."""

    def __init__(self, image: Image.Image):
        super().__init__()
        self.image = image.convert("RGB")

    def resolve(self, params: Any, info: CheckpointInfo, run: Run) -> Resolved:
        # the first pass's size is the image's, and the first pass is the user's own file (not kept again)
        params = params.model_copy(update={"width": self.image.width, "height": self.image.height,
                                           "hr_keep_first_pass": False})
        r = super().resolve(params, info, run)
        if self.latent:
            raise ValueError("finalizing a saved image needs a pixel upscaler (Lanczos or an ESRGAN model): "
                             "latent upscalers work on the first pass's latents")
        return r

    def steps(self, r: Resolved) -> int:
        return self.second_pass_steps(r)

    def first_pass_steps(self, r: Resolved) -> int:
        return 0

    def passes(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
               subseeds: list[int]) -> Passes:
        """Only the second pass, over the chosen image (the first pass is the user's file)."""
        return (yield self.second_pass(engine, run, comps, r, [self.image.copy() for _ in seeds], seeds))
