"""ControlNet units inside a job: detect the maps, pin the ControlNet models, and steer each denoising pass.

1. `ControlRequest`s come from the studio, checked before queueing (image, model, family).
2. `Engine.generate` opens `prepare(...)` once per job: every enabled unit's preprocessor runs on its image
   (or the img2img input) at the preprocessor resolution, and its ControlNet model is pinned in the model
   manager's cache (changing units never reloads the checkpoint).
3. For each pass `Control.for_pass(size)` fits the maps to the pass size (the unit's resize mode, and the
   plan's crop for "Only masked") and gives the pipeline a `ControlStack`: a per-job view over the cached
   ControlNet models that applies each unit's control mode.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from pipelines import imageops
from pipelines.controlnets import ControlNetInfo, load_controlnet
from pipelines.params.control import unit_infotext

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.jobs import JobContext

SOFT_DECAY = 0.825  # A1111's soft injection: residual k of 13 is weighted 0.825 ** (12 - k)


@dataclass
class ControlRequest:
    index: int  # the unit's number as the user sees it (infotext "ControlNet N")
    unit: Any  # ControlUnit
    model: ControlNetInfo
    image: Image.Image | None  # None: the img2img input


@dataclass
class PreparedUnit:
    request: ControlRequest
    net: Any  # ControlNetModel on the device, pinned for the job
    detected: Image.Image  # the preprocessor's map at its own resolution

    @property
    def unit(self) -> Any:
        return self.request.unit


class ControlStack(MultiControlNetModel):
    """Sums the residuals of several ControlNets like diffusers' MultiControlNetModel, with A1111's control modes
    per unit: "My prompt is more important" weights the residuals softly (shallow layers least);
    "ControlNet is more important" does that and also keeps the control out of the unconditional half of the
    CFG batch. `soft` applies the soft weights to every unit (A1111 does so in the hires pass).
    Units whose scale is 0 at a step (outside their guidance window) are not run at all; when no unit is active,
    zero residuals of the shapes seen before stand in (only before any unit ran is one run at scale 0)."""

    def __init__(self, nets: list[Any], modes: list[str], *, cfg: bool, soft: bool = False):
        super().__init__(nets)
        self.modes, self.cfg, self.soft = list(modes), cfg, soft
        self._shapes: tuple[list[torch.Size], torch.Size] | None = None  # residual shapes of the last run

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                controlnet_cond: list[torch.Tensor], conditioning_scale: list[float], class_labels: Any = None,
                timestep_cond: Any = None, attention_mask: Any = None, added_cond_kwargs: Any = None,
                cross_attention_kwargs: Any = None, guess_mode: bool = False, return_dict: bool = True) -> Any:
        active = [i for i, s in enumerate(conditioning_scale) if s != 0]
        if not active and self._shapes is not None and self._shapes[1][0] == sample.shape[0]:
            like = dict(device=sample.device, dtype=sample.dtype)
            return [torch.zeros(s, **like) for s in self._shapes[0]], torch.zeros(self._shapes[1], **like)
        active = active or [0]  # nothing seen yet: one unit at scale 0 gives the shapes
        down_sum: list[torch.Tensor] | None = None
        mid_sum: torch.Tensor | None = None
        for i in active:
            down, mid = self.nets[i](
                sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=controlnet_cond[i], conditioning_scale=conditioning_scale[i],
                class_labels=class_labels, timestep_cond=timestep_cond, attention_mask=attention_mask,
                added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                guess_mode=False, return_dict=False)
            mode = self.modes[i]
            if self.soft or mode != "Balanced":
                weights = [SOFT_DECAY ** (12 - k) for k in range(13)][:len(down) + 1]
                down = [d * w for d, w in zip(down, weights)]
                mid = mid * weights[len(down)]
            if mode == "ControlNet is more important" and self.cfg and sample.shape[0] % 2 == 0:
                half = sample.shape[0] // 2  # diffusers batches [unconditional, conditional]
                keep = torch.ones(sample.shape[0], 1, 1, 1, device=mid.device, dtype=mid.dtype)
                keep[:half] = 0
                down = [d * keep for d in down]
                mid = mid * keep
            down_sum = down if down_sum is None else [a + b for a, b in zip(down_sum, down)]
            mid_sum = mid if mid_sum is None else mid_sum + mid
        self._shapes = ([d.shape for d in down_sum], mid_sum.shape)
        return down_sum, mid_sum


@dataclass
class Control:
    """The prepared units of one job."""

    units: list[PreparedUnit]
    frame: Callable[[Image.Image, str, tuple[int, int]], Image.Image]  # (map, resize mode, pass size) -> map
    cfg: bool
    maps: list[Image.Image] = field(default_factory=list)  # fitted to the first pass (saved beside the output)

    def infotext(self) -> dict[str, str]:
        return {f"ControlNet {u.request.index}": unit_infotext(u.unit, u.request.model.title) for u in self.units}

    def for_pass(self, kind: str, size: tuple[int, int], *, hires: bool = False) -> tuple[ControlStack, dict]:
        """The pipeline's controlnet and its extra call arguments for one denoising pass at `size`."""
        images = [self.frame(u.detected, u.unit.resize_mode, size) for u in self.units]
        stack = ControlStack([u.net for u in self.units], [u.unit.control_mode for u in self.units], cfg=self.cfg,
                             soft=hires)
        args: dict[str, Any] = {
            "image" if kind == "txt2img" else "control_image": images,
            "controlnet_conditioning_scale": [float(u.unit.weight) for u in self.units],
            "control_guidance_start": [float(u.unit.guidance_start) for u in self.units],
            "control_guidance_end": [float(u.unit.guidance_end) for u in self.units],
        }
        return stack, args


