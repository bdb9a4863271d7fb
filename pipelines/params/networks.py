"""The LoRA tags' parameters, declared like every other parameter (pipelines/params/spec.py): one tag's weight
(`<lora:name:WEIGHT>`) and the total weight of the tags stacked in a prompt. The verdict line under the prompt,
the advisor's LoRA rules (pipelines/advisor/network_rules.py) and docs/parameters.md read them.

Also what a verdict about a tag needs to know of the model folders: `Networks`, the listed LoRAs, embeddings and
checkpoints with, for each, why it does not fit the selected checkpoint (None when it does). The studio builds it
(`Studio.networks`) and hands it over in `HintContext.networks`. Pure Python: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pipelines.networks.tags import LoraTag, loras_in
from pipelines.params.spec import VERDICT_ORDER, Band, Bands, Hint, HintContext, ParamSpec


def _edge_judge(bands: Bands):
    """A band picker for a continuous value over bands that share their edges: a band of one value wins (0 is "no
    effect"), else a value on an edge belongs to the band with the better verdict (1.0 is best, not caution)."""

    def judge(value: Any, ctx: HintContext, others: Mapping[str, Any]) -> Band:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return Band("avoid", "not a number")
        inside = [b for b in bands if b.contains(v)]
        if not inside:
            return Band("avoid", "outside every recommended band")

        def width(b: Band) -> float:
            return (b.hi - b.lo) if b.lo is not None and b.hi is not None else float("inf")

        return min(inside, key=lambda b: (width(b) > 0, VERDICT_ORDER[b.verdict], width(b)))

    return judge


# RECOMMENDATIONS.md, "LoRA and embeddings": one LoRA's weight 0.6-1.0 best, 1.0-1.3 or below 0.4 caution, above
# ~1.3 avoid; stacked LoRAs up to ~1.5 together best, 1.5-2.5 caution, above ~2.5 avoid.
_WEIGHT_BANDS: Bands = (
    Band("caution", "strongly negative: burns in the opposite direction (washed-out, warped images)", None, -1),
    Band("ok", "negative: pushes away from what the LoRA learned; unusual, meant for slider LoRAs or to remove "
               "a trained style", -1, 0),
    Band("caution", "0: the LoRA is applied at no strength and changes nothing", 0, 0),
    Band("caution", "below 0.4 most LoRAs have little visible effect", 0, 0.4),
    Band("ok", "a light touch: a subtle version of what the LoRA learned", 0.4, 0.6),
    Band("best", "the LoRA as it was trained; 1 is the usual start, lower it when the LoRA dominates", 0.6, 1.0),
    Band("caution", "past the strength most LoRAs were trained at: oversaturation and warped anatomy begin", 1.0,
         1.3),
    Band("avoid", "burns in: oversaturation, warped anatomy, repeated motifs", 1.3, None),
)

_TOTAL_BANDS: Bands = (
    Band("best", "the stacked LoRAs leave the model room: each keeps its effect", None, 1.5),
    Band("caution", "stacked LoRAs fight each other (styles mix, details burn): lower each one", 1.5, 2.5),
    Band("avoid", "far past what stacked LoRAs take: burnt, incoherent images", 2.5, None),
)

LORA_WEIGHT = ParamSpec(
    "lora_weight", "LoRA weight", "float", 1.0,
    "The multiplier of one LoRA tag, <lora:name:WEIGHT> (A1111's syntax; <lora:name:TE:UNET> gives the text "
    "encoder's and the UNet's apart, and the UNet's is the weight judged here). 0.6-1.0 applies the LoRA as it "
    "was trained; past ~1.3 it burns in. Negative weights invert what the LoRA learned (slider LoRAs).",
    _WEIGHT_BANDS, step=0.05, judge=_edge_judge(_WEIGHT_BANDS), group="lora",
)

LORA_TOTAL_WEIGHT = ParamSpec(
    "lora_total_weight", "Total LoRA weight", "float", 1.0,
    "The sum of the UNet weights of every LoRA tag in the prompt (a negative weight counts by its size). "
    "Judged when two or more LoRAs are stacked: lower each one so the total stays near 1-1.5.",
    _TOTAL_BANDS, step=0.05, judge=_edge_judge(_TOTAL_BANDS), group="lora",
)

NETWORK_PARAMS: dict[str, ParamSpec] = {p.name: p for p in (LORA_WEIGHT, LORA_TOTAL_WEIGHT)}


def total_weight(tags: Sequence[LoraTag]) -> float:
    return sum(abs(t.weight) for t in tags)


def best_total() -> float:
    """The highest total weight of the recommended band: what the advisor scales stacked LoRAs down to."""
    return max(b.hi for b in _TOTAL_BANDS if b.verdict == "best" and b.hi is not None)


# ---------------------------------------------------------------- what the model folders hold


@dataclass(frozen=True)
class NetworkItem:
    """One listed LoRA, embedding or checkpoint as the panel and the advisor see it."""

    name: str  # what a prompt (or the checkpoint dropdown) uses
    family: str  # a label: "SD 1.x", "SDXL", "32-wide cross-attention"...
    problem: str | None = None  # why it does not fit the selected checkpoint (or cannot be used); None: it fits
    preview: str | None = None  # the thumbnail beside the file (NAME.preview.png, NAME.png...)
    aliases: tuple[str, ...] = ()  # other names a tag may use (a LoRA's trainer alias, its path in the folder)
    detail: str = ""  # one more line for the card (the file's path in its folder, vectors...)


@dataclass(frozen=True)
class Networks:
    """The LoRAs, embeddings and checkpoints listed, judged against the checkpoint `model`."""

    model: str = ""
    loras: tuple[NetworkItem, ...] = ()
    embeddings: tuple[NetworkItem, ...] = ()
    checkpoints: tuple[NetworkItem, ...] = ()
    lora_folder: str = "models/Lora"

    def lora(self, name: str) -> NetworkItem | None:
        """A tag's LoRA, looked up as the engine does: file stem, alias or path, then the stem in any case."""
        for test in (lambda i: i.name == name, lambda i: name in i.aliases,
                     lambda i: i.name.lower() == name.lower()):
            for item in self.loras:
                if test(item):
                    return item
        return None

    def embeddings_in(self, text: str) -> list[NetworkItem]:
        """The listed embeddings a prompt names (a name is a whole word; case does not matter to the tokenizer)."""
        return [e for e in self.embeddings if word_re(e.name).search(text or "")]


def word_re(name: str) -> re.Pattern:
    return re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", re.IGNORECASE)


# ---------------------------------------------------------------- verdicts of a prompt's tags


@dataclass(frozen=True)
class TagVerdict:
    tag: LoraTag
    hint: Hint  # the weight's verdict, or "avoid" with the reason when the LoRA is missing or of another family
    problem: str | None = None  # missing / another family / unreadable (needs ctx.networks)


def lora_problem(name: str, networks: Networks | None) -> str | None:
    """Why a tag's LoRA cannot be used with the selected checkpoint; None when it can (or nothing is known)."""
    if networks is None:
        return None
    item = networks.lora(name)
    if item is None:
        return f"no LoRA named {name} in {networks.lora_folder}"
    return item.problem


def tag_verdicts(prompt: str, ctx: HintContext) -> tuple[list[TagVerdict], Hint | None]:
    """Each LoRA tag of the prompt with its verdict, and the total's verdict when two or more are stacked."""
    found = loras_in(prompt)
    out = []
    for tag in found:
        problem = lora_problem(tag.name, ctx.networks)
        hint = LORA_WEIGHT.hint(tag.weight, ctx)
        if problem:
            hint = Hint("avoid", problem, hint.band, hint.recommended)
        out.append(TagVerdict(tag, hint, problem))
    total = LORA_TOTAL_WEIGHT.hint(total_weight(found), ctx) if len(found) > 1 else None
    return out, total
