"""Editing a prompt's extra-network tags and embedding names, as A1111's extra-networks cards and the advisor's fixes
do: add a `<lora:name:1>` at the end (a click on a card; a second click takes it out again), change a tag's weight,
scale stacked tags, remove a tag or a word and the separator it leaves behind. No torch.
"""

from __future__ import annotations

import re
from typing import Iterable

from pipelines.networks.tags import LoraTag, loras_in
from pipelines.params.networks import word_re

SEPARATOR = " "  # A1111's extra_networks_add_text_separator


def number(x: float) -> str:
    """A multiplier as a tag writes it: 0.75, 1, -0.5."""
    x = round(float(x), 2)
    return f"{x:g}" if x != 0 else "0"


def _kind(tag: LoraTag) -> str:
    m = re.match(r"<(\w+):", tag.text)
    return m[1] if m else "lora"


def format_tag(tag: LoraTag, te: float, unet: float) -> str:
    """The tag with new multipliers, in the shortest form A1111 reads back the same (`dyn` kept)."""
    body = [tag.name, number(te)] if number(te) == number(unet) else [tag.name, number(te), number(unet)]
    if tag.dyn is not None:
        body.append(f"dyn={tag.dyn}")
    return f"<{_kind(tag)}:{':'.join(body)}>"


def with_weight(prompt: str, tag: LoraTag, weight: float) -> str:
    """`tag` in `prompt` set to UNet weight `weight`; a separate text-encoder weight keeps its ratio to it."""
    te = tag.te * weight / tag.unet if tag.unet else weight
    return prompt.replace(tag.text, format_tag(tag, te, weight), 1)


def scale_tags(prompt: str, tags: Iterable[LoraTag], factor: float) -> str:
    """Every tag's multipliers times `factor`, rounded down to 0.01 (so the scaled total does not exceed its aim)."""
    def down(x: float) -> float:
        return (1 if x >= 0 else -1) * int(abs(x) * factor * 100 + 1e-6) / 100

    for tag in tags:
        prompt = prompt.replace(tag.text, format_tag(tag, down(tag.te), down(tag.unet)), 1)
    return prompt


def _join(before: str, after: str) -> str:
    """Two pieces of a prompt around removed text, without the doubled separator it leaves."""
    before, after = before.rstrip(), after.lstrip()
    if after.startswith(","):
        if not before or before.endswith(","):
            after = after[1:].lstrip()
    elif before.endswith(",") and not after:
        before = before[:-1].rstrip()
    if not before or not after:
        return before + after
    return before + ("" if after.startswith(",") else " ") + after


def remove_span(prompt: str, start: int, end: int) -> str:
    return _join(prompt[:start], prompt[end:])


def remove_text(prompt: str, text: str) -> str:
    """`prompt` without every occurrence of `text` (a tag as typed)."""
    while text and (i := prompt.find(text)) >= 0:
        prompt = remove_span(prompt, i, i + len(text))
    return prompt


def remove_word(prompt: str, word: str) -> str:
    """`prompt` without the whole word `word` (an embedding's name), also where it is weighted: `(word:1.2)`."""
    wrapped = re.compile(r"[(\[]\s*" + re.escape(word) + r"\s*(?::\s*-?[\d.]+\s*)?[)\]]", re.IGNORECASE)
    for pattern in (wrapped, word_re(word)):
        while m := pattern.search(prompt):
            prompt = remove_span(prompt, m.start(), m.end())
    return prompt


def append(prompt: str, text: str) -> str:
    """A1111's card click: `text` at the end of the prompt, after a separator."""
    prompt = prompt or ""
    return f"{prompt}{SEPARATOR}{text}" if prompt.strip() and not prompt.endswith((" ", "\n")) else prompt + text


def lora_tags_of(prompt: str, name: str) -> list[LoraTag]:
    return [t for t in loras_in(prompt) if t.name == name]


def toggle_lora(prompt: str, name: str, weight: float = 1.0) -> str:
    """A click on a LoRA card: add `<lora:name:1>` at the end, or take the LoRA's tags out if it is already there."""
    present = lora_tags_of(prompt, name)
    if present:
        for tag in present:
            prompt = remove_text(prompt, tag.text)
        return prompt
    return append(prompt, f"<lora:{name}:{number(weight)}>")


def toggle_word(prompt: str, word: str) -> str:
    """A click on an embedding's card: its name at the end, or out of the prompt if it is there already."""
    if word_re(word).search(prompt or ""):
        return remove_word(prompt, word)
    return append(prompt, word)
