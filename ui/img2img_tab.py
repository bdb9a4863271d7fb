"""The img2img and Inpaint tabs: one builder (`build_img2img(kind=...)`), streamed like txt2img.

- img2img (kind "img2img"): an uploaded or pasted image, and an "Inpaint →" button (wired in ui/layout.py)
  that carries it to the Inpaint tab.
- The Inpaint tab (kind "inpaint") has two sub-tabs over one set of fields:
- Inpaint: a gr.ImageEditor; its background is the input image and whatever is painted on its layer(s) is the
  mask (any stroke pixel with alpha > 0 = repaint; the eraser takes it back). Brush and eraser sizes are
  adjustable in the editor's toolbar.
- Inpaint upload: an image plus a separately uploaded mask (white = repaint, or the alpha of a transparent PNG).

Every IMG2IMG/INPAINT field is built from its spec with a live verdict; the verdicts use the inpaint bands
(denoising) in the Inpaint tab. Width/height follow the input's aspect ratio near the model's
native size whenever an image arrives (or "Resize by" scales the input). Generate, Interrupt, Skip, the
output panel and the streaming loop are ui/generation.py's, shared with txt2img. `Img2Img.receive` is what
the "→ img2img" / "→ inpaint" buttons (galleries, PNG Info; wired in ui/layout.py) call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import gradio as gr
from PIL import Image, ImageChops

from pipelines import imageops
from pipelines.jobs import Job
from pipelines.params.specs import INPAINT_FIELDS, PARAMS, TXT2IMG_FIELDS
from pipelines.studio import MAX_INPUT_PIXELS, BadRequest, Studio
from ui.advisor_panel import build_advisor, wire_advisor
from ui.controlnet_panel import ControlPanel, build_controlnet
from ui.generation import (
    Output,
    build_actions,
    build_output,
    image_input,
    message_html,
    open_image,
    seed_buttons,
    to_request,
    wire_generation,
    wire_seed_buttons,
)
from ui.networks_panel import build_networks, lora_verdicts_box
from ui.prompt_helper import build_prompt_helper
from ui.topbar import current_name, hint_context
from ui.widgets import QUIET, ParamWidget, bind_hints, param_widget

MODES = {"img2img": "img2img", "inpaint": "Inpaint", "inpaint_upload": "Inpaint upload"}  # mode -> label
RESIZE_TO, RESIZE_BY = "Resize to", "Resize by"
BRUSH_SIZE = 20  # default brush / eraser radius, image pixels (adjustable in the editor)
INPAINT_ONLY = [n for n in INPAINT_FIELDS if "img2img" not in PARAMS[n].modes]

CSS = """
#inpaint-modes > .tab-container {margin-bottom:4px;}
#inpaint-editor {min-height:520px;}
#inpaint-mask-settings {padding:8px 10px; border:1px solid var(--border-color-primary); border-radius:8px;
  background:var(--block-background-fill);}
#img2img-output, #inpaint-output {position:sticky; top:8px; align-self:flex-start;}
#img2img-to-inpaint {align-self:flex-start; max-width:140px;}
#img2img-size-note, #inpaint-size-note {font-size:13px; color:var(--body-text-color-subdued); align-self:center;}
#img2img-size-note p, #inpaint-size-note p {margin:0;}
.mask-help, .mask-help p {font-size:12.5px !important; color:var(--body-text-color-subdued); margin:0 4px;}
"""


def hint_mode(mode: str) -> str:
    return "img2img" if mode == "img2img" else "inpaint"


def editor_image_and_mask(value: Mapping[str, Any] | None) -> tuple[Image.Image | None, Image.Image | None]:
    """ImageEditor value -> (input image, binary "L" mask).

    The background is the input (transparency flattened onto white); the mask is the union of every layer's
    alpha channel (a stroke pixel with alpha > 0 = 255 = repaint), so the brush colour and opacity do not
    matter and erased pixels (alpha 0) are not masked. A layer of another size is scaled to the image.
    """
    if not value or value.get("background") is None:
        return None, None
    background = value["background"]
    if background.width * background.height > MAX_INPUT_PIXELS:
        return background, None  # the studio refuses it with its message; nothing to composite
    image = imageops.to_rgb(background)
    mask = Image.new("L", image.size, 0)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != image.size:
            alpha = alpha.resize(image.size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha)
    return image, mask.point(lambda v: 255 if v else 0)


def mode_input(m: str, image: Any = None, editor: Any = None, upload_image: Any = None,
               upload_mask: Any = None) -> Image.Image | None:
    """The input image of mode `m` (what a ControlNet unit without an image of its own uses)."""
    if m == "inpaint":
        return editor_image_and_mask(editor)[0]
    return open_image(upload_image if m == "inpaint_upload" else image)


def upload_box(label: str, elem_id: str, height: int) -> gr.Image:
    """An upload/paste image input passing the file's path (no conversion; unreadable files reach the handler)."""
    return image_input(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"], height=height,
                       elem_id=elem_id)


