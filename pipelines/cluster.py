"""The head side of the Ray Serve cluster backend (`--ray`): each replica (pipelines/engine/replica.py) is a device
worker with its own engine and model cache; this process keeps the UI, the API, the queue and the outputs.

The job runner gets one worker slot per replica ("ray:0", "ray:1"...); a slot's engine is a RemoteEngine, which
sends the typed request to the Serve deployment (routed by checkpoint: Serve's model multiplexing), consumes the
streamed events and turns them into the job's progress, previews and images. Each image is saved here the moment
it arrives, with the infotext the replica wrote. Interrupt cancels the stream (the replica stops within a step); a
replica lost mid-job is retried once on another, re-running only the batches not received yet. The jobs that handle
Interrupt and Skip themselves (the zoom's keyframes, the upscales, ControlNet detection) get them through a small
Signals actor instead, which their replica polls, so they end as they do on a local worker (a zoom keeps its
keyframes and its video is still written, here).

Pure Python: Ray is imported lazily (it is optional: requirements-ray.txt), torch only when a result is built.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pipelines.errors import BadRequest
from pipelines.jobs import Cancelled, Skipped
from pipelines.params.specs import resolve_seed
from pipelines.wire import from_png, to_png

log = logging.getLogger("studio.cluster")
APP = "studio"
IDLE_S = float(os.environ.get("STUDIO_RAY_IDLE_S", "300"))  # the longest wait for a replica's next event
ROOT = Path(__file__).resolve().parents[1]


STOP_S = 60.0  # after Interrupt, how long a job that stops itself may take to end before its stream is cancelled
JOB_METHODS = ("zoom_keyframes", "extras", "sd_upscale", "detect")  # run whole on a replica (Replica._dispatch)


class NotOnRay(ValueError, AttributeError):
    """An engine attribute the head does not offer (getattr(engine, x, default) works)."""


class Signals:
    """Interrupt and Skip for the requests running a job that handles them itself: the head sets a request's
    flag, the request's replica takes it (one actor per cluster, created by the head)."""

    def __init__(self) -> None:
        self.flags: dict[str, set[str]] = {}

    def set(self, key: str, flag: str) -> None:
        self.flags.setdefault(key, set()).add(flag)

    def take(self, key: str) -> list[str]:
        return sorted(self.flags.pop(key, ()))


class ReplicaLost(RuntimeError):
    """The replica died, or stopped answering, during a request."""


class SkipBatch(Exception):
    """Skip was pressed: the request's stream was cancelled."""


class Attempt:
    """What one call has received so far, over its attempts: saved files (by placeholder and by what they are,
    so a retry never writes an image twice) and the images streamed, in order."""

    def __init__(self) -> None:
        self.placeholders: dict[str, tuple[Path, Any]] = {}
        self.saved: dict[tuple[str, int, str], tuple[Path, Any]] = {}
        self.images: list[tuple[Any, Path, int, str]] = []  # (image, path, seed, infotext)
        self.seen: set[int] = set()  # seeds of the images streamed


def lost_twice(e: Exception, state: Attempt) -> RuntimeError:
    return RuntimeError(f"The Ray replica running this job was lost twice ({e}); the {len(state.saved)} image(s) "
                        "received are saved. Run the job again.")


