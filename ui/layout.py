"""The web UI: top bar and tabs, assembled. Each tab lives in its own module; this file only wires them."""

from __future__ import annotations

import gradio as gr

from pipelines.studio import Studio
from ui import txt2img_tab, widgets
from ui.params_tab import build_params
from ui.pnginfo_tab import build_pnginfo, txt2img_values
from ui.topbar import build_topbar
from ui.txt2img_tab import build_txt2img

CSS = "\n".join([widgets.CSS, txt2img_tab.CSS, """
.gradio-container {max-width: 1560px !important;}
#status-line {font-size: 13px; color: var(--body-text-color-subdued); align-self: center;}
"""])


def build_ui(studio: Studio) -> gr.Blocks:
    gr.set_static_paths([studio.outputs_dir])  # gallery shows the saved PNGs themselves (infotext intact)
    # delete_cache: uploads and live previews in Gradio's cache older than a day go, checked hourly
    with gr.Blocks(title="Stable Diffusion studio", delete_cache=(3600, 86400)) as demo:
        top = build_topbar(studio)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab-txt2img"):
                t2i = build_txt2img(studio, top.checkpoint, top.status)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab-pnginfo"):
                png = build_pnginfo(studio)
            with gr.Tab("Parameters", id="params", elem_id="tab-params"):
                build_params(studio, top.checkpoint)

        png.send.click(lambda parsed: [*txt2img_values(parsed), gr.Tabs(selected="txt2img")], png.parsed,
                       [*t2i.fields.values(), tabs], queue=False, api_visibility="private")
        demo.load(top.on_load, outputs=[top.checkpoint, top.status], queue=False, api_visibility="private")
    return demo
