"""Advisor rules about the prompt and negative prompt (RECOMMENDATIONS.md, "Prompt" and "Negative prompt"):
contradictions between them, negatives written for the wrong subject, prompts past one 75-token chunk.
Pure Python: no torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from pipelines.advisor.findings import CHUNK_TOKENS, Finding, Situation
from pipelines.advisor.prompt_builder import NEGATIVE_PRESETS
from pipelines.params.specs import plain_prompt

CLIP_TOKENIZER = Path(__file__).resolve().parents[1] / "configs" / "clip-tokenizer"  # the SD 1.x/SDXL CLIP vocabulary


def clip_token_counter() -> Callable[[str], int]:
    """Exact CLIP token counts of prompts, emphasis syntax left out, with the shipped tokenizer (plain Python:
    loading it imports no torch, and takes about a second)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, model_max_length=10**6)
    return lambda text: len(tokenizer(plain_prompt(text), add_special_tokens=False).input_ids)


_WORD = re.compile(r"[a-z0-9']+")
# Modifiers of a negative phrase that make it a quality guard rather than a statement about the subject.
_GUARD_WORDS = frozenset("""bad poorly drawn deformed disfigured ugly blurry blurred extra missing mutated mutation
mutations malformed low worst quality lowres jpeg artifacts fused too many cropped out of frame duplicate morbid
mutilated gross proportions long error signature watermark username grainy noisy distorted disproportionate
unnatural weird strange cloned crooked asymmetric asymmetrical floating disconnected wrong messy""".split())


def _phrases(text: str) -> list[tuple[str, str]]:
    """(original segment, normalised words) for each comma/BREAK-separated phrase; emphasis syntax removed."""
    out = []
    for seg in re.split(r",|\bBREAK\b|\n", text or ""):
        clean = re.sub(r":\s*-?[\d.]+", " ", seg)
        words = " ".join(_WORD.findall(re.sub(r"[()\[\]{}]", " ", clean).lower()))
        if words:
            out.append((seg, words))
    return out


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def contradictions(prompt: str, negative: str) -> list[tuple[str, str]]:
    """(negative phrase, prompt phrase) pairs that fight: the same term in both, or the same thing (head noun)
    described differently ("denim jacket" vs "blue jacket": the model's denim is blue). Quality guards
    ("poorly drawn face", "low quality") are not contradictions."""
    prompt_phrases = [w for _, w in _phrases(prompt)]
    prompt_text = " " + " ".join(prompt_phrases) + " "
    found = []
    for seg, neg in _phrases(negative):
        words = neg.split()
        if f" {neg} " in prompt_text:
            found.append((seg.strip(), neg))
            continue
        head, modifiers = _singular(words[-1]), words[:-1]
        if not modifiers or all(m in _GUARD_WORDS for m in modifiers) or head in _GUARD_WORDS:
            continue
        for p in prompt_phrases:
            pw = p.split()
            if _singular(pw[-1]) == head and p != neg:
                found.append((seg.strip(), p))
                break
    return found


def prompt_contradiction(s: Situation) -> Finding | None:
    prompt, negative = str(s.values.get("prompt") or ""), str(s.values.get("negative_prompt") or "")
    pairs = contradictions(prompt, negative)
    if not pairs:
        return None
    bad = {neg for neg, _ in pairs}
    kept = [seg.strip() for seg in negative.split(",") if seg.strip() and seg.strip() not in bad]
    described = "; ".join(f"“{neg}” against “{p}”" for neg, p in pairs)
    return Finding("prompt-contradiction", "warning", "negative_prompt",
                   f"The negative prompt fights the prompt: {described}. The model cannot both draw and avoid "
                   "the same thing; the result is muddled.", {"negative_prompt": ", ".join(kept)},
                   "Remove " + ", ".join(f"“{b}”" for b in sorted(bad)) + " from the negative prompt")