class RemoteEngine:
    """A worker slot's engine: the studio's Engine calls, run on a Ray Serve replica."""

    remote = True
    hw = None

    def __init__(self, name: str, handle: Any, writer: Any, memory_mode: str = "auto",
                 skip_lock: threading.Lock | None = None, signals: Any = None):
        self.name, self.handle, self.writer, self.memory_mode = name, handle, writer, memory_mode
        self.signals = signals  # the cluster's Signals actor (None: jobs that need it are not offered)
        self.idle_s = IDLE_S
        # one Skip is taken by one batch, when a job's batches run on several slots at once (shared by the slots)
        self.skip_lock = skip_lock if skip_lock is not None else threading.Lock()

    def _take_skip(self, ctx: Any) -> bool:
        with self.skip_lock:
            if ctx.skip_requested():
                ctx.clear_skip()
                return True
            return False

    def holds(self, info: Any) -> bool:
        return False  # Serve routes a checkpoint's jobs to the replicas holding it (multiplexing), not the slots

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotOnRay(f"'{name}' is not available on the Ray backend")

    # -- the calls the studio makes --------------------------------------------------------
    def warm(self, ctx: Any, info: Any) -> str:
        self._call(ctx, {"kind": "warm"}, info)
        return info.name

    def txt2img(self, ctx: Any, params: Any, info: Any, controls: Any = ()) -> Any:
        return self._generate(ctx, "txt2img", params, info, controls)

    def hires_fix(self, ctx: Any, params: Any, info: Any, image: Any) -> Any:
        return self._generate(ctx, "hires_fix", params, info, (), image=to_png(image))

    def img2img(self, ctx: Any, params: Any, info: Any, image: Any, mask: Any = None, controls: Any = ()) -> Any:
        return self._generate(ctx, "img2img", params, info, controls, image=to_png(image),
                              mask=to_png(mask) if mask is not None else None)

    def outpaint(self, ctx: Any, params: Any, info: Any, image: Any, controls: Any = ()) -> Any:
        return self._generate(ctx, "outpaint", params, info, controls, image=to_png(image))

    def zoom_keyframes(self, ctx: Any, params: Any, info: Any, image: Any = None) -> Any:
        return self._job(ctx, "zoom_keyframes", info, params, info, image)

    def extras(self, ctx: Any, images: Any, params: Any) -> Any:
        return self._job(ctx, "extras", None, images, params)

    def sd_upscale(self, ctx: Any, params: Any, info: Any, image: Any) -> Any:
        return self._job(ctx, "sd_upscale", info, params, info, image)

    def detect(self, ctx: Any, unit: Any, image: Any) -> Any:
        return self._job(ctx, "detect", None, unit, image)

    # -- the request and its stream ---------------------------------------------------------
    def _generate(self, ctx: Any, kind: str, params: Any, info: Any, controls: Any, **images: Any) -> Any:
        # seeds resolved here, so a retry knows which images are missing (as one worker would draw -1)
        seed, subseed = resolve_seed(params.seed), resolve_seed(getattr(params, "subseed", None))
        params = params.model_copy(update={"seed": seed, "subseed": subseed})
        state, last, start, lost, skipped = Attempt(), None, 0, 0, 0
        batched = kind != "hires_fix"  # hires_fix: one image, run again whole
        while start < params.n_iter:
            before = len(state.images)
            part = params.model_copy(update={"n_iter": params.n_iter - start,
                                             "seed": seed + start * params.batch_size,
                                             "subseed": subseed + start * params.batch_size})
            try:
                last = self._call(ctx, {"kind": kind, "params": part, "controls": list(controls), **images}, info,
                                  state)
                break
            except SkipBatch:  # Skip: the running batch is abandoned, the job goes on with the next
                if not batched:
                    raise Skipped() from None
                start += (len(state.images) - before) // params.batch_size + 1
                skipped += params.batch_size
            except ReplicaLost as e:
                lost += 1
                if lost > 1:
                    raise lost_twice(e, state) from None
                start += (len(state.images) - before) // params.batch_size if batched else 0
                log.warning("Ray replica lost during a %s job (%s): retrying the %d missing batch(es) on another",
                            kind, e, params.n_iter - start)
                ctx.report("ray_retried", True)
        result = self._result(state, last, params, seed, subseed)
        result.skipped += skipped
        return result

    def _job(self, ctx: Any, method: str, info: Any, *args: Any) -> Any:
        """One of JOB_METHODS run whole on a replica (retried once, whole, on another if its replica is lost: what was
        saved is not saved twice). A GenerationResult comes back with the head's files and images."""
        if self.signals is None:
            raise NotOnRay(f"'{method}' needs the cluster's Signals actor")
        state, lost = Attempt(), 0
        while True:
            try:
                out = self._call(ctx, {"kind": "job", "method": method, "args": args}, info, state)
                break
            except ReplicaLost as e:
                lost += 1
                if lost > 1:
                    raise lost_twice(e, state) from None
                log.warning("Ray replica lost during a %s job (%s): running it again on another", method, e)
                ctx.report("ray_retried", True)
        if hasattr(out, "paths"):  # the replica's placeholders: the files saved here and their images
            saved = [state.placeholders[str(p)] for p in out.paths]
            out.paths, out.images = [p for p, _ in saved], [image for _, image in saved]
        return out

    def _call(self, ctx: Any, request: dict[str, Any], info: Any, state: Attempt | None = None) -> Any:
        """One request, streamed: returns the replica's result (its wire form); raises Cancelled, BadRequest,
        RuntimeError (the replica's error) or ReplicaLost (the replica died or stopped answering).
        A "job" request gets Interrupt and Skip through the Signals actor (the job ends itself); any other has its
        stream cancelled on Interrupt, and on Skip (SkipBatch)."""
        state = state if state is not None else Attempt()
        signalled = request["kind"] == "job"
        key = f"{self.name}-{uuid.uuid4().hex}"
        request = {**request, "info": dataclasses.asdict(info) if info is not None else None,
                   **({"signals": self.signals, "key": key} if signalled else {})}
        options = {"multiplexed_model_id": info.name} if info is not None else {}
        response = self.handle.options(stream=True, **options).remote(request)
        events: queue.Queue = queue.Queue()

        def pump() -> None:  # the stream blocks between events: read it here, check for Interrupt there
            try:
                for ev in response:
                    events.put(("event", ev))
                events.put(("lost", "the stream ended without a result"))
            except BaseException as e:  # noqa: BLE001 - a dead replica, a cancelled stream: the job decides
                events.put(("lost", f"{type(e).__name__}: {e}"))

        threading.Thread(target=pump, daemon=True, name=f"{self.name}-stream").start()
        try:
            return self._follow(ctx, request, response, events, state)
        finally:
            if signalled:  # a flag the replica did not take (set as the job ended) goes too
                self.signals.take.remote(key)

    def _follow(self, ctx: Any, request: dict[str, Any], response: Any, events: queue.Queue, state: Attempt) -> Any:
        """Read the request's events until its result, passing Interrupt and Skip on (see _call)."""
        signalled, key = request["kind"] == "job", request.get("key")
        saved_before = dict(state.saved)
        deadline, stopping = time.monotonic() + self.idle_s, None
        while True:
            try:
                ctx.check()
                if request["kind"] != "warm" and self._take_skip(ctx):
                    if not signalled:
                        raise SkipBatch()
                    self.signals.set.remote(key, "skip")
            except Cancelled:
                if not signalled:
                    response.cancel()  # the replica sees the stream closed and stops within a step
                    raise
                if stopping is None:  # the job stops itself and answers (a zoom: with its keyframes)
                    self.signals.set.remote(key, "interrupt")
                    stopping = time.monotonic() + STOP_S
            except SkipBatch:
                response.cancel()
                raise
            try:
                tag, ev = events.get(timeout=0.1)
            except queue.Empty:
                if stopping is not None and time.monotonic() > stopping:
                    response.cancel()
                    raise Cancelled("interrupted") from None
                if time.monotonic() > deadline:
                    response.cancel()
                    raise ReplicaLost(f"no answer from the replica for {self.idle_s:.0f} s") from None
                continue
            if tag == "lost":
                if stopping is not None:  # interrupted anyway: nothing to retry
                    raise Cancelled("interrupted")
                raise ReplicaLost(ev)
            deadline = time.monotonic() + self.idle_s
            if (out := self._event(ctx, ev, state, saved_before)) is not None:
                return out

    def _event(self, ctx: Any, ev: dict[str, Any], state: Attempt, saved_before: dict) -> Any:
        kind = ev["kind"]
        if kind == "progress":
            ctx.progress(ev["step"], ev["total"], label=ev.get("label"))
        elif kind == "preview":
            ctx.preview(from_png(ev["jpeg"]), step=ev.get("step"))
        elif kind == "save":  # written here the moment it arrives (once: a retry's copy of a saved image is not)
            what = (ev["mode"], ev["seed"], ev["suffix"])
            if what not in saved_before:
                image = from_png(ev["png"])
                state.saved[what] = (self.writer.save(image, ev["infotext"], ev["mode"], ev["seed"],
                                                      suffix=ev["suffix"]), image)
            state.placeholders[ev["key"]] = state.saved[what]
        elif kind == "image":
            path, image = state.placeholders[ev["key"]]
            if ev["seed"] not in state.seen:
                state.seen.add(ev["seed"])
                state.images.append((image, path, ev["seed"], ev["infotext"]))
                ctx.image(image, {**ev.get("payload", {}), "path": str(path), "seed": ev["seed"],
                                  "infotext": ev["infotext"]}, label=ev.get("label"))
        elif kind == "report":
            ctx.report(ev["key"], ev["value"])
        elif kind == "done":
            return ev["result"]
        elif kind == "error":
            if ev["type"] == "cancelled":
                raise Cancelled(ev["message"])
            if ev.get("bad_request"):
                raise BadRequest(ev["message"])
            known = ev["type"] in ("ValueError", "RuntimeError", "FileNotFoundError", "OutOfMemory", "LoadError")
            raise RuntimeError(ev["message"] if known else f"{ev['type']}: {ev['message']}")
        return None

    @staticmethod
    def _result(state: Attempt, last: dict[str, Any] | None, params: Any, seed: int, subseed: int) -> Any:
        """The job's GenerationResult: every image received (over all attempts), the last attempt's facts."""
        from pipelines.engine.generate import GenerationResult  # torch: only when a job ends

        last = last or {"parameters": params.model_dump(exclude={"controlnet"}), "model": ""}
        parameters = {**last.get("parameters", {}), "seed": seed, "n_iter": params.n_iter}
        if "subseed" in parameters:
            parameters["subseed"] = subseed
        out = GenerationResult(parameters=parameters, model=last.get("model", ""),
                               skipped=last.get("skipped", 0), warnings=list(last.get("warnings", [])),
                               denoising_steps=last.get("denoising_steps", 0), memory_mode=last.get("memory_mode", ""),
                               vae=last.get("vae"), vae_hash=last.get("vae_hash"),
                               control_maps={int(k): from_png(v) for k, v in last.get("control_maps", {}).items()})
        for image, path, s, text in state.images:
            out.add(image, path, s, s - seed + subseed, text)
        return out


