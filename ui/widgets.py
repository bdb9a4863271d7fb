"""Gradio inputs built from `ParamSpec`s, each with a live verdict badge under it.

A spec gives the label, limits, step, default, description (shown as `info=`) and choices; its `hint()`
gives the verdict (best/ok/caution/avoid) and the one-line why. `bind_hints` re-judges a field on every
change, together with the fields its verdict depends on (width <-> height) and the selected model.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import gradio as gr

from pipelines.params.specs import PARAMS, HintContext, ParamSpec

VERDICT_ICON = {"best": "✔", "ok": "●", "caution": "▲", "avoid": "✖"}
# verdicts that look at other fields too: a size at both sides, hires fix's final size at the first pass's
LINKED = {"width": ("height", "hr_scale"), "height": ("width", "hr_scale"), "hr_scale": ("width", "height")}
QUIET = dict(queue=False, show_progress="hidden", api_visibility="private")
QUEUED = {**QUIET, "queue": True}  # handlers that toast: gr.Warning / gr.Info / gr.Error only reach queued events

CSS = """
.verdict {display:flex; flex-wrap:wrap; align-items:baseline; gap:2px 8px; font-size:12.5px; line-height:1.35;
  padding:4px 8px; margin-top:-4px; border-radius:6px; border-left:4px solid var(--v-color);
  background:color-mix(in srgb, var(--v-color) 9%, transparent);}
.verdict .badge {font-weight:700; text-transform:uppercase; letter-spacing:.04em; font-size:11px; color:#fff;
  background:var(--v-color); border-radius:4px; padding:0 6px;}
