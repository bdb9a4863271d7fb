"""What a mode is: a `Plan` describes a job's passes, and `Engine.generate` (generate.py) runs every plan the same
way (seeds, pipeline views, memory modes and OOM retry, previews, progress, cancel and skip, decoding, saving).

A plan answers, for its mode:
1. `resolve`: the typed request resolved for the model and input (`Resolved`: sizes, seeds, schedule type...);
2. `steps` / `first_pass_steps`: the denoising steps one batch runs, counted as `pipelines/params/cost.py` counts;
3. `passes`: the batch's denoising passes, described (`Pass`: pipeline kind, request, arguments, steps) and
   yielded one at a time; the executor runs each and sends its output back, so Hires. fix can describe its
   second pass from the first one's output. A plan never runs a pipeline itself;
4. `finish`: the images as saved (inpainting pastes them back over the input), `infotext_extra`.

txt2img is here; Hires. fix in hires.py, img2img and inpaint in img2img.py, and modes.py picks the plan for a
request. Plans never import the engine: they receive it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator

from PIL import Image

from pipelines import imageops
from pipelines.discovery import CheckpointInfo
from pipelines.engine.request import Resolved, Run
from pipelines.params import samplers
from pipelines.params.specs import PARAMS, resolve_seed

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.engine.loading import Components

HIRES_KEYS = frozenset([n for n, spec in PARAMS.items() if spec.group == "hires"] + ["denoising_strength"])
# A pass's `latents` argument meaning "the batch's first noise": the executor draws it (Engine.denoise), from the
# pass's ImageRNG, whose later draws are the step noise (A1111's order)
FIRST_NOISE = object()


@dataclass
class Pass:
    """One denoising pass over a batch, as a plan describes it for the executor (`Engine.run_passes`)."""

    kind: str  # pipeline kind: txt2img | img2img | inpaint
    request: Resolved  # size, sampler, schedule, steps and strength of this pass
    extra: dict[str, Any] = field(default_factory=dict)  # further pipeline arguments (latents, image, mask...)
    steps: int = 0  # denoising steps it runs (progress and cost)
    embeds: dict | None = None  # prompt embeddings of its own (Hires. fix's prompt); None: the job's
    prompt: str | None = None  # the prompt `embeds` came from (its LoRA tags apply to this pass); None: the job's
    hires: bool = False  # ControlNet units weigh their residuals softly, as A1111 does in the hires pass
    label: str = ""  # appended to the batch's progress label


Passes = Generator[Pass, Any, list[Image.Image]]  # yields passes, receives each one's output, returns the images


def inpaint_everywhere(comps: "Components", extra: dict[str, Any], image: Any) -> str:
    """The pipeline kind for a pass outside inpaint mode: an inpainting checkpoint (9-channel UNet) always takes an
    image and a mask, so it gets `image` with everything masked; any other checkpoint keeps its own kind."""
    if not comps.inpainting_unet:
        return ""
    size = image.size if isinstance(image, Image.Image) else (image[0].size if isinstance(image, list) else None)
    if size is None:
        raise ValueError("an inpainting checkpoint needs pixels for this pass")
    extra.update(image=image, mask_image=Image.new("L", size, 255))
    return "inpaint"


class Plan:
    """What differs between modes; the defaults fit a plain txt2img batch and subclasses override the rest."""

    mode = "txt2img"  # output folder

    @property
    def control_source(self) -> Image.Image | None:
        """The image a ControlNet unit without its own image uses (img2img: the input)."""
        return None

    def control_frame(self, image: Image.Image, resize_mode: str, size: tuple[int, int]) -> Image.Image:
        """Fit a control map to a pass of `size` the way this plan frames its image."""
        return imageops.fit_control_map(image, size[0], size[1], resize_mode)

    def resolve(self, params: Any, info: CheckpointInfo, run: Run) -> Resolved:
        """The request resolved for `info` before anything is loaded: seeds, schedule type and size (default: the
        model's native size)."""
        seed = resolve_seed(params.seed)
        subseed = resolve_seed(params.subseed) if hasattr(params, "subseed") else seed  # variation: txt2img only
        return Resolved(params=params, seed=seed, subseed=subseed, width=params.width or info.native,
                        height=params.height or info.native, sampler=params.sampler_name,
                        scheduler=samplers.resolve_schedule(params.sampler_name, params.scheduler),
                        steps=params.steps, model_name=info.model_name, model_hash=info.short_hash)

    def steps(self, r: Resolved) -> int:
        """Denoising steps one image of a batch runs (all passes)."""
        return r.steps

    def first_pass_steps(self, r: Resolved) -> int:
        return self.steps(r)

    def shortcut(self, r: Resolved) -> list[Image.Image] | None:
        """Images that need no denoising at all (e.g. img2img at strength 0), else None."""
        return None

    def call(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
             subseeds: list[int]) -> tuple[str, dict[str, Any]]:
        """(pipeline kind, extra pipeline kwargs) for one batch's first pass."""
        raise NotImplementedError

    def passes(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
               subseeds: list[int]) -> Passes:
        """The batch's passes: by default one, the pipeline call `call` describes; its output is final."""
        kind, extra = self.call(engine, run, comps, r, seeds, subseeds)
        return (yield Pass(kind, r, extra, self.first_pass_steps(r)))

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        return images

    def infotext_extra(self, r: Resolved) -> dict[str, Any]:
        return {}


class Txt2ImgPlan(Plan):
    def resolve(self, params: Any, info: CheckpointInfo, run: Run) -> Resolved:
        # hires settings mean nothing without hires fix: keep them out of the infotext
        return dataclasses.replace(super().resolve(params, info, run), dropped=HIRES_KEYS)

    def call(self, engine: "Engine", run: Run, comps: "Components", r: Resolved, seeds: list[int],
             subseeds: list[int]) -> tuple[str, dict[str, Any]]:
        w, h = r.size
        extra: dict[str, Any] = dict(latents=FIRST_NOISE)
        grey = Image.new("RGB", (w, h), (127, 127, 127))
        if kind := inpaint_everywhere(comps, extra, grey):  # an inpainting checkpoint: everything is "masked"
            extra["strength"] = 1.0
            return kind, extra
        return "txt2img", extra
