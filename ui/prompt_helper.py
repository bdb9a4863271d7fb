"""The prompt helper under a tab's prompt boxes: build the prompt from its parts in the recommended order,
put a negative-prompt preset written for the subject, and apply / save / delete saved styles (A1111's
styles.csv, shared with the API's `styles` field and GET /sdapi/v1/prompt-styles).

The facts (part order, presets) and the styles file live in pipelines/advisor/prompt_builder.py; this module only lays
them out and wires the buttons to the tab's prompt and negative prompt textboxes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.advisor.prompt_builder import (
    NEGATIVE_PRESET_WHY,
    NEGATIVE_PRESETS,
    PART_NAMES,
    PROMPT_PARTS,
    Style,
    UnknownStyle,
    apply_styles,
    compose,
)
from pipelines.studio import Studio
from ui.widgets import QUEUED, QUIET


@dataclass
class PromptHelper:
    accordion: gr.Accordion
    parts: dict[str, gr.Textbox]  # PART_NAMES order
    compose: gr.Button
    preset: gr.Dropdown
    preset_text: gr.Textbox
    use_preset: gr.Button
    styles: gr.Dropdown
    style_preview: gr.HTML
    apply_styles: gr.Button
    refresh_styles: gr.Button
    delete_styles: gr.Button
    style_name: gr.Textbox
    save_style: gr.Button


def preset_info(name: str | None) -> str:
    return f"{name}: {NEGATIVE_PRESET_WHY[name]}" if name in NEGATIVE_PRESET_WHY else ""


def styles_preview(studio: Studio, names: list[str] | None) -> str:
    """The selected styles' prompt and negative text, shown under the dropdown before they are applied."""
    rows = []
    for name in names or []:
        s = studio.styles.get(name)
        if s is None:
            rows.append(f'<li><b>{html.escape(name)}</b>: <i>no longer saved</i></li>')
            continue
        neg = f'<br><span class="neg">negative: {html.escape(s.negative_prompt)}</span>' if s.negative_prompt else ""
        rows.append(f"<li><b>{html.escape(s.name)}</b>: {html.escape(s.prompt) or '<i>(no prompt)</i>'}{neg}</li>")
    return f'<ul class="style-preview">{"".join(rows)}</ul>' if rows else ""