def size_note(size: tuple[int, int] | None, scale: float | None) -> str:
    if not size:
        return "Output: the input's size × the factor."
    w, h = size
    s = float(scale or 1.0)
    return f"Input {w}×{h} → output **{imageops.snap8(w * s)}×{imageops.snap8(h * s)}** px"


@dataclass
class Img2Img:
    widgets: dict[str, ParamWidget]
    fields: dict[str, gr.components.Component]  # INPAINT_FIELDS name -> input
    image: gr.Image | None  # img2img: the input
    editor: gr.ImageEditor | None  # Inpaint tab, Inpaint sub-tab: background + painted mask
    upload_image: gr.Image | None  # Inpaint tab, Inpaint upload sub-tab
    upload_mask: gr.Image | None
    modes: gr.Tabs | None  # Inpaint tab: its two sub-tabs
    output: Output
    controlnet: ControlPanel
    receive_inputs: list[gr.components.Component]  # checkpoint, sizes, fields: what `receive` reads after its 3 args
    receive_outputs: list[gr.components.Component]  # every component `receive` may update
    receive: Callable[..., dict]  # receive(image path, parsed infotext, *receive_inputs values)
    kind: str = "img2img"  # "img2img" | "inpaint"
    to_inpaint: gr.Button | None = None  # img2img: "Inpaint →" (wired in ui/layout.py)


