"""The Inpaint tab's "Infinite zoom" section: keyframes by outpainting (the prompt may be a schedule
"0: forest, 4: castle"), played as a video. Shows the cost before starting (pipelines/params/cost.py's zoom_cost),
the progress per keyframe, the video (gr.Video), the GIF and the keyframes gallery. Interrupt keeps the keyframes
finished and still writes their video; Skip stops at the keyframe being redrawn and keeps what is done.
No torch here: the job runs through the studio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from pipelines.jobs import EventKind, QueueFull
from pipelines.params.specs import SAMPLER_OPTIONS, ZOOM_FIELDS
from pipelines.studio import BadRequest, Studio
from ui.generation import image_input, open_image, progress_html, to_request
from ui.topbar import current_name, hint_context
from ui.widgets import QUIET, ParamWidget, bind_hints, param_widget

FIELDS = [n for n in ZOOM_FIELDS if n != "sd_vae"]  # the VAE is the top bar's (the sd_vae option)
COST_FIELDS = ("steps", "zoom_keyframes", "zoom_denoising", "zoom_frames_per_keyframe", "zoom_fps")
PREFIX = "zoom"


@dataclass
class ZoomPanel:
    widgets: dict[str, ParamWidget]
    image: gr.Image
    cost: gr.Markdown
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    progress: gr.HTML
    video: gr.Video
    gif: gr.Image
    keyframes: gr.Gallery
    info: gr.Textbox


def cost_text(studio: Studio, has_image: bool, values: dict[str, Any]) -> str:
    try:
        c = studio.zoom_cost(to_request(values), has_image)
    except BadRequest as e:
        return f"⚠️ {e}"
    return f"**Cost:** {c['text']}"


def build_zoom_panel(studio: Studio, checkpoint: gr.Dropdown) -> ZoomPanel:
    ctx = hint_context(studio, current_name(studio), mode="inpaint")
    w: dict[str, ParamWidget] = {}
    gr.Markdown("Shrinks the image into the centre by the zoom factor, inpaints the new border, and repeats; "
                "the keyframes play as a video (zoom in: backwards). Prompt schedule: `0: forest, 4: castle`.")
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input(label="Start image (empty: keyframe 0 is a txt2img image)", type="filepath",
                                elem_id="zoom-image", height=220)
        with gr.Column(scale=2):
            w["prompt"] = param_widget("prompt", ctx, PREFIX)  # a prompt, or a schedule "0: forest, 4: castle"
            w["negative_prompt"] = param_widget("negative_prompt", ctx, PREFIX)
    with gr.Row():
        for name in ("zoom_factor", "zoom_keyframes", "zoom_overlap", "zoom_mask_blur"):
            w[name] = param_widget(name, ctx, PREFIX)
    with gr.Row():
        for name in ("zoom_fill", "zoom_denoising", "zoom_direction", "zoom_format"):
            w[name] = param_widget(name, ctx, PREFIX)
    with gr.Row():
        for name in ("zoom_frames_per_keyframe", "zoom_fps", "steps", "cfg_scale", "seed"):
            w[name] = param_widget(name, ctx, PREFIX)
    with gr.Accordion("Sampler and size", open=False):
        with gr.Row():
            for name in ("sampler_name", "scheduler", "width", "height", "clip_skip"):
                w[name] = param_widget(name, ctx, PREFIX)
        with gr.Row():
            for name in ("randn_source", "eta_noise_seed_delta"):
                w[name] = param_widget(name, ctx, PREFIX)
        with gr.Row():
            for name in SAMPLER_OPTIONS:  # A1111's eta, SGM noise multiplier, discard next-to-last sigma
                w[name] = param_widget(name, ctx, PREFIX)
    cost = gr.Markdown(cost_text(studio, False, {n: w[n].spec.default for n in FIELDS if n in w}),
                       elem_id="zoom-cost")
    with gr.Row():
        generate = gr.Button("Make the zoom", variant="primary", elem_id="zoom-generate")
        skip = gr.Button("Skip (stop, keep keyframes)", elem_id="zoom-skip")
        interrupt = gr.Button("Interrupt", variant="stop", elem_id="zoom-interrupt")
    progress = gr.HTML(progress_html("Idle"), elem_id="zoom-progress")
    with gr.Row():
        video = gr.Video(label="Zoom video", elem_id="zoom-video", interactive=False)
        gif = gr.Image(label="GIF", elem_id="zoom-gif", interactive=False, type="filepath")
    keyframes = gr.Gallery(label="Keyframes", elem_id="zoom-keyframes", columns=6, height=180)
    info = gr.Textbox(label="Keyframe infotexts and files", elem_id="zoom-info", lines=4, interactive=False)

    bind_hints(w, checkpoint, lambda name: hint_context(studio, name, mode="inpaint"))
    inputs = [w[n].input for n in FIELDS]

    def update_cost(img: Any, *values: Any) -> str:
        return cost_text(studio, img is not None, dict(zip(FIELDS, values)))

    for trigger in (image, *[w[n].input for n in COST_FIELDS], w["prompt"].input):
        trigger.change(update_cost, [image, *inputs], cost, **QUIET)

    def run(request: gr.Request, img: Any, name: str, *values: Any) -> Iterator[dict]:
        owner = request.session_hash if request else None
        try:
            start = open_image(img, "start image") if img else None
            job = studio.submit_zoom(to_request(dict(zip(FIELDS, values))), start, model=name or None, owner=owner)
        except (BadRequest, QueueFull) as e:
            gr.Warning(str(e))
            yield {progress: progress_html(f"Not started: {e}", state="error")}
            return
        shown: list[tuple[str, str]] = []
        yield {progress: progress_html("Queued…", 0.0), keyframes: [], video: None, gif: None, info: ""}
        for ev in job.events(timeout=3600):
            if ev.kind is EventKind.PROGRESS:
                frac = (ev.step or 0) / ev.total if ev.total else None
                yield {progress: progress_html(f"{ev.label or 'Working'} · step {ev.step}/{ev.total}", frac)}
            elif ev.kind is EventKind.IMAGE:
                payload = ev.result or {}
                shown.append((payload.get("path"), ev.label or ""))
                yield {keyframes: list(shown)}
            elif ev.kind is EventKind.FAILED:
                yield {progress: progress_html(f"Failed: {ev.message}", state="error")}
                return
        result = job.result if job.status == "finished" else job.details.get("zoom")
        if result is None:
            yield {progress: progress_html(f"Stopped: {job.error or 'cancelled'}", state="error")}
            return
        notes = "\n".join(result.warnings)
        text = "\n\n".join([f"video: {result.video}", f"gif: {result.gif}", *result.infotexts])
        done = f"done: {len(result.images)} keyframes, {result.frames} frames"
        if result.stopped:
            done += f" ({result.stopped})"
        yield {progress: progress_html(done, 1.0, state="done"), video: str(result.video), gif: str(result.gif),
               keyframes: [(str(p), f"keyframe {i}") for i, p in enumerate(result.paths)],
               info: (notes + "\n\n" if notes else "") + text}

    generate.click(run, [image, checkpoint, *inputs], [progress, keyframes, video, gif, info],
                   show_progress="hidden", concurrency_limit=None, api_visibility="private")
    def stop(request: gr.Request) -> None:
        studio.interrupt(owner=request.session_hash if request else None)

    def skip_keyframe(request: gr.Request) -> None:
        studio.skip(owner=request.session_hash if request else None)

    interrupt.click(stop, None, None, **QUIET)
    skip.click(skip_keyframe, None, None, **QUIET)
    return ZoomPanel(w, image, cost, generate, interrupt, skip, progress, video, gif, keyframes, info)