.verdict .why {flex:1 1 12em; color:var(--body-text-color);}
.verdict .rec {color:var(--body-text-color-subdued);}
.verdict-best {--v-color:#16a34a;} .verdict-ok {--v-color:#2563eb;}
.verdict-caution {--v-color:#d97706;} .verdict-avoid {--v-color:#dc2626;}
.hint-html, .hint-html > .html-container {padding:0 !important; min-height:0 !important;}
.param-block {gap:4px !important;}
/* descriptions: two lines, the whole text on hover or focus */
.param-block .info-text {display:-webkit-box; -webkit-line-clamp:2; -webkit-box-orient:vertical; overflow:hidden;}
.param-block:hover .info-text, .param-block:focus-within .info-text {-webkit-line-clamp:unset;}
"""


def hint_html(spec: ParamSpec, value: Any, ctx: HintContext, others: Mapping[str, Any] | None = None) -> str:
    """The badge: verdict, the one-line why and the recommended band(s) for this model."""
    try:
        h = spec.hint(value, ctx, others or {})
    except (TypeError, ValueError):  # half-typed value: judge it when it is a number again
        return ""
    unit = f" {spec.unit}" if spec.unit else ""
    rec = f'<span class="rec">Recommended: {html.escape(h.recommended)}{unit}</span>' if h.recommended else ""
    return (f'<div class="verdict verdict-{h.verdict}" data-verdict="{h.verdict}">'
            f'<span class="badge">{VERDICT_ICON[h.verdict]} {h.verdict}</span>'
            f'<span class="why">{html.escape(h.why)}</span>{rec}</div>')


# What a distilled model (turbo / LCM / lightning: `HintContext.distilled`) starts with instead of the spec's
# defaults: few steps, CFG off (1.0), inside their "best" bands in pipelines/params/specs.py.
DISTILLED_DEFAULTS = {"steps": 4, "cfg_scale": 1.0}


def initial_value(spec: ParamSpec, ctx: HintContext) -> Any:
    if ctx.distilled and spec.name in DISTILLED_DEFAULTS:
        return DISTILLED_DEFAULTS[spec.name]
    return ctx.native if spec.default is None and spec.name in ("width", "height") else spec.default


def make_input(spec: ParamSpec, ctx: HintContext, elem_id: str, **kw: Any) -> gr.components.Component:
    """The Gradio component for one spec: textbox, dropdown, slider (bounded range) or number (seeds)."""
    common = dict(label=spec.label, info=spec.description, elem_id=elem_id, value=initial_value(spec, ctx))
    common.update(kw)
    if spec.kind == "text":
        lines = 3 if spec.name == "prompt" else 2
        return gr.Textbox(lines=lines, max_lines=12, placeholder=spec.description.split(".")[0], **common)
    if spec.kind == "bool":
        return gr.Checkbox(**common)
    if spec.kind == "choice":  # `choices=` in kw overrides the spec's (e.g. upscalers found on disk)
        common.setdefault("choices", spec.choices() if spec.choices else [])
        return gr.Dropdown(**common)
    precision = 0 if spec.kind == "int" else None
    if spec.maximum is not None and spec.maximum - (spec.minimum or 0) <= 4096:
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, precision=precision, **common)
    return gr.Number(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, precision=precision, **common)


@dataclass
class ParamWidget:
    spec: ParamSpec
    input: gr.components.Component
    hint: gr.HTML


def param_widget(name: str | ParamSpec, ctx: HintContext, prefix: str, *, scale: int = 1, min_width: int = 160,
                 **kw: Any) -> ParamWidget:
    """Input plus its verdict badge, stacked. Call inside the layout block where it should appear.

    `name`: a PARAMS name, or a ParamSpec of another table (e.g. a ControlNet unit's CONTROL_PARAMS).
    elem_ids: `{prefix}-{name}` for the input and `{prefix}-{name}-hint` for the badge (`_` -> `-`).
    `value=` overrides the spec's default as the initial value (e.g. a nullable field shown with a number).
    """
    spec = PARAMS[name] if isinstance(name, str) else name
    eid = f"{prefix}-{spec.name.replace('_', '-')}"
    value = kw.pop("value") if "value" in kw else initial_value(spec, ctx)
    with gr.Column(elem_classes="param-block", scale=scale, min_width=min_width):
        comp = make_input(spec, ctx, eid, value=value, **kw)
        hint = gr.HTML(hint_html(spec, value, ctx), elem_id=f"{eid}-hint",
                       elem_classes="hint-html", padding=False, container=False)
    return ParamWidget(spec, comp, hint)


def judge_all(widgets: Mapping[str, ParamWidget], names: Sequence[str], values: Sequence[Any],
              ctx: HintContext) -> list[str]:
    """Badges for `names`, each judged with all `values` (same order as `names`) as its `others`."""
    others = dict(zip(names, values))
    return [hint_html(widgets[n].spec, others[n], ctx, others) for n in names]


def bind_hints(widgets: Mapping[str, ParamWidget],
               ctx_input: gr.components.Component | Sequence[gr.components.Component],
               ctx_of: Callable[..., HintContext],
               linked: Mapping[str, Sequence[str]] = LINKED) -> Callable[..., list[str]]:
    """Re-judge a field on each change (with its linked fields); returns `rejudge_all(*values, *ctx_values)`,
    which takes the values and returns the badges in the order of `widgets`.

    `ctx_input` is the component (or list of components, e.g. checkpoint and mode) whose values `ctx_of`
    turns into the HintContext. `linked`: field -> fields judged with it (default: the generation sizes).
    """
    ctx_inputs = list(ctx_input) if isinstance(ctx_input, (list, tuple)) else [ctx_input]
    k = len(ctx_inputs)
    for name, w in widgets.items():
        group = [name, *[n for n in linked.get(name, ()) if n in widgets]]

        def rejudge(*args: Any, _group: list[str] = group) -> list[str]:
            return judge_all(widgets, _group, args[:-k], ctx_of(*args[-k:]))

        w.input.change(rejudge, [*(widgets[n].input for n in group), *ctx_inputs],
                       [widgets[n].hint for n in group], trigger_mode="always_last", **QUIET)

    names = list(widgets)

    def rejudge_all(*args: Any) -> list[str]:
        return judge_all(widgets, names, args[:-k], ctx_of(*args[-k:]))

    return rejudge_all
