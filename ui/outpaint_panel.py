"""The Outpainting panel: extend the input image beyond its borders (A1111's "Outpainting mk2" / "Poor man's
outpainting"; pipelines/outpaint.py and pipelines/engine/outpaint.py). The input's own pixels stay identical.

How to mount it (two calls; no torch here, the job runs through the studio):

1. `panel = build_outpaint_panel(studio, checkpoint)` inside the layout block where it should appear (e.g. the
   Inpaint tab's `extra_panel=` hook). It builds, from the specs with live verdict badges: Extend left / right /
   up / down (px), Outpaint fill, Outpaint overlap, Step size, and (matched noise) Fall-off exponent and Color
   variation; then an "Outpaint" button (elem_id `outpaint-generate`), a progress line (`outpaint-progress`), its
   own result gallery (`outpaint-results`) and the infotext box (`outpaint-info`).
   `checkpoint`: the top bar's model dropdown (the job's model, and the badges' model family).
2. `panel.wire(sources, fields, controlnet=None)` once the tab's components exist:
   - `sources`: the components the input image comes from, tried in order; the first that holds an image is
     used. Values may be an ImageEditor value (its background is the image; its painted mask is ignored), a
     filepath or a PIL image (e.g. `[inp.editor, inp.upload_image]` of ui/img2img_tab.py's Img2Img).
   - `fields`: the tab's generation settings, request name -> component (e.g. `inp.fields`); the panel reads
     those outpainting uses: prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, seed,
     denoising_strength, mask_blur, n_iter, batch_size, clip_skip, sd_vae and the rest of OutpaintParams' fields
     (missing ones take their defaults; width/height/scale_by/resize_mode and the mask settings are set by
     outpainting itself).
   - `controlnet`: the tab's ControlPanel (ui/controlnet_panel.py), whose units steer the new area; optional.
Returns an `OutpaintPanel` (the widgets by name, the button, progress, gallery, info). Before `wire` the button
does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import gradio as gr

from pipelines.jobs import EventKind, QueueFull
from pipelines.params.specs import OUTPAINT_FIELDS, PARAMS
from pipelines.studio import BadRequest, Studio
from ui.generation import open_image, progress_html, to_request
from ui.topbar import current_name, hint_context
from ui.widgets import ParamWidget, bind_hints, param_widget

PREFIX = "outpaint"
OWN = [n for n in OUTPAINT_FIELDS if "outpaint" in PARAMS[n].modes]  # the panel's own fields (outpaint_*)
SET_HERE = {"width", "height", "scale_by", "resize_mode", "inpainting_fill", "inpainting_mask_invert",
            "inpaint_full_res", "inpaint_full_res_padding"}
READ = [n for n in OUTPAINT_FIELDS if n not in OWN and n not in SET_HERE]  # what `wire` reads from the tab


def source_image(value: Any) -> Any:
    """An image from a source component's value: an ImageEditor dict's background, a filepath or a PIL image."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        from ui.img2img_tab import editor_image_and_mask

        return editor_image_and_mask(value)[0]
    return open_image(value)