def build_img2img(studio: Studio, checkpoint: gr.Dropdown, status: gr.Markdown,
                  vae: ParamWidget | None = None, kind: str = "img2img",
                  extra_panel: Callable[..., Any] | None = None) -> Img2Img:
    """`kind`: "img2img" (the img2img tab) or "inpaint" (the Inpaint tab); elem_ids start with the kind.
    `vae`: the top bar's VAE dropdown as this tab's sd_vae field (else the field is built in Advanced).
    `extra_panel()`: called in the Inpaint tab's settings column, under the mask settings (the Outpainting panel)."""
    inpaint = kind == "inpaint"
    prefix = kind
    name0 = current_name(studio)
    ctx = hint_context(studio, name0, kind)
    w: dict[str, ParamWidget] = {"sd_vae": vae} if vae is not None else {}

    def add(name: str, **kw: Any) -> None:
        w[name] = param_widget(name, ctx, prefix, **kw)

    image = editor = upload_image = upload_mask = modes = to_inpaint = None
    mode_tabs: list[tuple[str, gr.Tab]] = []
    with gr.Row(elem_id=f"{prefix}-top"):
        with gr.Column(scale=5):
            add("prompt")
            lora_hints = lora_verdicts_box(prefix)  # each <lora:...> tag's verdict, under the prompt's
            add("negative_prompt")
            build_prompt_helper(studio, prefix, w["prompt"].input, w["negative_prompt"].input)
            build_networks(studio, prefix, w["prompt"].input, w["negative_prompt"].input, checkpoint, status,
                           lora_hints)
        with gr.Column(scale=1, min_width=220, elem_id=f"{prefix}-actions", elem_classes="gen-actions"):
            actions = build_actions(prefix)
    with gr.Row(elem_id=f"{prefix}-main"):
        with gr.Column(scale=1, elem_id=f"{prefix}-settings"):
            if not inpaint:
                image = upload_box("Input image", "img2img-image", 420)
                to_inpaint = gr.Button("Inpaint →", size="sm", elem_id="img2img-to-inpaint")  # the image, to the Inpaint tab
                with gr.Column(visible=False):  # the inpaint settings: unused here, in the request's field order
                    for name in INPAINT_ONLY:
                        add(name)
            else:
                with gr.Tabs(elem_id="inpaint-modes", selected="inpaint") as modes:
                    with gr.Tab(MODES["inpaint"], id="inpaint", elem_id="inpaint-mode-inpaint") as tab_inp:
                        editor = gr.ImageEditor(
                            label="Input image — paint over what to repaint", type="pil", image_mode="RGBA",
                            format="png", sources=["upload", "clipboard"], transforms=(), layers=False, height=520,
                            brush=gr.Brush(default_size=BRUSH_SIZE, color_mode="fixed",
                                           colors=[("#ffffff", 0.75), ("#000000", 0.6), ("#ff2d55", 0.6)]),
                            eraser=gr.Eraser(default_size=BRUSH_SIZE), elem_id="inpaint-editor",
                            placeholder="Upload or paste an image, then paint the mask over it")
                        gr.Markdown("🖌️ Brush: paint what to repaint (size in the brush menu) · eraser: take it back. "
                                    "The stroke colour does not matter.", elem_classes="mask-help")
                    with gr.Tab(MODES["inpaint_upload"], id="inpaint_upload", elem_id="inpaint-mode-upload") as tab_up:
                        with gr.Row():
                            upload_image = upload_box("Input image", "inpaint-upload-image", 360)
                            upload_mask = upload_box("Mask (white = repaint)", "inpaint-upload-mask", 360)
                mode_tabs = [("inpaint", tab_inp), ("inpaint_upload", tab_up)]
                with gr.Column(elem_id="inpaint-mask-settings"):
                    with gr.Row():
                        add("inpainting_mask_invert")
                        add("inpainting_fill")
                    with gr.Row():
                        add("mask_blur")
                        add("inpaint_full_res")
                    add("inpaint_full_res_padding")
                if extra_panel is not None:
                    extra_panel()
            with gr.Row():
                add("sampler_name")
                add("scheduler")
            with gr.Row():
                add("steps")
                add("cfg_scale")
            with gr.Row():
                resize_choice = gr.Radio([RESIZE_TO, RESIZE_BY], value=RESIZE_TO, label="Output size",
                                         elem_id=f"{prefix}-resize-choice", min_width=160,
                                         info="Width × height (follows the input's aspect ratio), or the input "
                                              "scaled by a factor.")
                add("resize_mode")
            with gr.Row(visible=True) as size_row:
                add("width")
                add("height")
            with gr.Row(visible=False) as scale_row:
                add("scale_by", value=1.0)
                note = gr.Markdown(size_note(None, 1.0), elem_id=f"{prefix}-size-note")
            with gr.Row():
                add("n_iter")
                add("batch_size")
            add("denoising_strength")
            with gr.Row():
                add("seed", scale=5)
                random_seed, reuse_seed = seed_buttons(prefix)
            mode = gr.State(kind)  # img2img, or the Inpaint tab's selected sub-tab
            src_names = ["editor", "upload_image", "upload_mask"] if inpaint else ["image"]
            sources = [editor, upload_image, upload_mask] if inpaint else [image]
            controlnet = build_controlnet(studio, prefix, checkpoint, img2img=True, source_inputs=[mode, *sources],
                                          source_of=lambda m, *v: mode_input(m, **dict(zip(src_names, v))))
            with gr.Accordion("Advanced", open=False, elem_id=f"{prefix}-advanced"):
                for name in [n for n in dict.fromkeys(("clip_skip", *INPAINT_FIELDS)) if n not in w]:
                    add(name)  # clip skip, then any parameter added to the specs later
        with gr.Column(scale=1, elem_id=f"{prefix}-output"):
            advice = build_advisor(prefix)  # here, changes in its height move no input
            out = build_output(prefix)

    names = list(INPAINT_FIELDS)
    fields = {n: w[n].input for n in names}
    w = {n: w[n] for n in names}  # spec order: rejudge_all takes and returns values in this order
    hints = [w[n].hint for n in names]
    sizes = gr.State({})  # sub-tab -> [width, height] of its input image
    message = actions.message

    # -- live verdicts: the model and the sub-tab (inpaint bands) ------------------------------------
    ctx_of = lambda name, m: hint_context(studio, name, hint_mode(m))  # noqa: E731
    rejudge_all = bind_hints(w, [checkpoint, mode], ctx_of)

    def sized(vals: dict[str, Any], size: tuple[int, int] | None, native: int, keep_fitting: bool) -> None:
        """Width/height for `size` near `native` (kept when `keep_fitting` and they already match its aspect)."""
        if not size:
            return
        if keep_fitting:
            try:
                if abs(float(vals["width"]) / float(vals["height"]) - size[0] / size[1]) < 0.03:
                    return
            except (TypeError, ValueError, ZeroDivisionError):
                pass
        vals["width"], vals["height"] = imageops.default_size(tuple(size), native)

    def retarget(name: str, m: str, sz: dict, *values: Any) -> list[Any]:
        """New model: size for the current input (or native) at its native size, every verdict re-judged."""
        native = ctx_of(name, m).native
        vals = dict(zip(names, values), width=native, height=native)
        sized(vals, sz.get(m), native, keep_fitting=False)
        return [vals["width"], vals["height"], *rejudge_all(*[vals[n] for n in names], name, m)]

    checkpoint.change(retarget, [checkpoint, mode, sizes, *fields.values()],
                      [fields["width"], fields["height"], *hints], **QUIET)

    def select_mode(m: str) -> Callable[..., dict]:
        def on_select(name: str, sz: dict, choice: str, *values: Any) -> dict:
            vals = dict(zip(names, values))
            sized(vals, sz.get(m), ctx_of(name, m).native, keep_fitting=True)  # this tab's input, its aspect
            return {mode: m, fields["width"]: vals["width"], fields["height"]: vals["height"],
                    note: size_note(sz.get(m), vals["scale_by"]),
                    **dict(zip(hints, rejudge_all(*[vals[n] for n in names], name, m)))}
        return on_select

    mode_outputs = [mode, fields["width"], fields["height"], note, *hints]
    mode_events = [tab.select(select_mode(m), [checkpoint, sizes, resize_choice, *fields.values()], mode_outputs,
                              **QUIET)
                   for m, tab in mode_tabs]

    # -- sizes: from each input as it arrives, "Resize to" / "Resize by" ------------------------------
    def on_image(m: str, read: Callable[[Any], Image.Image | None]) -> Callable[..., dict]:
        def handler(value: Any, name: str, sz: dict, scale: Any) -> dict:
            try:
                img = read(value)
            except BadRequest as e:
                gr.Warning(str(e))
                return {message: message_html(str(e))}
            if img is None:
                return {}
            size = [img.width, img.height]
            if img.width * img.height > MAX_INPUT_PIXELS:
                text = (f"The input image is {img.width}x{img.height}; the limit is {MAX_INPUT_PIXELS / 1e6:.1f} "
                        "megapixels. Downscale it first.")
                gr.Warning(text)
                return {message: message_html(text)}
            width, height = imageops.default_size(tuple(size), ctx_of(name, m).native)
            return {sizes: {**sz, m: size}, fields["width"]: width, fields["height"]: height,
                    note: size_note(size, scale), message: message_html("")}
        return handler

    upload_outputs = [sizes, fields["width"], fields["height"], note, message]
    upload_inputs = [checkpoint, sizes, fields["scale_by"]]
    if image is not None:
        image.upload(on_image("img2img", open_image), [image, *upload_inputs], upload_outputs, **QUIET)
    if upload_image is not None and editor is not None:
        upload_image.upload(on_image("inpaint_upload", open_image), [upload_image, *upload_inputs], upload_outputs,
                            **QUIET)
        editor.upload(on_image("inpaint", lambda v: editor_image_and_mask(v)[0]), [editor, *upload_inputs],
                      upload_outputs, **QUIET)

    def check_mask(value: Any) -> dict:
        try:
            open_image(value, "mask", flatten_alpha=False)
        except BadRequest as e:
            gr.Warning(str(e))
            return {message: message_html(str(e))}
        return {message: message_html("")}

    if upload_mask is not None:
        upload_mask.upload(check_mask, upload_mask, [message], **QUIET)

    def on_choice(choice: str, m: str, sz: dict, scale: Any) -> tuple[Any, Any, str]:
        by = choice == RESIZE_BY
        return gr.Row(visible=not by), gr.Row(visible=by), size_note(sz.get(m), scale)

    resize_choice.change(on_choice, [resize_choice, mode, sizes, fields["scale_by"]], [size_row, scale_row, note],
                         **QUIET)
    fields["scale_by"].change(lambda m, sz, s: size_note(sz.get(m), s), [mode, sizes, fields["scale_by"]], note,
                              trigger_mode="always_last", **QUIET)

    # -- generation -------------------------------------------------------------------------------
    def submit(request: gr.Request, name: str, m: str, *values: Any) -> Job:
        src = dict(zip(src_names, values))
        choice, values = values[len(src_names)], values[len(src_names) + 1:]
        data = to_request(dict(zip(names, values[:len(names)])))
        data["controlnet"] = controlnet.units(values[len(names):])
        if choice != RESIZE_BY:
            data["scale_by"] = None
        if m == "img2img":
            for n in INPAINT_ONLY:
                data.pop(n, None)
        params = studio.parse_img2img(data)
        if m == "inpaint":
            source, mask = editor_image_and_mask(src["editor"])
        elif m == "inpaint_upload":
            source, mask = open_image(src["upload_image"]), open_image(src["upload_mask"], "mask", flatten_alpha=False)
            if source is not None and mask is None:
                raise BadRequest("No mask: upload a mask image (white = repaint), or paint one in the Inpaint sub-tab.")
        else:
            source, mask = open_image(src["image"]), None
        return studio.submit_img2img(params, source, mask, model=name or None,
                                     owner=request.session_hash if request else None)

    wire_generation(studio, actions, out, status,
                    [checkpoint, mode, *sources, resize_choice, *fields.values(), *controlnet.inputs], submit,
                    on_finished=controlnet.show_maps, finished_outputs=controlnet.maps)
    wire_seed_buttons(random_seed, reuse_seed, fields["seed"], out)

    def advised(data: dict[str, Any], name: str, m: str, choice: str) -> dict[str, Any]:
        """What the job would get: no inpaint settings in img2img, no factor unless "Resize by" is chosen."""
        if choice != RESIZE_BY:
            data["scale_by"] = None
        return {k: v for k, v in data.items() if m != "img2img" or k not in INPAINT_ONLY}

    after = wire_advisor(advice, studio, fields, [checkpoint, mode, resize_choice],
                         lambda name, m, choice: hint_mode(m), advised)
    for event in mode_events:  # the sub-tab lives in a gr.State: re-check once the switch has run
        after(event)

    # -- receiving an image and its parameters (send-to buttons) ----------------------------------------
    common = set(TXT2IMG_FIELDS)

    target = "inpaint" if inpaint else "img2img"

    def receive(path: str, parsed: Mapping[str, Any], name: str, sz: dict, *values: Any) -> dict:
        """Put the image at `path` into the img2img input or the inpaint editor (mask cleared), carry its
        parameters over (a full infotext: fields it omits mean their default; img2img-only ones are kept),
        size the output from it, and select the editor's sub-tab."""
        try:
            with Image.open(path) as im:
                size = [im.width, im.height]
        except (OSError, ValueError) as e:
            gr.Warning(f"Cannot open {path}: {e}")
            return {}
        vals = dict(zip(names, values))
        full = "steps" in parsed
        for n in names:
            if n in ("width", "height"):
                continue
            if parsed.get(n) is not None:
                vals[n] = parsed[n]
            elif full and n in common and not PARAMS[n].nullable:  # a derived field (the VAE) stays as it is
                vals[n] = PARAMS[n].default
        native = ctx_of(name, target).native
        pw, ph = parsed.get("width"), parsed.get("height")
        if pw and ph and abs(pw / ph - size[0] / size[1]) < 0.03:
            vals["width"], vals["height"] = pw, ph
        else:
            vals["width"], vals["height"] = imageops.default_size(tuple(size), native)
        updates: dict[Any, Any] = {fields[n]: vals[n] for n in names}
        updates.update({
            mode: target, sizes: {**(sz or {}), target: size}, resize_choice: RESIZE_TO,
            size_row: gr.Row(visible=True), scale_row: gr.Row(visible=False), note: size_note(size, 1.0),
            message: message_html(""),
            **dict(zip(hints, rejudge_all(*[vals[n] for n in names], name, target))),
            **controlnet.restore(parsed, name),
        })
        if inpaint:
            updates[editor] = {"background": path, "layers": [], "composite": path}
            updates[modes] = gr.Tabs(selected="inpaint")
        else:
            updates[image] = path
        return updates

    receive_inputs = [checkpoint, sizes, *fields.values()]
    receive_outputs = [*(c for c in (image, editor, modes) if c is not None), mode, sizes, resize_choice, size_row,
                       scale_row, note, message, *fields.values(), *hints, *controlnet.restore_outputs]
    return Img2Img(w, fields, image, editor, upload_image, upload_mask, modes, out, controlnet, receive_inputs,
                   receive_outputs, receive, kind, to_inpaint)
