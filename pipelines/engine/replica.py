"""The Ray Serve replica: one device worker of the cluster backend (`--ray`, pipelines/cluster.py is the head side).

Each replica builds its own Engine and model cache for its device (one GPU: Serve gives it `num_gpus=1`; else a
CPU), reads checkpoints from the models folder by path (every node sees the same folder), and runs one request at a
time: the engine in a thread while an async generator streams the job's events to the head (wire.py's shapes). It
writes no image itself: its engine's writer records each image and streams it, and the head saves it.

Only imported where Ray is installed and `--ray` is given (the head imports it lazily).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from pipelines.cluster import JOB_METHODS
from pipelines.discovery import CheckpointInfo
from pipelines.engine.generate import GenerationResult
from pipelines.jobs import Cancelled, EventKind, Job, JobContext, JobEvent, Skipped
from pipelines.settings import Settings
from pipelines.wire import from_png, to_jpeg, to_png

log = logging.getLogger("studio.replica")
MAX_MODELS = 2  # checkpoints a replica keeps loaded (Serve's multiplexing routes a model's jobs to its replicas)


class StreamingWriter:
    """The replica engine's OutputWriter: `save` streams the image to the head (which writes the file) and returns a
    placeholder path that the head replaces with the real one."""

    def __init__(self) -> None:
        self.sink: Any = None  # the running request's event sink (one request at a time per replica)
        self._n = 0

    def save(self, image: Any, infotext: str, mode: str, seed: int, *, suffix: str = "", **_: Any) -> Path:
        self._n += 1
        key = f"ray-pending/{self._n}-{int(seed)}{suffix}.png"
        self.sink({"kind": "save", "key": key, "png": to_png(image), "infotext": infotext or "", "mode": mode,
                   "seed": int(seed), "suffix": suffix})
        return Path(key)

    def clean_stale(self, older_than_s: float = 60.0) -> int:
        return 0


class StreamJob(Job):
    """A job whose events go to the request's stream instead of a queue consumers read."""

    def __init__(self, kind: str, sink: Any):
        super().__init__(0, lambda ctx: None, kind, None)
        self.sink = sink

    def emit(self, event: JobEvent) -> None:
        if event.kind is EventKind.PROGRESS:
            self.sink({"kind": "progress", "step": event.step, "total": event.total, "label": event.label})
        elif event.kind is EventKind.PREVIEW:
            self.sink({"kind": "preview", "jpeg": to_jpeg(event.image), "step": event.step})
        elif event.kind is EventKind.IMAGE:
            payload = dict(event.result or {})
            self.sink({"kind": "image", "key": payload.get("path"), "seed": payload.get("seed"),
                       "infotext": payload.get("infotext"), "label": event.label, "payload": payload})


class StreamContext(JobContext):
    def report(self, key: str, value: Any) -> None:
        super().report(key, value)
        self.job.sink({"kind": "report", "key": key, "value": value})


def job_result(result: Any) -> Any:
    """A job method's result for the head: a GenerationResult without its images (streamed already; the head puts
    back its own, by the paths), anything else (a control map) as it is."""
    return dataclasses.replace(result, images=[]) if isinstance(result, GenerationResult) else result


def result_wire(result: Any) -> dict[str, Any]:
    """A GenerationResult for the head: every field but the images (streamed already, keyed by their paths)."""
    if not hasattr(result, "images"):
        return {"value": result}
    return {"paths": [str(p) for p in result.paths], "seeds": list(result.seeds), "subseeds": list(result.subseeds),
            "infotexts": list(result.infotexts), "parameters": dict(result.parameters), "model": result.model,
            "skipped": result.skipped, "warnings": list(result.warnings), "denoising_steps": result.denoising_steps,
            "memory_mode": result.memory_mode, "vae": result.vae, "vae_hash": result.vae_hash,
            "control_maps": {k: to_png(v) for k, v in result.control_maps.items()}}


