"""Render the parameter reference (docs/parameters.md and the UI's Parameters tab) from PARAMS.

    python -m pipelines.params_doc > docs/parameters.md
"""

from __future__ import annotations

from pipelines.control_params import CONTROL_PARAMS
from pipelines.params import PARAMS, HintContext, ParamSpec

_MARK = {"best": "🟢 best", "ok": "🔵 ok", "caution": "🟠 caution", "avoid": "🔴 avoid"}


def _limits(p: ParamSpec) -> str:
    if p.choices is not None:
        return ", ".join(p.choices())
    if p.minimum is None:
        return "text"
    step = f", step {p.step:g}" if p.step not in (None, 1) else ""
    mult = f", multiple of {p.multiple_of}" if p.multiple_of else ""
    return f"{p.minimum:g} to {p.maximum:g}{step}{mult}"


def render_param(p: ParamSpec, ctx: HintContext) -> str:
    default = repr(p.default)
    if p.default is None and p.nullable:
        default = "model's native size" if p.name in ("width", "height") else "derived (see above)"
    lines = [f"### {p.label} (`{p.name}`)", "", p.description, "",
             f"- Type: {p.kind}; limits: {_limits(p)}; default: {default}"]
    if p.infotext_key:
        lines.append(f"- Infotext key: `{p.infotext_key}`")
    what = f"value ({p.unit})" if p.unit else "value"
    tables = p.extra.get("bands_by_module") or {"": p.bands_for(ctx)}
    for module, bands in tables.items():
        lines += ["", f"With the `{module}` preprocessor:"] if module else []
        lines += ["", f"| {what} | verdict | why |", "|---|---|---|"]
        lines += [f"| {b.label} | {_MARK[b.verdict]} | {b.why} |" for b in bands]
    return "\n".join(lines)


def render_markdown(ctx: HintContext | None = None, mode: str | None = None) -> str:
    ctx = ctx or HintContext()
    head = [
        "# Generation parameters", "",
        "Generated from `pipelines/params.py` (the one definition of every parameter) by "
        "`python -m pipelines.params_doc`; do not edit by hand.", "",
        f"Sizes below are for a model of native size {ctx.native} px (SD 1.x); the app re-targets them to the "
        "selected model's family. Verdicts: best (recommended zone), ok (fine for a purpose), caution (works, "
        "often worse), avoid (almost always worse or wasteful).", "", "",
    ]
    body = [render_param(p, ctx) for p in PARAMS.values() if mode is None or mode in p.modes]
    if mode in (None, "controlnet"):
        body.append("## ControlNet units\n\nEach unit of the ControlNet panel (and each entry of the API's "
                    "`alwayson_scripts.controlnet.args`) has these settings.")
        body += [render_param(p, ctx) for p in CONTROL_PARAMS.values()]
    return "\n".join(head) + "\n\n".join(body) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
