"""What every generating tab shares: the action buttons, the output panel and the one streaming loop.

A tab builds its inputs, then `build_actions` (Generate / Interrupt / Skip / message) and `build_output`
(progress, live preview, gallery, generation info, saved path, send-to buttons), and hands a `submit`
callable to `wire_generation`. Generate is a generator handler: `submit` validates through the studio
(BadRequest -> message, nothing lost) and returns a Job owned by this browser session; the Job is kept in
gr.State (so Interrupt/Skip act on this session's job only) and each JobEvent becomes a UI update: queue
position, progress bar, live preview, a gallery that grows as each image is saved, and at the end the
engine's warnings (mask resized, whole image masked...) as toasts and in the message area.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import gradio as gr
from PIL import Image

from pipelines.imageops import to_rgb
from pipelines.jobs import EventKind, Job, QueueFull
from pipelines.params.specs import PARAMS
from pipelines.studio import MAX_INPUT_PIXELS, BadRequest, Studio
from ui.topbar import download_note, status_text
from ui.widgets import QUIET

CSS = """
.gen-generate {min-height:64px; font-size:1.15rem;}
.gen-actions {gap:8px;}
.gen-progress {display:flex; flex-direction:column; gap:4px; padding:2px 0; font-size:13px;}
.gen-progress .track {height:8px; border-radius:4px; background:var(--neutral-200); overflow:hidden;}
.gen-progress .fill {height:100%; background:var(--color-accent); transition:width .2s;}
.gen-progress.done .fill {background:#16a34a;} .gen-progress.failed .fill {background:#dc2626;}
.gen-message {padding:8px 12px; border-radius:6px; background:#fef2f2; color:#991b1b; border:1px solid #fecaca;
  font-size:13.5px;}
.gen-message.warning {background:#fffbeb; color:#92400e; border-color:#fde68a;}
.gen-message.info {background:#eff6ff; color:#1e40af; border-color:#bfdbfe;}
.gen-seed-buttons {align-self:flex-start; margin-top:60px; gap:6px;}
.gen-seed-buttons button {min-width:42px; padding:4px 8px;}
.gen-send {gap:8px;}
"""


# -- pieces of the streamed UI ----------------------------------------------------------------------

def progress_html(text: str, fraction: float | None = None, state: str = "") -> str:
    bar = "" if fraction is None else (f'<div class="track"><div class="fill" style="width:{fraction * 100:.1f}%">'
                                       "</div></div>")
    return (f'<div class="gen-progress {state}" data-state="{state}">{bar}'
            f'<div class="text">{html.escape(text)}</div></div>')


def message_html(text: str, kind: str = "error") -> Any:
    """The message area under Generate: an error (red), the engine's warnings (amber) or progress notes (blue,
    kind "info"); hidden when empty."""
    icon = "⏳" if kind == "info" else "⚠️"
    return gr.HTML(f'<div class="gen-message {kind}" data-kind="{kind}">{icon} {html.escape(text)}</div>',
                   visible=bool(text))


def step_text(ev: Any) -> str:
    if (note := download_note(ev)) is not None:  # a hub model's first use: bytes, not steps
        return note
    if (ev.total or 0) <= 1:  # e.g. "loading <model>" before the first step
        return f"{ev.label or 'Working'}…"
    parts = [f"Step {ev.step}/{ev.total}"]
    if ev.it_per_s:
        parts.append(f"{ev.it_per_s:.2f} it/s" if ev.it_per_s >= 1 else f"{1 / ev.it_per_s:.1f} s/it")
    if ev.eta_s is not None:
        parts.append(f"ETA {ev.eta_s:.0f} s")
    if ev.label:
        parts.append(ev.label)
    return " · ".join(parts)


def typed(spec: Any, value: Any) -> Any:
    """A UI value as its ParamSpec says: whole floats become ints, numbers floats; an emptied field falls back to
    the spec's default (anything else is left for validation to judge)."""
    if value is None or (value == "" and spec.kind in ("int", "float")):
        return spec.default
    if spec.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if spec.kind == "float":
        return float(value)
    return value


def to_request(values: dict[str, Any]) -> dict[str, Any]:
    """UI values -> request fields: numbers typed as the spec says; an emptied field falls back to its default."""
    return {name: typed(PARAMS[name], v) for name, v in values.items()}


def gallery_items(results: list[dict]) -> list[tuple[str, str]]:
    return [(r["path"], f"seed {r['seed']}") for r in results]


def picked(results: list[dict] | None, index: int | None) -> dict | None:
    """The gallery result the user clicked, else the last one; None before anything was generated."""
    if not results:
        return None
    return results[index if index is not None and 0 <= index < len(results) else -1]


# -- input images -------------------------------------------------------------------------------------

class NotAnImage(str):
    """What `image_input` passes on for an upload PIL cannot read: the file's path, with its name and why."""

    def __new__(cls, path: str, name: str, reason: str) -> "NotAnImage":
        obj = super().__new__(cls, path)
        obj.name, obj.reason = name, reason
        return obj


def image_input(**kwargs: Any) -> gr.Image:
    """gr.Image that hands an unreadable upload (a text file, a broken PNG) to the handler as `NotAnImage`
    instead of failing the event, so the tab can say what is wrong and keep everything else.

    A wrapped instance, not a subclass: Gradio writes a .pyi stub next to any module defining a component class.
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def safe_preprocess(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except Exception as e:  # PIL: UnidentifiedImageError, truncated files, decompression bombs...
            name = getattr(payload, "orig_name", None) or "the file"
            return NotAnImage(str(getattr(payload, "path", "") or ""), name, str(e))

    image.preprocess = safe_preprocess  # type: ignore[method-assign]
    return image


def open_image(value: Any, what: str = "input image", *, flatten_alpha: bool = True) -> Image.Image | None:
    """An image_input value (path) -> loaded PIL image, None when empty; BadRequest with a clear message when
    the file is not an image. An image over the studio's pixel limit comes back unloaded (its size is known),
    for the studio to refuse with its own message."""
    if value is None or value == "":
        return None
    if isinstance(value, NotAnImage):
        raise BadRequest(f"'{value.name}' is not an image this app can read ({value.reason}). Upload a PNG, JPEG "
                         f"or WebP {what}.")
    try:
        im = Image.open(value)
        if im.width * im.height > MAX_INPUT_PIXELS:
            return im
        im.load()
    except Image.DecompressionBombError as e:
        raise BadRequest(f"The {what} is too large to open: {e}") from None
    except (OSError, ValueError) as e:
        raise BadRequest(f"Cannot read the {what}: {e}. Upload a PNG, JPEG or WebP image.") from None
    return to_rgb(im) if flatten_alpha else im


# -- building blocks ----------------------------------------------------------------------------------

@dataclass
class Actions:
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    message: gr.HTML


# What Skip does in each tab's jobs (its tooltip; pipelines/jobs.py `Skipped`, and each job kind's handling).
SKIP_TIPS = {
    "txt2img": "Skip: abandon the running batch and go on with the next one (Batch count); finished images stay. "
               "In an X/Y/Z plot: the running cell's batch; a guided draft or refine stage: its running batch.",
    "img2img": "Skip: abandon the running batch and go on with the next one (Batch count); finished images stay.",
    "upscale": "Skip: Upscale abandons the image being enlarged and goes on with the next one; the tiled SD upscale "
               "drops the tile in progress, stops, and saves the image with the tiles already redrawn.",
}
# Gradio buttons take no tooltip: the page sets each Skip button's title attribute from SKIP_TIPS.
HEAD = """<script>
(() => {
  const tips = TIPS;
  const apply = () => { for (const [id, tip] of Object.entries(tips)) {
    const el = document.getElementById(id + "-skip");
    if (el && el.title !== tip) el.title = tip; } };
  new MutationObserver(apply).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>""".replace("TIPS", json.dumps(SKIP_TIPS))


def build_actions(prefix: str) -> Actions:
    """Generate, Interrupt, Skip and the message area, stacked (the right-hand column next to the prompts)."""
    generate = gr.Button("Generate", variant="primary", size="lg", elem_id=f"{prefix}-generate",
                         elem_classes="gen-generate")
    with gr.Row():
        interrupt = gr.Button("Interrupt", size="sm", elem_id=f"{prefix}-interrupt", min_width=80)
        skip = gr.Button("Skip", size="sm", elem_id=f"{prefix}-skip", min_width=80)
    message = gr.HTML("", visible=False, elem_id=f"{prefix}-message", padding=False)
    return Actions(generate, interrupt, skip, message)


def seed_buttons(prefix: str) -> tuple[gr.Button, gr.Button]:
    """🎲 (random seed) and ♻️ (reuse the selected image's seed), in a narrow column next to the seed."""
    with gr.Column(scale=0, min_width=100, elem_classes="gen-seed-buttons", elem_id=f"{prefix}-seed-buttons"):
        random_seed = gr.Button("🎲", size="sm", elem_id=f"{prefix}-random-seed")
        reuse_seed = gr.Button("♻️", size="sm", elem_id=f"{prefix}-reuse-seed")
    return random_seed, reuse_seed


@dataclass
class Output:
    job: gr.State  # this session's running Job
    results: gr.State  # [{"path", "seed", "infotext"}] of the gallery
    selected: gr.State  # gallery index the user clicked
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    saved: gr.Markdown
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_upscale: gr.Button


def build_output(prefix: str) -> Output:
    """Progress, live preview, gallery, generation info, saved path and the send-to buttons."""
    progress = gr.HTML(progress_html("Ready."), elem_id=f"{prefix}-progress", padding=False)
    preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{prefix}-preview",
                       height=320, type="pil")
    gallery = gr.Gallery(label="Images", elem_id=f"{prefix}-gallery", columns=3, height=420,
                         object_fit="contain", format="png", interactive=False)
    with gr.Row(elem_classes="gen-send"):
        send_img2img = gr.Button("→ img2img", size="sm", elem_id=f"{prefix}-send-img2img", min_width=90)
        send_inpaint = gr.Button("→ inpaint", size="sm", elem_id=f"{prefix}-send-inpaint", min_width=90)
        send_upscale = gr.Button("→ upscale", size="sm", elem_id=f"{prefix}-send-upscale", min_width=90)
    info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{prefix}-info",
                      buttons=["copy"])
    saved = gr.Markdown("", elem_id=f"{prefix}-saved")
    return Output(gr.State(None), gr.State([]), gr.State(None), progress, preview, gallery, info, saved,
                  send_img2img, send_inpaint, send_upscale)


# -- the streaming loop -------------------------------------------------------------------------------

# Each streamed message costs the page a pass over every component's loading status (Gradio's frontend):
# about 0.1 s of browser time on a 2-core machine with this UI's ~1000 components. One message per denoising
# step (20-100 a second on a GPU) left the page unable to answer a click, Interrupt included; two a second
# keep it responsive, and the progress bar's CSS transition hides the gaps.
UPDATE_EVERY = 0.5  # s


def stream_job(studio: Studio, job: Job, out: Output, message: gr.HTML, status: gr.Markdown,
               on_finished: Callable[[Any], dict] | None = None) -> Iterator[dict]:
    """The JobEvents of `job` as dicts of UI updates (the one copy of this loop; every tab uses it): the events
    that arrived together make one update, where the newest progress and preview win and every image counts.
    `on_finished(result)` adds the tab's own updates when the job finishes (e.g. the ControlNet maps used)."""
    done: list[dict] = []
    t0 = time.perf_counter()
    yield {out.job: job, out.results: [], out.selected: None, message: message_html(""), out.gallery: [],
           out.info: "", out.saved: "", out.preview: gr.Image(value=None, visible=True),
           out.progress: progress_html("Submitted…", 0)}
    for group in job.batches(UPDATE_EVERY):
        update: dict = {}
        for ev in group:
            update.update(event_update(studio, ev, out, message, status, done, t0, on_finished))
        yield update


def event_update(studio: Studio, ev: Any, out: Output, message: gr.HTML, status: gr.Markdown, done: list[dict],
                 t0: float, on_finished: Callable[[Any], dict] | None) -> dict:
    """One JobEvent as UI updates; an image event appends its result to `done`."""
    if ev.kind is EventKind.QUEUED:
        ahead = "next in line" if not ev.position else f"{ev.position} job(s) ahead"
        return {out.progress: progress_html(f"Queued: {ahead}", 0)}
    if ev.kind is EventKind.STARTED:
        return {out.progress: progress_html("Starting…", 0)}
    if ev.kind is EventKind.PROGRESS:
        return {out.progress: progress_html(step_text(ev), (ev.step or 0) / (ev.total or 1))}
    if ev.kind is EventKind.PREVIEW:
        return {out.preview: ev.image}
    if ev.kind is EventKind.IMAGE:
        done.append(dict(ev.result or {}))
        return {out.results: list(done), out.gallery: gallery_items(done), out.info: done[-1].get("infotext", ""),
                out.saved: f"Saved: `{done[-1].get('path', '')}`"}
    secs = time.perf_counter() - t0  # terminal
    note, extra = message_html(""), {}
    if ev.kind is EventKind.FINISHED:
        skipped = getattr(ev.result, "skipped", 0)
        text, state = f"Done: {len(done)} image(s) in {secs:.1f} s" + (
            f", {skipped} skipped" if skipped else ""), "done"
        warnings = list(getattr(ev.result, "warnings", None) or [])
        for w in warnings:
            gr.Warning(w)
        if warnings:
            note = message_html(" · ".join(warnings), "warning")
        if on_finished is not None:
            extra = on_finished(ev.result)
    elif ev.kind is EventKind.CANCELLED:
        text, state = f"Interrupted after {secs:.1f} s: {len(done)} image(s) kept", "failed"
    else:
        gr.Warning(ev.message or "generation failed")
        text, state = f"Failed after {secs:.1f} s: {len(done)} image(s) kept", "failed"
        note = message_html(ev.message or "generation failed")
    return {out.job: None, out.progress: progress_html(text, 1, state), out.preview: gr.Image(visible=False),
            message: note, status: status_text(studio), **extra}


def streamed(studio: Studio, actions: Actions, out: Output, status: gr.Markdown, submit: Callable[..., Job], *,
             on_finished: Callable[[Any], dict] | None = None,
             finished_outputs: Sequence[gr.components.Component] = ()) -> tuple[Callable[..., Iterator[dict]], list]:
    """(handler, outputs) that submit a job and stream it into `out`: `handler(request, *values)` calls
    `submit(request, *values)` (BadRequest / QueueFull -> the message area, nothing lost) and yields the job's
    updates. Generate uses it; so does any other button that starts a job into the same output panel
    (the guided workflow, the X/Y/Z sweep)."""
    message = actions.message
    outputs = [out.job, out.results, out.selected, message, out.progress, out.preview, out.gallery, out.info,
               out.saved, status, *finished_outputs]

    def run(request: gr.Request, *values: Any) -> Iterator[dict]:
        try:
            job = submit(request, *values)
        except (BadRequest, QueueFull) as e:
            gr.Warning(str(e))
            yield {message: message_html(str(e)), out.progress: progress_html("Not started: fix the problem above.")}
            return
        yield from stream_job(studio, job, out, message, status, on_finished)

    return run, outputs


STREAMED = dict(show_progress="hidden", concurrency_limit=None, api_visibility="private")


def wire_generation(studio: Studio, actions: Actions, out: Output, status: gr.Markdown,
                    inputs: Sequence[gr.components.Component], submit: Callable[..., Job], *,
                    on_finished: Callable[[Any], dict] | None = None,
                    finished_outputs: Sequence[gr.components.Component] = ()) -> None:
    """Generate -> `submit(request, *input values)` -> streamed job; Interrupt/Skip; gallery selection.
    `on_finished(result)` returns updates of `finished_outputs` for a finished job."""
    run, outputs = streamed(studio, actions, out, status, submit, on_finished=on_finished,
                            finished_outputs=finished_outputs)
    actions.generate.click(run, list(inputs), outputs, **STREAMED)

    def control(action: str) -> Callable[[Job | None], None]:
        def act(job: Job | None) -> None:  # only this session's job; nothing running -> nothing to do
            if job is not None:
                getattr(studio.runner, action)(job)
        return act

    actions.interrupt.click(control("interrupt"), out.job, None, **QUIET)
    actions.skip.click(control("skip"), out.job, None, **QUIET)

    def on_select(res: list[dict], evt: gr.SelectData) -> tuple[str, str, int]:
        r = res[evt.index] if res and 0 <= evt.index < len(res) else {}
        return r.get("infotext", ""), f"Saved: `{r['path']}`" if r else "", evt.index

    out.gallery.select(on_select, out.results, [out.info, out.saved, out.selected], **QUIET)


def wire_seed_buttons(random_seed: gr.Button, reuse_seed: gr.Button, seed: gr.components.Component,
                      out: Output) -> None:
    random_seed.click(lambda: -1, None, seed, **QUIET)

    def reuse(res: list[dict], index: int | None) -> Any:
        r = picked(res, index)
        if r is None:
            gr.Warning("Generate an image first: ♻️ reuses the seed of the selected (or last) image.")
            return gr.skip()
        return r["seed"]

    reuse_seed.click(reuse, [out.results, out.selected], seed, show_progress="hidden", api_visibility="private")
