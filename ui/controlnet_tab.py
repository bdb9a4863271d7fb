"""The ControlNet tab: a workspace for one control unit, then a generation from it.

1. Upload a reference (a photo, a map, or an OpenPose JSON rendered into a skeleton).
2. Pick the control type and preprocessor; "Detect" runs the preprocessor as a job (`Studio.submit_detect`).
3. The detected map shows beside the reference.
4. The pose editor under it (ui/pose_editor.py): "Send to ControlNet" puts its skeleton map into the unit.
5. Generate from there: txt2img, or img2img on a chosen image, with the unit's settings (model, weight,
   guidance start/end, control mode, resize mode...).

The unit is ui/controlnet_panel.py's own (built, wired and parsed by the same code as the txt2img/img2img
accordion units); "→ txt2img Unit N" / "→ img2img Unit N" hand its map (or reference) and settings to those
accordion units (`wire_send_to_units`, called from ui/layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import gradio as gr

from pipelines.jobs import Job
from pipelines.params.control import CONTROL_PARAMS, MAX_UNITS
from pipelines.studio import Studio
from ui.controlnet_panel import (
    UNIT_INPUTS,
    ControlPanel,
    build_workspace_unit,
    default_model,
    family_of,
    model_choices,
    module_choices,
)
from ui.generation import (
    Output,
    build_actions,
    build_output,
    image_input,
    open_image,
    seed_buttons,
    to_request,
    wire_generation,
    wire_seed_buttons,
)
from ui.pose_editor import build_pose_editor
from ui.topbar import current_name, hint_context
from ui.widgets import QUEUED, QUIET, ParamWidget, bind_hints, param_widget

PREFIX = "controlnet"
TXT2IMG, IMG2IMG = "txt2img", "img2img"
FIELDS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height", "seed",
          "denoising_strength")  # the generation's own settings; every other one keeps its default
CSS = """
#controlnet-output {position:sticky; top:8px; align-self:flex-start;}
#controlnet-send-row button {min-width:120px;}
"""


@dataclass
class ControlTab:
    unit: ControlPanel  # one unit: `unit.unit_blocks[0]`
    gen_mode: gr.Radio
    init_image: gr.Image
    fields: dict[str, gr.components.Component]
    output: Output
    send: dict[tuple[str, int], gr.Button]  # (txt2img|img2img, unit index) -> "→ ... Unit N"


def build_controlnet_tab(studio: Studio, checkpoint: gr.Dropdown, status: gr.Markdown) -> ControlTab:
    ctx = hint_context(studio, current_name(studio))
    w: dict[str, ParamWidget] = {}

    def add(name: str, **kw: Any) -> None:
        w[name] = param_widget(name, ctx, PREFIX, **kw)

    with gr.Row(elem_id="controlnet-top"):
        with gr.Column(scale=5):
            add("prompt")
            add("negative_prompt")
        with gr.Column(scale=1, min_width=220, elem_id="controlnet-actions", elem_classes="gen-actions"):
            actions = build_actions(PREFIX)
    with gr.Row(elem_id="controlnet-main"):
        with gr.Column(scale=1, elem_id="controlnet-settings"):
            gen_mode = gr.Radio([TXT2IMG, IMG2IMG], value=TXT2IMG, label="Generate with", elem_id="controlnet-gen-mode",
                                info="txt2img from the prompt, or img2img on a chosen image; both guided by this unit.",
                                render=False)  # placed under the pose editor; the unit's Detect reads them
            init_image = image_input(label="img2img input (an empty reference = this image)", type="filepath",
                                     image_mode=None, sources=["upload", "clipboard"], height=260, visible=False,
                                     elem_id="controlnet-init-image", render=False)
            unit = build_workspace_unit(studio, PREFIX, checkpoint, source_inputs=[gen_mode, init_image],
                                        source_of=lambda m, img: open_image(img) if m == IMG2IMG else None)
            with gr.Accordion("Pose editor", open=True, elem_id="controlnet-pose-accordion"):
                pose = build_pose_editor(studio, prefix="cn-pose")
            gen_mode.render()
            init_image.render()
            with gr.Row():
                add("sampler_name")
                add("scheduler")
            with gr.Row():
                add("steps")
                add("cfg_scale")
            with gr.Row():
                add("width")
                add("height")
            with gr.Row():
                add("seed", scale=5)
                random_seed, reuse_seed = seed_buttons(PREFIX)
            with gr.Column(visible=False) as denoise_box:
                add("denoising_strength")
            gr.Markdown("Send the map (or the reference) and these unit settings to a unit of the txt2img / img2img "
                        "ControlNet panel:", elem_classes="mask-help")
            send: dict[tuple[str, int], gr.Button] = {}
            with gr.Row(elem_id="controlnet-send-row"):
                for target in (TXT2IMG, IMG2IMG):
                    for i in range(MAX_UNITS):
                        send[target, i] = gr.Button(f"→ {target} Unit {i}", size="sm", min_width=120,
                                                    elem_id=f"controlnet-send-{target}-cn{i}")
        with gr.Column(scale=1, elem_id="controlnet-output"):
            out = build_output(PREFIX)

    names = list(FIELDS)
    fields = {n: w[n].input for n in names}
    bind_hints({n: w[n] for n in names}, checkpoint, lambda name: hint_context(studio, name))

    def on_mode(m: str) -> tuple[Any, Any]:
        return gr.Image(visible=m == IMG2IMG), gr.Column(visible=m == IMG2IMG)

    gen_mode.change(on_mode, gen_mode, [init_image, denoise_box], **QUIET)

    # the pose editor's "Send to ControlNet": its skeleton becomes the reference (and the map), OpenPose, no
    # preprocessor, a matching model
    u = unit.unit_blocks[0]
    module, model = u.widgets["module"].input, u.widgets["model"].input

    def from_pose(image: Any, name: str) -> dict:
        if image is None:
            return gr.skip()
        family = family_of(studio, name)
        models = model_choices(studio, family, "OpenPose")
        return {u.image: image, u.map: image, u.control_type: "OpenPose",
                module: gr.Dropdown(choices=module_choices("OpenPose"), value="none"),
                model: gr.Dropdown(choices=models, value=default_model(studio, "openpose", family, models)),
                **u.thresholds("none", hint_context(studio, name))}

    pose.sent.then(from_pose, [pose.pose_map, checkpoint],
                   [u.image, u.map, u.control_type, module, model, *u.threshold_outputs], **QUIET)

    enabled_at = UNIT_INPUTS.index("enabled")

    def submit(request: gr.Request, name: str, m: str, init: Any, *values: Any) -> Job:
        vals = dict(zip(names, values[:len(names)]))
        unit_values = list(values[len(names):])
        unit_values[enabled_at] = True  # the workspace's unit is the point of the tab
        units = unit.units(unit_values)
        owner = request.session_hash if request else None
        if m == IMG2IMG:
            data = to_request(vals)
            data["controlnet"] = units
            return studio.submit_img2img(studio.parse_img2img(data), open_image(init), None, model=name or None,
                                         owner=owner)
        vals.pop("denoising_strength")
        data = to_request(vals)
        data["controlnet"] = units
        return studio.submit_txt2img(studio.parse_txt2img(data), model=name or None, owner=owner)

    wire_generation(studio, actions, out, status, [checkpoint, gen_mode, init_image, *fields.values(), *unit.inputs],
                    submit, on_finished=unit.show_maps, finished_outputs=unit.maps)
    wire_seed_buttons(random_seed, reuse_seed, fields["seed"], out)
    return ControlTab(unit, gen_mode, init_image, fields, out, send)


def wire_send_to_units(tab: ControlTab, panels: Mapping[str, ControlPanel], tabs: gr.Tabs,
                       checkpoint: gr.Dropdown) -> None:
    """"→ txt2img Unit N" / "→ img2img Unit N": the workspace's map (else its reference) and settings go to that
    accordion unit (see ControlPanel.receive), and the tab switches."""
    u = tab.unit.unit_blocks[0]
    names = list(CONTROL_PARAMS)
    inputs = [u.image, u.map, u.control_type, checkpoint, *(u.widgets[n].input for n in names)]
    for (target, i), button in tab.send.items():
        panel = panels[target]

        def handler(image: Any, detected: Any, ctype: str, name: str, *values: Any, _panel: ControlPanel = panel,
                    _i: int = i, _target: str = target) -> dict:
            if not image and detected is None:
                gr.Warning("Upload a reference first.")
                return gr.skip()
            updates = _panel.receive(_i, image, detected, dict(zip(names, values)), ctype, name)
            return {**updates, tabs: gr.Tabs(selected=_target)}

        button.click(handler, inputs, [*panel.receive_outputs(i), tabs], **QUEUED)