class Cluster:
    """The Serve application and the worker slots that use it."""

    def __init__(self, handle: Any, writer: Any, slots: int, facts: dict[str, Any], local: bool, settings: Any,
                 owned: bool = True, signals: Any = None):
        self.handle, self.facts, self.local, self.owned = handle, facts, local, owned
        skip_lock = threading.Lock()
        self.engines = [RemoteEngine(f"ray:{i}", handle, writer, settings.memory, skip_lock, signals)
                        for i in range(slots)]

    def machine(self) -> Any:
        from pipelines import first_run

        return first_run.Machine(self.facts["device"], self.facts["total_memory"], fp16=self.facts["fp16"])

    def describe(self) -> str:
        return f"Ray Serve, {len(self.engines)} replica slot(s), each {self.facts['describe']}"

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            if self.local:
                serve.shutdown()
            elif self.owned:  # an application its operators deployed stays
                serve.delete(APP)
        finally:
            ray.shutdown()


def replica_options(replicas: int | None, gpus: int) -> dict[str, Any]:
    """Serve options: a fixed number of replicas, or autoscaling from 1 to one per GPU (2 on CPUs)."""
    actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    if replicas:
        return {"num_replicas": replicas, "ray_actor_options": actor}
    return {"autoscaling_config": {"min_replicas": 1, "max_replicas": max(gpus, 1) if gpus else 2,
                                   "target_ongoing_requests": 1}, "ray_actor_options": actor}


