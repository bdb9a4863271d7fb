"""Top bar: checkpoint and VAE dropdowns, rescan button and a status line (hardware, model memory)."""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from pipelines.discovery import FAMILIES, CheckpointInfo
from pipelines.hub import human_size
from pipelines.jobs import EventKind
from pipelines.params.specs import PARAMS, HintContext
from pipelines.studio import BadRequest, Studio
from ui.widgets import QUIET, ParamWidget


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


def device_text(d: dict[str, Any]) -> str:
    """One device worker in the status line: its running job or idle, and its models when it has a local cache."""
    text = f"{d['device']}: {'job ' + str(d['job']) if d['job'] else 'idle'}"
    if "device_bytes" in d.get("models", {}):
        text += f", {_size(d['models']['device_bytes'])} of models"
    return text


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
    try:
        per_device = [device_text(d) for d in mem.get("devices", [])]
    except Exception:  # status must never break the page
        per_device = []
    if per_device:
        open_to_all = studio.settings.open_to_network
        # Ray replicas report no local model cache: the head names the cluster instead
        head = f"🖥️ {len(per_device)} devices" if mem.get("models") else f"🖥️ {studio.hardware}"
        return " · ".join([head, *per_device, f"jobs: {queued}" if queued else "idle",
                           *([f"⚠️ {open_to_all}"] if open_to_all else []), *([note] if note else [])])
    parts = [f"🖥️ {studio.hardware or 'device'}", memory, f"jobs: {queued}" if queued else "idle"]
    if open_to_all := studio.settings.open_to_network:
        parts.append(f"⚠️ {open_to_all}")
    return " · ".join(parts + ([note] if note else []))


def download_note(ev: Any) -> str | None:
    """A model load's download progress (the loader's "download <repo>" events count bytes) as people read it:
    "Downloading org/name: 1.2 GB of 6.9 GB · 35 MB/s · ETA 3 min"; None for any other event."""
    label = getattr(ev, "label", None) or ""
    if not label.startswith("download ") or (ev.total or 0) <= 1:
        return None
    parts = [f"Downloading {label.removeprefix('download ')}: {human_size(ev.step or 0)} of {human_size(ev.total)}"]
    if ev.it_per_s:
        parts.append(f"{human_size(int(ev.it_per_s))}/s")
    if ev.eta_s is not None:
        parts.append(f"ETA {ev.eta_s / 60:.0f} min" if ev.eta_s >= 90 else f"ETA {ev.eta_s:.0f} s")
    return " · ".join(parts)


NOTICE_STYLE = {  # inline: blue for a download to come, amber when nothing can be downloaded
    "download": "background:#eff6ff; color:#1e40af; border:1px solid #bfdbfe;",
    "offline": "background:#fffbeb; color:#92400e; border:1px solid #fde68a;",
}


def notice_html(studio: Studio, name: str | None) -> str:
    """The first-run notice for the model the page shows: a hub id not downloaded yet says how much the first
    Generate downloads, or offline where to put a checkpoint instead; "" (nothing shown) otherwise."""
    try:
        facts = studio.first_run(name or None)
    except BadRequest:
        return ""
    if not facts["notice"]:
        return ""
    kind = "offline" if facts["offline"] or facts["model"] is None else "download"
    icon = "📂" if kind == "offline" else "⬇️"
    return (f'<div class="first-run {kind}" data-kind="{kind}" style="padding:8px 12px; border-radius:6px; '
            f'font-size:13.5px; {NOTICE_STYLE[kind]}">{icon} {html.escape(facts["notice"])}</div>')


def vae_dropdown(studio: Studio) -> Any:
    """The VAE dropdown's update: Automatic, None and the listed VAEs, showing the sd_vae option."""
    return gr.Dropdown(choices=studio.vae_names(), value=studio.vae_option())


