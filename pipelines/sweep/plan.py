"""Parameter sweeps (the X/Y/Z plot): the plan of a sweep and its cost.

`build_plan` turns up to three (type, values) axes (types and value syntax: `pipelines/sweep/axes.py`) and the
base txt2img values into a `SweepPlan`: the parsed values, every cell's parameters in run order (the costliest
axis to change, the checkpoint, changes least often, as in A1111) and its cost counted with `pipelines.params.cost`.
Random seeds are fixed once for the whole sweep unless asked otherwise (A1111's "Keep -1 for seeds").
Pure Python: no torch. Errors are `ValueError`s naming the axis and the bad value; the studio turns them into
BadRequest. `pipelines/sweep/run.py` runs a plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pipelines.params import cost
from pipelines.params.specs import SEED_MAX
from pipelines.sweep.axes import (
    A1111_AXES,
    AXES,
    AxisType,
    Lists,
    a1111_labels,
    apply,
    axis_type,
    choices_of,
    expand_numbers,
    fmt,
    parse_values,
    split_values,
)

__all__ = ["A1111_AXES", "AXES", "AXIS_LETTERS", "MAX_CELLS", "Axis", "AxisType", "Cell", "SweepCost",
           "SweepOptions", "SweepPlan", "a1111_labels", "axis_type", "build_plan", "choices_of", "expand_numbers",
           "fmt", "parse_values", "split_values"]

MAX_CELLS = 100
AXIS_LETTERS = "XYZ"


# -- the plan -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepOptions:
    draw_legend: bool = True
    include_sub_grids: bool = False  # with several Z values: also save each Z's own grid
    keep_random_seeds: bool = False  # A1111's "Keep -1 for seeds": every cell draws its own random seed
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)  # seed + index along X / Y / Z
    margin: int = 0  # pixels between cells


@dataclass(frozen=True)
class Axis:
    type: AxisType
    values: tuple[Any, ...]
    text: str = ""  # the values as given (the grid's infotext "X Values")

    @property
    def labels(self) -> list[str]:
        return [self.type.label(v) for v in self.values]

    @property
    def active(self) -> bool:
        return self.type.kind != "none"


@dataclass(frozen=True)
class Cell:
    order: int  # position in run order
    pos: tuple[int, int, int]  # index along X, Y, Z
    params: dict[str, Any]  # the txt2img values of this cell
    checkpoint: str

    @property
    def steps(self) -> int:
        return cost.job_steps(self.params)


@dataclass(frozen=True)
class SweepCost:
    cells: int
    images: int
    steps: int  # denoising steps, pipelines.params.cost's count
    checkpoints: int  # distinct checkpoints
    switches: int  # checkpoint loads the sweep causes (0: it runs on the selected one)


@dataclass
class SweepPlan:
    base: dict[str, Any]
    axes: tuple[Axis, Axis, Axis]
    cells: tuple[Cell, ...]
    checkpoint: str  # the model selected for the sweep
    options: SweepOptions = field(default_factory=SweepOptions)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(a.values) for a in self.axes)  # type: ignore[return-value]

    def cell_at(self, pos: tuple[int, int, int]) -> Cell:
        return next(c for c in self.cells if c.pos == pos)

    @property
    def cost(self) -> SweepCost:
        loads, current = 0, self.checkpoint
        for c in self.cells:
            loads += c.checkpoint != current
            current = c.checkpoint
        return SweepCost(len(self.cells), sum(cost.job_images(c.params) for c in self.cells),
                         sum(c.steps for c in self.cells), len({c.checkpoint for c in self.cells}), loads)

    def summary(self) -> str:
        """One line: "2 x 3 = 6 cells · 6 images · 150 denoising steps · 1 checkpoint"."""
        c = self.cost
        dims = [str(len(a.values)) for a in self.axes if a.active]
        cells = f"{c.cells} cell{'s' * (c.cells != 1)}"
        parts = [f"{' x '.join(dims)} = {cells}" if len(dims) > 1 else cells,
                 f"{c.images} image{'s' * (c.images != 1)}", f"{c.steps} denoising steps",
                 f"{c.checkpoints} checkpoint{'s' * (c.checkpoints != 1)}"]
        if c.switches:
            parts.append(f"{c.switches} model switch{'es' * (c.switches != 1)}")
        return " · ".join(parts)

    def describe(self, cell: Cell) -> str:
        """"cell 3/6 (CFG scale: 7, Steps: 20)" for messages."""
        labels = [a.type.label(a.values[i]) or a.type.name for a, i in zip(self.axes, cell.pos) if a.active]
        return f"cell {cell.order + 1}/{len(self.cells)} ({', '.join(labels)})"

    def infotext_extra(self, z: int | None = None) -> dict[str, str]:
        """What a grid's infotext adds (A1111's keys): Script, X/Y(/Z) Type and Values, Fixed ... Values."""
        out = {"Script": "X/Y/Z plot"}
        for letter, axis in zip(AXIS_LETTERS, self.axes):
            if not axis.active or (letter == "Z" and z is not None):
                continue
            out[f"{letter} Type"] = axis.type.name
            out[f"{letter} Values"] = axis.text or ", ".join(fmt(v) for v in axis.values)
            if axis.type.name in ("Seed", "Var. seed") and not self.options.keep_random_seeds:
                out[f"Fixed {letter} Values"] = ", ".join(str(v) for v in axis.values)
        return out


def _loop_order(types: Sequence[AxisType]) -> tuple[int, int, int]:
    """Outer to inner loop over X(0)/Y(1)/Z(2), A1111's rule: the strictly costliest axis outermost, then the
    costlier of the other two; by default Z, Y, X (row by row)."""
    x, y, z = (t.cost for t in types)
    if x > y and x > z:
        return (0, 1, 2) if y > z else (0, 2, 1)
    if y > x and y > z:
        return (1, 0, 2) if x > z else (1, 2, 0)
    if z > x and z > y:
        return (2, 0, 1) if x > y else (2, 1, 0)
    return 2, 1, 0


def _pairs(axes: Sequence[Any]) -> list[tuple[Any, Any]]:
    out = []
    for a in axes:
        if isinstance(a, Mapping):
            out.append((a.get("type", "Nothing"), a.get("values", "")))
        else:
            out.append((a[0], a[1]))
    if len(out) > 3:
        raise ValueError(f"{len(out)} axes given: a sweep has at most three (X, Y, Z)")
    return out + [("Nothing", "")] * (3 - len(out))


def _random_seed(rng: random.Random) -> int:
    return rng.randint(0, SEED_MAX)


def build_plan(base: Mapping[str, Any], axes: Sequence[Any], *, checkpoint: str, lists: Lists | None = None,
               options: SweepOptions | None = None, rng: random.Random | None = None) -> SweepPlan:
    """The sweep of `axes` ((type, values) pairs or {"type", "values"} dicts, X first) over the base txt2img values.

    With `rng`, random seeds are fixed first (unless options.keep_random_seeds): the base seed and variation seed
    once for every cell, and each -1 on a Seed / Var. seed axis."""
    options = options or SweepOptions()
    base = dict(base)
    if rng is not None and not options.keep_random_seeds:
        for key in ("seed", "subseed"):
            if base.get(key) is None or int(base[key]) < 0:
                base[key] = _random_seed(rng)
    parsed: list[Axis] = []
    for letter, (kind, text) in zip(AXIS_LETTERS, _pairs(axes)):
        try:
            t = axis_type(kind)
        except ValueError as e:
            raise ValueError(f"{letter} axis: {e}") from None
        values = parse_values(t, text, base, lists=lists, where=f"{letter} axis")
        if rng is not None and not options.keep_random_seeds and t.name in ("Seed", "Var. seed"):
            values = [_random_seed(rng) if v < 0 else v for v in values]
        shown = text if isinstance(text, str) else ", ".join(str(v) for v in text)
        parsed.append(Axis(t, tuple(values), shown.strip() if t.kind != "none" else ""))
    if not any(a.active for a in parsed):
        raise ValueError("Choose a parameter and its values for at least one axis (X, Y or Z)")
    used = [a.type.name for a in parsed if a.active]
    if "Var. seed" in used and not base.get("subseed_strength") and "Var. strength" not in used:
        raise ValueError("Var. seed only changes images with a variation strength above 0: set Variation strength "
                         "(or sweep Var. strength on another axis)")
    if dup := sorted({n for n in used if used.count(n) > 1}):
        raise ValueError(f"{dup[0]} is on two axes: each parameter can vary along one axis only")
    shape = [len(a.values) for a in parsed]
    n = shape[0] * shape[1] * shape[2]
    if n > MAX_CELLS:
        raise ValueError(f"{' x '.join(map(str, shape))} = {n} cells is too many: a sweep runs at most {MAX_CELLS} "
                         "cells. Use fewer values, or split it into several sweeps.")

    outer, middle, inner = _loop_order([a.type for a in parsed])
    cells = []
    seed = base.get("seed")
    for a in range(shape[outer]):
        for b in range(shape[middle]):
            for c in range(shape[inner]):
                pos = [0, 0, 0]
                pos[outer], pos[middle], pos[inner] = a, b, c
                p = dict(base)
                for axis, i in zip(parsed, pos):
                    apply(axis.type, p, axis.values[i], axis.values)
                if seed is not None and seed >= 0 and any(options.vary_seeds) and p.get("seed") == seed:
                    vx, vy, vz = options.vary_seeds  # A1111: seed + ix, + iy * len(xs), + iz * len(xs) * len(ys)
                    offset = pos[0] * vx + pos[1] * shape[0] * vy + pos[2] * shape[0] * shape[1] * vz
                    p["seed"] = (seed + offset) % (SEED_MAX + 1)
                model = p.pop("__checkpoint__", checkpoint)
                cells.append(Cell(len(cells), (pos[0], pos[1], pos[2]), p, model))
    return SweepPlan(base, (parsed[0], parsed[1], parsed[2]), tuple(cells), checkpoint, options)
