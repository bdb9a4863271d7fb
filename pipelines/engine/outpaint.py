"""Outpainting as a plan: every step of pipelines/outpaint.py (the torch-free canvas work) is one inpaint pass of
`Img2ImgPlan`, so regular (4-channel) and inpainting (9-channel) checkpoints, the masked-content choices and
ControlNet units work as they do for inpaint. `Engine.generate` runs the plan like any other (seeds, batches,
progress, skip, saving).

1. `resolve`: the final canvas size, the steps, the request of the first pass (for the record and the ControlNet
   maps: the whole final canvas).
2. `passes`: per step, expand the canvas (pre-fill, mask with its overlap band), resolve an inpaint plan over it,
   yield its pass, composite the result so the old canvas outside the band is untouched.
3. The final image gets the input pasted back over its box, exactly, blended outwards over mask-blur px.
Batches run one image at a time (each image's canvas differs after its first step): the studio turns
batch_size into n_iter, so seeds are the same as a batch's.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipelines import imageops
from pipelines import outpaint as canvas
from pipelines.discovery import CheckpointInfo
from pipelines.engine.img2img import Img2ImgPlan
from pipelines.engine.plans import Pass, Passes, Plan
from pipelines.engine.request import Resolved, Run
from pipelines.params import cost
from pipelines.params.specs import IMG2IMG_FIELDS, INPAINT_FIELDS, Img2ImgParams

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.engine.loading import Components

# mask settings outpainting sets itself (mask blur stays the user's): kept out of the record
_SET_HERE = frozenset(set(INPAINT_FIELDS) - set(IMG2IMG_FIELDS) - {"mask_blur"}) | {
    "width", "height", "scale_by", "resize_mode"}


class OutpaintPlan(Plan):
    mode = "img2img"  # output folder

    def __init__(self, image: Image.Image):
        self.source = imageops.to_rgb(image)
        self.steps_plan: list[canvas.Step] = []
        self.size = self.source.size  # the final canvas
        self.info: CheckpointInfo | None = None
        self.frame = ((0, 0), self.source.size)  # (the input's offset, the canvas size) of the pass being run

    def resolve(self, params: Any, info: CheckpointInfo, run: Run) -> Resolved:
        p = params
        self.info = info
        self.size = canvas.check_amounts(self.source.size, p.outpaint_left, p.outpaint_right, p.outpaint_up,
                                         p.outpaint_down)
        self.steps_plan = canvas.plan_steps(p.outpaint_left, p.outpaint_right, p.outpaint_up, p.outpaint_down,
                                            p.outpaint_step)
        self.frame = ((p.outpaint_left, p.outpaint_up), self.size)
        r = super().resolve(params, info, run)
        return dataclasses.replace(r, width=self.size[0], height=self.size[1], strength=p.denoising_strength,
                                   steps=cost.schedule_length(p.steps, p.denoising_strength), dropped=_SET_HERE)

    @property
    def control_source(self) -> Image.Image:
        return self.source

    def control_frame(self, image: Image.Image, resize_mode: str, size: tuple[int, int]) -> Image.Image:
        """The map is fitted to the input and placed where the input lies on the pass' canvas (black around)."""
        (ox, oy), canvas_size = self.frame
        full = Image.new("RGB", canvas_size)
        full.paste(imageops.fit_control_map(image, self.source.width, self.source.height, resize_mode), (ox, oy))
        return full if full.size == tuple(size) else full.resize(size, Image.Resampling.LANCZOS)

    def pass_steps(self, r: Resolved) -> int:
        return cost.strength_steps(r.params.steps, r.strength)

    def steps(self, r: Resolved) -> int:
        return self.pass_steps(r) * max(1, len(self.steps_plan))

    def step_request(self, p: Any, size: tuple[int, int], seed: int) -> Any:
        """The inpaint request of one step over a canvas of `size`."""
        fill = p.outpaint_fill if p.outpaint_fill != canvas.MATCHED_NOISE else "original"
        data = {k: v for k, v in p.model_dump(exclude={"controlnet"}).items() if k in Img2ImgParams.model_fields}
        data.update(seed=seed, batch_size=1, n_iter=1, width=imageops.snap8(size[0]), height=imageops.snap8(size[1]),
                    scale_by=None, resize_mode=imageops.RESIZE_MODES[0], inpainting_fill=fill,
                    inpainting_mask_invert="Inpaint masked", inpaint_full_res="Whole picture")
        return Img2ImgParams.model_construct(**data, controlnet=[])

    def passes(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
               subseeds: list[int]) -> Passes:
        p = r.params
        results = []
        for k, seed in enumerate(seeds):  # one image at a time (the studio sends batches of one)
            image, offset = self.source, (0, 0)
            for i, step in enumerate(self.steps_plan):
                c = canvas.expand(image, step, overlap=p.outpaint_overlap, fill=p.outpaint_fill, seed=seed + i,
                                  noise_q=p.outpaint_noise_q, color_variation=p.outpaint_color_variation)
                offset = (offset[0] + step.left, offset[1] + step.up)
                self.frame = (offset, c.image.size)
                sub = Img2ImgPlan(c.image, c.mask)
                rs = sub.resolve(self.step_request(p, c.image.size, seed), self.info, run)
                rs = dataclasses.replace(rs, seed=seed, subseed=subseeds[k], first=r)
                if rs.strength == 0:
                    out = [sub.work]
                else:
                    kind, extra = sub.call(engine, run, comps, rs, [seed], [subseeds[k]])
                    label = f" step {i + 1}/{len(self.steps_plan)}" if len(self.steps_plan) > 1 else ""
                    out = yield Pass(kind, rs, extra, self.pass_steps(r), label=label)
                image = canvas.composite_step(c, out[0], p.mask_blur)
            results.append(canvas.restore_original(image, self.source, offset, p.mask_blur))
        self.frame = ((p.outpaint_left, p.outpaint_up), self.size)
        return results

    def infotext_extra(self, r: Resolved) -> dict[str, Any]:
        return {"Outpaint steps": len(self.steps_plan)} if len(self.steps_plan) > 1 else {}
