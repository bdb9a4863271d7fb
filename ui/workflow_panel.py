"""The guided workflow in the txt2img tab: ① Draft, ② Refine the picked image, ③ Finalize it, with the steps
spent per stage against the naive way ("everything at full quality").

Draft and Refine set the fields (visible, so the user sees what changed) and then generate through the tab's
own submit; Finalize runs the picked image through Hires. fix's second pass (`Studio.submit_hires_fix`) or the
tiled SD upscale, with the parameters stored in that image. Every job streams into the tab's output panel;
when one finishes, its denoising steps go into the session's ledger (`pipelines.advisor.workflow.Ledger`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import gradio as gr

from pipelines.advisor import workflow
from pipelines.jobs import Job
from pipelines.params.infotext import parse_infotext
from pipelines.studio import BadRequest, Studio
from ui.generation import STREAMED, Actions, Output, open_image, picked, streamed, to_request
from ui.topbar import hint_context
from ui.widgets import QUEUED, QUIET

FINALIZE = ("Hires. fix", "Tiled upscale")

CSS = """
.workflow {gap:6px !important; padding:8px; border:1px solid var(--border-color-primary); border-radius:8px;}
.workflow-title {font-size:13px; font-weight:600;}
.workflow-report {font-size:12.5px; line-height:1.4;}
.workflow-report table {width:100%; border-collapse:collapse;}
.workflow-report table, .workflow-report tr, .workflow-report td {border:none !important; background:none !important;}
.workflow-report td {padding:0 3px !important;}
.workflow-report td.n {text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap;}
.workflow-report .saved {color:#15803d; font-weight:600;}
"""


@dataclass
class WorkflowPanel:
    draft: gr.Button
    refine: gr.Button
    finalize: gr.Button
    how: gr.Radio
    report: gr.HTML
    ledger: gr.State  # workflow.Ledger of this session
    last: gr.State  # the cost of the job that just finished ({"id", "images", "steps"}), None otherwise


def build_workflow(prefix: str) -> WorkflowPanel:
    with gr.Column(elem_classes="workflow", elem_id=f"{prefix}-workflow"):
        gr.HTML('<div class="workflow-title">Guided: draft → refine → finalize</div>', padding=False)
        draft = gr.Button("① Draft", size="sm", elem_id=f"{prefix}-draft")
        refine = gr.Button("② Refine selected", size="sm", elem_id=f"{prefix}-refine")
        with gr.Row():
            finalize = gr.Button("③ Finalize selected", size="sm", elem_id=f"{prefix}-finalize", min_width=120)
        how = gr.Radio(list(FINALIZE), value=FINALIZE[0], show_label=False, container=False,
                       elem_id=f"{prefix}-finalize-how")
        report = gr.HTML(report_html(workflow.Ledger(), None), padding=False, elem_id=f"{prefix}-workflow-report")
    return WorkflowPanel(draft, refine, finalize, how, report, gr.State(workflow.Ledger()), gr.State(None))


def report_html(ledger: workflow.Ledger, ctx: Any) -> str:
    if not ledger.entries:
        return ('<div class="workflow-report" data-spent="0">① drafts explore cheaply (random seeds, draft steps) · '
                "② click the image you like in the gallery, refine it (seed pinned) · ③ finalize only that one."
                "</div>")
    s = ledger.summary(ctx)
    rows = "".join(f'<tr><td>{stage}</td><td class="n">{v["images"]} img</td>'
                   f'<td class="n">{v["steps"]} steps</td></tr>' for stage, v in s["stages"].items() if v["images"])
    saved = (f'<span class="saved">saved {s["saved"]} steps ({s["saved_ratio"]:.0%})</span>' if s["saved"] > 0
             else f"{-s['saved']} steps more than the naive way so far")
    return (f'<div class="workflow-report" data-spent="{s["spent"]}" data-naive="{s["naive"]}">'
            f'<table>{rows}<tr><td><b>spent</b></td><td></td><td class="n"><b>{s["spent"]} steps</b></td></tr>'
            f'<tr><td>naive way</td><td></td><td class="n">{s["naive"]} steps</td></tr></table>'
            f"Naive: every explored image at full quality with the final pass. {saved}</div>")


def wire_workflow(panel: WorkflowPanel, studio: Studio, *, actions: Actions, out: Output, status: gr.Markdown,
                  checkpoint: gr.Dropdown, fields: Mapping[str, gr.components.Component],
                  gen_inputs: Sequence[gr.components.Component], submit: Callable[..., Job],
                  on_finished: Callable[[Any], dict] | None = None,
                  finished_outputs: Sequence[gr.components.Component] = ()) -> None:
    """`submit(request, *gen_inputs values)` is the tab's own txt2img submit; `on_finished` / `finished_outputs`
    its extra updates at the end of a job (the ControlNet maps)."""
    names = list(fields)

    def costed(result: Any) -> dict:
        extra = on_finished(result) if on_finished is not None else {}
        return {**extra, panel.last: {"id": uuid.uuid4().hex, "images": len(getattr(result, "images", [])),
                                      "steps": int(getattr(result, "denoising_steps", 0))}}

    run_txt2img, outputs = streamed(studio, actions, out, status, submit, on_finished=costed,
                                    finished_outputs=[*finished_outputs, panel.last])

    def apply(stage: str) -> Callable[..., dict]:
        def handler(results: list[dict], selected: int | None, name: str, *values: Any) -> dict:
            vals = to_request(dict(zip(names, values)))
            ctx = hint_context(studio, name)
            if stage == "draft":
                changes = workflow.draft_settings(vals, ctx)
            else:
                r = picked(results, selected)
                if r is None:
                    raise gr.Error("Pick an image first: run ① Draft, then click the draft you like in the gallery.")
                changes = workflow.refine_settings(vals, r["seed"], ctx)
            return {panel.last: None, **{fields[k]: v for k, v in changes.items() if k in fields}}
        return handler

    def record(stage: str) -> Callable[..., tuple]:
        def handler(ledger: workflow.Ledger, last: dict | None, name: str) -> tuple:
            if last is not None:  # finished (not failed or interrupted): count what it ran
                ledger.record(stage, last["images"], last["steps"])
            return ledger, None, report_html(ledger, hint_context(studio, name))
        return handler

    pick_inputs = [out.results, out.selected, checkpoint, *fields.values()]
    after = [panel.ledger, panel.last, checkpoint]
    for stage, button in (("draft", panel.draft), ("refine", panel.refine)):
        button.click(apply(stage), pick_inputs, [panel.last, *fields.values()], **QUEUED) \
            .success(run_txt2img, list(gen_inputs), outputs, **STREAMED) \
            .then(record(stage), after, [panel.ledger, panel.last, panel.report], **QUIET)

    def submit_final(request: gr.Request, results: list[dict], selected: int | None, how: str, name: str,
                     *values: Any) -> Job:
        r = picked(results, selected)
        if r is None:
            raise BadRequest("Pick the image to finalize first: click it in the gallery.")
        image = open_image(r["path"], "chosen image")
        parsed = parse_infotext(r.get("infotext", ""))
        ctx, upscalers = hint_context(studio, name), studio.upscaler_names()
        owner = request.session_hash if request else None
        if how == FINALIZE[1]:
            return studio.submit_sd_upscale(workflow.finalize_tiled(parsed, ctx, upscalers), image,
                                            model=name or None, owner=owner)
        current = to_request(dict(zip(names, values)))
        return studio.submit_hires_fix(workflow.finalize_hires(parsed, current, ctx, upscalers), image,
                                       model=name or None, owner=owner)

    run_final, final_outputs = streamed(studio, actions, out, status, submit_final, on_finished=costed,
                                        finished_outputs=[*finished_outputs, panel.last])
    panel.finalize.click(lambda: None, None, panel.last, **QUIET) \
        .then(run_final, [out.results, out.selected, panel.how, checkpoint, *fields.values()], final_outputs,
              **STREAMED) \
        .then(record("finalize"), after, [panel.ledger, panel.last, panel.report], **QUIET)
