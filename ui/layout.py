"""The web UI: top bar and tabs, assembled. Each tab lives in its own module; this file only wires them,
including the send-to buttons between tabs (gallery / PNG Info -> img2img, inpaint, upscale, txt2img; img2img ->
Inpaint; ControlNet workspace -> the txt2img / img2img ControlNet units).

Tabs: txt2img · img2img · Inpaint · ControlNet · Upscale, then PNG Info and Parameters."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import gradio as gr

from pipelines.params.infotext import parse_infotext
from pipelines.studio import Studio
from ui import (
    advisor_panel,
    controlnet_panel,
    controlnet_tab,
    generation,
    img2img_tab,
    networks_panel,
    pose_editor,
    txt2img_tab,
    widgets,
    workflow_panel,
)
from ui.controlnet_tab import build_controlnet_tab, wire_send_to_units
from ui.generation import Output, picked
from ui.img2img_tab import Img2Img, build_img2img
from ui.outpaint_panel import OutpaintPanel, build_outpaint_panel
from ui.params_tab import build_params
from ui.pnginfo_tab import build_pnginfo, txt2img_values
from ui.topbar import build_topbar
from ui.txt2img_tab import build_txt2img
from ui.upscale_tab import Upscale, build_upscale
from ui.widgets import QUEUED
from ui.zoom_panel import build_zoom_panel

HEAD = generation.HEAD  # the Skip buttons' tooltips
CSS = "\n".join([widgets.CSS, generation.CSS, txt2img_tab.CSS, img2img_tab.CSS, controlnet_panel.CSS, controlnet_tab.CSS,
                 advisor_panel.CSS, workflow_panel.CSS, networks_panel.CSS, pose_editor.CSS, """
.gradio-container {max-width: 1560px !important; overflow: clip !important;}  /* clip, not hidden: sticky works */
#status-line {font-size: 13px; color: var(--body-text-color-subdued); align-self: center;}
"""])


def wire_send_to(i2i: Img2Img, inp: Img2Img, tabs: gr.Tabs, outputs: list[Output], pnginfo: Any) -> None:
    """"→ img2img" / "→ inpaint" under every gallery, and PNG Info's "Send to img2img/inpaint": the image
    (selected, else last) goes into the img2img tab's input or the Inpaint tab's editor with its parameters, and
    the tab switches. img2img's "Inpaint →" carries its input image, prompt and seed to the Inpaint tab."""
    tab_of = {"img2img": i2i, "inpaint": inp}

    def send(target: str, path: str, parsed: Mapping[str, Any], values: tuple) -> dict:
        return {**tab_of[target].receive(path, parsed, *values), tabs: gr.Tabs(selected=target)}

    def from_gallery(target: str) -> Callable[..., dict]:
        def handler(results: list[dict], selected: int | None, *values: Any) -> dict:
            r = picked(results, selected)
            if r is None:
                gr.Warning("Generate an image first: the selected (or last) image is sent.")
                return gr.skip()
            return send(target, r["path"], parse_infotext(r.get("infotext", "")), values)
        return handler

    for out in outputs:
        for target, button in (("img2img", out.send_img2img), ("inpaint", out.send_inpaint)):
            t = tab_of[target]
            button.click(from_gallery(target), [out.results, out.selected, *t.receive_inputs],
                         [*t.receive_outputs, tabs], **QUEUED)

    def from_pnginfo(target: str) -> Callable[..., dict]:
        def handler(path: str | None, parsed: dict, *values: Any) -> dict:
            if not path or not isinstance(path, str) or isinstance(path, generation.NotAnImage):
                gr.Warning("Load an image first.")
                return gr.skip()
            return send(target, path, parsed or {}, values)
        return handler

    for target, button in (("img2img", pnginfo.send_img2img), ("inpaint", pnginfo.send_inpaint)):
        t = tab_of[target]
        button.click(from_pnginfo(target), [pnginfo.image, pnginfo.parsed, *t.receive_inputs],
                     [*t.receive_outputs, tabs], **QUEUED)

    carried = ("prompt", "negative_prompt", "seed")

    def to_inpaint(path: Any, *values: Any) -> dict:
        if not path or not isinstance(path, str) or isinstance(path, generation.NotAnImage):
            gr.Warning("Upload an image first: it opens in the Inpaint tab's editor.")
            return gr.skip()
        parsed = {n: v for n, v in zip(carried, values[:len(carried)]) if v not in (None, "")}
        return send("inpaint", path, parsed, values[len(carried):])

    if i2i.to_inpaint is not None:
        i2i.to_inpaint.click(to_inpaint, [i2i.image, *(i2i.fields[n] for n in carried), *inp.receive_inputs],
                             [*inp.receive_outputs, tabs], **QUEUED)


