"""Composition root: parse the command line, build the device, model manager, job runner and studio,
then serve the web UI and/or the A1111-compatible REST API.

    python app.py                 # web UI on http://127.0.0.1:7860
    python app.py --api           # web UI + REST API under /sdapi/v1
    python app.py --nowebui       # REST API only
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Sequence

from pipelines.settings import Settings, parse_args

log = logging.getLogger("studio")


def build_app(settings: Settings):
    """Build every long-lived object once and wire them together; returns the ASGI app."""
    import gradio as gr
    from fastapi import FastAPI

    from pipelines.jobs import JobRunner
    from pipelines.networks.embeddings import Embeddings
    from pipelines.networks.loras import LoraLibrary
    from pipelines.networks.vaes import VaeLibrary
    from pipelines.outputs import OutputWriter
    from pipelines.studio import Studio
    from ui.api import build_api
    from ui.api_common import install_openapi
    from ui.layout import CSS, HEAD, build_ui
    from ui.limits import install_limits

    settings.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    writer = OutputWriter(settings.outputs_dir)
    if stale := writer.clean_stale():  # hidden partial files a crash or kill -9 left behind
        log.info("removed %d stale temporary file(s) from %s", stale, settings.outputs_dir)
    loras = LoraLibrary(settings.folders.lora, settings.cache_dir / "hashes.json")
    embeddings = Embeddings(settings.folders.embeddings, settings.cache_dir / "hashes.json")
    vaes = VaeLibrary(settings.folders, settings.cache_dir / "hashes.json")
    if settings.ray:  # the device workers are Ray Serve replicas; this process keeps the UI, API, queue and outputs
        from pipelines.cluster import start_cluster

        cluster = start_cluster(settings, writer)
        engines, machine, described = cluster.engines, cluster.machine(), cluster.describe()
        runner = JobRunner(max_queued_per_owner=settings.max_queued_per_client,
                           workers=[e.name for e in engines]).start()
    else:
        engines, machine, described = local_engines(settings, writer, loras, embeddings, vaes)
        runner = JobRunner(max_queued_per_owner=settings.max_queued_per_client,
                           workers=[str(e.hw.device) for e in engines],
                           holds=lambda i, info: engines[i].holds(info)).start()
    studio = Studio(settings, runner, engines, hardware=described, loras=loras, embeddings=embeddings,
                    vaes=vaes, machine=machine)
    log.info("device%s: %s", "s" if len(engines) > 1 else "", described)

    if warning := settings.open_to_network:
        log.warning("%s", warning)
        print(f"WARNING: {warning}", flush=True)
    app = FastAPI(title="Stable Diffusion studio", docs_url="/docs" if settings.api else None)
    app.state.studio = studio
    if settings.api:
        app.include_router(build_api(studio, auth=settings.api_auth or settings.auth))
        install_openapi(app)  # request-body schemas (and the models nested in them) into components/schemas
    if not settings.nowebui:
        app = gr.mount_gradio_app(app, build_ui(studio), path="/", auth=settings.auth, ssr_mode=False,
                                  max_file_size=f"{settings.max_upload_mb}mb", css=CSS, head=HEAD)
    app.router.add_event_handler("shutdown", runner.stop)
    if settings.ray:
        app.router.add_event_handler("shutdown", cluster.stop)
    install_limits(app, settings.max_upload_mb * 2**20)
    return app


def local_engines(settings: Settings, writer, loras, embeddings, vaes):
    """One engine per --device entry, each with its own model cache and memory budget (the queue, the outputs writer
    and the model listings are shared); with the first-run hardware facts and a description of the devices."""
    from pipelines import first_run
    from pipelines.engine import devices
    from pipelines.engine.setup import device_budget, make_engine, ram_budget
    from pipelines.settings import device_list

    names = devices.expand(device_list(settings.device))
    hws = [devices.resolve(name, settings.precision, settings.attention) for name in names]
    ram = devices.system_ram()
    on_cpu = sum(1 for hw in hws if hw.device.type == "cpu")  # CPU workers share the machine's RAM
    load_lock = threading.Lock()  # model loads take turns (see Engine.load_lock)
    engines = [make_engine(settings, hw, writer, device_budget=device_budget(settings, hw, ram, on_cpu),
                           ram_budget=ram_budget(settings, ram, on_cpu), loras=loras, embeddings=embeddings,
                           vaes=vaes, load_lock=load_lock) for hw in hws]
    hw = hws[0]
    # the hardware facts the first-run choice (the hub model offered while nothing is local) depends on
    machine = first_run.Machine(hw.device.type, hw.total_memory, fp16=str(hw.dtype) == "torch.float16")
    described = " + ".join(f"{h.device}: {h.describe()}" for h in hws) if len(hws) > 1 else hw.describe()
    return engines, machine, described


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    import uvicorn

    app = build_app(settings)
    where = f"http://{settings.host}:{settings.port}"
    print(f"Serving {'API only' if settings.nowebui else 'web UI'} on {where}"
          + (f" (API: {where}/sdapi/v1, docs {where}/docs)" if settings.api else ""), flush=True)
    # A request waiting on a queued job would hold shutdown until the whole queue drained: give open requests
    # a few seconds, then the app shuts down (its shutdown handler cancels the jobs; saved images stay).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main(sys.argv[1:])
