"""The ControlNet panel of the txt2img and img2img tabs: MAX_UNITS units, each in its own sub-tab.

A unit holds a control image (or an OpenPose JSON rendered into one), the detected-map preview with its
Preview button, a control type that filters the preprocessors and models, and every CONTROL_PARAMS field
built from its spec with a live verdict (threshold A/B are re-labelled, re-ranged and re-judged for the
preprocessor, and hidden when it has no such setting). The tab passes `panel.inputs` to its Generate handler
and turns their values into ControlUnit dicts with `panel.units(values)`; `panel.restore(parsed, checkpoint)`
puts the units of an infotext back (send-to buttons). Nothing here imports torch: the preprocessors run in
jobs through the studio, and rendering a pose JSON imports controlnet-aux only when one is uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from extensions.preprocessors import CONTROL_TYPES, for_type, registry
from pipelines.jobs import EventKind
from pipelines.params.control import CONTROL_PARAMS, MAX_UNITS, ControlUnit, units_from_infotext
from pipelines.params.spec import HintContext
from pipelines.studio import BadRequest, Studio, describe_validation
from ui.generation import image_input, message_html, open_image, typed
from ui.topbar import current_name, hint_context
from ui.widgets import QUEUED, QUIET, ParamWidget, bind_hints, hint_html, param_widget

UNIT_INPUTS = ("image", *CONTROL_PARAMS)  # per unit, the values `ControlPanel.units` reads, in `inputs` order
THRESHOLDS = ("threshold_a", "threshold_b")
# verdicts that look at other fields of the unit: the model's fit and the thresholds' bands depend on the
# preprocessor. A change of preprocessor does not re-judge the thresholds through this link: whatever changes the
# preprocessor re-ranges the threshold sliders in the same update and returns their badges itself (see
# Unit.thresholds); an event reading a slider before its new value lands would fail Gradio's range check.
LINKED = {"module": ("model",), "model": ("module",), "threshold_a": ("module",), "threshold_b": ("module",)}
RESTORED_NOTE = "ControlNet units restored: upload their control images"

CSS = """
.cn-panel .tab-container {margin-bottom:2px;}
.cn-top {align-items:center; gap:12px;}
.cn-images {gap:10px;}
.cn-refresh {align-self:flex-start; margin-top:72px; max-width:48px; min-width:44px !important; height:42px;}
.cn-pose-button {flex-grow:0 !important;}
.cn-type .wrap {gap:4px 10px;}
"""


# -- pure helpers ---------------------------------------------------------------------------------------

def family_of(studio: Studio, name: str | None) -> str | None:
    """The selected checkpoint's family (None when unknown: every ControlNet model is listed then)."""
    try:
        info = studio.find_model(name) if name else studio.current_model()
    except BadRequest:
        return None
    return None if info.family in (None, "", "unknown") else info.family


def type_of(module: str) -> str:
    """The control type a preprocessor belongs to ("All" for "none" and anything unknown)."""
    pre = registry().get(module)
    return pre.control_type if pre is not None and pre.control_type in CONTROL_TYPES else "All"


def module_choices(control_type: str) -> list[str]:
    return for_type(registry(), control_type if control_type in CONTROL_TYPES else "All")


def model_choices(studio: Studio, family: str | None, control_type: str) -> list[str]:
    """"None" and the ControlNet models of the checkpoint's family, only those for the type unless "All"."""
    types = studio.controlnet.control_types(family)
    return list(types.get(control_type, types["All"])["model_list"])


def pick_model(choices: Sequence[str], current: Any, default: str) -> str:
    """Keep the current model when it is listed (by title or by name), else the default."""
    if current and current != "None":
        for title in choices:
            if current == title or str(current).split(" [")[0] == title.split(" [")[0]:
                return title
    return default if default in choices else "None"


def default_model(studio: Studio, module: str, family: str | None, choices: Sequence[str]) -> str:
    if module == "none":
        return "None"
    return pick_model(choices, studio.controlnet.default_model(module, family), "None")


