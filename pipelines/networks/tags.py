"""A1111's extra-network tags in a prompt: `<lora:name:multiplier>` and friends. No torch.

A1111 (modules/extra_networks.py) removes every `<kind:arg:arg...>` from the text before it is encoded, and hands
each kind its arguments: positional ones, and `key=value` ones. For LoRA (extensions-builtin/Lora):
- `<lora:name>`: multiplier 1 for both the text encoder and the UNet;
- `<lora:name:0.8>`: 0.8 for both;
- `<lora:name:TE:UNET>`: the text encoder's multiplier first, then the UNet's;
- `te=`, `unet=` and `dyn=` name them (`dyn`: use only the first N ranks of each LoRA layer).
`<lyco:...>` is the LyCORIS extension's old spelling of the same thing. The saved prompt keeps the tags as typed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pipelines.errors import BadRequest

TAG_RE = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:...>` tag as written: the name, its two multipliers and an optional rank limit."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    text: str = ""  # the tag as typed

    @property
    def weight(self) -> float:
        """The strength people mean by "the LoRA's weight": the UNet multiplier."""
        return self.unet


@dataclass(frozen=True)
class ParsedPrompt:
    text: str  # the prompt without its extra-network tags, as the text encoder sees it
    loras: tuple[LoraTag, ...]
    other: tuple[str, ...]  # tags of kinds this studio does not run (e.g. <hypernet:...>), removed like A1111 does


def _number(tag: str, what: str, value: str, cast=float):
    try:
        number = cast(value)
    except ValueError:
        raise BadRequest(f"{tag}: the {what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{tag}: the {what} must be a finite number, not {value!r}")
    return number


def lora_tag(text: str, args: str) -> LoraTag:
    """A `<lora:...>` tag's arguments -> LoraTag (BadRequest for a missing name or a bad number)."""
    items = args.split(":")
    positional = [i for i in items if "=" not in i]
    named = dict(i.split("=", 1) for i in items if "=" in i)
    if not positional or not positional[0].strip():
        raise BadRequest(f"{text}: a LoRA tag needs a name, as in <lora:name:0.8>")
    name = positional[0].strip()
    te = _number(text, "text encoder multiplier", positional[1]) if len(positional) > 1 else 1.0
    te = _number(text, "text encoder multiplier", named["te"]) if "te" in named else te
    unet = _number(text, "UNet multiplier", positional[2]) if len(positional) > 2 else te
    unet = _number(text, "UNet multiplier", named["unet"]) if "unet" in named else unet
    dyn = _number(text, "dyn rank", positional[3], int) if len(positional) > 3 else None
    dyn = _number(text, "dyn rank", named["dyn"], int) if "dyn" in named else dyn
    if dyn is not None and dyn < 1:
        raise BadRequest(f"{text}: dyn must be a rank of 1 or more")
    return LoraTag(name, te, unet, dyn, text)


def parse(prompt: str) -> ParsedPrompt:
    """Split the extra-network tags off a prompt (A1111's parse_prompt)."""
    loras: list[LoraTag] = []
    other: list[str] = []

    def found(m: re.Match) -> str:
        if m[1].lower() in LORA_KINDS:
            loras.append(lora_tag(m[0], m[2]))
        else:
            other.append(m[0])
        return ""

    text = TAG_RE.sub(found, prompt or "")
    return ParsedPrompt(text, tuple(loras), tuple(other))


def strip(prompt: str) -> str:
    """The prompt as the text encoder sees it (no tags); never raises."""
    return TAG_RE.sub("", prompt or "")


def loras_in(prompt: str) -> list[LoraTag]:
    """The LoRA tags of a prompt, for checks and hints; tags with bad numbers are left out (never raises)."""
    out = []
    for m in TAG_RE.finditer(prompt or ""):
        if m[1].lower() in LORA_KINDS:
            try:
                out.append(lora_tag(m[0], m[2]))
            except BadRequest:
                continue
    return out
