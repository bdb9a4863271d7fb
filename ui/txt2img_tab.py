"""The txt2img tab: every TXT2IMG field built from its spec with a live verdict, and a streamed generation.

The Generate / Interrupt / Skip buttons, the output panel (progress, live preview, gallery, info, send-to)
and the event-streaming loop are shared with the img2img tab (`ui/generation.py`); this module only lays
out the fields and says how a request is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.jobs import Job
from pipelines.params.specs import LATENT_UPSCALERS, TXT2IMG_FIELDS
from pipelines.studio import Studio
from ui.advisor_panel import AdvisorPanel, build_advisor, wire_advisor
from ui.controlnet_panel import ControlPanel, build_controlnet
from ui.generation import (
    Actions,
    Output,
    build_actions,
    build_output,
    seed_buttons,
    to_request,
    wire_generation,
    wire_seed_buttons,
)
from ui.networks_panel import build_networks, lora_verdicts_box
from ui.prompt_helper import build_prompt_helper
from ui.sweep_panel import build_sweep
from ui.topbar import current_name, hint_context
from ui.widgets import QUIET, ParamWidget, bind_hints, param_widget
from ui.workflow_panel import build_workflow, wire_workflow

CSS = ""  # everything it needs is in ui.generation.CSS and ui.widgets.CSS


@dataclass
class Txt2Img:
    widgets: dict[str, ParamWidget]
    fields: dict[str, gr.components.Component]  # TXT2IMG field name -> input (for "send to txt2img")
    output: Output
    controlnet: ControlPanel
    actions: Actions
    advisor: AdvisorPanel

    @property
    def gallery(self) -> gr.Gallery:
        return self.output.gallery

    @property
    def info(self) -> gr.Textbox:
        return self.output.info


def build_txt2img(studio: Studio, checkpoint: gr.Dropdown, status: gr.Markdown,
                  vae: ParamWidget | None = None) -> Txt2Img:
    """`vae`: the top bar's VAE dropdown as this tab's sd_vae field (else the field is built in Advanced)."""
    ctx = hint_context(studio, current_name(studio))
    w: dict[str, ParamWidget] = {"sd_vae": vae} if vae is not None else {}

    def add(name: str, **kw: Any) -> None:
        w[name] = param_widget(name, ctx, "txt2img", **kw)

    with gr.Row(elem_id="txt2img-top"):
        with gr.Column(scale=5):
            add("prompt")
            lora_hints = lora_verdicts_box("txt2img")  # each <lora:...> tag's verdict, under the prompt's
            add("negative_prompt")
            build_prompt_helper(studio, "txt2img", w["prompt"].input, w["negative_prompt"].input)
            build_networks(studio, "txt2img", w["prompt"].input, w["negative_prompt"].input, checkpoint, status,
                           lora_hints)
        with gr.Column(scale=1, min_width=220, elem_id="txt2img-actions", elem_classes="gen-actions"):
            actions = build_actions("txt2img")
            flow = build_workflow("txt2img")
    with gr.Row(elem_id="txt2img-main"):
        with gr.Column(scale=1, elem_id="txt2img-settings"):
            with gr.Row():
                add("sampler_name")
                add("scheduler")
            add("steps")
            with gr.Row():
                add("width")
                add("height")
            with gr.Row():
                add("n_iter")
                add("batch_size")
            add("cfg_scale")
            with gr.Row():
                add("seed", scale=5)
                random_seed, reuse_seed = seed_buttons("txt2img")
            with gr.Accordion("Variation seed", open=False, elem_id="txt2img-variation"):
                with gr.Row():
                    add("subseed")
                    add("subseed_strength")
            with gr.Accordion("Hires. fix", open=False, elem_id="txt2img-hires"):
                add("enable_hr")
                with gr.Row():
                    add("hr_upscaler", choices=[*LATENT_UPSCALERS, *studio.upscaler_names()[1:]])
                    add("hr_scale")
                with gr.Row():
                    add("hr_second_pass_steps")
                    add("denoising_strength")
                with gr.Row():
                    add("hr_resize_x")
                    add("hr_resize_y")
                add("hr_sampler_name")
                add("hr_prompt")
                add("hr_negative_prompt")
                add("hr_keep_first_pass")
            controlnet = build_controlnet(studio, "txt2img", checkpoint)
            sweep = build_sweep("txt2img")
            with gr.Accordion("Advanced", open=False, elem_id="txt2img-advanced"):
                for name in [n for n in dict.fromkeys(("clip_skip", *TXT2IMG_FIELDS)) if n not in w]:
                    add(name)  # clip skip, then any parameter added to the specs later
        with gr.Column(scale=1, elem_id="txt2img-output"):
            advice = build_advisor("txt2img")  # here, changes in its height move no input
            out = build_output("txt2img")

    names = list(TXT2IMG_FIELDS)
    fields = {n: w[n].input for n in names}
    w = {n: w[n] for n in names}  # spec order: rejudge_all takes and returns values in this order

    # -- live verdicts ----------------------------------------------------------------------------
    ctx_of = lambda name: hint_context(studio, name)  # noqa: E731
    rejudge_all = bind_hints(w, checkpoint, ctx_of)

    def retarget(name: str, *values: Any) -> list[Any]:
        """New model: default size to its native size, every verdict judged for it."""
        native = ctx_of(name).native
        vals = dict(zip(names, values), width=native, height=native)
        return [native, native, *rejudge_all(*[vals[n] for n in names], name)]

    checkpoint.change(retarget, [checkpoint, *fields.values()],
                      [fields["width"], fields["height"], *(w[n].hint for n in names)], **QUIET)

    # -- generation -------------------------------------------------------------------------------
    def submit(request: gr.Request, name: str, *values: Any) -> Job:
        data = to_request(dict(zip(names, values[:len(names)])))
        data["controlnet"] = controlnet.units(values[len(names):])
        params = studio.parse_txt2img(data)
        return studio.submit_txt2img(params, model=name or None, owner=request.session_hash if request else None)

    gen_inputs = [checkpoint, *fields.values(), *controlnet.inputs]
    wire_generation(studio, actions, out, status, gen_inputs, submit, on_finished=controlnet.show_maps,
                    finished_outputs=controlnet.maps)
    wire_workflow(flow, studio, actions=actions, out=out, status=status, checkpoint=checkpoint, fields=fields,
                  gen_inputs=gen_inputs, submit=submit, on_finished=controlnet.show_maps,
                  finished_outputs=controlnet.maps)
    wire_seed_buttons(random_seed, reuse_seed, fields["seed"], out)
    sweep.wire(studio, checkpoint, fields, controlnet, actions, out, status)
    wire_advisor(advice, studio, fields, [checkpoint], lambda name: "txt2img")
    return Txt2Img(w, fields, out, controlnet, actions, advice)
