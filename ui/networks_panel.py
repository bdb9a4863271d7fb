"""The Networks panel under a tab's prompts (A1111's extra-networks cards) and the LoRA tags' verdict line.

Cards for the LoRAs, textual-inversion embeddings and checkpoints in the model folders, one tab each: the preview
image saved beside the file (A1111's NAME.preview.png / NAME.png), or a generated card showing the name; the name
and family as the caption. Items that do not fit the selected checkpoint (another family, unreadable) are dimmed,
their reason listed under the cards, or hidden with "Hide what does not fit". A search box filters by name, the
refresh button re-scans the folders. A click on a card does what it does in A1111:
- a LoRA: `<lora:NAME:1>` at the end of the prompt (a second click takes it out again);
- an embedding: its name at the end of the prompt, or of the negative prompt when that was the last one focused
  (again: out);
- a checkpoint: selects it, as choosing it in the top bar's dropdown does (`ui.topbar.load_model`).

The verdict line (`lora_verdicts_box`, under the prompt) judges every LoRA tag as the prompt changes: its weight by
the LoRA weight spec (pipelines/params/networks.py), a missing LoRA or one of another family as "avoid" with the
reason, and the total weight of stacked tags. What the folders hold comes from `Studio.networks`; the thumbnails
are drawn with PIL (no torch) into a folder under the system's temp directory, which Gradio serves.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import html
import os
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from pipelines.networks import prompt_edit
from pipelines.params.networks import LORA_TOTAL_WEIGHT, NetworkItem, Networks, tag_verdicts
from pipelines.params.spec import HintContext
from pipelines.studio import BadRequest, Studio
from ui.topbar import current_name, hint_context, load_model, model_choices
from ui.widgets import QUIET, VERDICT_ICON

KINDS = {"lora": "LoRA", "embedding": "Textual Inversion", "checkpoint": "Checkpoints"}
CARD = (192, 192)  # thumbnail size, px: Gradio's gallery shows square thumbnails
CARD_STYLE = "v3"  # part of each thumbnail's file name: change it when the drawing changes

CSS = """
.lora-verdicts {display:flex; flex-direction:column; gap:3px; margin-top:-2px;}
.lora-verdicts .tag {font-family:var(--font-mono); font-size:12px; white-space:nowrap;}
.networks-notes {font-size:12.5px; color:var(--body-text-color-subdued);}
.networks-notes ul {margin:2px 0 0 16px; padding:0;}
.networks-notes .misfit b {color:var(--body-text-color);}
.networks-gallery .caption-label {font-size:12px;}
"""


# -- thumbnails ---------------------------------------------------------------------------------------------------

def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _colour(name: str) -> tuple[int, int, int]:
    """A soft background colour of its own for each name."""
    hue = int(hashlib.sha1(name.encode()).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.35, 0.82)
    return int(r * 255), int(g * 255), int(b * 255)


def banner(im: Image.Image, kind: str, item: NetworkItem) -> Image.Image:
    """The strip along the top of every card: its kind and family (the caption below it has the name)."""
    im = im.convert("RGBA")
    strip = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(strip)
    d.rectangle([0, 0, im.width, 24], fill=(20, 20, 20, 200))
    label = {"lora": "LORA", "embedding": "EMBEDDING", "checkpoint": "MODEL"}[kind]
    d.text((8, 4), f"{label} · {item.family}"[:34], font=_font(13), fill=(255, 255, 255, 255))
    return Image.alpha_composite(im, strip).convert("RGB")


def placeholder(kind: str, item: NetworkItem) -> Image.Image:
    """A card for an item without a preview image: its name, wrapped, on a colour of its own."""
    w, h = CARD
    im = Image.new("RGB", CARD, _colour(item.name))
    d = ImageDraw.Draw(im)
    name = item.name.rsplit("/", 1)[-1]
    size = 24 if len(name) <= 12 else 19 if len(name) <= 30 else 15
    lines = textwrap.wrap(name, width=max(6, int(w / (size * 0.58))), break_long_words=True)[:4]
    font = _font(size)
    y = (h - len(lines) * (size + 6)) // 2
    for line in lines:
        lw = d.textlength(line, font=font)
        d.text(((w - lw) / 2, y), line, font=font, fill=(20, 20, 20))
        y += size + 6
    return im


def dimmed(im: Image.Image) -> Image.Image:
    """An item that does not fit the model: faded to grey with a banner."""
    grey = ImageOps.grayscale(im).convert("RGB")
    im = Image.blend(ImageEnhance.Contrast(grey).enhance(0.6), Image.new("RGB", im.size, (255, 255, 255)), 0.45)
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.rectangle([0, 26, w, 50], fill=(185, 28, 28))
    d.text((8, 31), "NOT FOR THIS MODEL", font=_font(14), fill=(255, 255, 255))
    return im


class Thumbnails:
    """Card images, each drawn once into `folder` (under the system temp directory, which Gradio serves) and named
    by a hash of what it shows: the preview file (path, size, mtime) or the generated card, dimmed or not."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or Path(tempfile.gettempdir()) / "studio-network-cards"
        self.folder.mkdir(parents=True, exist_ok=True)

    def card(self, kind: str, item: NetworkItem) -> str:
        source = ""
        if item.preview:
            try:
                st = os.stat(item.preview)
                source = f"{item.preview}|{st.st_size}|{st.st_mtime_ns}"
            except OSError:
                source = ""
        what = f"{CARD_STYLE}|{kind}|{item.name}|{item.family}|{bool(item.problem)}|{source}"
        path = self.folder / f"{hashlib.sha1(what.encode()).hexdigest()[:20]}.png"
        if not path.exists():
            im = self._draw(kind, item, bool(source))
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            im.save(tmp, format="PNG")
            os.replace(tmp, path)  # another tab or process drawing the same card: either copy is right
        return str(path)

    @staticmethod
    def _draw(kind: str, item: NetworkItem, has_preview: bool) -> Image.Image:
        im = None
        if has_preview and item.preview:
            try:
                with Image.open(item.preview) as src:
                    im = ImageOps.fit(ImageOps.exif_transpose(src).convert("RGB"), CARD, Image.Resampling.LANCZOS)
            except (OSError, ValueError, Image.DecompressionBombError):
                im = None  # an unreadable preview: the generated card instead
        im = banner(im or placeholder(kind, item), kind, item)
        return dimmed(im) if item.problem else im


