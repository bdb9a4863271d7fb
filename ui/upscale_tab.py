"""The Upscale tab: a neural or plain upscaler on one image or a batch, or the tiled SD upscale.

Every setting comes from its ParamSpec with a live verdict. The tiled SD upscale shows its cost (tiles x
steps) before it starts, because each tile is a full img2img pass; progress then counts tile by tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.params.specs import EXTRAS_FIELDS, SAMPLER_OPTIONS, SD_UPSCALE_FIELDS
from pipelines.studio import BadRequest, Studio
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
from ui.topbar import current_name, hint_context
from ui.widgets import QUIET, ParamWidget, bind_hints, param_widget

MODES = ("Upscaler only", "SD tiled upscale")
SD_ONLY = [n for n in SD_UPSCALE_FIELDS if n not in EXTRAS_FIELDS]
FIELDS = [*EXTRAS_FIELDS, *SD_ONLY]


@dataclass
class Upscale:
    image: gr.Image
    widgets: dict[str, ParamWidget]
    output: Output


def cost_text(studio: Studio, mode: str, image: Any, values: dict[str, Any]) -> str:
    """What the job will cost, before it starts."""
    if mode != MODES[1]:
        return ""
    try:
        img = open_image(image)
    except BadRequest:
        return ""
    if img is None:
        return "Upload an image to see the tile count and cost."
    from pipelines.imageops import scaled_size  # pure PIL/numpy

    w, h = scaled_size(img.size, float(values["upscaling_resize"] or 1), int(values["upscaling_resize_w"] or 0),
                       int(values["upscaling_resize_h"] or 0), snap=False)
    tw, th = int(values["tile_width"] or 512), int(values["tile_height"] or 512)
    tiles = -(-w // tw) * -(-h // th)
    steps = max(int(int(values["steps"] or 1) * float(values["denoising_strength"] or 0)), 1)
    return (f"**Cost:** {img.width}x{img.height} → {w}x{h}: {tiles} tiles × {steps} steps = **{tiles * steps} "
            f"denoising steps**, plus the seams fix if chosen. Use it on an image you have already chosen.")


def build_upscale(studio: Studio, checkpoint: gr.Dropdown, status: gr.Markdown,
                  vae: ParamWidget | None = None) -> Upscale:
    """`vae`: the top bar's VAE dropdown as the tiled SD upscale's sd_vae (else it is built in Advanced)."""
    ctx = hint_context(studio, current_name(studio), mode="img2img")
    w: dict[str, ParamWidget] = {"sd_vae": vae} if vae is not None else {}

    def add(name: str, **kw: Any) -> None:
        w[name] = param_widget(name, ctx, "upscale", **kw)

    upscalers = studio.upscaler_names()
    with gr.Row():
        with gr.Column(scale=5):
            with gr.Tabs():
                with gr.Tab("Single image", id="single"):
                    image = image_input(label="Image to upscale", type="filepath", elem_id="upscale-image",
                                        height=320)
                with gr.Tab("Batch", id="batch"):
                    batch = gr.File(label="Images to upscale (several files)", file_count="multiple",
                                    file_types=["image"], elem_id="upscale-batch")
            mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="upscale-mode",
                            info="The tiled SD upscale redraws the enlarged image tile by tile with the checkpoint: "
                                 "new detail at any size with bounded memory.")
        with gr.Column(scale=1, min_width=220):
            actions = build_actions("upscale")
    with gr.Row():
        with gr.Column(scale=1, elem_id="upscale-settings"):
            with gr.Row():
                add("upscaler_1", choices=upscalers)
                refresh = gr.Button("🔄", size="sm", scale=0, min_width=50, elem_id="upscale-refresh")
            add("upscaling_resize")
            with gr.Row():
                add("upscaling_resize_w")
                add("upscaling_resize_h")
            with gr.Accordion("Second upscaler", open=False):
                add("upscaler_2", choices=upscalers)
                add("extras_upscaler_2_visibility")
            with gr.Group(visible=False) as sd_group:
                cost = gr.Markdown("", elem_id="upscale-cost")
                add("prompt")
                add("negative_prompt")
                with gr.Row():
                    add("sampler_name")
                    add("scheduler")
                with gr.Row():
                    add("steps")
                    add("cfg_scale")
                add("denoising_strength")
                with gr.Row():
                    add("seed", scale=5)
                    random_seed, reuse_seed = seed_buttons("upscale")
                with gr.Row():
                    add("tile_width")
                    add("tile_height")
                with gr.Row():
                    add("tile_padding")
                    add("tile_mask_blur")
                add("redraw_order")
                with gr.Accordion("Seams fix", open=False):
                    for name in ("seams_fix", "seams_fix_denoise", "seams_fix_width", "seams_fix_padding",
                                 "seams_fix_mask_blur"):
                        add(name)
                with gr.Accordion("Advanced", open=False):
                    add("clip_skip")
                    add("randn_source")
                    add("eta_noise_seed_delta")
                    for name in SAMPLER_OPTIONS:  # A1111's eta, SGM noise multiplier, discard next-to-last sigma
                        add(name)
                    if vae is None:
                        add("sd_vae")
        with gr.Column(scale=1, elem_id="upscale-output"):
            out = build_output("upscale")

    bind_hints(w, checkpoint, lambda name: hint_context(studio, name, mode="img2img"))
    inputs = [w[n].input for n in FIELDS]

    def show(m: str) -> Any:
        return gr.Group(visible=m == MODES[1])

    mode.change(show, mode, sd_group, **QUIET)

    def update_cost(m: str, img: Any, *values: Any) -> str:
        return cost_text(studio, m, img, dict(zip(FIELDS, values)))

    for trigger in (mode, image, *[w[n].input for n in ("upscaling_resize", "upscaling_resize_w",
                                                          "upscaling_resize_h", "tile_width", "tile_height",
                                                          "steps", "denoising_strength")]):
        trigger.change(update_cost, [mode, image, *inputs], cost, **QUIET)

    def rescan() -> list[Any]:
        names = studio.upscaler_names()
        return [gr.Dropdown(choices=names), gr.Dropdown(choices=names)]

    refresh.click(rescan, None, [w["upscaler_1"].input, w["upscaler_2"].input], **QUIET)

    def submit(request: gr.Request, m: str, single: Any, files: Any, name: str, *values: Any):
        owner = request.session_hash if request else None
        fields = to_request(dict(zip(FIELDS, values)))
        if m == MODES[1]:
            params = studio.parse_sd_upscale({k: fields[k] for k in SD_UPSCALE_FIELDS})
            return studio.submit_sd_upscale(params, open_image(single), model=name or None, owner=owner)
        params = studio.parse_extras({k: fields[k] for k in EXTRAS_FIELDS})
        images = []
        if files:
            for f in files:
                path = getattr(f, "name", f)
                images.append((str(path).rsplit("/", 1)[-1], open_image(path, "batch image")))
        elif single is not None:
            images.append(("image", open_image(single)))
        return studio.submit_extras(params, images, owner=owner)

    wire_generation(studio, actions, out, status, [mode, image, batch, checkpoint, *inputs], submit)
    wire_seed_buttons(random_seed, reuse_seed, w["seed"].input, out)
    return Upscale(image, w, out)

