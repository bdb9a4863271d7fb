"""What the advisor's rules produce and see: `Finding`, `Situation` and `Rule` (pipelines/advisor/rules.py assembles
the rules). Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from pipelines.params.spec import HintContext
from pipelines.params.specs import approx_tokens

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MODES = ("txt2img", "img2img", "inpaint")
CHUNK_TOKENS = 75


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    field: str  # the field the finding is about (the UI links to it)
    message: str  # what is wrong and why, in one or two sentences
    fix: dict[str, Any] = dataclasses.field(default_factory=dict)  # field -> value; empty: no automatic fix
    fix_label: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Situation:
    """What a rule looks at: every field of the mode (defaults filled in), the model's context and a token
    counter (the CLIP tokenizer when the studio has one, else an estimate)."""

    values: Mapping[str, Any]
    ctx: HintContext
    count_tokens: Callable[[str], int] = approx_tokens
    invalid: frozenset[str] = frozenset()  # fields past their hard limits (reported as errors already)

    @property
    def mode(self) -> str:
        return self.ctx.mode

    def size(self) -> tuple[int, int] | None:
        w, h = self.values.get("width"), self.values.get("height")
        if w in (None, "") or h in (None, ""):
            return None if self.mode != "txt2img" else (self.ctx.native, self.ctx.native)
        return int(w), int(h)


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    why: str  # the study's reason, for the docs page
    check: Callable[[Situation], Finding | None]
    example: dict[str, Any]  # settings (over the defaults) that trigger it
    example_ctx: HintContext = HintContext()
    modes: tuple[str, ...] = MODES



def fmt(value: Any) -> str:
    """A value as a finding's text shows it."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "(empty)"