# -- what the panel shows ------------------------------------------------------------------------------------------

def items_of(networks: Networks, kind: str) -> tuple[NetworkItem, ...]:
    return {"lora": networks.loras, "embedding": networks.embeddings, "checkpoint": networks.checkpoints}[kind]


def matches(item: NetworkItem, search: str) -> bool:
    words = (search or "").lower().split()
    text = " ".join([item.name, *item.aliases]).lower()
    return all(w in text for w in words)


def caption(item: NetworkItem) -> str:
    """The name (the card's strip has the kind and family); an item that does not fit says so."""
    return ("✖ " if item.problem else "") + item.name + (" · not for this model" if item.problem else "")


def notes_html(networks: Networks, shown: dict[str, list[str]], search: str, hide: bool) -> str:
    """What the cards cannot say: counts, and why each dimmed (or hidden) item does not fit the model."""
    counts, misfits = [], []
    for kind, label in KINDS.items():
        items = [i for i in items_of(networks, kind) if matches(i, search)]
        bad = [i for i in items if i.problem]
        total = len(items_of(networks, kind))
        counts.append(f'<span data-kind="{kind}" data-shown="{len(shown.get(kind, []))}">{label}: '
                      + (f"{len(items)} of {total}" if search.strip() else f"{total}")
                      + (f" ({len(bad)} {'hidden' if hide else 'dimmed'})" if bad else "") + "</span>")
        misfits += [f'<li class="misfit" data-kind="{kind}" data-name="{html.escape(i.name)}"><b>{html.escape(i.name)}'
                    f"</b> ({html.escape(label)}): {html.escape(str(i.problem))}</li>" for i in bad]
    model = f" for <b>{html.escape(networks.model)}</b>" if networks.model else ""
    head = f'<div class="networks-notes">{" · ".join(counts)}{" — judged" + model if model else ""}'
    tail = f"<ul>{''.join(misfits)}</ul>" if misfits else ""
    return head + tail + "</div>"