def load_model(studio: Studio, name: str, request: gr.Request | None) -> Iterator[str]:
    """Make `name` the current checkpoint (a streamed handler yielding the status line as it loads): what choosing
    it in the dropdown does, and a click on its card in the Networks panel."""
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
            yield status_text(studio, f"⏳ {download_note(ev) or ev.label + count}")
        elif ev.kind is EventKind.FAILED:
            gr.Warning(ev.message or f"Could not load {name}")
            yield status_text(studio, f"⚠️ {name} failed to load")
        elif ev.kind is EventKind.FINISHED:
            yield status_text(studio, f"✅ {name} loaded")


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    status: gr.Markdown
    on_load: Callable[[], tuple[Any, Any, str]]  # wire to Blocks.load: current model list, VAE list and status
    # the sd_vae field of every generating tab: its dropdown sits here, beside the checkpoint (hint hidden)
    vae: ParamWidget | None = None


def build_topbar(studio: Studio) -> TopBar:
    with gr.Row(equal_height=True, elem_id="topbar"):
        checkpoint = gr.Dropdown(model_choices(studio), value=current_name(studio), label="Stable Diffusion checkpoint",
                                 elem_id="checkpoint", scale=3, min_width=320, filterable=True)
        # the VAE beside it, sharing the checkpoint's former share of the row (the status line keeps its width); a
        # name that is not listed (sent from an image's infotext) is refused by the job with the listed ones
        spec = PARAMS["sd_vae"]
        vae_input = gr.Dropdown(studio.vae_names(), value=studio.vae_option(), label=spec.label, elem_id="sd-vae",
                                scale=1, min_width=160, filterable=True, allow_custom_value=True)
        vae = ParamWidget(spec, vae_input, gr.HTML("", visible=False, elem_id="sd-vae-hint"))
        refresh = gr.Button("🔄", elem_id="refresh-models", scale=0, min_width=48, size="lg")
        status = gr.Markdown(status_text(studio), elem_id="status-line", scale=5, container=True)
    # a hub model not downloaded yet (the first run's default): its download size, or offline where files go;
    # a callable value: worked out again at each page load
    notice = gr.HTML(lambda: notice_html(studio, current_name(studio)), elem_id="first-run-notice", padding=False)

    def on_refresh() -> tuple[Any, Any, str]:
        studio.refresh_models()  # and the VAEs, LoRAs...
        n = len(studio.models())
        choices = gr.Dropdown(choices=model_choices(studio), value=current_name(studio))
        vaes = gr.Dropdown(choices=studio.vae_names())  # the choice stays (a vanished VAE is refused by the job)
        return choices, vaes, status_text(studio, f"{n} models, {len(studio.vae_names()) - 2} VAEs")

    def on_select(name: str, request: gr.Request) -> Iterator[str]:
        yield from load_model(studio, name, request)

    def on_load() -> tuple[Any, Any, str]:  # each page load shows the current lists, model and VAE
        return (gr.Dropdown(choices=model_choices(studio), value=current_name(studio)), vae_dropdown(studio),
                status_text(studio))

    def on_vae(name: str) -> str:
        """Choosing a VAE makes it the sd_vae option too (the VAE of API requests that name none), as choosing a
        checkpoint makes it the current one; every job from the page sends its own choice."""
        try:
            studio.set_options({"sd_vae": name})
        except BadRequest as e:
            return status_text(studio, f"⚠️ {e}")
        return status_text(studio, f"VAE: {studio.vae_option()}")

    refresh.click(on_refresh, outputs=[checkpoint, vae_input, status], **QUIET)
    vae_input.select(on_vae, vae_input, status, **QUIET)
    checkpoint.select(on_select, checkpoint, status, show_progress="hidden", api_visibility="private",
                     concurrency_limit=None)
    gr.on([gr.Timer(10).tick], lambda: status_text(studio), outputs=status, **QUIET)
    # the notice follows the dropdown, and goes once the model is downloaded (by a Generate, or a select)
    gr.on([checkpoint.change, refresh.click, gr.Timer(10).tick], lambda name: notice_html(studio, name), checkpoint,
          notice, **QUIET)
    return TopBar(checkpoint, refresh, status, on_load, vae)
