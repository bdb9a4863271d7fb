"""Parameters tab: the reference of every parameter (limits, default, bands with verdict and why), the guided
workflow and the advisor's rules (each with an example and the finding it gives).

Rendered by `pipelines.params.doc` from PARAMS — the same specs that build the inputs, judge them live and
validate requests — for the model selected in the top bar, and re-rendered when it changes.
"""

from __future__ import annotations

import gradio as gr

from pipelines.params.doc import render_advice, render_lora_intro, render_param, render_workflow
from pipelines.params.networks import NETWORK_PARAMS
from pipelines.params.specs import PARAMS, HintContext
from pipelines.studio import Studio
from ui.topbar import current_name, hint_context
from ui.widgets import LINKED, QUIET


def linked_note(name: str, ctx: HintContext) -> str:
    """Verdicts that also look at another field (width <-> height), shown with two sample sizes."""
    lines = []
    for other in LINKED.get(name, ()):
        for v in (ctx.native // 2 // 8 * 8, int(ctx.native * 1.75) // 8 * 8):
            h = PARAMS[name].hint(v, ctx, {other: v})
            lines.append(f"- {name} {v} with {other} {v}: **{h.verdict}**, {h.why}")
    return ("\n\nJudged together with the other side:\n\n" + "\n".join(lines)) if lines else ""


def reference_markdown(ctx: HintContext, model: str | None) -> str:
    kind = f"{ctx.family}, native {ctx.native} px" + (", distilled" if ctx.distilled else "")
    head = (f"## Generation parameters\n\nBands for **{model or 'no model'}** ({kind}); they follow the checkpoint "
            "selected above. Verdicts: 🟢 best (recommended zone), 🔵 ok (fine for a purpose), "
            "🟠 caution (works, often worse), 🔴 avoid (almost always worse or wasteful).\n\n")
    params = "\n\n---\n\n".join(render_param(p, ctx) + linked_note(n, ctx) for n, p in PARAMS.items())
    loras = "\n\n".join([render_lora_intro(), *(render_param(p, ctx) for p in NETWORK_PARAMS.values())])
    return head + params + "\n\n---\n\n" + loras + "\n\n---\n\n" + render_workflow(ctx) + "\n\n" + render_advice(ctx)


def build_params(studio: Studio, checkpoint: gr.Dropdown) -> gr.Markdown:
    name = current_name(studio)
    ref = gr.Markdown(reference_markdown(hint_context(studio, name), name), elem_id="params-reference")
    checkpoint.change(lambda n: reference_markdown(hint_context(studio, n), n), checkpoint, ref, **QUIET)
    return ref