@dataclass
class OutpaintPanel:
    studio: Studio
    checkpoint: gr.Dropdown
    widgets: dict[str, ParamWidget]
    button: gr.Button
    progress: gr.HTML
    gallery: gr.Gallery
    info: gr.Textbox
    wired: list[bool] = field(default_factory=list)

    def submit(self, request: Any, name: str | None, source: Any, values: dict[str, Any], units: list[dict]) -> Any:
        """Queue the outpainting job: BadRequest (naming the field) when the input or a value is refused."""
        if source is None:
            raise BadRequest("No input image: upload or paste one first.")
        data = to_request({k: v for k, v in values.items() if k in PARAMS})
        data["controlnet"] = units
        params = self.studio.parse_outpaint(data)
        return self.studio.submit_outpaint(params, source, model=name or None,
                                           owner=request.session_hash if request else None)

    def wire(self, sources: Sequence[gr.components.Component], fields: Mapping[str, gr.components.Component],
             controlnet: Any = None) -> None:
        """Connect the Outpaint button to the tab's input image(s), generation fields and ControlNet units."""
        read = [n for n in READ if n in fields]
        own = list(self.widgets)
        cn_inputs = list(controlnet.inputs) if controlnet is not None else []
        k, r, o = len(sources), len(read), len(own)
        progress, gallery, info = self.progress, self.gallery, self.info

        def run(request: gr.Request, name: str, *values: Any) -> Iterator[dict]:
            srcs, rest = values[:k], values[k:]
            vals = {**dict(zip(read, rest[:r])), **dict(zip(own, rest[r:r + o]))}
            try:
                source = next((img for img in map(source_image, srcs) if img is not None), None)
                units = controlnet.units(rest[r + o:]) if controlnet is not None else []
                job = self.submit(request, name, source, vals, units)
            except (BadRequest, QueueFull) as e:
                gr.Warning(str(e))
                yield {progress: progress_html(f"Not started: {e}", state="error")}
                return
            shown: list[tuple[str, str]] = []
            texts: list[str] = []
            yield {progress: progress_html("Queued…", 0.0), gallery: [], info: ""}
            for ev in job.events(timeout=3600):
                if ev.kind is EventKind.PROGRESS:
                    frac = (ev.step or 0) / ev.total if ev.total else None
                    yield {progress: progress_html(f"{ev.label or 'Working'} · step {ev.step}/{ev.total}", frac)}
                elif ev.kind is EventKind.IMAGE:
                    payload = ev.result or {}
                    shown.append((payload.get("path"), ev.label or ""))
                    texts.append(payload.get("infotext", ""))
                    yield {gallery: list(shown), info: "\n\n".join(texts)}
                elif ev.kind is EventKind.FAILED:
                    yield {progress: progress_html(f"Failed: {ev.message}", state="error")}
                    return
            result = job.result if job.status == "finished" else None
            if result is None:
                yield {progress: progress_html(f"Stopped: {job.error or 'cancelled'}", state="error")}
                return
            notes = "\n".join(getattr(result, "warnings", []) or [])
            size = f"{result.images[0].width}x{result.images[0].height}" if result.images else ""
            yield {progress: progress_html(f"done: {len(result.images)} image(s) {size}", 1.0, state="done"),
                   info: (notes + "\n\n" if notes else "") + "\n\n".join(texts)}

        self.button.click(run, [self.checkpoint, *sources, *[fields[n] for n in read],
                                *[self.widgets[n].input for n in own], *cn_inputs],
                          [progress, gallery, info], show_progress="hidden", concurrency_limit=None,
                          api_visibility="private")
        self.wired.append(True)


def build_outpaint_panel(studio: Studio, checkpoint: gr.Dropdown) -> OutpaintPanel:
    """Build the panel where it is called; see the module docstring for `wire`."""
    ctx = hint_context(studio, current_name(studio), mode="inpaint")
    w: dict[str, ParamWidget] = {}
    with gr.Accordion("Outpainting", open=False, elem_id="outpaint-section"):
        gr.Markdown("Extends the input image beyond its borders; its own pixels stay exactly as they are. Uses the "
                    "prompt, sampler, steps, denoising strength and mask blur above.", elem_classes="mask-help")
        with gr.Row():
            for side in ("left", "right", "up", "down"):
                w[f"outpaint_{side}"] = param_widget(f"outpaint_{side}", ctx, PREFIX,
                                                     **({"value": 128} if side == "right" else {}))
        with gr.Row():
            for name in ("outpaint_fill", "outpaint_overlap", "outpaint_step"):
                w[name] = param_widget(name, ctx, PREFIX)
        with gr.Row():
            for name in ("outpaint_noise_q", "outpaint_color_variation"):
                w[name] = param_widget(name, ctx, PREFIX)
        button = gr.Button("Outpaint", variant="primary", elem_id="outpaint-generate")
        progress = gr.HTML(progress_html("Idle"), elem_id="outpaint-progress")
        gallery = gr.Gallery(label="Outpainted", elem_id="outpaint-results", columns=2, height=260)
        info = gr.Textbox(label="Infotext", elem_id="outpaint-info", lines=3, interactive=False)
    bind_hints(w, checkpoint, lambda name: hint_context(studio, name, mode="inpaint"))
    return OutpaintPanel(studio, checkpoint, w, button, progress, gallery, info)
