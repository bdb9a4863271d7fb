"""Top bar: checkpoint dropdown, rescan button and a status line (hardware, model memory)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from pipelines.discovery import FAMILIES, CheckpointInfo
from pipelines.jobs import EventKind
from pipelines.params.specs import HintContext
from pipelines.studio import BadRequest, Studio
from ui.widgets import QUIET


def model_label(m: CheckpointInfo) -> str:
    family = FAMILIES[m.family].label if m.family in FAMILIES else m.family
    extra = " · ⚠ unusable" if m.error else " · hub, downloads on first use" if m.source == "hub" else ""
    return f"{m.title} — {family}, {m.native}px{' · distilled' if m.distilled else ''}{extra}"


def model_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(model_label(m), m.name) for m in studio.models()]


def current_name(studio: Studio) -> str | None:
    try:
        return studio.current_model().name
    except BadRequest:
        return None


def hint_context(studio: Studio, name: str | None, mode: str = "txt2img") -> HintContext:
    """The verdict context for the model this page shows (falls back to the studio's current one), for a mode
    (txt2img, img2img or inpaint: the denoising advice differs)."""
    try:
        ctx = studio.hint_context(studio.find_model(name)) if name else studio.hint_context()
    except BadRequest:
        ctx = studio.hint_context()
    return dataclasses.replace(ctx, mode=mode) if ctx.mode != mode else ctx


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def mode_text(mem: dict[str, Any]) -> str:
    """"memory normal (auto)"; after an out-of-memory retry lowered the last job: "(lowered from high)"."""
    how = "auto" if mem["mode_setting"] == "auto" else "set"
    if mem["mode"] != mem["mode_configured"]:
        how = f"lowered from {mem['mode_configured']} after out of memory"
    return f"memory {mem['mode']} ({how})"


def device_use_text(mem: dict[str, Any]) -> str:
    """GPU: allocated (reserved) and free device memory; CPU: this process' resident RAM."""
    cuda = mem.get("cuda") or {}
    if "system" in cuda:
        return (f"GPU {_size(cuda['allocated']['current'])} in use ({_size(cuda['reserved']['current'])} "
                f"reserved), {_size(cuda['system']['free'])} of {_size(cuda['system']['total'])} free")
    return f"process RAM {_size(mem['ram']['used'])}"


def status_text(studio: Studio, note: str = "") -> str:
    try:
        mem = studio.memory()
        models = mem["models"]
        memory = f"models: {_size(models['device_bytes'])} of {_size(models['device_budget'])} on device"
        if models.get("cpu_bytes"):
            memory += f", {_size(models['cpu_bytes'])} of {_size(models['cpu_budget'])} offloaded to RAM"
        memory = f"{mode_text(mem)} · {device_use_text(mem)} · {memory}"
    except Exception:  # status must never break the page
        memory = "memory: n/a"
    queued = len(studio.runner.queue())  # running or waiting; a job that has just ended is not counted
    parts = [f"🖥️ {studio.hardware or 'device'}", memory, f"jobs: {queued}" if queued else "idle"]
    return " · ".join(parts + ([note] if note else []))


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    status: gr.Markdown
    on_load: Callable[[], tuple[Any, str]]  # wire to Blocks.load: current model list and status


def build_topbar(studio: Studio) -> TopBar:
    with gr.Row(equal_height=True, elem_id="topbar"):
        checkpoint = gr.Dropdown(model_choices(studio), value=current_name(studio), label="Stable Diffusion checkpoint",
                                 elem_id="checkpoint", scale=4, min_width=320, filterable=True)
        refresh = gr.Button("🔄", elem_id="refresh-models", scale=0, min_width=48, size="lg")
        status = gr.Markdown(status_text(studio), elem_id="status-line", scale=5, container=True)

    def on_refresh() -> tuple[Any, str]:
        studio.refresh_models()
        n = len(studio.models())
        choices = gr.Dropdown(choices=model_choices(studio), value=current_name(studio))
        return choices, status_text(studio, f"{n} models")

    def on_select(name: str, request: gr.Request) -> Iterator[str]:
        try:
            job = studio.select_model(name, owner=request.session_hash if request else None)
        except BadRequest as e:
            gr.Warning(str(e))
            yield status_text(studio, f"⚠️ {e}")
            return
        yield status_text(studio, f"⏳ loading {name}…")
        for ev in job.events():
            if ev.kind is EventKind.PROGRESS and ev.label:
                count = f" {ev.step}/{ev.total}" if (ev.total or 0) > 1 else ""
                yield status_text(studio, f"⏳ {ev.label}{count}")
            elif ev.kind is EventKind.FAILED:
                gr.Warning(ev.message or f"Could not load {name}")
                yield status_text(studio, f"⚠️ {name} failed to load")
            elif ev.kind is EventKind.FINISHED:
                yield status_text(studio, f"✅ {name} loaded")

    def on_load() -> tuple[Any, str]:  # each page load shows the current list and model
        return gr.Dropdown(choices=model_choices(studio), value=current_name(studio)), status_text(studio)

    refresh.click(on_refresh, outputs=[checkpoint, status], **QUIET)
    checkpoint.select(on_select, checkpoint, status, show_progress="hidden", api_visibility="private",
                     concurrency_limit=None)
    gr.on([gr.Timer(10).tick], lambda: status_text(studio), outputs=status, **QUIET)
    return TopBar(checkpoint, refresh, status, on_load)
