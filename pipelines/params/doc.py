"""Render the parameter reference (docs/parameters.md and the UI's Parameters tab) from PARAMS, the advisor's
RULES and the guided workflow's settings.

    python -m pipelines.params.doc > docs/parameters.md
"""

from __future__ import annotations

import dataclasses

from pipelines.advisor import rules as advisor
from pipelines.advisor import workflow
from pipelines.params.control import CONTROL_PARAMS
from pipelines.params.networks import NETWORK_PARAMS
from pipelines.params.specs import PARAMS, HintContext, ParamSpec

_MARK = {"best": "🟢 best", "ok": "🔵 ok", "caution": "🟠 caution", "avoid": "🔴 avoid"}


def _limits(p: ParamSpec) -> str:
    if p.choices is not None:
        return ", ".join(p.choices())
    if p.minimum is None:
        return "any number" if p.kind in ("int", "float") else "text"
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
        "Generated from `pipelines/params/specs.py` (the one definition of every parameter) by "
        "`python -m pipelines.params.doc`; do not edit by hand.", "",
        f"Sizes below are for a model of native size {ctx.native} px (SD 1.x); the app re-targets them to the "
        "selected model's family. Verdicts: best (recommended zone), ok (fine for a purpose), caution (works, "
        "often worse), avoid (almost always worse or wasteful).", "", "",
    ]
    body = [render_param(p, ctx) for p in PARAMS.values() if mode is None or mode in p.modes]
    if mode is None:
        body += [render_workflow(ctx), render_advice(ctx)]
    if mode in (None, "controlnet"):
        body.append("## ControlNet units\n\nEach unit of the ControlNet panel (and each entry of the API's "
                    "`alwayson_scripts.controlnet.args`) has these settings.")
        body += [render_param(p, ctx) for p in CONTROL_PARAMS.values()]
    if mode in (None, "lora"):
        body.append(render_lora_intro())
        body += [render_param(p, ctx) for p in NETWORK_PARAMS.values()]
    return "\n".join(head) + "\n\n".join(body) + "\n"


def render_lora_intro() -> str:
    return ("## LoRA tags\n\nA prompt applies a LoRA with A1111's tag `<lora:name:weight>` (`<lyco:...>` too; "
            "`<lora:name:TE:UNET>` gives the text encoder's and the UNet's weights apart). The verdict line under the "
            "prompt judges each tag's weight, and the total of stacked tags, with these bands; the advisor's LoRA "
            "rules (below in the advisor's list) fix them. A weight on the edge of two bands gets the better verdict "
            "(1 is best).")


def _settings(values: dict) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in values.items() if not k.startswith("_"))


def render_advice(ctx: HintContext) -> str:
    """The advisor's rules: what each checks, the study's reason, an example and the finding it gives."""
    lines = ["## Advisor rules", "",
             "The advisor (above the results in txt2img and img2img, and `POST /advisor/check`) checks the settings "
             "against these rules and "
             "the selected model. Every finding has a one-click fix. Severities: ⛔ error (the job would be "
             "refused), ⚠️ warning (likely a wasted render), 💡 note (could be better).", "",
             "Every parameter's bands above are rules too (`band:<name>`): a value in an avoid band is a warning, in "
             "a caution band a note, and the fix moves it into the nearest best band (to the default when the "
             "default lies in that band).", ""]
    for rule in advisor.RULES:
        if rule.id.startswith("band:"):
            continue
        example = dict(rule.example)
        mode = example.pop("_mode", "txt2img")
        own = rule.example_ctx
        rule_ctx = dataclasses.replace(ctx, mode=mode, distilled=own.distilled, half=own.half, vaes=own.vaes,
                                       networks=own.networks)
        if own.family != HintContext().family:  # a rule about one family shows its finding on that family
            rule_ctx = dataclasses.replace(rule_ctx, family=own.family, native=own.native)
        found = [f for f in advisor.check(example, rule_ctx) if f.rule == rule.id]
        lines += [f"### {rule.title} (`{rule.id}`)", "", rule.why, "", f"- Applies to: {', '.join(rule.modes)}",
                  f"- Example ({mode}): {_settings(example)}"]
        if found:
            f = found[0]
            lines.append(f"- Finding: {f.severity}: {f.message}" + (f" Fix: {f.fix_label}." if f.fix else ""))
        lines.append("")
    return "\n".join(lines)


def render_workflow(ctx: HintContext) -> str:
    return "\n".join([
        "## Guided workflow: draft → refine → finalize", "",
        "The txt2img tab's guided buttons follow the study's compute-saving workflow:", "",
        f"1. **Draft**: {workflow.DRAFT_BATCH} random seeds at {workflow.draft_steps(ctx)} steps (the draft band), "
        "the model's native size, a deterministic sampler (so a draft predicts what its seed gives at full "
        "quality), hires fix off. A studio with several device workers runs them as a batch count that the idle "
        "workers share (4 workers: 4 batches of 1; 2 workers: 2 batches of 2), with the same seeds.",
        f"2. **Refine selected**: the picked image's seed pinned, {workflow.refine_steps(ctx)} steps, one image per "
        "run while prompt, CFG or sampler are edited.",
        "3. **Finalize selected**: only the chosen image is enlarged: Hires. fix's second pass over that image (its "
        f"first pass is not run again; about {workflow.FINAL_SCALE:g}x, denoising {workflow.FINAL_DENOISE:g}, "
        "a neural upscaler when one is installed), or the tiled SD upscale.", "",
        "The panel counts the denoising steps each stage ran against the naive way: every explored image "
        "rendered at full quality with the final pass.", ""])


if __name__ == "__main__":
    print(render_markdown(), end="")
