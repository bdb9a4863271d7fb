"""The X/Y/Z plot panel of the txt2img tab: sweep any parameter along up to three axes.

Per axis a type dropdown (the axis types of pipelines/sweep/axes.py), a values box (lists and A1111 ranges:
`5, 7, 9`, `1-10 (+2)`, `7-12 [4]`) and, for choice axes, a button that fills in every choice. A live cost line
(cells, images, denoising steps, checkpoints) follows the axes and the txt2img fields it depends on; a value
the studio refuses shows its reason there, in plain words. "Run sweep" starts one job streamed into the
txt2img output panel (`ui.generation.streamed`): the cells arrive in the gallery as they finish, the labelled
grid last, and the tab's Interrupt cancels it (finished cells and a partial grid are kept).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gradio as gr

from pipelines.jobs import Job
from pipelines.params.specs import PARAMS
from pipelines.studio import BadRequest, Studio
from pipelines.sweep.plan import AXES, AXIS_LETTERS, SweepOptions, axis_type
from ui.controlnet_panel import ControlPanel
from ui.generation import STREAMED, Actions, Output, streamed, to_request
from ui.widgets import QUIET

COST_FIELDS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "batch_size",
               "n_iter", "enable_hr", "hr_second_pass_steps", "denoising_strength")  # what the cost line follows
IDLE = ("Choose a parameter for X (and Y, Z if you like) and its values: a list (5, 7, 9) or a range "
        "(1-10 (+2): every 2nd; 7-12 [4]: 4 evenly spaced).")
_COLORS = {"ok": "#1e40af", "error": "#991b1b", "idle": "var(--body-text-color-subdued)"}


def placeholder(kind: str) -> str:
    t = axis_type(kind)
    return {"none": "", "int": "e.g. 10, 20, 30 or 10-30 (+10) or 10-30 [3]",
            "float": "e.g. 5, 7.5, 10 or 5-10 (+2.5) or 5-10 [3]", "size": "e.g. 512x512, 512x768, 768x512",
            "prompt_sr": "the text to find, then its replacements: cat, dog, fox",
            }.get(t.kind, "comma-separated choices (📒 fills in all)")


def csv_line(values: Sequence[str]) -> str:
    """"a, b, \"c, d\"": comma-separated, csv-quoted where a value holds a comma or a quote."""
    return ", ".join(f'"{v.replace(chr(34), chr(34) * 2)}"' if any(c in v for c in ',"\n') else v for v in values)


def cost_html(text: str, state: str) -> str:
    prefix = {"ok": "📊 Cost: ", "error": "⚠️ "}.get(state, "")
    return (f'<div class="sweep-cost" data-state="{state}" style="font-size:13.5px; padding:4px 2px; '
            f'color:{_COLORS[state]}">{prefix}{html.escape(text)}</div>')


@dataclass
class AxisRow:
    type: gr.Dropdown
    values: gr.Textbox
    fill: gr.Button


@dataclass
class SweepPanel:
    accordion: gr.Accordion
    axes: list[AxisRow]
    legend: gr.Checkbox
    keep_seeds: gr.Checkbox
    sub_grids: gr.Checkbox
    cost: gr.HTML
    run: gr.Button

    @property
    def inputs(self) -> list[gr.components.Component]:
        """Axis types, axis values, then the options, in the order `read` takes them."""
        return [*(a.type for a in self.axes), *(a.values for a in self.axes), self.legend, self.keep_seeds,
                self.sub_grids]

    @staticmethod
    def read(values: Sequence[Any]) -> tuple[list[tuple[str, str]], SweepOptions]:
        types, texts, (legend, keep, subs) = values[:3], values[3:6], values[6:9]
        axes = [(t or "Nothing", s or "") for t, s in zip(types, texts)]
        return axes, SweepOptions(draw_legend=bool(legend), keep_random_seeds=bool(keep),
                                  include_sub_grids=bool(subs))

    def wire(self, studio: Studio, checkpoint: gr.Dropdown, fields: Mapping[str, gr.components.Component],
             controlnet: ControlPanel, actions: Actions, out: Output, status: gr.Markdown) -> None:
        """Cost line, fill buttons and Run sweep, streamed into the tab's output panel `out`."""
        names = list(fields)
        n_sweep, n_fields = len(self.inputs), len(names)
        enabled = [u.widgets["enabled"].input for u in controlnet.unit_blocks]

        def cost(name: str, *values: Any) -> str:
            axes, options = self.read(values[:n_sweep])
            if all(axis_type(t).kind == "none" for t, _ in axes):
                return cost_html(IDLE, "idle")
            data = to_request(dict(zip(names, values[n_sweep:n_sweep + n_fields])))
            data["controlnet"] = [{"enabled": bool(e)} for e in values[n_sweep + n_fields:]]
            try:
                plan = studio.plan_sweep(data, axes, model=name or None, options=options)
            except BadRequest as e:
                return cost_html(str(e), "error")
            return cost_html(plan.summary(), "ok")

        cost_inputs = [checkpoint, *self.inputs, *fields.values(), *enabled]
        for trigger in (checkpoint, *self.inputs, *(fields[n] for n in COST_FIELDS), *enabled):
            trigger.change(cost, cost_inputs, self.cost, trigger_mode="always_last", **QUIET)

        for row in self.axes:
            def on_type(kind: str) -> tuple[Any, Any]:
                return (gr.Button(visible=axis_type(kind or "Nothing").has_choices),
                        gr.Textbox(placeholder=placeholder(kind or "Nothing"), interactive=kind != "Nothing"))

            row.type.change(on_type, row.type, [row.fill, row.values], **QUIET)
            row.fill.click(lambda kind: csv_line(studio.sweep_choices(kind)), row.type, row.values, **QUIET)

        def submit(request: gr.Request, name: str, *values: Any) -> Job:
            axes, options = self.read(values[:n_sweep])
            data = to_request(dict(zip(names, values[n_sweep:n_sweep + n_fields])))
            data["controlnet"] = controlnet.units(values[n_sweep + n_fields:])
            params = studio.parse_txt2img(data)
            return studio.submit_sweep(params, axes, model=name or None, options=options,
                                       owner=request.session_hash if request else None)

        run, outputs = streamed(studio, actions, out, status, submit)
        self.run.click(run, [checkpoint, *self.inputs, *fields.values(), *controlnet.inputs], outputs, **STREAMED)