def wire_send_to_upscale(up: Upscale, tabs: gr.Tabs, outputs: list[Output]) -> None:
    """"→ upscale" under every gallery: the selected (else last) image becomes the Upscale tab's input."""

    def handler(results: list[dict], selected: int | None) -> dict:
        r = picked(results, selected)
        if r is None:
            gr.Warning("Generate an image first: the selected (or last) image is sent.")
            return gr.skip()
        return {up.image: r["path"], tabs: gr.Tabs(selected="upscale")}

    for out in outputs:
        out.send_upscale.click(handler, [out.results, out.selected], [up.image, tabs], **QUEUED)


def build_ui(studio: Studio) -> gr.Blocks:
    gr.set_static_paths([studio.outputs_dir])  # gallery shows the saved PNGs themselves (infotext intact)
    # delete_cache: uploads and live previews in Gradio's cache older than a day go, checked hourly
    with gr.Blocks(title="Stable Diffusion studio", delete_cache=(3600, 86400)) as demo:
        top = build_topbar(studio)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab-txt2img"):
                t2i = build_txt2img(studio, top.checkpoint, top.status, vae=top.vae)
            with gr.Tab("img2img", id="img2img", elem_id="tab-img2img"):
                i2i = build_img2img(studio, top.checkpoint, top.status, vae=top.vae)
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab-inpaint"):
                outpaint: list[OutpaintPanel] = []  # built in the tab's settings column, wired once the tab exists
                inp = build_img2img(studio, top.checkpoint, top.status, vae=top.vae, kind="inpaint",
                                    extra_panel=lambda: outpaint.append(build_outpaint_panel(studio, top.checkpoint)))
                outpaint[0].wire([inp.editor, inp.upload_image], inp.fields, inp.controlnet)
                with gr.Accordion("Infinite zoom", open=False, elem_id="zoom-section"):
                    build_zoom_panel(studio, top.checkpoint)
            with gr.Tab("ControlNet", id="controlnet", elem_id="tab-controlnet"):
                cn = build_controlnet_tab(studio, top.checkpoint, top.status)
            with gr.Tab("Upscale", id="upscale", elem_id="tab-upscale"):
                up = build_upscale(studio, top.checkpoint, top.status, vae=top.vae)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab-pnginfo"):
                png = build_pnginfo(studio)
            with gr.Tab("Parameters", id="params", elem_id="tab-params"):
                build_params(studio, top.checkpoint)

        def send_txt2img(parsed: dict, name: str) -> dict:  # parameters and ControlNet units (not images)
            return {**dict(zip(t2i.fields.values(), txt2img_values(parsed))),
                    **t2i.controlnet.restore(parsed or {}, name), tabs: gr.Tabs(selected="txt2img")}

        png.send.click(send_txt2img, [png.parsed, top.checkpoint],
                       [*t2i.fields.values(), *t2i.controlnet.restore_outputs, tabs], **QUEUED)
        outputs = [t2i.output, i2i.output, inp.output, cn.output, up.output]
        wire_send_to(i2i, inp, tabs, outputs, png)
        wire_send_to_upscale(up, tabs, outputs)
        wire_send_to_units(cn, {"txt2img": t2i.controlnet, "img2img": i2i.controlnet}, tabs, top.checkpoint)
        demo.load(top.on_load, outputs=[top.checkpoint, top.vae.input, top.status], queue=False,
                  api_visibility="private")
    return demo
