"""Running a sweep (X/Y/Z plot) as one job: each cell through `Engine.txt2img`, then the labelled grid(s).

Every cell is saved as a normal txt2img output with its infotext as soon as it finishes (and streamed as an
IMAGE event, so a gallery grows); progress counts denoising steps across the whole sweep ("cell 3/6 · step
5/20"). At the end the grid (one per Z value, plus the Z grids side by side when Z has several values) is saved
under outputs/txt2img-grids/ with the base infotext plus A1111's "X Type / X Values" keys and emitted as the
last IMAGE event(s). A cancel keeps the finished cells, saves a partial grid of them, then ends the job as
cancelled (a failing cell likewise ends the job as failed after the partial grid). With several device workers,
the idle ones run cells too (JobContext.spread). Nothing here imports torch: the engines come in as an argument.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from PIL import Image

from pipelines.jobs import Cancelled
from pipelines.params.infotext import quote
from pipelines.sweep import grid as grids
from pipelines.sweep.plan import Cell, SweepPlan

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.jobs import JobContext

GRID_MODE = "txt2img-grids"


@dataclass
class CellOutput:
    cell: Cell
    images: list[Image.Image] = field(default_factory=list)
    payloads: list[dict[str, Any]] = field(default_factory=list)  # {"path", "seed", "infotext"} per image
    result: Any = None  # the engine's GenerationResult, when the cell finished


@dataclass
class GridOutput:
    image: Image.Image
    path: Path
    infotext: str
    z: int | None = None  # None: the main grid; else the sub-grid of this Z value


@dataclass
class SweepResult:
    """Grids and cells kept apart: `grids[0]` is the main grid (the Z grids side by side when Z has several
    values), then the sub-grids that were saved; `cells` in grid order (X fastest, then Y, then Z)."""

    plan: SweepPlan
    cells: list[CellOutput]
    grids: list[GridOutput] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0
    denoising_steps: int = 0
    cancelled: bool = False

    @property
    def cell_images(self) -> list[tuple[Image.Image, dict[str, Any]]]:
        return [(im, p) for c in self.cells for im, p in zip(c.images, c.payloads)]

    def info(self) -> dict[str, Any]:
        """A1111-style info of the whole sweep; `infotexts` follow the grids, then the cells."""
        p = self.plan.base
        cells = self.cell_images
        seeds = [pl.get("seed") for _, pl in cells]
        return {
            "prompt": p.get("prompt", ""), "negative_prompt": p.get("negative_prompt", ""),
            "seed": p.get("seed"), "all_seeds": seeds, "subseed": p.get("subseed"),
            "width": p.get("width"), "height": p.get("height"), "sampler_name": p.get("sampler_name"),
            "scheduler": p.get("scheduler"), "cfg_scale": p.get("cfg_scale"), "steps": p.get("steps"),
            "batch_size": p.get("batch_size"), "n_iter": p.get("n_iter"), "clip_skip": p.get("clip_skip", 1),
            "denoising_strength": p.get("denoising_strength", 0), "sd_model_name": self.plan.checkpoint,
            "infotexts": [g.infotext for g in self.grids] + [pl.get("infotext", "") for _, pl in cells],
            "index_of_first_image": len(self.grids), "interrupted": self.cancelled,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "sweep": sweep_info(self.plan, done=sum(bool(c.images) for c in self.cells),
                                steps_run=self.denoising_steps),
        }


def sweep_info(plan: SweepPlan, **extra: Any) -> dict[str, Any]:
    """The plan and its cost as plain data (the API's /studio/v1/sweep/plan answer)."""
    c = plan.cost
    return {"axes": [{"axis": letter, "type": a.type.name, "values": [plain_value(v) for v in a.values],
                      "labels": a.labels} for letter, a in zip("XYZ", plan.axes) if a.active],
            "cells": c.cells, "images": c.images, "denoising_steps": c.steps, "checkpoints": c.checkpoints,
            "model_switches": c.switches, "summary": plan.summary(), **extra}


def plain_value(v: Any) -> Any:
    return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v


class CellContext:
    """The job context as one cell's engine run sees it: progress labelled with the cell (the job's context adds the
    cells' steps up), images tagged with the cell, everything else (cancel, skip, previews) passed through."""

    def __init__(self, ctx: "JobContext", out: CellOutput, n_cells: int):
        self.ctx, self.out, self.worker = ctx, out, ctx.worker
        self.tag = f"cell {out.cell.order + 1}/{n_cells}"

    def check(self) -> None:
        self.ctx.check()

    def skip_point(self) -> None:
        self.ctx.skip_point()

    def report(self, key: str, value: Any) -> None:
        self.ctx.report(key, value)

    def skip_requested(self) -> bool:
        return self.ctx.skip_requested()

    def clear_skip(self) -> None:
        self.ctx.clear_skip()

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        if total <= 1:  # loading a model, detecting a ControlNet map: no denoising steps yet
            text, step = f"{self.tag} · {label or 'working'}", 0
        else:
            text = f"{self.tag} · step {step}/{total}"
            if label and label != "batch 1/1":
                text += f" · {label}"
        self.ctx.progress(step, max(self.out.cell.steps, 1), label=text)

    def preview(self, image: Any, step: int | None = None) -> None:
        self.ctx.preview(image, step)

    def image(self, image: Any, payload: Any = None, label: str | None = None) -> None:
        payload = dict(payload or {}, cell=self.out.cell.order, pos=list(self.out.cell.pos))
        self.out.images.append(image)
        self.out.payloads.append(payload)
        self.ctx.image(image, payload, label=self.tag)


def run_sweep(engine_of: Callable[[Any], "Engine"], ctx: "JobContext", plan: SweepPlan,
              jobs: Sequence[tuple[Any, Any, Any]]) -> SweepResult:
    """Run `plan`; `jobs[i]` = (Txt2ImgParams, CheckpointInfo, ControlNet requests) of `plan.cells[i]`, as the
    studio checked and prepared them before queueing. The cells run on this job's device worker and on every
    other one that is idle (`ctx.spread`; `engine_of(ctx)` is the engine of the worker a cell runs on): each cell
    is the image one worker makes with its parameters, whichever worker that is."""
    total = plan.cost.steps
    outputs = [CellOutput(c) for c in plan.cells]
    result = SweepResult(plan, sorted(outputs, key=lambda o: o.cell.pos[::-1]))
    error = None

    def cell_task(out: CellOutput, params: Any, info: Any, controls: Any) -> Callable[[Any], Any]:
        def run(task_ctx: Any) -> None:
            task_ctx.check()
            cell_ctx = CellContext(task_ctx, out, len(plan.cells))
            out.result = engine_of(task_ctx).txt2img(cell_ctx, params, info, controls)
        return run

    try:
        ctx.spread([cell_task(out, *job) for out, job in zip(outputs, jobs)], totals=[c.steps for c in plan.cells])
    except Cancelled:
        result.cancelled = True
    except Exception as e:  # e.g. out of memory on a big cell: the grid of what finished is still saved
        error = e
    for out in outputs:  # in cell order, whichever worker finished first
        if (res := out.result) is not None:
            result.denoising_steps += res.denoising_steps
            result.skipped += res.skipped
            result.warnings += [w for w in res.warnings if w not in result.warnings]
    if any(o.images for o in outputs):
        ctx.progress(total, total, label="drawing the grid")
        save_grids(engine_of(ctx), ctx, result)
    if error is not None:
        raise error
    if result.cancelled:
        raise Cancelled(f"interrupted: {sum(bool(o.images) for o in outputs)} of {len(outputs)} cells kept"
                        + (", partial grid saved" if result.grids else ""))
    return result


def grid_infotext(plan: SweepPlan, first: str, z: int | None = None) -> str:
    """A cell's infotext (the first finished one of the grid) with the sweep's keys appended to its last line."""
    extra = ", ".join(f"{k}: {quote(v)}" for k, v in plan.infotext_extra(z).items())
    return f"{first}, {extra}" if first else extra


def save_grids(engine: "Engine", ctx: "JobContext", result: SweepResult) -> None:
    """Draw the grid(s) of the finished cells (placeholders for the rest), save and emit them."""
    plan = result.plan
    nx, ny, nz = plan.shape
    by_pos = {o.cell.pos: o for o in result.cells}
    cell = grids.cell_size([o.images[0] for o in result.cells if o.images])
    x_axis, y_axis, z_axis = plan.axes
    legend, margin = plan.options.draw_legend, plan.options.margin
    subs: list[tuple[Image.Image, str]] = []
    for z in range(nz):
        outs = [by_pos[(x, y, z)] for y in range(ny) for x in range(nx)]
        image = grids.draw_grid([o.images[0] if o.images else None for o in outs], nx, ny,
                                col_labels=x_axis.labels if x_axis.active else (),
                                row_labels=y_axis.labels if y_axis.active else (),
                                cell=cell, margin=margin, legend=legend)
        first = next((o.payloads[0].get("infotext", "") for o in outs if o.payloads), "")
        subs.append((image, first))
    seed = max(int(plan.base.get("seed") or 0), 0)  # the sweep's fixed seed names the files (0: kept random)
    if nz == 1:
        todo = [(subs[0][0], grid_infotext(plan, subs[0][1]), None)]
    else:
        first = next((text for _, text in subs if text), "")
        main = grids.combine([im for im, _ in subs], z_axis.labels if z_axis.active else [""] * nz,
                             margin=margin, legend=legend)
        todo = [(main, grid_infotext(plan, first), None)]
        if plan.options.include_sub_grids:
            todo += [(im, grid_infotext(plan, text, z), z) for z, (im, text) in enumerate(subs) if text]
    for image, text, z in todo:
        suffix = "-xyz-grid" if z is None else f"-xyz-grid-z{z + 1}"
        path = engine.writer.save(image, text, GRID_MODE, seed, suffix=suffix)
        result.grids.append(GridOutput(image, path, text, z))
        ctx.image(image, {"path": str(path), "seed": seed, "infotext": text, "grid": True,
                          **({} if z is None else {"z": z})}, label="grid" if z is None else f"grid z{z + 1}")
