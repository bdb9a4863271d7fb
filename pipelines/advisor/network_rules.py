"""Advisor rules about the extra networks a prompt uses (RECOMMENDATIONS.md, "LoRA and embeddings"): a LoRA tag's
weight outside its recommended band, stacked LoRAs too strong together, a LoRA missing from the folder, a LoRA or an
embedding made for another model family. The weights are judged by the LoRA specs (pipelines/params/networks.py);
what the folders hold comes in `HintContext.networks` (the studio fills it in; without it these rules that need
the listing stay silent). Each fix rewrites the prompt. Pure Python: no torch.
"""

from __future__ import annotations

from typing import Any

from pipelines.advisor.band_rules import band_fix
from pipelines.advisor.findings import Finding, Situation
from pipelines.networks import prompt_edit
from pipelines.networks.tags import LoraTag, loras_in
from pipelines.params.networks import (
    LORA_TOTAL_WEIGHT,
    LORA_WEIGHT,
    NetworkItem,
    Networks,
    best_total,
    lora_problem,
    total_weight,
)
from pipelines.params.spec import VERDICT_ORDER, HintContext


def _prompt_fields(s: Situation) -> list[str]:
    """The prompts whose LoRA tags a job applies (the hires prompt only with hires fix on, as the studio checks)."""
    fields = ["prompt"]
    if s.mode == "txt2img" and s.values.get("enable_hr") and str(s.values.get("hr_prompt") or "").strip():
        fields.append("hr_prompt")
    return fields


def weight_fix(weight: float, ctx: HintContext) -> float:
    """Where the weight rule moves a tag: into the best band (to 1, the default, as the band rules do); a negative
    weight keeps its direction at the edge of the negative band."""
    if weight < 0:
        return -1.0
    return float(band_fix(LORA_WEIGHT, weight, ctx, {}))


def _unusable(name: str, ctx: HintContext) -> bool:
    """A listed LoRA that does not fit the model: it goes whatever its weight (a missing one may still come)."""
    item = ctx.networks.lora(name) if ctx.networks is not None else None
    return item is not None and bool(item.problem)


def lora_weight(s: Situation) -> Finding | None:
    prompt = str(s.values.get("prompt") or "")
    judged = [(t, LORA_WEIGHT.hint(t.weight, s.ctx)) for t in loras_in(prompt) if not _unusable(t.name, s.ctx)]
    bad = [(t, h) for t, h in judged if h.verdict in ("caution", "avoid")]
    if not bad:
        return None
    fixed, parts, labels = prompt, [], []
    for tag, hint in bad:
        target = weight_fix(tag.weight, s.ctx)
        fixed = prompt_edit.with_weight(fixed, tag, target)
        parts.append(f"{tag.text}: weight {prompt_edit.number(tag.weight)}, {hint.why}")
        labels.append(f"{tag.name} to {prompt_edit.number(target)}")
    worst = max((h for _, h in bad), key=lambda h: VERDICT_ORDER[h.verdict])
    return Finding("lora-weight", "warning" if worst.verdict == "avoid" else "info", "prompt",
                   "; ".join(parts) + f". Recommended: {LORA_WEIGHT.recommended(s.ctx)}.", {"prompt": fixed},
                   "Set " + ", ".join(labels))


def lora_total(s: Situation) -> Finding | None:
    prompt = str(s.values.get("prompt") or "")
    found = loras_in(prompt)
    if len(found) < 2:
        return None
    total = total_weight(found)
    hint = LORA_TOTAL_WEIGHT.hint(total, s.ctx)
    if hint.verdict not in ("caution", "avoid"):
        return None
    aim = best_total()
    fixed = prompt_edit.scale_tags(prompt, found, aim / total)
    return Finding("lora-total-weight", "warning" if hint.verdict == "avoid" else "info", "prompt",
                   f"{len(found)} LoRAs with a total weight of {prompt_edit.number(total)}: {hint.why}. "
                   f"Recommended: {LORA_TOTAL_WEIGHT.recommended(s.ctx)} together.", {"prompt": fixed},
                   f"Scale the LoRA weights to a total of {prompt_edit.number(aim)}")


def _bad_tags(s: Situation, missing: bool) -> dict[str, list[tuple[LoraTag, str]]]:
    """Per prompt field, the tags whose LoRA is missing (`missing`) or listed but unusable with the model."""
    networks = s.ctx.networks
    out: dict[str, list[tuple[LoraTag, str]]] = {}
    if networks is None:
        return out
    for field in _prompt_fields(s):
        for tag in loras_in(str(s.values.get(field) or "")):
            problem = lora_problem(tag.name, networks)
            if problem and (networks.lora(tag.name) is None) == missing:
                out.setdefault(field, []).append((tag, problem))
    return out


def _without(s: Situation, bad: dict[str, list[tuple[LoraTag, str]]]) -> dict[str, Any]:
    fix = {}
    for field, found in bad.items():
        text = str(s.values.get(field) or "")
        for tag, _ in found:
            text = prompt_edit.remove_text(text, tag.text)
        fix[field] = text
    return fix


def _listed(networks: Networks) -> str:
    names = [i.name for i in networks.loras if not i.problem][:12]
    return ", ".join(names) if names else "none that fits this model"


def lora_missing(s: Situation) -> Finding | None:
    bad = _bad_tags(s, missing=True)
    if not bad:
        return None
    networks = s.ctx.networks
    assert networks is not None
    tags_ = sorted({t.text for found in bad.values() for t, _ in found})
    return Finding("lora-missing", "error", next(iter(bad)),
                   f"{', '.join(tags_)}: no such LoRA in {networks.lora_folder} (listed: {_listed(networks)}). The job "
                   "would be refused: put the file into the folder and refresh, or remove the tag.",
                   _without(s, bad), "Remove " + ", ".join(tags_))


def lora_family(s: Situation) -> Finding | None:
    bad = _bad_tags(s, missing=False)
    if not bad:
        return None
    networks = s.ctx.networks
    assert networks is not None
    seen: dict[str, str] = {}
    for found in bad.values():
        for tag, problem in found:
            seen.setdefault(tag.text, problem)
    what = "; ".join(f"{text}: {problem}" for text, problem in seen.items())
    return Finding("lora-family", "error", next(iter(bad)),
                   f"{what}. A LoRA fits only checkpoints of the family it was trained for: the job would be refused.",
                   _without(s, bad), "Remove " + ", ".join(seen))


def embedding_family(s: Situation) -> Finding | None:
    networks = s.ctx.networks
    if networks is None:
        return None
    fix: dict[str, Any] = {}
    seen: dict[str, NetworkItem] = {}
    for field in ("prompt", "negative_prompt"):
        text = str(s.values.get(field) or "")
        bad = [e for e in networks.embeddings_in(text) if e.problem]
        for e in bad:
            seen.setdefault(e.name, e)
            text = prompt_edit.remove_word(text, e.name)
        if bad:
            fix[field] = text
    if not seen:
        return None
    what = "; ".join(f"{e.name}: {e.problem}" for e in seen.values())
    return Finding("embedding-family", "warning", next(iter(fix)),
                   f"{what}. An embedding of another family is skipped: its name reaches the model as plain words.",
                   fix, "Remove " + ", ".join(seen))
