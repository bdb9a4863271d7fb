"""PNG Info tab: read the generation parameters of any image, show which of them this studio reproduces exactly
(and which not, with the reason), and send them to txt2img, img2img or inpaint."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Mapping

import gradio as gr
from PIL import Image

from pipelines.params import reproduce
from pipelines.params.specs import PARAMS, TXT2IMG_FIELDS
from pipelines.studio import Studio
from ui.generation import image_input
from ui.widgets import QUIET


def fields_table(parsed: Mapping[str, Any]) -> str:
    """Parsed parameters as a Markdown table (our labels, then unknown A1111 keys)."""
    rows = [(PARAMS[n].label, parsed[n]) for n in PARAMS if n in parsed and parsed[n] not in (None, "")]
    rows += list((parsed.get("extra") or {}).items())
    if not rows:
        return ""
    cell = lambda v: html.escape(str(v)).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    return "| Parameter | Value |\n|---|---|\n" + "\n".join(f"| {cell(k)} | {cell(v)} |" for k, v in rows)


def reproduce_text(studio: Studio, parsed: Mapping[str, Any]) -> str:
    """The "reproduced exactly / not reproduced" tables of a parsed infotext (empty for plain text)."""
    try:
        return reproduce.markdown(studio.reproduce(parsed))
    except Exception as e:  # robustness: infotext comes from arbitrary files; the parameters still show
        return f"Cannot tell what reproduces: {e}"


def txt2img_values(parsed: Mapping[str, Any]) -> list[Any]:
    """Values for every txt2img field, in TXT2IMG_FIELDS order.

    Full infotext: fields it omits mean their default (no variation, clip skip 1...); derived ones (size, the VAE)
    are kept when absent.
    Plain text (no parameters line): only the prompt is filled.
    """
    full = "steps" in parsed
    out = []
    for name in TXT2IMG_FIELDS:
        if name in parsed and parsed[name] is not None:
            out.append(parsed[name])
        elif full and not PARAMS[name].nullable:
            out.append(PARAMS[name].default)
        else:
            out.append(gr.skip())
    return out


@dataclass
class PngInfo:
    image: gr.Image  # the file's path
    parsed: gr.State
    send: gr.Button  # -> txt2img (parameters only)
    send_img2img: gr.Button  # image and parameters -> img2img / inpaint
    send_inpaint: gr.Button


def build_pnginfo(studio: Studio) -> PngInfo:
    with gr.Row():
        with gr.Column(scale=1):
            # filepath + no mode conversion: the uploaded file itself is read, every text chunk intact
            image = image_input(label="Source image", type="filepath", image_mode=None,
                                sources=["upload", "clipboard"], height=420, elem_id="pnginfo-image")
        with gr.Column(scale=1):
            text = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo-text", buttons=["copy"])
            with gr.Row():
                send = gr.Button("Send to txt2img", variant="primary", elem_id="pnginfo-send", interactive=False)
                send_img2img = gr.Button("Send to img2img", elem_id="pnginfo-send-img2img", interactive=False)
                send_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo-send-inpaint", interactive=False)
            table = gr.Markdown("", elem_id="pnginfo-fields")
            # which fields this studio reproduces exactly, and which not (why): pipelines/params/reproduce.py
            reproduced = gr.Markdown("", elem_id="pnginfo-reproduce")
            with gr.Accordion("All text chunks", open=False):
                items = gr.JSON(label="Image info", elem_id="pnginfo-items")
    parsed = gr.State({})

    def read(path: str | None) -> tuple[Any, ...]:
        off = gr.Button(interactive=False)
        if not path:
            return "", off, off, off, "", "", {}, {}
        try:
            with Image.open(path) as img:
                info = studio.png_info(img)
        except (OSError, ValueError) as e:
            return f"Cannot read this file: {e}", off, off, off, "", "", {}, {}
        on = gr.Button(interactive=True)  # any image can go to img2img / inpaint, with or without parameters
        params = info.get("parameters") or {}
        if not info.get("info"):
            return "No generation parameters found in this image.", off, on, on, "", "", info.get("items", {}), {}
        return (info["info"], on, on, on, fields_table(params), reproduce_text(studio, params), info.get("items", {}),
                params)

    image.change(read, image, [text, send, send_img2img, send_inpaint, table, reproduced, items, parsed], **QUIET)
    return PngInfo(image, parsed, send, send_img2img, send_inpaint)
