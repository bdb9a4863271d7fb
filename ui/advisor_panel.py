"""The advisor, at the top of the output column (its height changes as findings come and go, and there it moves
no input the user is working on): the findings for the current settings, each with a one-click fix.

Re-checked on every change of a field, the model or the sub-tab (`Studio.advise`, the same rules as
`POST /advisor/check`). A finding shows its severity, what is wrong and why; its button applies the fix to
the fields, whose own change events then re-judge the badges and the advisor. "Fix all" applies every fix.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import gradio as gr

from pipelines.studio import BadRequest, Studio
from ui.generation import to_request
from ui.widgets import QUIET

MAX_SHOWN = 6  # findings shown with a fix button; more are counted in the summary
ICON = {"error": "⛔", "warning": "⚠️", "info": "💡"}
NAME = {"error": ("error", "errors"), "warning": ("warning", "warnings"), "info": ("note", "notes")}

CSS = """
.advisor {gap:6px !important;}
.advisor-summary {font-size:13px; font-weight:600; padding:2px 0;}
.advisor-summary.clean {color:#15803d;}
.advice {font-size:12.5px; line-height:1.35; padding:6px 8px; border-radius:6px; border-left:4px solid var(--a-color);
  background:color-mix(in srgb, var(--a-color) 9%, transparent);}
.advice-error {--a-color:#dc2626;} .advice-warning {--a-color:#d97706;} .advice-info {--a-color:#2563eb;}
.advice-row {gap:8px !important; align-items:center;}
.advice-fix {align-self:center;}
"""


@dataclass
class AdvisorPanel:
    findings: gr.State  # [Finding.as_dict()] shown, in order
    summary: gr.HTML
    rows: list[tuple[gr.Row, gr.HTML, gr.Button]]
    fix_all: gr.Button

    @property
    def outputs(self) -> list[Any]:
        return [self.findings, self.summary, *[c for row in self.rows for c in row], self.fix_all]


def summary_html(findings: Sequence[Mapping[str, Any]]) -> str:
    if not findings:
        return '<div class="advisor-summary clean" data-count="0">✔ Advisor: the settings follow the ' \
               'recommendations.</div>'
    parts = []
    for sev in ("error", "warning", "info"):
        n = sum(f["severity"] == sev for f in findings)
        if n:
            parts.append(f"{n} {NAME[sev][n != 1]}")
    hidden = len(findings) - MAX_SHOWN
    more = f" ({hidden} more not shown)" if hidden > 0 else ""
    return f'<div class="advisor-summary" data-count="{len(findings)}">Advisor: {", ".join(parts)}{more}</div>'


def finding_html(f: Mapping[str, Any]) -> str:
    return (f'<div class="advice advice-{f["severity"]}" data-rule="{html.escape(f["rule"])}" '
            f'data-severity="{f["severity"]}">{ICON[f["severity"]]} {html.escape(f["message"])}</div>')


def build_advisor(prefix: str) -> AdvisorPanel:
    """The panel's components (call inside the column where it should appear); `wire_advisor` connects it."""
    with gr.Column(elem_classes="advisor", elem_id=f"{prefix}-advisor"):
        with gr.Row(equal_height=True):
            summary = gr.HTML("", elem_id=f"{prefix}-advisor-summary", padding=False)
            fix_all = gr.Button("Fix all", size="sm", visible=False, elem_id=f"{prefix}-advice-fix-all", scale=0,
                                min_width=230)
        rows = []
        for i in range(MAX_SHOWN):
            with gr.Row(visible=False, equal_height=True, elem_classes="advice-row",
                        elem_id=f"{prefix}-advice-{i}") as row:
                text = gr.HTML("", padding=False, elem_id=f"{prefix}-advice-{i}-text", scale=4, min_width=240)
                fix = gr.Button("Fix", size="sm", elem_classes="advice-fix", elem_id=f"{prefix}-advice-{i}-fix",
                                scale=0, min_width=230)
            rows.append((row, text, fix))
    return AdvisorPanel(gr.State([]), summary, rows, fix_all)


def panel_updates(panel: AdvisorPanel, findings: list[dict[str, Any]]) -> list[Any]:
    """Values for `panel.outputs` showing `findings`."""
    out: list[Any] = [findings, summary_html(findings)]
    for i, _ in enumerate(panel.rows):
        f = findings[i] if i < len(findings) else None
        out += [gr.Row(visible=f is not None), finding_html(f) if f else "",
                gr.Button(value=f"Fix: {f['fix_label']}" if f and f["fix"] else "Fix",
                          visible=bool(f and f["fix"]))]
    out.append(gr.Button(visible=sum(bool(f["fix"]) for f in findings) > 1))
    return out


def wire_advisor(panel: AdvisorPanel, studio: Studio, fields: Mapping[str, gr.components.Component],
                 ctx_inputs: Sequence[gr.components.Component], mode_of: Callable[..., str],
                 prepare: Callable[..., dict[str, Any]] | None = None) -> Callable[[Any], Any]:
    """Re-check on every change of `fields` and `ctx_inputs` (checkpoint first, then whatever `mode_of(*ctx
    values)` needs to tell the mode); `prepare(values, *ctx values)` may adjust the values (e.g. drop
    inpaint-only fields in img2img). Returns `after(dependency)`, which re-checks once that event has run (for
    changes no change event reports, such as a sub-tab switch writing a gr.State)."""
    names = list(fields)
    k = len(ctx_inputs)

    def advise(*args: Any) -> list[Any]:
        values, ctx_values = dict(zip(names, args[:-k])), args[-k:]
        mode, model = mode_of(*ctx_values), ctx_values[0] or None
        try:
            data = to_request(values)
        except (TypeError, ValueError):  # a half-typed number: judge it once it is one again
            return [gr.skip()] * len(panel.outputs)
        if prepare is not None:
            data = prepare(data, *ctx_values)
        try:
            _, findings = studio.advise(data, mode, model)
        except BadRequest:
            _, findings = studio.advise(data, mode)
        return panel_updates(panel, [f.as_dict() for f in findings])

    inputs = [*fields.values(), *ctx_inputs]
    gr.on(None, advise, inputs, panel.outputs, trigger_mode="always_last", **QUIET)  # every change, and page load

    def fix(index: int | None) -> Callable[[list[dict]], dict]:
        def apply(findings: list[dict]) -> dict:
            chosen = findings if index is None else findings[index:index + 1]
            updates: dict[Any, Any] = {}
            for f in chosen:
                for name, value in f["fix"].items():
                    if name in fields and fields[name] not in updates:
                        updates[fields[name]] = value
            return updates or gr.skip()
        return apply

    targets = list(fields.values())
    for i, (_, _, button) in enumerate(panel.rows):
        button.click(fix(i), panel.findings, targets, **QUIET)
    panel.fix_all.click(fix(None), panel.findings, targets, **QUIET)
    return lambda dependency: dependency.then(advise, inputs, panel.outputs, **QUIET)
