"""What the UI and the API ask about ControlNet: models and preprocessors, unit checks, detection jobs.

The studio owns one `ControlNets`. Unit checks happen here, before anything is queued, so a bad unit
(no image, no model, a model of the other family, start after end) is a clear message and costs nothing.
Importing this module does not import torch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pipelines import controlnets
from pipelines.controlnets import ControlNetInfo
from pipelines.discovery import CheckpointInfo
from pipelines.jobs import Job, JobRunner, Skipped
from pipelines.params.control import ControlUnit

if TYPE_CHECKING:
    from pipelines.engine.control import ControlRequest
    from pipelines.engine.generate import Engine

FAMILY_NAMES = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


class ControlError(ValueError):
    """A unit the user has to fix (the studio turns it into BadRequest)."""


def _registry() -> dict[str, Any]:
    from extensions.preprocessors import registry

    return registry()


class ControlNets:
    def __init__(self, models_dir: Path, hub_ids: Sequence[str], runner: JobRunner,
                 engine: "Callable[[Any], Engine]", *,
                 hub_endpoint: str | None = None, root: Path | None = None):
        self.models_dir = Path(models_dir)
        self.root = Path(root) if root is not None else self.models_dir / "ControlNet"  # --controlnet-dir
        self.hub_endpoint = hub_endpoint  # None: annotator weights cannot be downloaded
        self.hub_ids = tuple(hub_ids)
        self.runner = runner
        self.engine = engine  # the engine of a job's worker: engine(ctx)
        self._lock = threading.Lock()
        self._models: list[ControlNetInfo] | None = None

    # -- models ----------------------------------------------------------------------------------
    def models(self, refresh: bool = False) -> list[ControlNetInfo]:
        with self._lock:
            if refresh or self._models is None:
                self._models = controlnets.scan(self.models_dir, self.hub_ids, root=self.root)
            return list(self._models)

    def model_titles(self, family: str | None = None) -> list[str]:
        """Titles ("name [hash]") of usable models, only those for `family` (a checkpoint family) if given."""
        return [m.title for m in self.models() if not m.error and (family is None or self._fits(m, family))]

    @staticmethod
    def _fits(model: ControlNetInfo, family: str) -> bool:
        return model.family is None or controlnets.compatible(model, family)

    def default_model(self, module: str, family: str | None = None) -> str:
        """The first listed model made for this preprocessor's map type ("None" if there is none)."""
        pre = _registry().get(module)
        keywords = pre.model_keywords if pre is not None else ()
        for title in self.model_titles(family):
            if any(k in title.lower() for k in keywords):
                return title
        return "None"

    # -- preprocessors ---------------------------------------------------------------------------
    @staticmethod
    def modules() -> list[str]:
        return list(_registry())

    @staticmethod
    def module_detail() -> dict[str, Any]:
        """Per module: its sliders (A1111's /controlnet/module_list?alias_names=true detail form)."""
        out = {}
        for name, pre in _registry().items():
            sliders = [{"name": "Preprocessor resolution", "value": 512, "min": 64, "max": 2048}] if name != "none" else []
            for s in (pre.threshold_a, pre.threshold_b):
                if s is not None:
                    sliders.append({"name": s.label, "value": s.default, "min": s.minimum, "max": s.maximum,
                                    "step": s.step})
            out[name] = {"model_free": not pre.weights, "sliders": sliders, "control_type": pre.control_type}
        return out

    def control_types(self, family: str | None = None) -> dict[str, Any]:
        from extensions.preprocessors import CONTROL_TYPES, for_type

        reg = _registry()
        out = {}
        for t in CONTROL_TYPES:
            modules = for_type(reg, t)
            default = next((m for m in modules if m != "none"), "none")
            titles = self.model_titles(family)
            if t != "All":
                keys = {k for m in modules if m in reg for k in reg[m].model_keywords}
                titles = [x for x in titles if any(k in x.lower() for k in keys)]
            out[t] = {"module_list": modules, "model_list": ["None", *titles], "default_option": default,
                      "default_model": self.default_model(default, family) if t != "All" else "None"}
        return out

    # -- checks ----------------------------------------------------------------------------------
    def requests(self, units: Sequence[Any], checkpoint: CheckpointInfo, *, has_input: bool) -> list["ControlRequest"]:
        """The enabled units as engine requests; ControlError names the unit and what to fix."""
        from pipelines.engine.control import ControlRequest

        out = []
        for i, unit in enumerate(units):
            if not unit.enabled:
                continue
            if unit.image is None and not has_input:
                raise ControlError(f"ControlNet unit {i} is enabled but has no control image: upload one "
                                   "(or a pose JSON), or disable the unit.")
            if unit.model in (None, "", "None"):
                raise ControlError(f"ControlNet unit {i} is enabled but no model is selected. Put ControlNet "
                                   f"models into {self.root} and refresh.")
            model = controlnets.find(self.models(), unit.model) or controlnets.find(self.models(refresh=True),
                                                                                   unit.model)
            if model is None:
                listed = ", ".join(m.title for m in self.models() if not m.error) or "none"
                raise ControlError(f"ControlNet unit {i}: unknown model '{unit.model}'. Available: {listed}.")
            if model.error:
                raise ControlError(f"ControlNet unit {i}: {model.name} cannot be used: {model.error}")
            if not self._fits(model, checkpoint.family):
                raise ControlError(
                    f"ControlNet unit {i}: {model.name} is a {FAMILY_NAMES.get(model.family, model.family)} "
                    f"ControlNet, but {checkpoint.name} is "
                    f"{FAMILY_NAMES.get(controlnets.base_family(checkpoint.family), checkpoint.family)}: "
                    "pick a ControlNet made for the selected checkpoint's family.")
            self.check_annotators(unit.module, f"ControlNet unit {i}")
            out.append(ControlRequest(i, unit, model, unit.image))
        return out

    def check_annotators(self, module: str, who: str) -> None:
        """Offline, a preprocessor whose weights are not in models/annotators fails now, naming the files."""
        from extensions.annotators import annotator_path, file_url

        if self.hub_endpoint is not None:
            return  # downloaded on first use, with progress
        pre = _registry()[module]
        missing = [f for f in pre.weights if not annotator_path(self.models_dir, f).exists()]
        if missing:
            where = annotator_path(self.models_dir, missing[0]).parent
            raise ControlError(f"{who}: the {module} preprocessor needs {', '.join(missing)}, which is not in {where} "
                               f"and this machine is offline. Download {', '.join(file_url(f) for f in missing)} "
                               f"into {where}, or use another preprocessor.")

    # -- detection -------------------------------------------------------------------------------
    def submit_detect(self, module: str, images: list[Any], *, processor_res: int = 512,
                      threshold_a: float | None = None, threshold_b: float | None = None,
                      owner: str | None = None) -> Job:
        """Run a preprocessor on images in a job (it may load detector weights onto the device).
        The job's result is the list of maps."""
        unit = ControlUnit.model_validate({"module": module, "processor_res": processor_res,
                                           "threshold_a": threshold_a, "threshold_b": threshold_b})
        if not images:
            raise ControlError("No image to run the preprocessor on: upload one.")
        self.check_annotators(unit.module, "Preview")

        def run(ctx: Any) -> list[Any]:
            """Skip ends the detection after the running image, keeping the maps already made."""
            maps = []
            for n, image in enumerate(images):
                try:
                    ctx.skip_point()
                except Skipped:
                    ctx.clear_skip()
                    break
                maps.append(self.engine(ctx).detect(ctx, unit, image))
                ctx.progress(n + 1, len(images), label=f"{unit.module}: {n + 1}/{len(images)}")
            return maps

        return self.runner.submit(run, kind="detect", owner=owner)