def threshold_updates(module: str, given: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Any, Any]]:
    """Per threshold: (slider update, its block's visibility, its value) for `module`: the preprocessor's own
    label, range and step, valued at `given[name]` when set (else the preprocessor's default); hidden (value
    None: unused) when it has none."""
    pre = registry().get(module)
    out = {}
    for name in THRESHOLDS:
        slider = getattr(pre, name, None) if pre is not None else None
        if slider is None:
            out[name] = (gr.skip(), gr.Column(visible=False), None)
            continue
        value = (given or {}).get(name)
        value = slider.default if value is None or value == -1 else min(slider.maximum, max(slider.minimum, value))
        out[name] = (gr.Slider(label=slider.label, info=slider.description, minimum=slider.minimum,
                               maximum=slider.maximum, step=slider.step, value=value), gr.Column(visible=True), value)
    return out


# -- the panel ------------------------------------------------------------------------------------------

@dataclass
class Unit:
    index: int
    image: gr.Image  # control image (a path; empty in img2img = the img2img input)
    pose_json: gr.UploadButton
    map: gr.Image  # detected-map preview
    preview: gr.Button
    message: gr.HTML
    control_type: gr.Radio
    refresh: gr.Button
    widgets: dict[str, ParamWidget]  # CONTROL_PARAMS name -> input + verdict
    threshold_boxes: dict[str, gr.Column]

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.image, *(self.widgets[n].input for n in CONTROL_PARAMS)]

    @property
    def hints(self) -> list[gr.HTML]:
        return [self.widgets[n].hint for n in CONTROL_PARAMS]

    @property
    def threshold_outputs(self) -> list[gr.components.Component]:
        return [x for n in THRESHOLDS for x in (self.widgets[n].input, self.threshold_boxes[n], self.widgets[n].hint)]

    def thresholds(self, module: str, ctx: HintContext, given: Mapping[str, Any] | None = None) -> dict[Any, Any]:
        """Updates of the threshold sliders, their blocks and their badges for `module` (see threshold_updates)."""
        out: dict[Any, Any] = {}
        for name, (slider, box, value) in threshold_updates(module, given).items():
            w = self.widgets[name]
            out.update({w.input: slider, self.threshold_boxes[name]: box,
                        w.hint: hint_html(w.spec, value, ctx, {"module": module})})
        return out


