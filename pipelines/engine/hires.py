"""Hires. fix: txt2img at the model's native size, then upscale and run a second img2img pass.

1. `resolve`: the final size from "Upscale by" or "Resize width/height to" (multiples of 8).
2. First pass: plain txt2img; with a latent upscaler it stops at the latents (no decode).
3. `after`: enlarge (latent interpolation, or a pixel upscaler: Lanczos/Nearest/ESRGAN-family models from
   models/ESRGAN through extensions.upscalers) and redraw at the final size with the hires steps, sampler,
   prompt and denoising strength. The first-pass image is saved too when asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import imageops
from pipelines.discovery import CheckpointInfo
from pipelines.engine.generate import Plan, Txt2ImgPlan
from pipelines.params import cost
from pipelines.params.specs import LATENT_UPSCALERS

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.engine.loading import Components
    from pipelines.jobs import JobContext

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
    def resolve(self, p: dict, info: CheckpointInfo) -> None:
        Plan.resolve(self, p, info)  # keeps the hires settings (plain txt2img drops them)
        p["hr_size"] = target_size(p["width"], p["height"], p["hr_scale"], p["hr_resize_x"], p["hr_resize_y"])
        self.latent = p["hr_upscaler"] in LATENT_UPSCALERS

    def infotext_extra(self, p: dict) -> dict[str, Any]:
        if p["hr_resize_x"] or p["hr_resize_y"]:
            return {"Hires resize": f"{p['hr_size'][0]}x{p['hr_size'][1]}"}
        return {}

    def second_pass_steps(self, p: dict) -> int:
        return cost.hires_steps(p)

    def steps(self, p: dict) -> int:
        return p["steps"] + self.second_pass_steps(p)

    def first_pass_steps(self, p: dict) -> int:
        return p["steps"]

    def call(self, engine: "Engine", comps: "Components", p: dict, seeds: list[int],
             subseeds: list[int]) -> tuple[str, dict[str, Any]]:
        kind, extra = super().call(engine, comps, p, seeds, subseeds)
        if self.latent:
            extra["output_type"] = "latent"
        return kind, extra

    def after(self, engine: "Engine", ctx: "JobContext", comps: "Components", p: dict, embeds: dict, output: Any,
              seeds: list[int], *, done_before: int, steps_total: int, label: str) -> list[Image.Image]:
        tw, th = p["hr_size"]
        ctx.check()
        if self.latent:
            if p["hr_keep_first_pass"]:
                self.keep += list(zip(engine.decode(comps, output, self.warnings), seeds))
            image: Any = upscale_latents(output, (tw, th), p["hr_upscaler"])
        else:
            if p["hr_keep_first_pass"]:
                self.keep += list(zip(output, seeds))
            from extensions import upscalers

            up = upscalers.get_upscaler(p["hr_upscaler"], engine.models_dir)
            ext = engine.extension_context(ctx)
            scale = max(tw / p["width"], th / p["height"])
            image = [imageops.resize_image(up.upscale(img, scale, ext), tw, th, "Crop and resize") for img in output]
            ctx.progress(done_before, steps_total, label=f"{label}: hires pass")
        # The second pass: img2img at the final size with the hires sampler, steps and prompt.
        p2 = dict(p, width=tw, height=th, sampler_name=p["hr_sampler_name"] or p["sampler_name"],
                  steps=p["hr_second_pass_steps"] or p["steps"])
        if p["hr_sampler_name"]:
            p2["scheduler"] = "Automatic"
        embeds2 = embeds
        if p["hr_prompt"] or p["hr_negative_prompt"]:
            embeds2 = engine.encode(comps, p["hr_prompt"] or p["prompt"],
                                    p["hr_negative_prompt"] or p["negative_prompt"], p["clip_skip"])
        n = p2["steps"]
        while int(n * p["denoising_strength"]) < 1:  # at least one step, as in img2img
            n += 1
        kind = "inpaint" if comps.unet.config.in_channels == 9 else "img2img"
        if kind == "inpaint" and self.latent:  # 9-channel UNets condition on pixels: decode first
            image = engine.decode(comps, image, self.warnings)
        extra: dict[str, Any] = dict(image=image, strength=p["denoising_strength"], num_inference_steps=n,
                                     generator=engine.generators([s + 0x41D5 for s in seeds]))
        if kind == "inpaint":
            extra["mask_image"] = Image.new("L", (tw, th), 255)
        return engine.denoise(ctx, comps, kind, p2, embeds2, seeds, extra, done_before=done_before,
                              pass_steps=self.second_pass_steps(p), steps_total=steps_total,
                              label=f"{label}: hires pass", control=self.control, hires=True, notes=self.warnings)


class HiresOnImagePlan(HiresPlan):
    """Finalize a chosen image: Hires. fix's second pass over an image txt2img already made, so its first pass is
    not run again. `params` are the image's own (its infotext) with hires fix on; with a pixel upscaler the result
    is the image txt2img + Hires. fix gives for that seed (the second pass draws the same noise)."""

    def __init__(self, image: Image.Image):
        super().__init__()
        self.image = image.convert("RGB")

    def resolve(self, p: dict, info: CheckpointInfo) -> None:
        p["width"], p["height"] = self.image.size  # the first pass's size is the image's
        p["hr_keep_first_pass"] = False  # the first pass is the user's own file
        super().resolve(p, info)
        if self.latent:
            raise ValueError("finalizing a saved image needs a pixel upscaler (Lanczos or an ESRGAN model): "
                             "latent upscalers work on the first pass's latents")

    def steps(self, p: dict) -> int:
        return self.second_pass_steps(p)

    def first_pass_steps(self, p: dict) -> int:
        return 0

    def first_pass(self, engine: "Engine", ctx: "JobContext", comps: "Components", p: dict, embeds: dict,
                   seeds: list[int], subseeds: list[int], *, done_before: int, steps_total: int, label: str) -> Any:
        return [self.image.copy() for _ in seeds]