def detect_map(engine: "Engine", ctx: "JobContext", unit: Any, image: Image.Image,
               size: tuple[int, int] | None = None, label: str = "ControlNet") -> Image.Image:
    """The unit's control map at its preprocessor resolution; with pixel perfect and a target `size`, at the
    resolution the target needs. Module "none": the image itself."""
    if unit.module == "none":
        return imageops.to_rgb(image)
    from extensions.preprocessors import registry

    res = unit.processor_res
    if unit.pixel_perfect and size is not None:
        res = imageops.pixel_perfect_resolution(image.size, size[0], size[1], unit.resize_mode)
    ctx.progress(0, 1, label=f"{label}: {unit.module}")
    return registry()[unit.module].detect(imageops.to_rgb(image), int(res), unit.threshold_a, unit.threshold_b,
                                          engine.extension_context(ctx))


@contextmanager
def prepare(engine: "Engine", ctx: "JobContext", requests: list[ControlRequest], size: tuple[int, int],
            source: Image.Image | None, frame: Callable, cfg: bool) -> Iterator[Control | None]:
    """Detect every unit's map and pin its ControlNet model for the duration of the job."""
    if not requests:
        yield None
        return
    with ExitStack() as stack:
        units = []
        for req in requests:
            ctx.check()
            image = req.image if req.image is not None else source
            if image is None:
                raise ValueError(f"ControlNet {req.index} has no control image: upload one.")
            detected = detect_map(engine, ctx, req.unit, image, size, label=f"ControlNet {req.index}")
            net = stack.enter_context(engine.cached(f"controlnet::{engine.identity(req.model)}",
                                                    _loader(engine, ctx, req.model)))
            units.append(PreparedUnit(req, net, detected))
        control = Control(units, frame, cfg)
        control.maps = [frame(u.detected, u.unit.resize_mode, size) for u in units]
        yield control


def _loader(engine: "Engine", ctx: "JobContext", info: ControlNetInfo) -> Callable[[], Any]:
    def load() -> Any:
        ctx.progress(0, 1, label=f"loading ControlNet {info.name}")
        net = load_controlnet(info, dtype=engine.hw.dtype, config_root=engine.config_root,
                              progress=engine.download_progress(ctx))
        return engine.prepare_denoiser(net.to(engine.hw.device).eval())  # channels-last / compile, once

    return load