@dataclass
class ControlPanel:
    studio: Studio
    unit_blocks: list[Unit]
    img2img: bool = False
    inputs: list[gr.components.Component] = field(default_factory=list)  # per unit: UNIT_INPUTS, unit after unit
    restore_outputs: list[gr.components.Component] = field(default_factory=list)  # what `restore` may update
    accordion: gr.Accordion | None = None
    tabs: gr.Tabs | None = None  # the units' sub-tabs (ids `{prefix}-cn{index}`)
    prefix: str = ""

    def units(self, values: Sequence[Any]) -> list[dict[str, Any]]:
        """Values of `inputs` -> one ControlUnit dict per unit (disabled units: {"enabled": False}); the image is
        opened (BadRequest naming the unit when it is not an image), numbers typed."""
        n = len(UNIT_INPUTS)
        out: list[dict[str, Any]] = []
        reg = registry()
        for i in range(len(self.unit_blocks)):
            vals = dict(zip(UNIT_INPUTS, values[i * n:(i + 1) * n]))
            if not vals.get("enabled"):
                out.append({"enabled": False})
                continue
            unit: dict[str, Any] = {name: typed(spec, vals.get(name)) for name, spec in CONTROL_PARAMS.items()}
            unit["enabled"] = True
            pre = reg.get(unit["module"])
            for name in THRESHOLDS:  # a slider the preprocessor does not have: hidden, its value unused
                if pre is None or getattr(pre, name) is None:
                    unit[name] = None
            unit["image"] = open_image(vals.get("image"), f"control image of ControlNet unit {i}")
            out.append(unit)
        return out

    @property
    def maps(self) -> list[gr.Image]:
        return [u.map for u in self.unit_blocks]

    def show_maps(self, result: Any) -> dict:
        """After a generation: each unit's preview shows the map its preprocessor made for the job."""
        used = getattr(result, "control_maps", None) or {}
        return {u.map: used[u.index] for u in self.unit_blocks if u.index in used}

    def receive_outputs(self, index: int) -> list[gr.components.Component]:
        """What `receive(index, ...)` may update."""
        u = self.unit_blocks[index]
        return [u.image, u.map, u.control_type, u.message, *(u.widgets[n].input for n in CONTROL_PARAMS),
                *u.threshold_boxes.values(), *(u.widgets[n].hint for n in THRESHOLDS),
                *(c for c in (self.tabs, self.accordion) if c is not None)]

    def receive(self, index: int, image: Any, detected: Any, values: Mapping[str, Any], control_type: str,
                checkpoint: str | None) -> dict[Any, Any]:
        """Updates handing a unit's image and settings (CONTROL_PARAMS values) to unit `index`: enabled, its
        sub-tab selected, the panel open. A detected map goes in as the control image with the preprocessor
        "none" (it is a map already) and as the unit's preview; without one, the image with its preprocessor."""
        u = self.unit_blocks[index]
        w = u.widgets
        vals = dict(values)
        if detected is not None:
            image, vals["module"] = detected, "none"
        ctype = control_type if control_type in CONTROL_TYPES else type_of(vals.get("module") or "none")
        modules = module_choices(ctype)
        if vals.get("module") not in modules:
            ctype, modules = "All", module_choices("All")
        models = model_choices(self.studio, family_of(self.studio, checkpoint), ctype)
        model = pick_model(models, vals.get("model"), "None")
        updates: dict[Any, Any] = {
            u.image: image, u.map: detected, u.control_type: ctype, u.message: message_html(""),
            w["module"].input: gr.Dropdown(choices=modules, value=vals.get("module") or "none"),
            w["model"].input: gr.Dropdown(choices=models, value=model),
        }
        for name in CONTROL_PARAMS:
            if name not in ("module", "model", *THRESHOLDS) and vals.get(name) is not None:
                updates[w[name].input] = vals[name]
        updates[w["enabled"].input] = True
        updates.update(u.thresholds(vals.get("module") or "none", hint_context(self.studio, checkpoint), vals))
        if self.tabs is not None:
            updates[self.tabs] = gr.Tabs(selected=f"{self.prefix}-cn{index}")
        if self.accordion is not None:
            updates[self.accordion] = gr.Accordion(open=True)
        return updates

    def restored_note(self, index: int) -> str:
        where = " (or leave it empty to use the img2img input)" if self.img2img else ""
        return f"Unit {index} restored from the image's parameters: upload its control image{where}."

    def restore(self, parsed: Mapping[str, Any], checkpoint: str | None) -> dict[Any, Any]:
        """Updates putting back the units of a parsed infotext (images excepted: a toast says so). A full
        infotext disables the units it does not list; a bare prompt leaves the units as they are."""
        found = units_from_infotext(parsed.get("extra") or {})
        if not found and "steps" not in parsed:
            return {}
        family = family_of(self.studio, checkpoint)
        updates: dict[Any, Any] = {}
        restored = []
        for u in self.unit_blocks:
            w = u.widgets
            raw = found.get(u.index)
            unit = None
            if raw is not None:
                try:
                    unit = ControlUnit.model_validate(raw).model_dump()
                except ValidationError as e:
                    gr.Warning(f"ControlNet {u.index} in the infotext cannot be restored: {describe_validation(e)}")
            if unit is None:
                updates[w["enabled"].input] = False
                continue
            restored.append(u.index)
            ctype = type_of(unit["module"])
            models = model_choices(self.studio, family, ctype)
            model = pick_model(models, unit["model"], "")
            if model == "None" and unit["model"] != "None":  # not installed: shown as it was saved
                model = unit["model"]
                models = [*models, model]
            updates.update({
                u.control_type: ctype,
                w["module"].input: gr.Dropdown(choices=module_choices(ctype), value=unit["module"]),
                w["model"].input: gr.Dropdown(choices=models, value=model),
                u.message: message_html(self.restored_note(u.index), "warning"),
            })
            for name in CONTROL_PARAMS:
                if name not in ("module", "model", *THRESHOLDS):
                    updates[w[name].input] = unit[name]
            updates.update(u.thresholds(unit["module"], hint_context(self.studio, checkpoint), unit))
        if restored:
            gr.Info(f"{RESTORED_NOTE}{' (empty = the img2img input)' if self.img2img else ''}.")
            if self.accordion is not None:
                updates[self.accordion] = gr.Accordion(open=True)
        return updates