def verdicts_html(prompt: str, ctx: HintContext) -> str:
    """The LoRA tags' verdict line: one badge per tag (weight, or missing / another family), then the total."""
    found, total = tag_verdicts(prompt, ctx)
    if not found:
        return ""
    rows = []
    for v in found:
        h = v.hint
        rec = f'<span class="rec">Recommended: {html.escape(h.recommended)}</span>' if h.recommended and \
            not v.problem else ""
        rows.append(f'<div class="verdict verdict-{h.verdict}" data-verdict="{h.verdict}" '
                    f'data-lora="{html.escape(v.tag.name)}"><span class="badge">{VERDICT_ICON[h.verdict]} '
                    f'{h.verdict}</span><span class="tag">{html.escape(v.tag.text)}</span>'
                    f'<span class="why">{html.escape(h.why)}</span>{rec}</div>')
    if total is not None:
        weight = prompt_edit.number(sum(abs(v.tag.weight) for v in found))
        rows.append(f'<div class="verdict verdict-{total.verdict}" data-verdict="{total.verdict}" '
                    f'data-lora-total="{weight}"><span class="badge">{VERDICT_ICON[total.verdict]} {total.verdict}'
                    f'</span><span class="tag">{len(found)} LoRAs, total {weight}</span>'
                    f'<span class="why">{html.escape(total.why)}</span><span class="rec">Recommended: '
                    f'{html.escape(LORA_TOTAL_WEIGHT.recommended(ctx))}</span></div>')
    return f'<div class="lora-verdicts" data-count="{len(found)}">{"".join(rows)}</div>'


def lora_verdicts_box(prefix: str) -> gr.HTML:
    """The verdict line's component: call right under the prompt's own badge."""
    return gr.HTML("", elem_id=f"{prefix}-lora-hints", elem_classes="hint-html", padding=False, container=False)


# -- the panel -----------------------------------------------------------------------------------------------------

@dataclass
class NetworksPanel:
    accordion: gr.Accordion
    search: gr.Textbox
    hide_other: gr.Checkbox
    refresh: gr.Button
    galleries: dict[str, gr.Gallery]  # KINDS order
    notes: gr.HTML
    shown: gr.State  # {kind: [item names in gallery order]}
    verdicts: gr.HTML