class Replica:
    """One device worker: its engine, its cache, one request at a time."""

    def __init__(self, settings: Settings, device: str):
        from pipelines.engine import devices
        from pipelines.engine.setup import device_budget, make_engine, ram_budget
        from pipelines.networks.embeddings import Embeddings
        from pipelines.networks.loras import LoraLibrary
        from pipelines.networks.vaes import VaeLibrary

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        hashes = settings.cache_dir / "hashes.json"
        self.hw = devices.resolve(device, settings.precision, settings.attention)
        ram = devices.system_ram()
        self.writer = StreamingWriter()
        self.engine = make_engine(settings, self.hw, self.writer, device_budget=device_budget(settings, self.hw, ram, 1),
                                  ram_budget=ram_budget(settings, ram, 1),
                                  loras=LoraLibrary(settings.folders.lora, hashes),
                                  embeddings=Embeddings(settings.folders.embeddings, hashes),
                                  vaes=VaeLibrary(settings.folders, hashes))
        self._lock = threading.Lock()  # the engine runs one job at a time (a cancelled one may finish its step)
        self._infos: dict[str, CheckpointInfo] = {}
        log.info("Ray replica on %s: %s", self.hw.device, self.hw.describe())

    def facts(self) -> dict[str, Any]:
        """The hardware facts the head shows and its first-run choice depends on."""
        return {"device": self.hw.device.type, "total_memory": self.hw.total_memory,
                "fp16": str(self.hw.dtype) == "torch.float16", "describe": f"{self.hw.device}: {self.hw.describe()}"}

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS)
    async def checkpoint(self, name: str) -> CheckpointInfo:
        """Serve's model multiplexing: the checkpoint `name` loaded into this replica's cache (Engine.warm)."""
        info = self._infos[name]
        await asyncio.to_thread(self._locked, lambda: self.engine.warm(None, info))
        return info

    def _locked(self, fn: Any) -> Any:
        with self._lock:
            return fn()

    async def __call__(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one job and stream its events: progress, preview, save (an image to write), image, report, then
        done (the result) or error. Closing the stream (the head cancels it) cancels the job within a step."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = StreamJob(request["kind"], lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        ctx = StreamContext(job)
        info = CheckpointInfo(**request["info"]) if request.get("info") else None
        worker = None
        try:
            if request["kind"] != "warm" and info is not None:  # warm: the job itself loads, reporting its progress
                self._infos[info.name] = info
                yield {"kind": "progress", "step": 0, "total": 1, "label": f"loading {info.name}"}
                try:
                    await self.checkpoint(serve.get_multiplexed_model_id() or info.name)
                except Exception as e:  # a checkpoint that cannot load: the job fails with why, no retry
                    log.exception("loading %s failed", info.name)
                    yield {"kind": "error", "type": type(e).__name__, "message": str(e) or type(e).__name__,
                           "bad_request": type(e).__name__ == "BadRequest"}
                    return
            worker = threading.Thread(target=self._run, args=(request, info, ctx), daemon=True,
                                      name="replica-job")
            worker.start()
            while True:
                ev = await events.get()
                yield ev
                if ev["kind"] in ("done", "error"):
                    return
        finally:
            job._cancel.set()  # the head cancelled the stream (or it ended): the engine stops at its next check

    def _run(self, request: dict[str, Any], info: CheckpointInfo | None, ctx: StreamContext) -> None:
        with self._lock:
            self.writer.sink = ctx.job.sink
            kind = request.get("method") or request["kind"]
            log.info("replica job (%s) started on %s", kind, ray.get_runtime_context().get_actor_name())
            ended = threading.Event()
            if request.get("signals") is not None:
                threading.Thread(target=poll_signals, args=(request["signals"], request["key"], ctx.job, ended),
                                 daemon=True, name="replica-signals").start()
            try:
                result = self._dispatch(request, info, ctx)
                done = job_result(result) if request["kind"] == "job" else result_wire(result)
                ctx.job.sink({"kind": "done", "result": done})
            except Cancelled as e:
                log.info("replica job (%s) cancelled: %s", kind, "Interrupt from the head" if request["kind"] == "job"
                         else "the head closed its stream")
                ctx.job.sink({"kind": "error", "type": "cancelled", "message": str(e) or "interrupted"})
            except Skipped:
                ctx.job.sink({"kind": "error", "type": "cancelled", "message": "skipped"})
            except BaseException as e:  # noqa: BLE001 - reported to the head, which fails the job with it
                log.exception("replica job (%s) failed", request["kind"])
                ctx.job.sink({"kind": "error", "type": type(e).__name__, "message": str(e) or type(e).__name__,
                              "bad_request": type(e).__name__ == "BadRequest"})
            finally:
                ended.set()
                self.writer.sink = None

    def _dispatch(self, request: dict[str, Any], info: CheckpointInfo, ctx: StreamContext) -> Any:
        from pipelines.params.specs import Img2ImgParams, OutpaintParams, Txt2ImgParams

        kind, eng = request["kind"], self.engine
        if kind == "warm":
            return eng.warm(ctx, info)
        if kind == "job":  # a job written as a function of an engine, run whole here
            if request["method"] not in JOB_METHODS:
                raise ValueError(f"unknown job {request['method']!r}")
            return getattr(eng, request["method"])(ctx, *request["args"])
        image = from_png(request["image"]) if request.get("image") else None
        controls = request.get("controls") or []
        if kind == "txt2img":
            return eng.txt2img(ctx, Txt2ImgParams.model_validate(request["params"]), info, controls)
        if kind == "hires_fix":
            return eng.hires_fix(ctx, Txt2ImgParams.model_validate(request["params"]), info, image)
        if kind == "img2img":
            mask = from_png(request["mask"]) if request.get("mask") else None
            return eng.img2img(ctx, Img2ImgParams.model_validate(request["params"]), info, image, mask, controls)
        if kind == "outpaint":
            return eng.outpaint(ctx, OutpaintParams.model_validate(request["params"]), info, image, controls)
        raise ValueError(f"unknown request kind {kind!r}")


def poll_signals(signals: Any, key: str, job: Job, ended: threading.Event, every_s: float = 0.1) -> None:
    """Interrupt and Skip from the head (the cluster's Signals actor) into the running job, until it ends."""
    while not ended.wait(every_s):
        try:
            flags = ray.get(signals.take.remote(key), timeout=10)
        except Exception:  # noqa: BLE001 - the head is gone: its stream closes too, which cancels the job
            log.warning("replica: the head's signals are out of reach", exc_info=True)
            return
        if "interrupt" in flags:
            job._cancel.set()
        if "skip" in flags:
            job._skip.set()


def deployment(options: dict[str, Any]) -> Any:
    """The Serve deployment of Replica with `options` (num_replicas or autoscaling_config, ray_actor_options...)."""
    return serve.deployment(Replica, name="StudioReplica", max_ongoing_requests=1, **options)


def app(args: dict[str, Any]) -> Any:
    """`serve deploy deploy/serve.yaml` / KubeRay's entry point: the replicas over the shared models folder
    (`args`: models_dir, device, precision; the YAML's deployment options apply on top)."""
    settings = Settings(models_dir=Path(args.get("models_dir", "models")), hub_endpoint=None,
                        precision=args.get("precision", "auto"))
    return serve.deployment(Replica, name="StudioReplica", max_ongoing_requests=1).bind(
        settings, args.get("device", "cuda"))