def build_controlnet(studio: Studio, prefix: str, checkpoint: gr.Dropdown, img2img: bool = False, *,
                     source_inputs: Sequence[gr.components.Component] = (),
                     source_of: Callable[..., Image.Image | None] | None = None) -> ControlPanel:
    """The "ControlNet" accordion with MAX_UNITS unit sub-tabs. Call inside the settings column.

    img2img: `source_of(*source_inputs values)` gives the img2img input image, used by Preview when a unit has
    no image of its own (the generation does the same in the engine).
    """
    name0 = current_name(studio)
    ctx = hint_context(studio, name0)
    family0 = family_of(studio, name0)
    ctx_of = lambda name: hint_context(studio, name)  # noqa: E731
    blocks: list[Unit] = []
    with gr.Accordion("ControlNet", open=False, elem_id=f"{prefix}-controlnet", elem_classes="cn-panel") as acc:
        with gr.Tabs(elem_id=f"{prefix}-cn-units") as tabs:
            for i in range(MAX_UNITS):
                with gr.Tab(f"Unit {i}", id=f"{prefix}-cn{i}", elem_id=f"{prefix}-cn{i}-tab"):
                    blocks.append(_build_unit(studio, prefix, i, ctx, family0, img2img))
    panel = ControlPanel(studio, blocks, img2img, accordion=acc, tabs=tabs, prefix=prefix)
    for u in blocks:
        _wire_unit(studio, u, checkpoint, ctx_of, source_inputs, source_of)
        panel.inputs.extend(u.inputs)
        w = u.widgets
        panel.restore_outputs.extend([u.control_type, u.message, *(w[n].input for n in CONTROL_PARAMS),
                                      *u.threshold_boxes.values(), *(w[n].hint for n in THRESHOLDS)])
    panel.restore_outputs.append(acc)
    return panel


def build_workspace_unit(studio: Studio, prefix: str, checkpoint: gr.Dropdown, *,
                         source_inputs: Sequence[gr.components.Component] = (),
                         source_of: Callable[..., Image.Image | None] | None = None) -> ControlPanel:
    """One always-enabled unit laid out as a workspace (the ControlNet tab): reference and detected map side by
    side, a "Detect" button, the same settings and wiring as an accordion unit. elem_ids `{prefix}-cn0-*`."""
    name0 = current_name(studio)
    unit = _build_unit(studio, prefix, 0, hint_context(studio, name0), family_of(studio, name0), False,
                       workspace=True)
    _wire_unit(studio, unit, checkpoint, lambda name: hint_context(studio, name), source_inputs, source_of)
    return ControlPanel(studio, [unit], inputs=list(unit.inputs), prefix=prefix)