def absolute(settings: Any) -> Any:
    """The settings with every path absolute: replicas run in other folders (and the models folder is shared by
    path between the nodes)."""
    changes = {f.name: Path(v).absolute() for f in dataclasses.fields(settings)
               if isinstance(v := getattr(settings, f.name), Path)}
    return dataclasses.replace(settings, **changes)


def start_cluster(settings: Any, writer: Any) -> Cluster:
    """Start or join Ray (`--ray auto` | an address), deploy the replicas and wait until they serve."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SystemExit("--ray needs Ray Serve: python -m pip install -r requirements-ray.txt") from None
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.update({k: os.environ[k] for k in ("HF_HUB_OFFLINE", "HF_HOME", "HF_ENDPOINT") if k in os.environ})
    local = settings.ray in ("auto", "local")
    if not ray.is_initialized():
        if local:
            ray.init(num_cpus=max(os.cpu_count() or 1, settings.ray_replicas or 1), include_dashboard=False,
                     runtime_env={"env_vars": env})
        else:
            ray.init(address=settings.ray, runtime_env={"env_vars": env})
    gpus = int(ray.cluster_resources().get("GPU", 0))
    log.info("Ray cluster at %s: %d GPU(s)", ray.get_runtime_context().gcs_address, gpus)
    options = replica_options(settings.ray_replicas, gpus)
    from pipelines.engine.replica import deployment  # the replica side (torch) only now

    t0 = time.perf_counter()
    running = not local and APP in serve.status().applications  # deployed by its operators (deploy/serve.yaml)
    if running:
        handle = serve.get_app_handle(APP)
        options = {"num_replicas": settings.ray_replicas or max(gpus, 1)}  # the slots: one per replica expected
    else:
        serve.start(proxy_location="Disabled")  # the head serves HTTP itself; Serve only routes to the replicas
        app = deployment(options).bind(absolute(settings), "cuda" if gpus else "cpu")
        handle = serve.run(app, name=APP, route_prefix=None)
    facts = handle.facts.remote().result(timeout_s=IDLE_S)
    slots = options.get("num_replicas") or options["autoscaling_config"]["max_replicas"]
    log.info("Ray Serve: %d replica slot(s) ready in %.1f s (%s)", slots, time.perf_counter() - t0, facts["describe"])
    signals = ray.remote(num_cpus=0)(Signals).remote()  # Interrupt and Skip for the jobs that end themselves
    return Cluster(handle, writer, slots, facts, local, settings, owned=not running, signals=signals)