def build_prompt_helper(studio: Studio, prefix: str, prompt: gr.Textbox, negative: gr.Textbox) -> PromptHelper:
    """The "Prompt helper" accordion; call it inside the layout block where it should appear (under the
    prompt boxes). `prompt` / `negative` are the tab's prompt and negative prompt textboxes it writes to."""
    store = studio.styles

    def choices_update(keep: list[str] | None = None) -> Any:
        names = store.names()
        return gr.Dropdown(choices=names, value=[n for n in keep or [] if n in names])

    with gr.Accordion("Prompt helper", open=False, elem_id=f"{prefix}-prompt-helper") as accordion:
        gr.Markdown("Tokens near the start of a prompt weigh more: fill what you need, in this order, then "
                    "**Compose**. Weights work in any part: `(word:1.2)` stresses, `[word]` tones down. Keep the "
                    "negative prompt from contradicting the prompt (a \"denim jacket\" with \"blue\" in the "
                    "negative).")
        parts: dict[str, gr.Textbox] = {}
        for row in (PROMPT_PARTS[:3], PROMPT_PARTS[3:]):
            with gr.Row():
                for p in row:
                    parts[p.name] = gr.Textbox(label=p.label, info=p.why, placeholder=p.example, lines=1,
                                               max_lines=3, elem_id=f"{prefix}-part-{p.name}", min_width=200)
        compose_btn = gr.Button("Compose → prompt", variant="secondary", size="sm", elem_id=f"{prefix}-compose")

        with gr.Row():
            names = list(NEGATIVE_PRESETS)
            preset = gr.Dropdown(names, value=names[0], label="Negative prompt preset", scale=1, min_width=160,
                                 elem_id=f"{prefix}-negative-preset",
                                 info="Write the negative for the subject: anatomy guards help people, not "
                                      "landscapes.")
            preset_text = gr.Textbox(NEGATIVE_PRESETS[names[0]], label="Preset text", info=preset_info(names[0]),
                                     interactive=False, lines=2, scale=3, elem_id=f"{prefix}-negative-preset-text")
            use_preset = gr.Button("Use preset", size="sm", scale=0, min_width=110, elem_id=f"{prefix}-use-preset")

        with gr.Row():
            styles = gr.Dropdown(store.names(), value=[], multiselect=True, label="Styles", scale=4,
                                 elem_id=f"{prefix}-styles",
                                 info=f"Saved in {store.path} (A1111's styles.csv). A style's text with {{prompt}} "
                                      "wraps your prompt; any other is added after it.")
            with gr.Column(scale=0, min_width=130):
                apply_btn = gr.Button("Apply", size="sm", elem_id=f"{prefix}-apply-styles")
                refresh_btn = gr.Button("🔄 Refresh", size="sm", elem_id=f"{prefix}-refresh-styles")
                delete_btn = gr.Button("🗑️ Delete", size="sm", elem_id=f"{prefix}-delete-styles")
        preview = gr.HTML("", visible=False, elem_id=f"{prefix}-style-preview", padding=False)
        with gr.Row():
            style_name = gr.Textbox(label="Style name", placeholder="e.g. cinematic photo", scale=4, lines=1,
                                    max_lines=1, elem_id=f"{prefix}-style-name",
                                    info="Saves the current prompt and negative prompt; an existing name is "
                                         "replaced. Put {prompt} in the prompt where later prompts should go.")
            save_btn = gr.Button("Save as style", size="sm", scale=0, min_width=120, elem_id=f"{prefix}-save-style")

    # -- compose and presets ---------------------------------------------------------------------------
    def on_compose(*texts: str) -> Any:
        text = compose(dict(zip(PART_NAMES, texts)))
        if not text:
            gr.Warning("Fill at least the subject: the parts are empty.")
            return gr.skip()
        return text

    compose_btn.click(on_compose, [parts[n] for n in PART_NAMES], prompt, **QUEUED)

    preset.change(lambda n: gr.Textbox(value=NEGATIVE_PRESETS.get(n, ""), info=preset_info(n)), preset,
                  preset_text, **QUIET)
    use_preset.click(lambda n: NEGATIVE_PRESETS[n] if n in NEGATIVE_PRESETS else gr.skip(), preset, negative,
                     **QUIET)

    # -- styles ------------------------------------------------------------------------------------------
    accordion.expand(lambda keep: choices_update(keep), styles, styles, **QUIET)  # edits by hand / other tabs

    def on_styles(names: list[str]) -> Any:
        text = styles_preview(studio, names)
        return gr.HTML(text, visible=bool(text))

    styles.change(on_styles, styles, preview, **QUIET)

    def on_refresh(keep: list[str]) -> Any:
        if store.error:
            gr.Warning(store.error)
        return choices_update(keep)

    refresh_btn.click(on_refresh, styles, styles, **QUEUED)

    def on_apply(names: list[str], text: str, neg: str) -> Any:
        if not names:
            gr.Warning("Choose one or more styles to apply first.")
            return gr.skip()
        try:
            picked = store.pick(names)
        except UnknownStyle as e:
            gr.Warning(str(e))
            return gr.skip(), gr.skip(), choices_update(names)
        text, neg = apply_styles(text or "", neg or "", picked)
        return text, neg, choices_update([])  # applied: clear the choice, as A1111's "apply styles" does

    apply_btn.click(on_apply, [styles, prompt, negative], [prompt, negative, styles], **QUEUED)

    def on_save(name: str, text: str, neg: str, keep: list[str]) -> Any:
        name = (name or "").strip()
        if not name:
            gr.Warning("Type a name for the style first.")
            return gr.skip(), gr.skip()
        if not (text or "").strip() and not (neg or "").strip():
            gr.Warning("The prompt and the negative prompt are empty: nothing to save.")
            return gr.skip(), gr.skip()
        try:
            replaced = store.save(Style(name, text or "", neg or ""))
        except (ValueError, OSError) as e:
            gr.Warning(f"Style not saved: {e}")
            return gr.skip(), gr.skip()
        gr.Info(f"Style '{name}' {'replaced' if replaced else 'saved'} in {store.path}.")
        return choices_update(keep), ""

    save_btn.click(on_save, [style_name, prompt, negative, styles], [styles, style_name], **QUEUED)

    def on_delete(names: list[str]) -> Any:
        if not names:
            gr.Warning("Choose the style(s) to delete in the Styles list first.")
            return gr.skip()
        try:
            gone = [n for n in names if store.delete(n)]
        except (ValueError, OSError) as e:
            gr.Warning(f"Not deleted: {e}")
            return gr.skip()
        gr.Info(f"Deleted: {', '.join(gone)}." if gone else "Those styles were already gone.")
        return choices_update([])

    delete_btn.click(on_delete, styles, styles, **QUEUED)

    return PromptHelper(accordion, parts, compose_btn, preset, preset_text, use_preset, styles, preview, apply_btn,
                        refresh_btn, delete_btn, style_name, save_btn)