def _build_unit(studio: Studio, prefix: str, i: int, ctx: Any, family: str | None, img2img: bool,
                workspace: bool = False) -> Unit:
    """`workspace`: the ControlNet tab's unit: always enabled (the checkbox hidden), bigger images, "Detect"."""
    p = f"{prefix}-cn{i}"
    w: dict[str, ParamWidget] = {}

    def add(name: str, **kw: Any) -> None:
        w[name] = param_widget(CONTROL_PARAMS[name], ctx, p, **kw)

    with gr.Row(elem_classes="cn-top"):
        if workspace:
            with gr.Column(visible=False, min_width=0):
                add("enabled", value=True)
        else:
            add("enabled", value=False)
        add("pixel_perfect")
    height = 380 if workspace else 260
    with gr.Row(elem_classes="cn-images"):
        with gr.Column(min_width=200):
            label = "Control image (empty = the img2img input)" if img2img else "Control image"
            if workspace:
                label = "Reference: a photo, a map, or a pose JSON (button below)"
            image = image_input(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                height=height, elem_id=f"{p}-image")
            pose_json = gr.UploadButton("📄 Pose JSON", file_types=[".json"], type="filepath", size="sm",
                                        elem_id=f"{p}-pose-json", elem_classes="cn-pose-button")
        with gr.Column(min_width=200):
            cmap = gr.Image(label="Detected map", type="pil", format="png", interactive=False, height=height,
                            elem_id=f"{p}-map")
            preview = gr.Button("Detect" if workspace else "Preview", size="sm", elem_id=f"{p}-preview-button",
                                variant="secondary")
    message = gr.HTML("", visible=False, elem_id=f"{p}-message", padding=False)
    control_type = gr.Radio(list(CONTROL_TYPES), value="All", label="Control type", elem_id=f"{p}-control-type",
                            elem_classes="cn-type",
                            info="Filters the preprocessors and models, and picks the type's default pair.")
    with gr.Row():
        add("module", choices=module_choices("All"), scale=3)
        models = model_choices(studio, family, "All")
        add("model", choices=models, value="None", allow_custom_value=True, scale=3)
        refresh = gr.Button("🔄", size="sm", elem_id=f"{p}-refresh", elem_classes="cn-refresh", scale=0,
                            min_width=44)
    add("weight")
    with gr.Row():
        add("guidance_start")
        add("guidance_end")
    boxes = {}
    with gr.Row():
        for name in THRESHOLDS:
            with gr.Column(visible=False, min_width=160) as box:
                add(name)
            boxes[name] = box
    add("processor_res")
    with gr.Row():
        add("control_mode")
        add("resize_mode")
    return Unit(i, image, pose_json, cmap, preview, message, control_type, refresh, w, boxes)


