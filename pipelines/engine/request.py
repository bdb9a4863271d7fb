"""The typed request as the engine runs it, and the per-job state of a run.

A request is validated once, into the Pydantic model the parameter specs generate (`Txt2ImgParams`,
`Img2ImgParams`, `SdUpscaleParams`); the engine never re-reads it from a dict. A mode's plan resolves it into a
frozen `Resolved`: what "default" means for this model and input (size, seeds, schedule type, model hash, the
Hires. fix size) and the fields that vary per denoising pass (size, sampler, steps, strength), so a second pass
is `resolved.for_pass(...)`, not a copied dict with keys changed.

`Run` holds what belongs to one job and not to the long-lived `Engine`: the memory mode in force (an OOM retry
lowers it for the rest of the job), the offload hooks, the ControlNet units, warnings, images to keep as they
are, and the progress counters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import BaseModel

if TYPE_CHECKING:
    from pipelines.engine.control import Control
    from pipelines.engine.memory import OffloadChain
    from pipelines.jobs import JobContext
    from pipelines.networks.loras import LoraInfo
    from pipelines.networks.vaes import VaeFile



@dataclass(frozen=True)
class Resolved:
    """A validated request resolved for one model and input. Per-pass fields (size, sampler, schedule, steps,
    strength) describe the pass being run; `values()` is the record of the job (first pass) for the infotext."""

    params: BaseModel  # the validated request (Txt2ImgParams | Img2ImgParams | SdUpscaleParams)
    seed: int
    subseed: int
    width: int
    height: int
    sampler: str
    scheduler: str  # the schedule type, "Automatic" resolved for the sampler
    steps: int  # the schedule length the diffusers pipeline is given (a partial pass runs fewer)
    strength: float = 1.0  # denoising strength of this pass (1.0: from pure noise)
    model_name: str = ""
    model_hash: str | None = None
    hr_size: tuple[int, int] | None = None  # Hires. fix's final size
    dropped: frozenset[str] = frozenset()  # request fields that mean nothing in this mode (kept out of the record)
    first: "Resolved | None" = None  # for a later pass: the job's first pass, which the record describes
    sample_steps: int | None = None  # A1111's steps for this pass (None: the request's `steps`)
    fixed_steps: bool = False  # A1111 runs exactly `sample_steps` at this strength (a Hires. fix pass)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def for_pass(self, **changes: Any) -> "Resolved":
        """The same request for another pass (another size, sampler, schedule, steps or strength)."""
        return dataclasses.replace(self, first=self.first or self, **changes)

    def values(self) -> dict[str, Any]:
        """The job's parameters as recorded (infotext, result): the request's fields with the first pass's resolved
        seed, subseed, schedule type and size, and the model hash."""
        r = self.first or self
        v = {k: x for k, x in r.params.model_dump(exclude={"controlnet"}).items() if k not in r.dropped}
        v.update(seed=r.seed, scheduler=r.scheduler, width=r.width, height=r.height, model_hash=r.model_hash)
        if "subseed" in v:
            v["subseed"] = r.subseed
        if r.hr_size is not None:
            v["hr_size"] = r.hr_size
        return v


@dataclass
class Run:
    """One job's state while the engine runs it."""

    ctx: "JobContext"
    mode: str  # memory mode in force: pipelines/engine/memory.py (an OOM retry lowers it)
    warnings: list[str] = field(default_factory=list)  # for the job's result (each once)
    offload: "OffloadChain | None" = None  # offload hooks while the job's models live in RAM
    control: "Control | None" = None  # the job's ControlNet units
    keep: list[tuple[Image.Image, int]] = field(default_factory=list)  # extra images to save as they are (image, seed)
    loras: dict[str, "LoraInfo"] = field(default_factory=dict)  # LoRAs used, by the name the prompt gave (infotext)
    embeddings: list[str] = field(default_factory=list)  # textual-inversion embeddings the prompts used (infotext)
    vae: "VaeFile | None" = None  # the external VAE the job decodes (and encodes) with; None: the checkpoint's own
    done: int = 0  # denoising steps run so far (progress)
    total: int = 0  # denoising steps the job will run

    def note(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