PEOPLE_WORDS = frozenset("""woman women man men girl girls boy boys person people portrait child children kid kids
lady ladies gentleman guy face faces selfie couple family warrior soldier knight princess prince queen king wizard
witch elf character model dancer bride groom teenager baby elderly student nurse doctor chef samurai ninja
astronaut cowboy cyborg viking businessman businesswoman mother father daughter son""".split())


def mentions_people(prompt: str) -> bool:
    return any(w in PEOPLE_WORDS for w in _WORD.findall((prompt or "").lower()))


def people_negative(s: Situation) -> Finding | None:
    if str(s.values.get("negative_prompt") or "").strip() or not mentions_people(str(s.values.get("prompt"))):
        return None
    return Finding("people-negative", "warning", "negative_prompt",
                   "The prompt has people and the negative prompt is empty: anatomy errors (extra limbs, "
                   "mutated hands, blurry faces) are likely. Add anatomy guards.",
                   {"negative_prompt": NEGATIVE_PRESETS["people"]}, "Use the people negative preset")


SCENERY_WORDS = frozenset("""landscape landscapes scenery mountain mountains forest forests lake lakes sea ocean beach
coast cliff cliffs city cityscape skyline valley river desert field fields meadow sky sunset sunrise canyon waterfall
island village street architecture building buildings castle lighthouse harbor harbour countryside hills""".split())
ANATOMY_WORDS = frozenset("""limbs limb hands hand fingers finger anatomy face faces arms legs body proportions
neck eyes""".split())


def _anatomy_guards(negative: str) -> list[str]:
    return [seg.strip() for seg, words in _phrases(negative) if set(words.split()) & ANATOMY_WORDS]


def scenery_negative(s: Situation) -> Finding | None:
    prompt, negative = str(s.values.get("prompt") or ""), str(s.values.get("negative_prompt") or "")
    words = set(_WORD.findall(prompt.lower()))
    guards = _anatomy_guards(negative)
    if len(guards) < 2 or not words & SCENERY_WORDS or mentions_people(prompt):
        return None
    kept = [seg.strip() for seg in negative.split(",") if seg.strip() and seg.strip() not in guards]
    fix = ", ".join(kept) if kept else NEGATIVE_PRESETS["landscapes"]
    return Finding("scenery-negative", "info", "negative_prompt",
                   f"Anatomy guards ({', '.join(guards[:3])}{'...' if len(guards) > 3 else ''}) in the negative "
                   "prompt of a scene without people: they spend tokens on nothing. For landscapes use e.g. 3d, "
                   "render, poorly drawn, low quality, blurry.", {"negative_prompt": fix},
                   "Remove the anatomy guards" if kept else "Use the landscapes negative preset")


def trim_to_chunk(prompt: str, count: Callable[[str], int], limit: int = CHUNK_TOKENS) -> str:
    """The longest run of whole comma-separated phrases that fits in `limit` tokens."""
    parts = [p.strip() for p in prompt.split(",") if p.strip()]
    kept: list[str] = []
    for part in parts:
        if count(", ".join([*kept, part])) > limit:
            break
        kept.append(part)
    return ", ".join(kept)


def long_prompt(s: Situation) -> Finding | None:
    prompt = str(s.values.get("prompt") or "")
    n = s.count_tokens(prompt)
    if n <= CHUNK_TOKENS:
        return None
    trimmed = trim_to_chunk(prompt, s.count_tokens)
    chunks = -(-n // CHUNK_TOKENS)
    fix = {"prompt": trimmed} if trimmed and trimmed != prompt else {}
    return Finding("prompt-long", "info", "prompt",
                   f"~{n} tokens: the prompt is split into {chunks} chunks of {CHUNK_TOKENS}. Tokens near the start "
                   "weigh more, later chunks less, and a phrase cut at a boundary loses its meaning. Keep the "
                   "essentials in the first 75 tokens.", fix,
                   "Keep the phrases that fit in 75 tokens" if fix else "")