def build_sweep(prefix: str = "txt2img") -> SweepPanel:
    """The "X/Y/Z plot" accordion; call inside the settings column, then `panel.wire(...)` once the output panel
    exists."""
    kinds = list(AXES)
    rows = []
    with gr.Accordion("X/Y/Z plot", open=False, elem_id=f"{prefix}-sweep") as accordion:
        gr.Markdown("Sweep parameters along up to three axes: every combination is generated with the settings "
                    "above and the same seed (unless Seed is an axis), each image saved with its parameters, then a "
                    "labelled grid. Use draft steps and sizes to explore, then reproduce the best cell alone.")
        for letter in AXIS_LETTERS:
            key = letter.lower()
            with gr.Row(equal_height=True):
                kind = gr.Dropdown(kinds, value="Nothing", label=f"{letter} type", scale=2, min_width=140,
                                   elem_id=f"{prefix}-sweep-{key}-type")
                values = gr.Textbox(label=f"{letter} values", scale=4, interactive=False,
                                    elem_id=f"{prefix}-sweep-{key}-values")
                fill = gr.Button("📒", size="sm", scale=0, min_width=44, visible=False,
                                 elem_id=f"{prefix}-sweep-{key}-fill")
            rows.append(AxisRow(kind, values, fill))
        with gr.Row():
            legend = gr.Checkbox(True, label="Draw legend", elem_id=f"{prefix}-sweep-legend")
            keep = gr.Checkbox(False, label="Keep -1 for seeds", elem_id=f"{prefix}-sweep-keep-seeds",
                               info=f"Every cell draws its own random {PARAMS['seed'].label.lower()}")
            subs = gr.Checkbox(False, label="Include sub grids", elem_id=f"{prefix}-sweep-sub-grids",
                               info="With several Z values, also save each Z's own grid")
        cost = gr.HTML(cost_html(IDLE, "idle"), elem_id=f"{prefix}-sweep-cost", padding=False)
        run = gr.Button("Run sweep", variant="primary", elem_id=f"{prefix}-sweep-run")
    return SweepPanel(accordion, rows, legend, keep, subs, cost, run)
