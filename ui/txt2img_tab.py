"""The txt2img tab: every TXT2IMG field built from its spec with a live verdict, and a streamed generation.

Generate is a generator handler: it validates through the studio (BadRequest -> message, nothing lost),
submits a job owned by this browser session, keeps the Job in gr.State (so Interrupt/Skip act on this
session's job only) and turns each JobEvent into a UI update: queue position, progress bar, live preview,
and a gallery that grows as each image is saved.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from pipelines.jobs import EventKind, Job, QueueFull
from pipelines.params import PARAMS, TXT2IMG_FIELDS
from pipelines.studio import BadRequest, Studio
from ui.topbar import current_name, hint_context, status_text
from ui.widgets import QUIET, ParamWidget, bind_hints, param_widget

CSS = """
#txt2img-generate {min-height:64px; font-size:1.15rem;}
#txt2img-actions {gap:8px;}
.gen-progress {display:flex; flex-direction:column; gap:4px; padding:2px 0; font-size:13px;}
.gen-progress .track {height:8px; border-radius:4px; background:var(--neutral-200); overflow:hidden;}
.gen-progress .fill {height:100%; background:var(--color-accent); transition:width .2s;}
.gen-progress.done .fill {background:#16a34a;} .gen-progress.failed .fill {background:#dc2626;}
.gen-message {padding:8px 12px; border-radius:6px; background:#fef2f2; color:#991b1b; border:1px solid #fecaca;
  font-size:13.5px;}
#txt2img-seed-buttons {align-self:flex-start; margin-top:60px; gap:6px;}
#txt2img-seed-buttons button {min-width:42px; padding:4px 8px;}
"""


def progress_html(text: str, fraction: float | None = None, state: str = "") -> str:
    bar = "" if fraction is None else (f'<div class="track"><div class="fill" style="width:{fraction * 100:.1f}%">'
                                       "</div></div>")
    return (f'<div class="gen-progress {state}" data-state="{state}">{bar}'
            f'<div class="text">{html.escape(text)}</div></div>')


def message_html(text: str) -> Any:
    return gr.HTML(f'<div class="gen-message">⚠️ {html.escape(text)}</div>', visible=bool(text))


def step_text(ev: Any) -> str:
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


def to_request(values: dict[str, Any]) -> dict[str, Any]:
    """UI values -> request fields: numbers typed as the spec says; an emptied field falls back to its default."""
    out: dict[str, Any] = {}
    for name, v in values.items():
        spec = PARAMS[name]
        if v is None or (v == "" and spec.kind in ("int", "float")):
            out[name] = spec.default
        elif spec.kind == "int" and isinstance(v, float) and v.is_integer():
            out[name] = int(v)
        elif spec.kind == "float":
            out[name] = float(v)
        else:
            out[name] = v
    return out


def gallery_items(results: list[dict]) -> list[tuple[str, str]]:
    return [(r["path"], f"seed {r['seed']}") for r in results]


@dataclass
class Txt2Img:
    widgets: dict[str, ParamWidget]
    fields: dict[str, gr.components.Component]  # TXT2IMG field name -> input (for "send to txt2img")
    gallery: gr.Gallery
    info: gr.Textbox


def build_txt2img(studio: Studio, checkpoint: gr.Dropdown, status: gr.Markdown) -> Txt2Img:
    ctx = hint_context(studio, current_name(studio))
    w: dict[str, ParamWidget] = {}

    def add(name: str, **kw: Any) -> None:
        w[name] = param_widget(name, ctx, "txt2img", **kw)

    with gr.Row(elem_id="txt2img-top"):
        with gr.Column(scale=5):
            add("prompt")
            add("negative_prompt")
        with gr.Column(scale=1, min_width=220, elem_id="txt2img-actions"):
            generate = gr.Button("Generate", variant="primary", size="lg", elem_id="txt2img-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", size="sm", elem_id="txt2img-interrupt", min_width=80)
                skip = gr.Button("Skip", size="sm", elem_id="txt2img-skip", min_width=80)
            message = gr.HTML("", visible=False, elem_id="txt2img-message", padding=False)
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
                with gr.Column(scale=0, min_width=100, elem_id="txt2img-seed-buttons"):
                    random_seed = gr.Button("🎲", size="sm", elem_id="txt2img-random-seed")
                    reuse_seed = gr.Button("♻️", size="sm", elem_id="txt2img-reuse-seed")
            with gr.Accordion("Variation seed", open=False, elem_id="txt2img-variation"):
                with gr.Row():
                    add("subseed")
                    add("subseed_strength")
            with gr.Accordion("Advanced", open=False, elem_id="txt2img-advanced"):
                for name in [n for n in ("clip_skip", *TXT2IMG_FIELDS) if n not in w]:
                    add(name)  # clip skip, then any parameter added to the specs later
        with gr.Column(scale=1, elem_id="txt2img-output"):
            progress = gr.HTML(progress_html("Ready."), elem_id="txt2img-progress", padding=False)
            preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id="txt2img-preview",
                               height=320, type="pil")
            gallery = gr.Gallery(label="Images", elem_id="txt2img-gallery", columns=3, height=420,
                                 object_fit="contain", format="png", interactive=False)
            info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="txt2img-info",
                              buttons=["copy"])
            saved = gr.Markdown("", elem_id="txt2img-saved")

    names = list(TXT2IMG_FIELDS)
    fields = {n: w[n].input for n in names}
    job_state = gr.State(None)  # this session's running Job
    results = gr.State([])  # [{"path", "seed", "infotext"}] of the gallery
    selected = gr.State(None)  # gallery index the user clicked

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
    outputs = [job_state, results, selected, message, progress, preview, gallery, info, saved, status]

    def run(request: gr.Request, name: str, *values: Any) -> Iterator[dict]:
        try:
            params = studio.parse_txt2img(to_request(dict(zip(names, values))))
            job = studio.submit_txt2img(params, model=name or None, owner=request.session_hash if request else None)
        except (BadRequest, QueueFull) as e:
            gr.Warning(str(e))
            yield {message: message_html(str(e)), progress: progress_html("Not started: fix the setting above.")}
            return
        done: list[dict] = []
        t0 = time.perf_counter()
        yield {job_state: job, results: [], selected: None, message: message_html(""), gallery: [], info: "",
               saved: "", preview: gr.Image(value=None, visible=True), progress: progress_html("Submitted…", 0)}
        for ev in job.events():
            if ev.kind is EventKind.QUEUED:
                ahead = "next in line" if not ev.position else f"{ev.position} job(s) ahead"
                yield {progress: progress_html(f"Queued: {ahead}", 0)}
            elif ev.kind is EventKind.STARTED:
                yield {progress: progress_html("Starting…", 0)}
            elif ev.kind is EventKind.PROGRESS:
                yield {progress: progress_html(step_text(ev), (ev.step or 0) / (ev.total or 1))}
            elif ev.kind is EventKind.PREVIEW:
                yield {preview: ev.image}
            elif ev.kind is EventKind.IMAGE:
                done.append(dict(ev.result or {}))
                yield {results: list(done), gallery: gallery_items(done), info: done[-1].get("infotext", ""),
                       saved: f"Saved: `{done[-1].get('path', '')}`"}
            else:  # terminal
                secs = time.perf_counter() - t0
                if ev.kind is EventKind.FINISHED:
                    skipped = getattr(ev.result, "skipped", 0)
                    text, state = f"Done: {len(done)} image(s) in {secs:.1f} s" + (
                        f", {skipped} skipped" if skipped else ""), "done"
                elif ev.kind is EventKind.CANCELLED:
                    text, state = f"Interrupted after {secs:.1f} s: {len(done)} image(s) kept", "failed"
                else:
                    gr.Warning(ev.message or "generation failed")
                    text, state = f"Failed after {secs:.1f} s: {len(done)} image(s) kept", "failed"
                yield {job_state: None, progress: progress_html(text, 1, state), preview: gr.Image(visible=False),
                       message: message_html(ev.message if ev.kind is EventKind.FAILED else ""),
                       status: status_text(studio)}

    generate.click(run, [checkpoint, *fields.values()], outputs, show_progress="hidden", concurrency_limit=None,
                   api_visibility="private")

    def control(action: str):
        def act(job: Job | None) -> None:  # only this session's job; nothing running -> nothing to do
            if job is not None:
                getattr(studio.runner, action)(job)
        return act

    interrupt.click(control("interrupt"), job_state, None, **QUIET)
    skip.click(control("skip"), job_state, None, **QUIET)

    # -- gallery, seeds -----------------------------------------------------------------------------
    def on_select(res: list[dict], evt: gr.SelectData) -> tuple[str, str, int]:
        r = res[evt.index] if res and 0 <= evt.index < len(res) else {}
        return r.get("infotext", ""), f"Saved: `{r['path']}`" if r else "", evt.index

    gallery.select(on_select, results, [info, saved, selected], **QUIET)
    random_seed.click(lambda: -1, None, fields["seed"], **QUIET)

    def reuse(res: list[dict], index: int | None) -> Any:
        if not res:
            gr.Warning("Generate an image first: ♻️ reuses the seed of the selected (or last) image.")
            return gr.skip()
        return res[index if index is not None and index < len(res) else -1]["seed"]

    reuse_seed.click(reuse, [results, selected], fields["seed"], show_progress="hidden", api_visibility="private")
    return Txt2Img(w, fields, gallery, info)