def build_networks(studio: Studio, prefix: str, prompt: gr.Textbox, negative: gr.Textbox, checkpoint: gr.Dropdown,
                   status: gr.Markdown, verdicts: gr.HTML) -> NetworksPanel:
    """The panel (call where it should appear, under the prompt boxes) and its events; `verdicts` is the tab's
    `lora_verdicts_box`."""
    thumbs = Thumbnails()
    with gr.Accordion("🎴 Networks: LoRA, Textual Inversion, Checkpoints", open=False,
                      elem_id=f"{prefix}-networks") as accordion:
        with gr.Row(equal_height=True):
            search = gr.Textbox(placeholder="Search by name", show_label=False, elem_id=f"{prefix}-networks-search",
                                scale=4, min_width=200, container=False)
            hide_other = gr.Checkbox(label="Hide what does not fit the model", value=False, scale=2, min_width=160,
                                     elem_id=f"{prefix}-networks-hide", container=False)
            refresh = gr.Button("🔄 Refresh", size="sm", scale=0, min_width=110, elem_id=f"{prefix}-networks-refresh")
        galleries = {}
        with gr.Tabs(elem_id=f"{prefix}-networks-tabs"):
            for kind, label in KINDS.items():
                with gr.Tab(label, id=kind, elem_id=f"{prefix}-networks-tab-{kind}"):
                    galleries[kind] = gr.Gallery(
                        [], show_label=False, columns=6, height=300, fit_columns=False, object_fit="cover",
                        allow_preview=False, interactive=False, buttons=[], elem_id=f"{prefix}-networks-{kind}",
                        elem_classes="networks-gallery")
        notes = gr.HTML("", elem_id=f"{prefix}-networks-notes", padding=False)
    opened = gr.State(False)
    shown = gr.State({})
    target = gr.State("prompt")  # the prompt box focused last: where an embedding goes

    def fill(name: str | None, text: str, hide: bool, is_open: bool) -> list[Any]:
        if not is_open:
            return [gr.skip()] * (len(KINDS) + 2)
        networks = studio.networks(name or None)
        cards, names = [], {}
        for kind in KINDS:
            items = [i for i in items_of(networks, kind) if matches(i, text) and not (hide and i.problem)]
            names[kind] = [i.name for i in items]
            cards.append(gr.Gallery(value=[(thumbs.card(kind, i), caption(i)) for i in items], selected_index=None))
        return [*cards, names, notes_html(networks, names, text, hide)]

    fill_inputs = [checkpoint, search, hide_other, opened]
    fill_outputs = [*galleries.values(), shown, notes]
    accordion.expand(lambda: True, None, opened, **QUIET).then(fill, fill_inputs, fill_outputs, **QUIET)
    accordion.collapse(lambda: False, None, opened, **QUIET)
    gr.on([checkpoint.change, search.change, hide_other.change], fill, fill_inputs, fill_outputs,
          trigger_mode="always_last", **QUIET)

    def rescan(name: str | None) -> Any:
        studio.refresh_models()  # checkpoints, LoRAs and VAEs
        studio.refresh_embeddings()
        listed = name in {m.name for m in studio.models()}
        return gr.Dropdown(choices=model_choices(studio), value=name if listed else current_name(studio))

    refresh.click(rescan, checkpoint, checkpoint, **QUIET).then(fill, fill_inputs, fill_outputs, **QUIET)

    prompt.focus(lambda: "prompt", None, target, **QUIET)
    negative.focus(lambda: "negative", None, target, **QUIET)

    def picked(kind: str, shown_now: dict, evt: gr.SelectData) -> str | None:
        names = (shown_now or {}).get(kind, [])
        index = evt.index if isinstance(evt.index, int) else -1
        return names[index] if 0 <= index < len(names) else None

    def on_lora(shown_now: dict, text: str, evt: gr.SelectData) -> list[Any]:
        name = picked("lora", shown_now, evt)
        if name is None:
            return [gr.skip(), gr.skip()]
        return [prompt_edit.toggle_lora(text or "", name), gr.Gallery(selected_index=None)]

    galleries["lora"].select(on_lora, [shown, prompt], [prompt, galleries["lora"]], **QUIET)

    def on_embedding(shown_now: dict, text: str, neg: str, where: str, evt: gr.SelectData) -> list[Any]:
        name = picked("embedding", shown_now, evt)
        if name is None:
            return [gr.skip()] * 3
        if where == "negative":
            return [gr.skip(), prompt_edit.toggle_word(neg or "", name), gr.Gallery(selected_index=None)]
        return [prompt_edit.toggle_word(text or "", name), gr.skip(), gr.Gallery(selected_index=None)]

    galleries["embedding"].select(on_embedding, [shown, prompt, negative, target],
                                  [prompt, negative, galleries["embedding"]], **QUIET)

    def on_checkpoint(shown_now: dict, evt: gr.SelectData) -> list[Any]:
        name = picked("checkpoint", shown_now, evt)
        return [name if name else gr.skip(), gr.Gallery(selected_index=None)]

    def load(name: str | None, request: gr.Request) -> Any:
        if name:
            yield from load_model(studio, name, request)

    galleries["checkpoint"].select(on_checkpoint, shown, [checkpoint, galleries["checkpoint"]],
                                   **QUIET).then(load, checkpoint, status, show_progress="hidden",
                                                 api_visibility="private", concurrency_limit=None)

    # -- the LoRA tags' verdicts, live ------------------------------------------------------------------------------
    def judge(text: str, name: str | None) -> str:
        if "<" not in (text or ""):
            return ""
        try:
            ctx = dataclasses.replace(hint_context(studio, name or None), networks=studio.networks(name or None, checkpoints=False))
        except BadRequest:
            ctx = hint_context(studio, None)
        return verdicts_html(text, ctx)

    gr.on([prompt.change, checkpoint.change], judge, [prompt, checkpoint], verdicts, trigger_mode="always_last",
          **QUIET)
    return NetworksPanel(accordion, search, hide_other, refresh, galleries, notes, shown, verdicts)
