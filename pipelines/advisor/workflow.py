"""The guided workflow of RECOMMENDATIONS.md: explore with drafts, refine the chosen seed, finalize it once.

1. Draft: a batch of random seeds at draft steps (11-19) and the model's native size, with a deterministic
   sampler so that a draft predicts what its seed gives at full quality.
2. Refine: the picked image's seed pinned, refine steps (20-35), one image per run while the prompt, CFG or
   sampler are edited.
3. Finalize: only the chosen image is enlarged: Hires. fix's second pass over it (its first pass is not run
   again) or the tiled SD upscale.
The `Ledger` counts the denoising steps each stage ran, and what the naive way would have run: every image
generated at full quality with the final pass. Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pipelines import imageops
from pipelines.advisor.rules import deterministic
from pipelines.params import cost
from pipelines.params.spec import HintContext
from pipelines.params.specs import LATENT_UPSCALERS, PARAMS, SD_UPSCALE_FIELDS, TXT2IMG_FIELDS, defaults

STAGES = ("draft", "refine", "finalize")
DRAFT_BATCH = 4
FINAL_DENOISE = 0.3  # hires fix ~0.2-0.4 with a pixel upscaler
FINAL_SCALE = 2.0
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")


def draft_steps(ctx: HintContext) -> int:
    return 4 if ctx.distilled else 15  # the middle of the draft band (distilled models: their own few steps)


def refine_steps(ctx: HintContext) -> int:
    return 8 if ctx.distilled else int(PARAMS["steps"].default)


def native_size(values: Mapping[str, Any], ctx: HintContext) -> tuple[int, int]:
    """The current size if it keeps a side near native (portrait/landscape kept), else the native square."""
    w, h = int(values.get("width") or ctx.native), int(values.get("height") or ctx.native)
    judged = [PARAMS[n].hint(v, ctx, {"width": w, "height": h}).verdict for n, v in (("width", w), ("height", h))]
    return (w, h) if all(v == "best" for v in judged) else (ctx.native, ctx.native)


def draft_split(workers: int) -> tuple[int, int]:
    """(batch_size, n_iter) of the draft batch: one batch, or with several device workers a batch count that they
    share (the most batches that divide the drafts evenly and have a worker each). Same seeds either way."""
    n_iter = max(n for n in range(1, DRAFT_BATCH + 1) if DRAFT_BATCH % n == 0 and n <= max(workers, 1))
    return DRAFT_BATCH // n_iter, n_iter


def draft_settings(values: Mapping[str, Any], ctx: HintContext) -> dict[str, Any]:
    """The field changes that make the next run a draft batch."""
    w, h = native_size(values, ctx)
    batch_size, n_iter = draft_split(ctx.workers)
    return {"steps": draft_steps(ctx), "seed": -1, "width": w, "height": h, "batch_size": batch_size, "n_iter": n_iter,
            "enable_hr": False, "subseed_strength": 0.0,
            "sampler_name": deterministic(str(values.get("sampler_name") or PARAMS["sampler_name"].default))}


def refine_settings(values: Mapping[str, Any], seed: int, ctx: HintContext) -> dict[str, Any]:
    """The field changes that refine the picked image: its seed pinned, full-quality steps, one image."""
    steps = int(values.get("steps") or 0)
    good = PARAMS["steps"].hint(steps, ctx).verdict == "best"
    return {"seed": int(seed), "steps": steps if good else refine_steps(ctx), "batch_size": 1, "n_iter": 1,
            "enable_hr": False,
            "sampler_name": deterministic(str(values.get("sampler_name") or PARAMS["sampler_name"].default))}


def best_upscaler(names: list[str]) -> str:
    """A neural (ESRGAN-family) upscaler when one is installed, else Lanczos."""
    return next((n for n in names if n not in BUILTIN_UPSCALERS), "Lanczos")


def image_params(parsed: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    """The parameters an image was made with (its parsed infotext), over the defaults, limited to `fields`."""
    base = defaults("txt2img") | defaults("sd_upscale")
    return {n: parsed[n] if parsed.get(n) is not None else base.get(n) for n in fields}


def finalize_hires(parsed: Mapping[str, Any], current: Mapping[str, Any], ctx: HintContext,
                   upscalers: list[str]) -> dict[str, Any]:
    """Txt2img parameters of a Hires. fix over the chosen image: the image's own parameters, the hires settings
    of the form where they suit a saved image (a pixel upscaler, at most ~2x native a side)."""
    p = image_params(parsed, TXT2IMG_FIELDS)
    w, h = int(p["width"] or ctx.native), int(p["height"] or ctx.native)
    for name in ("hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength", "hr_sampler_name",
                 "hr_prompt", "hr_negative_prompt"):
        if current.get(name) is not None:
            p[name] = current[name]
    if p["hr_upscaler"] in LATENT_UPSCALERS or p["hr_upscaler"] in (None, "", "None"):
        p["hr_upscaler"] = best_upscaler(upscalers)
    limit = ctx.native * 2 / max(w, h)
    p["hr_scale"] = min(float(p.get("hr_scale") or FINAL_SCALE), max(round(limit / 0.05) * 0.05, 1.05))
    if PARAMS["denoising_strength"].hint(p["denoising_strength"], ctx).verdict != "best":
        p["denoising_strength"] = FINAL_DENOISE
    p.update(enable_hr=True, hr_resize_x=0, hr_resize_y=0, batch_size=1, n_iter=1, width=w, height=h,
             hr_keep_first_pass=False)
    return p


def finalize_tiled(parsed: Mapping[str, Any], ctx: HintContext, upscalers: list[str]) -> dict[str, Any]:
    """Tiled SD upscale parameters for the chosen image: 2x with a neural upscaler first, tiles at the native size."""
    p = image_params(parsed, SD_UPSCALE_FIELDS)
    tile = min(ctx.native, 1024)
    p.update(upscaler_1=best_upscaler(upscalers), upscaling_resize=FINAL_SCALE, upscaling_resize_w=0,
             upscaling_resize_h=0, denoising_strength=FINAL_DENOISE, tile_width=tile, tile_height=tile)
    return p


def tiled_steps(p: Mapping[str, Any], size: tuple[int, int]) -> int:
    target = imageops.scaled_size(size, float(p["upscaling_resize"]), 0, 0)
    return cost.sd_upscale_steps(p, target)


@dataclass
class Entry:
    stage: str
    images: int
    steps: int  # denoising steps the job ran

    @property
    def per_image(self) -> int:
        return self.steps // max(self.images, 1)


@dataclass
class Ledger:
    """Denoising steps spent per stage, against the naive way: every generated image at full quality with the
    final pass (what "render everything at full quality and upscale it" costs)."""

    entries: list[Entry] = field(default_factory=list)

    def record(self, stage: str, images: int, steps: int) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.entries.append(Entry(stage, images, steps))

    def spent(self, stage: str | None = None) -> int:
        return sum(e.steps for e in self.entries if stage is None or e.stage == stage)

    def images(self, stage: str) -> int:
        return sum(e.images for e in self.entries if e.stage == stage)

    def _last(self, stage: str) -> Entry | None:
        return next((e for e in reversed(self.entries) if e.stage == stage), None)

    def naive(self, ctx: HintContext) -> int:
        """The same images the naive way: each draft rendered at full quality (the refine steps) plus the final
        pass (what finalizing cost per image, or a Hires. fix estimate before it ran). Refine runs after the first
        are prompt edits the naive way pays for too; the first one only re-renders the chosen draft, which the
        naive way already has at full quality."""
        refine, final = self._last("refine"), self._last("finalize")
        full = refine.per_image if refine else refine_steps(ctx)
        last = final.per_image if final else cost.hires_steps(
            {"enable_hr": True, "steps": full, "denoising_strength": FINAL_DENOISE, "hr_second_pass_steps": 0})
        candidates = self.images("draft") + max(self.images("refine") - 1, 0)
        return candidates * (full + last)

    def summary(self, ctx: HintContext) -> dict[str, Any]:
        spent, naive = self.spent(), self.naive(ctx)
        return {"stages": {s: {"images": self.images(s), "steps": self.spent(s)} for s in STAGES},
                "spent": spent, "naive": naive, "saved": naive - spent,
                "saved_ratio": (naive - spent) / naive if naive else 0.0}