def _wire_unit(studio: Studio, u: Unit, checkpoint: gr.Dropdown, ctx_of: Callable[[str], Any],
               source_inputs: Sequence[gr.components.Component],
               source_of: Callable[..., Image.Image | None] | None) -> None:
    w = u.widgets
    module, model = w["module"].input, w["model"].input
    names = list(CONTROL_PARAMS)
    rejudge_all = bind_hints(w, checkpoint, ctx_of, linked=LINKED)
    th_outputs = u.threshold_outputs

    def thresholds(mod: str, name: str | None) -> dict:
        return u.thresholds(mod, ctx_of(name))

    # control type: its preprocessors, its default preprocessor and a matching model for the checkpoint
    def on_type(ctype: str, name: str) -> dict:
        types = studio.controlnet.control_types(family_of(studio, name))
        t = types.get(ctype, types["All"])
        mods, models = list(t["module_list"]), list(t["model_list"])
        mod = t["default_option"] if t["default_option"] in mods else mods[0]
        return {module: gr.Dropdown(choices=mods, value=mod),
                model: gr.Dropdown(choices=models, value=default_model(studio, mod, family_of(studio, name), models)),
                **thresholds(mod, name)}

    u.control_type.input(on_type, [u.control_type, checkpoint], [module, model, *th_outputs], **QUIET)

    # a preprocessor picked by hand: its thresholds; a model for it when none is chosen yet
    def on_module(mod: str, current: str, ctype: str, name: str) -> dict:
        updates = thresholds(mod, name)
        if current in (None, "", "None"):
            family = family_of(studio, name)
            updates[model] = default_model(studio, mod, family, model_choices(studio, family, ctype))
        return updates

    module.input(on_module, [module, model, u.control_type, checkpoint], [model, *th_outputs], **QUIET)

    # model list: rescan models/ControlNet
    def on_refresh(ctype: str, current: str, mod: str, name: str) -> Any:
        studio.controlnet.models(refresh=True)
        family = family_of(studio, name)
        models = model_choices(studio, family, ctype)
        return gr.Dropdown(choices=models, value=pick_model(models, current,
                                                            default_model(studio, mod, family, models)))

    u.refresh.click(on_refresh, [u.control_type, model, module, checkpoint], model, **QUIET)

    # another checkpoint: its family's models, every verdict judged for it
    def on_checkpoint(name: str, ctype: str, *values: Any) -> list[Any]:
        vals = dict(zip(names, values))
        family = family_of(studio, name)
        models = model_choices(studio, family, ctype)
        current = pick_model(models, vals["model"], default_model(studio, vals["module"], family, models))
        return [gr.Dropdown(choices=models, value=current), *rejudge_all(*values, name)]

    checkpoint.change(on_checkpoint, [checkpoint, u.control_type, *(w[n].input for n in names)], [model, *u.hints],
                      **QUIET)

    # pose JSON -> skeleton as the control image, preprocessor none, OpenPose with a matching model
    def on_pose(path: str | None, name: str) -> dict:
        if not path:
            return gr.skip()
        try:
            from extensions.openpose_json import render_pose_json  # imports controlnet-aux when called

            with open(path, "rb") as f:
                pose = render_pose_json(f.read())
        except Exception as e:  # not OpenPose JSON, unreadable file, missing controlnet-aux: say so, change nothing
            gr.Warning(f"Pose JSON: {e}")
            return {u.message: message_html(f"Pose JSON: {e}")}
        family = family_of(studio, name)
        models = model_choices(studio, family, "OpenPose")
        return {u.image: pose, u.control_type: "OpenPose",
                module: gr.Dropdown(choices=module_choices("OpenPose"), value="none"),
                model: gr.Dropdown(choices=models, value=default_model(studio, "openpose", family, models)),
                u.message: message_html(""), **thresholds("none", name)}

    u.pose_json.upload(on_pose, [u.pose_json, checkpoint],
                       [u.image, u.control_type, module, model, u.message, *th_outputs], **QUEUED)

    # Preview: the preprocessor on the unit's image (img2img: else the input), in a job; "none": the image
    n_src = len(source_inputs)

    def on_preview(request: gr.Request, value: Any, mod: str, res: Any, a: Any, b: Any, *src: Any) -> Iterator[dict]:
        """A generator: the detection runs as a job, its progress (e.g. a first-use weights download) is shown."""
        def fail(text: str) -> dict:
            gr.Warning(text)
            return {u.message: message_html(text)}

        try:
            image = open_image(value, f"control image of ControlNet unit {u.index}")
            if image is None and source_of is not None and n_src:
                image = source_of(*src)
        except BadRequest as e:
            yield fail(str(e))
            return
        if image is None:
            where = " (or an img2img input image)" if source_of is not None else ""
            yield fail(f"ControlNet unit {u.index}: no control image to preview: upload one{where}, or a pose JSON.")
            return
        mod = mod or "none"
        if mod == "none":
            yield {u.map: image, u.message: message_html("")}
            return
        pre = registry().get(mod)
        settings = {"processor_res": typed(CONTROL_PARAMS["processor_res"], res)}
        for n, v in (("threshold_a", a), ("threshold_b", b)):
            settings[n] = typed(CONTROL_PARAMS[n], v) if pre is not None and getattr(pre, n) is not None else None
        try:
            job = studio.submit_detect(mod, [image], owner=request.session_hash if request else None, **settings)
            for ev in job.events():
                if ev.kind is EventKind.PROGRESS and (ev.total or 0) > 1:  # e.g. downloading annotator weights
                    yield {u.message: message_html(f"{ev.label or mod}: {(ev.step or 0) / ev.total:.0%}", "info")}
                elif ev.kind is EventKind.FINISHED:
                    maps = list(ev.result or [])
                    yield ({u.map: maps[0], u.message: message_html("")} if maps else
                           fail(f"ControlNet unit {u.index}: the preprocessor returned no map."))
                    return
                elif ev.kind is EventKind.FAILED:
                    yield fail(f"ControlNet unit {u.index}: {mod} failed: {ev.message or 'unknown error'}")
                    return
                elif ev.kind is EventKind.CANCELLED:
                    yield fail(f"ControlNet unit {u.index}: the preview was interrupted.")
                    return
        except Exception as e:  # BadRequest (bad settings, no image), QueueFull, anything unexpected: never crash
            yield fail(f"ControlNet unit {u.index}: {e}")
            return
        yield fail(f"ControlNet unit {u.index}: the preview ended without a map.")

    u.image.upload(lambda: message_html(""), None, u.message, **QUIET)
    u.preview.click(on_preview, [u.image, module, w["processor_res"].input, w["threshold_a"].input,
                                 w["threshold_b"].input, *source_inputs], [u.map, u.message],
                    show_progress="minimal", show_progress_on=[u.map], concurrency_limit=None,
                    api_visibility="private")

