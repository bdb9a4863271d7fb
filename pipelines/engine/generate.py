"""The generation engine: runs on the device worker, one job at a time. The one executor of every mode.

A Generate click reaches here as: the studio validates the request into its typed model and queues a job; the job
calls `Engine.txt2img` / `img2img` / `hires_fix`, which pick the mode's `Plan` (modes.py) and hand it to
`Engine.generate`. That reads top to bottom as numbered steps: resolve the request (request.py), pin the
checkpoint's components, encode the prompts once, then for each batch run the plan's passes through `denoise`
(a pipeline view over the cached components with a fresh scheduler, the memory mode, previews, progress,
cancel and skip), decode with the fp16 NaN guard, and save every image as soon as it is decoded. Out of memory
reruns the batch once in the next lower mode (`with_oom_retry`, which the tiled upscale's tiles use too).
Per-job state lives in a `Run` (request.py), never on the long-lived `Engine`.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import torch
from PIL import Image

from extensions.base import ExtensionContext
from pipelines import discovery
from pipelines.discovery import CheckpointInfo
from pipelines.engine import control, fastpath, memory, modes, previews, prompts
from pipelines.engine import vae as vae_loader
from pipelines.engine.control import ControlRequest
from pipelines.engine.devices import Hardware, apply_attention, free_memory
from pipelines.engine.embeddings import EmbeddingLoader
from pipelines.engine.loading import Components, load_components
from pipelines.engine.lora import LoraPatcher, LoraUse
from pipelines.engine.manager import ModelManager
from pipelines.engine.plans import FIRST_NOISE, HIRES_KEYS, Plan
from pipelines.engine.request import Resolved, Run
from pipelines.engine.sampling.rng import ImageRNG, Source, canonical_source
from pipelines.engine.sampling.scheduler import A1111Scheduler, PassSteps, SamplerSpec
from pipelines.errors import BadRequest
from pipelines.folders import ModelFolders
from pipelines.jobs import JobContext, Skipped
from pipelines.networks import tags
from pipelines.networks.vaes import VaeFile, VaeLibrary
from pipelines.outputs import OutputWriter
from pipelines.params import cost, infotext, samplers
from pipelines.params.infotext import VERSION

if TYPE_CHECKING:  # the request models the specs generate (pipelines/params/specs.py)
    from pipelines.networks.embeddings import Embeddings
    from pipelines.networks.loras import LoraLibrary
    from pipelines.params.specs import Img2ImgParams, Txt2ImgParams

log = logging.getLogger("studio.generate")
T = TypeVar("T")
# what the cache holds per checkpoint; "family" as loading detected it (a hub id's listed family may be "unknown")
COMPONENT_FIELDS = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler_config",
                    "family")


class OutOfMemory(RuntimeError):
    pass


@dataclass
class GenerationResult:
    images: list[Image.Image] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    control_maps: dict[int, Image.Image] = field(default_factory=dict)  # unit number -> map its preprocessor made
    denoising_steps: int = 0  # UNet steps run, one per image per step (pipelines/params/cost.py counts the same way)
    memory_mode: str = ""  # the memory mode the job ended in (lower than set after an out-of-memory retry)
    vae: str | None = None  # the VAE used when not the checkpoint's own (A1111's sd_vae_name), and its short hash
    vae_hash: str | None = None

    @classmethod
    def merge(cls, parts: list["GenerationResult"]) -> "GenerationResult":
        """One job's result from the results of its batches run on several workers (JobContext.spread), in order."""
        out = cls(parameters=dict(parts[0].parameters), model=parts[0].model, vae=parts[0].vae,
                  vae_hash=parts[0].vae_hash, memory_mode=parts[0].memory_mode)
        for p in parts:
            for image, path, seed, subseed, text in zip(p.images, p.paths, p.seeds, p.subseeds, p.infotexts):
                out.add(image, path, seed, subseed, text)
            out.skipped += p.skipped
            out.denoising_steps += p.denoising_steps
            out.warnings += [w for w in p.warnings if w not in out.warnings]
            out.control_maps = out.control_maps or p.control_maps
        return out

    def add(self, image: Image.Image, path: Path, seed: int, subseed: int, text: str) -> None:
        self.images.append(image)
        self.paths.append(path)
        self.seeds.append(seed)
        self.subseeds.append(subseed)
        self.infotexts.append(text)


class Engine:
    """Device-side work. Owned by the job worker thread; the UI and API reach it through jobs only."""

    def __init__(self, hardware: Hardware, manager: ModelManager, writer: OutputWriter, *, config_root: Path,
                 hash_cache: Path | None = None, rng: str = "CPU", preview_every: int = 5,
                 models_dir: Path = Path("models"), hub_endpoint: str | None = None, memory_mode: str = "high",
                 oom_retry: bool = False, channels_last: bool = False, compile_unet: bool = False,
                 preview_decoder: str = "auto", compile_backend: str = "inductor", esrgan_dir: Path | None = None,
                 loras: "LoraLibrary | None" = None, embeddings: "Embeddings | None" = None,
                 vaes: VaeLibrary | None = None, checkpoints_dir: Path | None = None, round_pixels: bool = False,
                 load_lock: Any = None):
        self.hw = hardware
        self.models_dir = Path(models_dir)
        self.esrgan_dir = esrgan_dir  # --esrgan-models-path (None: models/ESRGAN)
        self.loras = loras  # the listed LoRA / LyCORIS files (pipelines/networks/loras.py)
        # textual-inversion embeddings: the listing (pipelines/networks/embeddings.py) and the vectors read so far
        self.embeddings = EmbeddingLoader(embeddings) if embeddings is not None else None
        self.patcher = LoraPatcher()  # applies them to cached components, reversibly (pipelines/engine/lora.py)
        self.hash_cache = hash_cache
        # the listed VAE files a job's sd_vae may name (pipelines/networks/vaes.py; app.py shares the studio's)
        self.vaes = vaes if vaes is not None else VaeLibrary(ModelFolders.under(self.models_dir), hash_cache)
        self.manager = manager
        self.writer = writer
        self.config_root = Path(config_root)
        self.rng = canonical_source(rng)  # the noise source of requests that name none (CPU | GPU | NV)
        self.round_pixels = round_pixels  # 8-bit conversion: round (diffusers) instead of truncate (A1111)
        # Loading builds models under accelerate's empty-weights context, which patches torch.nn process-wide: the
        # engines of several device workers share one lock (app.py), so their loads take turns.
        self.load_lock = load_lock if load_lock is not None else threading.Lock()
        self.preview_every = preview_every
        self.hub_endpoint = hub_endpoint  # annotator and hub-model downloads; None = offline
        self.checkpoints_dir = checkpoints_dir  # where a hub model's offline error says to put a checkpoint
        self.memory_mode = memory_mode  # pipelines/engine/memory.py: high | normal | low | minimal; each job starts in it
        self.oom_retry = oom_retry  # retry once in the next lower memory mode after an out-of-memory error
        self.channels_last = channels_last  # pipelines/engine/fastpath.py, applied as a UNet/ControlNet is loaded
        self.compile_unet = compile_unet
        self.compile_backend = compile_backend  # torch.compile backend (tests use a cheaper one; no setting)
        self.preview_decoder = preview_decoder  # auto | taesd | latent (pipelines/engine/previews.py)
        # notices logged once per process, not per job (`once`: e.g. missing TAESD weights); a job's own warnings
        # go to its Run
        self._logged: set[str] = set()
        self._logged_lock = threading.Lock()

    # -- components ----------------------------------------------------------------------------
    @staticmethod
    def identity(info: Any) -> str:
        """A cache key part that changes when the file behind a checkpoint or ControlNet model changes."""
        if info.path is not None and info.path.exists():
            st = info.path.stat()
            return f"{info.name}@{st.st_size}-{int(st.st_mtime)}"
        return info.name

    def holds(self, info: CheckpointInfo) -> bool:
        """True when this engine's cache already holds the checkpoint's UNet (a job for it starts without a load):
        the job queue sends such a job to this engine's worker when it is idle."""
        return self.manager.where(f"{self.identity(info)}::unet") is not None

    @contextmanager
    def components(self, info: CheckpointInfo, ctx: JobContext | None = None, *,
                   run: Run | None = None) -> Iterator[Components]:
        """The checkpoint's components from the cache, pinned while inside. In a memory mode that offloads, they
        stay in RAM and offload hooks (kept on `run`, for work outside the pipeline call) bring each to the
        device while it runs."""
        ctx = run.ctx if run is not None else ctx
        ident = self.identity(info)
        keys = [f"{ident}::{f}" for f in COMPONENT_FIELDS]

        def load() -> dict[str, Any]:
            if ctx is not None:
                ctx.progress(0, 1, label=f"loading {info.name}")
            with self.load_lock:
                c = load_components(info, dtype=self.hw.dtype, config_root=self.config_root,
                                    progress=self.download_progress(ctx), checkpoints_dir=self.checkpoints_dir,
                                    hub_endpoint=self.hub_endpoint, offline=self.hub_endpoint is None)
            if ctx is not None:
                ctx.progress(0, 1, label=f"hashing {info.name}")
            discovery.ensure_hash(info, self.hash_cache)  # A1111 "Model hash", cached after the first time
            for m in (c.unet, c.vae):
                apply_attention(m, self.hw.attention)
            self.prepare_denoiser(c.unet)
            return {f"{ident}::{f}": getattr(c, f) for f in COMPONENT_FIELDS}

        mode = run.mode if run is not None else self.memory_mode
        offload = memory.offloads(mode) and self.hw.device.type != "cpu"
        place = "cpu" if offload else "device"
        with self.manager.use(keys, load, place=place) as objs, self.job_vae(run, objs[f"{ident}::vae"], place) as vae:
            comps = Components(**{f: objs[f"{ident}::{f}"] for f in COMPONENT_FIELDS})
            if vae is not None:  # the job's VAE (sd_vae) in place of the checkpoint's, before any offload hook
                comps.vae = vae
            if not offload:
                yield comps
                return
            chain = memory.OffloadChain([comps.text_encoder, comps.text_encoder_2, comps.unet, comps.vae],
                                        self.hw.device)
            with chain.active():  # models stay in RAM: hooks bring each one to the device while it runs
                if run is not None:
                    run.offload = chain
                try:
                    yield comps
                finally:
                    if run is not None:
                        run.offload = None

    @contextmanager
    def job_vae(self, run: Run | None, base: Any, place: str = "device") -> Iterator[Any]:
        """The job's own VAE (`run.vae`, A1111's sd_vae) from the component cache, pinned while inside; on a miss
        loaded with the config of the checkpoint's VAE `base` (pipelines/engine/vae.py). Cached per file and config
        like any component, so a VAE switch never reloads the UNet. None: the job uses the checkpoint's own."""
        vae = run.vae if run is not None else None
        if vae is None:
            yield None
            return
        key = f"vae:{self.identity(vae)}::{vae_loader.config_digest(base.config)}"

        def load() -> dict[str, Any]:
            run.ctx.progress(0, 1, label=f"loading VAE {vae.name}")
            with self.load_lock:
                model = vae_loader.load_vae(vae, base.config, dtype=self.hw.dtype, config_root=self.config_root)
            apply_attention(model, self.hw.attention)
            return {key: model}

        with self.manager.use([key], load, place=place) as objs:
            yield objs[key]

    def choose_vae(self, choice: str | None, info: CheckpointInfo) -> VaeFile | None:
        """The VAE a job with `sd_vae` = `choice` uses on `info` (None: the checkpoint's own); BadRequest for a name
        that is not listed (the studio checks names before a job is queued)."""
        try:
            return self.vaes.choose(choice, info)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def vae_infotext(self, run: Run) -> dict[str, str]:
        """A1111's `VAE hash` (10 hex digits of its sha256) and `VAE` (its name), for a job whose VAE is not the
        checkpoint's own."""
        if run.vae is None:
            return {}
        return {"VAE hash": self.vaes.short_hash(run.vae), "VAE": run.vae.name}

    def prepare_denoiser(self, model: torch.nn.Module) -> torch.nn.Module:
        """Channels-last / torch.compile for a UNet or ControlNet, once per module (pipelines/engine/fastpath.py)."""
        return fastpath.prepare_unet(model, channels_last=self.channels_last, compile=self.compile_unet,
                                     backend=self.compile_backend)

    @contextmanager
    def cached(self, key: str, load: Any) -> Iterator[Any]:
        """One component from the model manager's cache (loaded by `load()` on a miss), pinned while inside."""
        def locked() -> dict[str, Any]:
            with self.load_lock:
                return {key: load()}

        with self.manager.use([key], locked) as objs:
            yield objs[key]

    @staticmethod
    def download_progress(ctx: JobContext | None):
        if ctx is None:
            return None

        def report(label: str, done: int, total: int) -> None:
            ctx.check()
            ctx.progress(done, max(total, 1), label=label)

        return report

    def warm(self, ctx: JobContext, info: CheckpointInfo) -> str:
        """Load a checkpoint onto the device (model switch) without generating."""
        with self.components(info, ctx):
            pass
        return info.name

    # -- generation ----------------------------------------------------------------------------
    def txt2img(self, ctx: JobContext, params: "Txt2ImgParams", info: CheckpointInfo,
                controls: list[ControlRequest] = ()) -> GenerationResult:
        """`params`: a validated Txt2ImgParams (Hires. fix when `enable_hr`)."""
        return self.generate(ctx, params, info, modes.txt2img(params), controls)

    def hires_fix(self, ctx: JobContext, params: "Txt2ImgParams", info: CheckpointInfo,
                  image: Image.Image) -> GenerationResult:
        """Hires. fix's second pass over `image`, an image txt2img already made with `params` (its first pass)."""
        return self.generate(ctx, params, info, modes.hires_on_image(image))

    def img2img(self, ctx: JobContext, params: "Img2ImgParams", info: CheckpointInfo, image: Image.Image,
                mask: Image.Image | None = None, controls: list[ControlRequest] = ()) -> GenerationResult:
        """`params`: a validated Img2ImgParams; inpaint when a mask is given."""
        return self.generate(ctx, params, info, modes.img2img(image, mask), controls)

    def outpaint(self, ctx: JobContext, params: Any, info: CheckpointInfo, image: Image.Image,
                 controls: list[ControlRequest] = ()) -> GenerationResult:
        """`params`: a validated OutpaintParams (pipelines/engine/outpaint.py), batch_size 1."""
        return self.generate(ctx, params, info, modes.outpaint(image), controls)

    # -- the jobs written as functions of an engine: one method each, the calls a remote engine offers too ---------
    def zoom_keyframes(self, ctx: JobContext, params: Any, info: CheckpointInfo,
                       image: Image.Image | None = None) -> Any:
        """The infinite zoom's keyframes (pipelines/engine/zoom.py; the studio writes the video with finish_zoom)."""
        from pipelines.engine.zoom import zoom_keyframes

        return zoom_keyframes(self, ctx, params, info, image)

    def extras(self, ctx: JobContext, images: list[tuple[str, Image.Image]], params: Any) -> GenerationResult:
        """Plain upscaling (A1111's extras): pipelines/engine/upscale.py."""
        from pipelines.engine.upscale import extras

        return extras(self, ctx, images, params)

    def sd_upscale(self, ctx: JobContext, params: Any, info: CheckpointInfo, image: Image.Image) -> GenerationResult:
        """The tiled SD upscale: pipelines/engine/upscale.py."""
        from pipelines.engine.upscale import sd_upscale

        return sd_upscale(self, ctx, params, info, image)

    def detect(self, ctx: JobContext, unit: Any, image: Image.Image) -> Image.Image:
        """A ControlNet preprocessor's map of `image` (the ControlNet tab's preview, /controlnet/detect)."""
        return control.detect_map(self, ctx, unit, image)

    def start(self, ctx: JobContext, params: Any = None, info: CheckpointInfo | None = None) -> Run:
        """A job's own state; the job starts in the configured memory mode (an OOM retry may lower it). Given the
        request and checkpoint, the job's VAE is chosen too (its `sd_vae`)."""
        run = Run(ctx, mode=self.memory_mode)
        ctx.report("memory_mode", run.mode)
        if info is not None:
            run.vae = self.choose_vae(getattr(params, "sd_vae", None), info)
        return run

    def generate(self, ctx: JobContext, params: "Txt2ImgParams | Img2ImgParams", info: CheckpointInfo, plan: Plan,
                 controls: list[ControlRequest] = ()) -> GenerationResult:
        """Run a job of any mode: `plan` describes what differs between txt2img, hires fix, img2img and inpaint;
        `controls` are the enabled ControlNet units (checked by the studio)."""
        # 1. Resolve the request for this model and input: seeds, schedule type, size.
        run = self.start(ctx, params, info)
        r = plan.resolve(params, info, run)
        p = r.params
        values = r.values()
        if plan.mode != "txt2img" and values.get("sgm_noise_multiplier"):
            values["sgm_noise_multiplier"] = False  # A1111 scales only txt2img's first noise (and writes SGM there)
        result = GenerationResult(parameters=values, model=info.model_name, warnings=run.warnings)
        steps = plan.steps(r)  # per batch: progress counts a batch's steps once, whatever its size
        run.total, total_images = p.n_iter * steps, p.n_iter * p.batch_size
        ctx.check()

        # 2. Pin the checkpoint's components on the device (loads or moves them only when needed), detect the
        #    ControlNet maps and pin the ControlNet models.
        with self.components(info, run=run) as comps, control.prepare(
                self, ctx, list(controls), r.size, plan.control_source, plan.control_frame,
                cfg=p.cfg_scale > 1) as run.control:
            ctx.check()
            extra_info = {**plan.infotext_extra(r), **(run.control.infotext() if run.control else {}),
                          **self.vae_infotext(run), "Version": VERSION}
            result.vae, result.vae_hash = extra_info.get("VAE"), extra_info.get("VAE hash")
            self._save_maps(plan, run, result, r.seed)
            # 3. Encode prompt and negative prompt once: emphasis, 75-token chunks, clip skip.
            embeds = self.encode(comps, p.prompt, p.negative_prompt, p.clip_skip, run=run)
            hr_prompt = getattr(p, "hr_prompt", "") if getattr(p, "enable_hr", False) else ""
            extra_info = self.with_network_hashes(extra_info, run, hr_prompt)

            # 4. One pass (or two) per batch; every image is saved as soon as it is decoded.
            for it in range(p.n_iter):
                ctx.check()
                seeds = [r.seed + it * p.batch_size + i for i in range(p.batch_size)]
                subseeds = [r.subseed + it * p.batch_size + i for i in range(p.batch_size)]
                label = f"batch {it + 1}/{p.n_iter}"
                start = run.done
                try:
                    images = plan.shortcut(r)
                    if images is None:
                        images = self.with_oom_retry(run, r.size, len(seeds), lambda: self.run_passes(
                            run, comps, plan, r, embeds, seeds, subseeds, label))
                        result.denoising_steps += steps * len(seeds)
                except Skipped:
                    ctx.clear_skip()
                    run.done = start + steps
                    result.skipped += len(seeds)
                    log.info("batch %d/%d skipped", it + 1, p.n_iter)
                    continue
                for img, s in run.keep:  # e.g. hires fix's first pass, when asked to keep it
                    first = {k: v for k, v in values.items() if k not in HIRES_KEYS}
                    self.writer.save(img, infotext.build_infotext(
                        first, seed=s, subseed=s, model_name=info.model_name, model_hash=info.short_hash,
                        extra={k: v for k, v in extra_info.items() if k != "Hires resize"}), plan.mode, s,
                        suffix="-before-highres-fix")
                run.keep.clear()
                for img, s, sub in zip(plan.finish(images), seeds, subseeds):
                    text = infotext.build_infotext(values, seed=s, subseed=sub, model_name=info.model_name,
                                                   model_hash=info.short_hash, extra=extra_info)
                    path = self.writer.save(img, text, plan.mode, s)
                    result.add(img, path, s, sub, text)
                    ctx.image(img, {"path": str(path), "seed": s, "infotext": text},
                              label=f"image {len(result.images)}/{total_images}")
        result.memory_mode = run.mode
        return result

    def run_passes(self, run: Run, comps: Components, plan: Plan, r: Resolved, embeds: dict, seeds: list[int],
                   subseeds: list[int], label: str) -> list[Image.Image]:
        """One batch: run each pass the plan describes and hand its output back to the plan, which may describe a
        further pass from it (Hires. fix); the plan's return value is the batch's images."""
        run.keep.clear()  # a retried batch keeps its first pass once; a skipped one's first pass is not saved later
        passes = plan.passes(self, run, comps, r, seeds, subseeds)
        try:
            step = next(passes)
            while True:
                self.apply_loras(run, comps, step.prompt if step.prompt is not None else r.params.prompt)
                out = self.denoise(run, comps, step.kind, step.request, step.embeds or embeds, seeds, step.extra,
                                   pass_steps=step.steps, label=label + step.label, control=run.control,
                                   hires=step.hires, subseeds=subseeds)
                step = passes.send(out)
        except StopIteration as done:
            return done.value

    def with_oom_retry(self, run: Run, size: tuple[int, int], batch: int, work: Callable[[], T]) -> T:
        """`work()` (a batch, a tile); after running out of device memory, once more in the next lower memory
        mode (when allowed). The rest of the job keeps the lower mode; seeds stay the same, so no image is lost
        or doubled, and progress goes back to where the failed try started."""
        retried, start = False, run.done
        while True:
            try:
                return work()
            except RuntimeError as e:  # OutOfMemory from denoise, or e.g. a hires pass' VAE decode running out
                if not is_oom(e):
                    raise
            # leaving the handler dropped the traceback: the failed try's latents and pipeline went with it
            failed = run.mode
            self.manager.free()  # unpinned cached models leave the device; ends with gc + empty_cache
            lower = memory.lower(failed) if self.oom_retry and not retried else None
            if lower is None:
                raise OutOfMemory(memory.oom_message(size, batch, failed, retried))
            note = f"Out of memory in {failed} mode at {size[0]}x{size[1]}: retried in {lower} mode"
            self.note(note, run.warnings)
            run.mode, retried, run.done = lower, True, start
            run.ctx.report("memory_mode", lower)
            run.ctx.report("memory_mode_lowered", True)

    def _save_maps(self, plan: Plan, run: Run, result: GenerationResult, seed: int) -> None:
        """Save each detected ControlNet map (as fitted to the image) beside the output, once per job."""
        if run.control is None:
            return
        infos = run.control.infotext()
        for unit, fitted in zip(run.control.units, run.control.maps):
            if unit.unit.module != "none":  # a ready-made map is the user's own file
                result.control_maps[unit.request.index] = fitted
                key = f"ControlNet {unit.request.index}"
                self.writer.save(fitted, f"{key} map: {infos[key]}", plan.mode, seed,
                                 suffix=f"-controlnet-{unit.request.index}")

    def lora_uses(self, prompt: str) -> list[LoraUse]:
        """The LoRA files a prompt's `<lora:...>` tags name (BadRequest for an unknown name; the studio checks the
        names and families before a job is queued)."""
        uses = []
        for tag in tags.parse(prompt).loras:
            info = self.loras.find(tag.name) if self.loras is not None else None
            if info is None or info.error:
                raise BadRequest(f"Unknown LoRA '{tag.name}' in {tag.text}" + (f": {info.error}" if info else ""))
            uses.append(LoraUse(info, tag.te, tag.unet, tag.dyn))
        return uses

    def apply_loras(self, run: Run | None, comps: Components, prompt: str) -> None:
        """Patch the components with the prompt's LoRAs, or restore them when it names none (a no-op when the
        components already carry that set). The job records each LoRA for its infotext's `Lora hashes`."""
        uses = self.lora_uses(prompt)
        report = self.patcher.activate(comps, uses)
        if run is None:
            return
        for use, tag in zip(uses, tags.parse(prompt).loras):
            run.loras.setdefault(tag.name, use.info)
        for name, count in report.unmatched.items():
            run.note(f"LoRA {name}: {count} of its layers match no layer of this model; they were left out")
        if not report.unchanged and uses:
            run.ctx.report("loras", [u.info.name for u in uses])

    def with_network_hashes(self, extra: dict[str, Any], run: Run, *more_prompts: str) -> dict[str, Any]:
        """The infotext extras plus A1111's `Lora hashes: "name: hash12, ..."` for the LoRAs the job used (and
        those a later pass's prompt names), before "Version" as A1111 orders them."""
        for prompt in more_prompts:
            for use, tag in zip(self.lora_uses(prompt or ""), tags.loras_in(prompt or "")):
                run.loras.setdefault(tag.name, use.info)
        hashes = [f"{name.replace(':', '').replace(',', '')}: {self.loras.hash(info)[:12]}"
                  for name, info in run.loras.items()] if self.loras is not None else []
        head = {k: v for k, v in extra.items() if k != "Version"}
        ti = self.embeddings.ti_hashes(run.embeddings) if self.embeddings is not None else None
        return {**head, **({"Lora hashes": ", ".join(hashes)} if hashes else {}), **({"TI hashes": ti} if ti else {}),
                **({"Version": extra["Version"]} if "Version" in extra else {})}

    def encode(self, comps: Components, prompt: str, negative: str, clip_skip: int, *,
               run: Run | None = None) -> dict[str, torch.Tensor]:
        """Prompt embeddings for the pipeline (A1111 emphasis, 75-token chunks, clip skip; SDXL's two encoders).
        The prompt's LoRA tags are applied first (the text encoder is patched too) and removed from the text."""
        self.apply_loras(run, comps, prompt)
        if tags.loras_in(negative) and run is not None:
            run.note("LoRA tags in the negative prompt have no effect (as in A1111); they were removed from its text")
        prompt, negative = tags.strip(prompt), tags.strip(negative)
        sdxl = comps.sdxl
        tokenizers = [t for t in (comps.tokenizer, comps.tokenizer_2) if t]
        encoders = [e for e in (comps.text_encoder, comps.text_encoder_2) if e is not None]
        embeds = prompts.encode_prompts(
            prompt, negative, tokenizers=tokenizers, text_encoders=encoders, clip_skip=clip_skip,
            device=self.hw.device, dtype=self.hw.dtype, sdxl=sdxl, zero_empty_negative=sdxl,
            embeddings=self.embeddings.for_encoders(tokenizers, encoders) if self.embeddings is not None else None)
        if run is not None:  # textual-inversion embeddings the prompts used, for the infotext's `TI hashes`
            run.embeddings.extend(name for name in embeds.used if name not in run.embeddings)
        return embeds

    def image_rng(self, params: Any, seeds: list[int], subseeds: list[int], shape: tuple[int, ...]) -> ImageRNG:
        """The batch's noise, as A1111 draws it (sampling/rng.py): the request's random source (`randn_source`,
        else the studio's), variation seed and strength, eta noise seed delta."""
        source = Source(getattr(params, "randn_source", None) or self.rng, self.hw.device)
        return ImageRNG(source, shape, seeds, subseeds=subseeds,
                        subseed_strength=float(getattr(params, "subseed_strength", 0.0) or 0.0),
                        ensd=int(getattr(params, "eta_noise_seed_delta", 0) or 0))

    def noise(self, params: Any, seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        """Fresh noise for `seeds` (A1111's create_random_tensors: no variation), on the device in its dtype."""
        return self.image_rng(params, seeds, seeds, shape).next().to(self.hw.device, self.hw.dtype)

    def scheduler(self, r: Resolved, comps: Components, seeds: list[int], rng: ImageRNG, *,
                  img2img: bool) -> Any:
        """The pass's scheduler: A1111's own sampler where the studio has it (sampling/scheduler.py), else the
        sampler's diffusers class (samplers.py records which, and what that costs in parity)."""
        spec = samplers.spec(r.sampler)
        if spec.a1111 is None:
            return samplers.make_scheduler(r.sampler, r.scheduler, comps.scheduler_config, seed=seeds)
        steps = PassSteps(r.sample_steps or r.params.steps, r.strength, img2img=img2img, fixed=r.fixed_steps)
        # A1111's sampler options (the studio fills them from its options before queueing): eta (None: the
        # sampler's kind's default), always_discard_next_to_last_sigma, sgm_noise_multiplier
        eta = getattr(r.params, "eta", None)
        eta = float(eta) if eta is not None else samplers.eta_kind(r.sampler)[2]
        discard = spec.discard_penultimate or bool(getattr(r.params, "always_discard_next_to_last_sigma", False))
        return A1111Scheduler(SamplerSpec(spec.a1111, spec.brownian, discard, spec.solver_type),
                              samplers.resolve_schedule(r.sampler, r.scheduler), comps.scheduler_config, steps, rng,
                              seeds, sgm_noise_multiplier=bool(getattr(r.params, "sgm_noise_multiplier", False)),
                              eta=eta)

    def denoise(self, run: Run, comps: Components, kind: str, r: Resolved, embeds: dict, seeds: list[int],
                extra: dict[str, Any], *, pass_steps: int, label: str, control: "control.Control | None" = None,
                hires: bool = False, subseeds: list[int] | None = None) -> Any:
        """One pipeline call over a batch (sampler, schedule, steps, size from `r`, the pass being run); returns
        PIL images, or latents when `extra` asks for output_type="latent". The pipeline stops at the latents either
        way and `decode` makes the images (its fp16 NaN guard). With `control`, the ControlNet variant of the
        pipeline runs with the units' maps fitted to this pass. Progress counts from `run.done`, which grows by
        `pass_steps` when the pass ends; Interrupt raises Cancelled and Skip raises Skipped at the next step."""
        ctx, (w, h) = run.ctx, r.size
        # The pass's noise: a fresh ImageRNG per pass, as A1111 makes one for a Hires. fix pass too. A pass that
        # starts from noise gets the first noise as its latents; one that starts from an image is noised by the
        # scheduler (A1111's x + noise x sigma), and the pipeline's own draws use throwaway generators.
        rng = self.image_rng(r.params, seeds, subseeds or seeds, (4, h // 8, w // 8))
        from_noise = extra.get("latents") is FIRST_NOISE
        scheduler = self.scheduler(r, comps, seeds, rng, img2img=not from_noise)
        extra = dict(extra)
        if isinstance(scheduler, A1111Scheduler):
            if from_noise:
                extra["latents"] = scheduler.first_noise().to(self.hw.device, self.hw.dtype)
            elif kind == "inpaint" and extra.get("strength", 1.0) >= 1.0:
                extra["strength"] = 0.999  # A1111 noises the image at full strength too (diffusers: pure noise)
            scheduler.pipeline_strength = float(extra.get("strength", 1.0)) if not from_noise else 1.0
            extra["generator"] = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        else:
            if from_noise:
                extra["latents"] = rng.next().to(self.hw.device, self.hw.dtype)
            extra["generator"] = rng.generators if rng.source.name != "NV" else [
                torch.Generator("cpu").manual_seed(s + rng.ensd) for s in seeds]  # step noise
        stack = None
        if control is not None:
            stack, args = control.for_pass(kind, (w, h), hires=hires)
            extra = dict(extra, **args)
            if "masked_image_latents" in extra:  # the ControlNet inpaint pipelines start from pixels only
                extra.pop("masked_image_latents")
                extra["image"] = self.decode(comps, extra["image"], run.warnings)
        pipe = build_pipeline(comps, scheduler, kind, controlnet=stack)
        order = getattr(scheduler, "order", 1)  # 2nd-order samplers (Heun, DPM2) call back ~twice per step
        per_pass, done_before = max(pass_steps, 1), run.done
        # A compiled UNet/ControlNet compiles again for each new input shape: say so before the slow first step.
        nets = [comps.unet, *(u.net for u in control.units)] if control is not None else [comps.unet]
        unet_batch = len(seeds) * (2 if r.params.cfg_scale > 1 else 1)
        warm = fastpath.Warmup.begin(nets, (w, h, unet_batch, embeds["prompt_embeds"].shape[1]))
        if warm is not None:
            ctx.progress(done_before, run.total, label="compiling UNet (first step)…")

        def on_step(pipe_: Any, i: int, t: Any, kw: dict) -> dict:
            ctx.skip_point()  # Interrupt ends the job; Skip abandons this pass (the caller says what that means)
            if warm is not None:
                warm.step()
            done = scheduler.progress(i + 1) if isinstance(scheduler, A1111Scheduler) else -(-(i + 1) // order)
            ctx.progress(done_before + min(done, per_pass), run.total, label=label)
            if self.preview_every and (i + 1) % self.preview_every == 0:
                ctx.preview(preview(kw["latents"]), step=i + 1)
            return kw

        call: dict[str, Any] = dict(
            num_inference_steps=r.steps, guidance_scale=r.params.cfg_scale, width=w, height=h,
            num_images_per_prompt=len(seeds), callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"], output_type="pil", **embeds)
        call.update(extra)  # the plan may override e.g. num_inference_steps
        if isinstance(scheduler, A1111Scheduler) and "strength" in call:  # diffusers needs int(n x strength) >= 1
            call["num_inference_steps"] = cost.schedule_length(call["num_inference_steps"], call["strength"])
        want_latents = call["output_type"] == "latent"
        call["output_type"] = "latent"
        mode = run.mode
        try:
            with self._memory_mode(pipe, mode, (w, h), run), self._previewer(comps.sdxl, (w, h)) as preview, \
                    torch.inference_mode():
                latents = pipe(**call).images
                if warm is not None and (note := warm.report((w, h))):
                    self.note(note, run.warnings)
                run.done = done_before + pass_steps
                if want_latents:
                    return latents
                return self.decode(comps, latents, run.warnings, watermark=getattr(pipe, "watermark", None))
        except RuntimeError as e:  # torch.OutOfMemoryError, or MPS' / cuDNN's out-of-memory RuntimeErrors
            if not is_oom(e):
                raise
        # Outside the handler the error's traceback is gone, and with it the failed call's frames and tensors.
        del pipe, call, extra, stack
        free_memory()
        raise OutOfMemory(memory.oom_message((w, h), len(seeds), mode, retried=False))

    def _memory_mode(self, pipe: Any, mode: str, size: tuple[int, int], run: Run):
        """pipelines/engine/memory.py's mode for one pipeline call (undone after it)."""
        if memory.offloads(mode) and self.hw.device.type == "cpu" and self.once("cpu-offload"):
            log.info("memory mode %s on a CPU device: no offloading (RAM is the device), only slicing and tiling",
                     mode)
        return memory.applied(pipe, mode, self.hw.device, size, chain=run.offload)

    def once(self, key: str) -> bool:
        """True the first time `key` is asked for in this process (log a notice once, not per job)."""
        with self._logged_lock:
            if key in self._logged:
                return False
            self._logged.add(key)
            return True

    def _previewer(self, sdxl: bool, size: tuple[int, int]):
        """The live-preview decoder for one pass (TAESD from the component cache, or the latent approximation)."""
        return previews.previewer(self.preview_decoder if self.preview_every else "latent", self.models_dir, sdxl,
                                  size, dtype=self.hw.dtype, cache=self.cached, once=self.once)

    def decode(self, comps: Components, latents: torch.Tensor, notes: list[str] | None = None, *,
               watermark: Any = None) -> list[Image.Image]:
        """Latents (scaled, as the pipelines hold them) -> PIL images, decoded as the pipeline itself would, byte
        for byte: SDXL upcasts an fp16 VAE whose config says force_upcast, and denormalizes with latents_mean /
        latents_std when its config has them (StableDiffusionXLPipeline.__call__); SD 1.x/2.x decode in the VAE's
        dtype. NaN guard: an fp16 VAE that overflows gives NaN/Inf (a black image); then the batch is decoded
        again in float32 and a warning goes to `notes`. `watermark`: the SDXL pipeline's, when it has one."""
        vae, sdxl = comps.vae, comps.sdxl
        dtype = torch.float32 if sdxl and vae.dtype == torch.float16 and vae.config.force_upcast else vae.dtype
        pixels = vae_decode(vae, latents, dtype, sdxl)
        if dtype != torch.float32 and not torch.isfinite(pixels).all():
            pixels = vae_decode(vae, latents, torch.float32, sdxl)
            self.note(f"VAE produced NaNs in {str(dtype).removeprefix('torch.')}: decoded in float32; use an "
                      "fp16-fixed VAE (e.g. sdxl-vae-fp16-fix) to avoid the slower decode", notes)
        if watermark is not None:
            pixels = watermark.apply_watermark(pixels)
        return to_pil(pixels, round_pixels=self.round_pixels)

    @staticmethod
    def note(message: str, notes: list[str] | None) -> None:
        """A warning for the job's result (once per job) and the log."""
        if notes is not None:
            if message in notes:
                return
            notes.append(message)
        log.warning(message)

    def extension_context(self, ctx: JobContext) -> ExtensionContext:
        """What an extension may use from this job: device, progress/cancel hooks, the component cache."""

        return ExtensionContext(device=self.hw.device, dtype=self.hw.dtype, hooks=ctx, cache=self.cached,
                                models_dir=self.models_dir, hub_endpoint=self.hub_endpoint)


def to_pil(pixels: torch.Tensor, *, round_pixels: bool = False) -> list[Image.Image]:
    """Decoded pixels in [-1, 1] -> 8-bit images as A1111 writes them: clamp((x + 1) / 2) in float32, times 255,
    truncated (`astype(uint8)`); `round_pixels`: diffusers' VaeImageProcessor arithmetic, (x / 2 + 0.5) clamped,
    times 255, rounded to the nearest level."""
    if round_pixels:
        x = (pixels / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
        arr = (x * 255).round().astype("uint8")
    else:
        x = torch.clamp((pixels.float() + 1.0) / 2.0, min=0.0, max=1.0)
        arr = (255.0 * x.permute(0, 2, 3, 1).cpu()).numpy().astype("uint8")
    return [Image.fromarray(a) for a in arr]


def vae_decode(vae: Any, latents: torch.Tensor, dtype: torch.dtype, sdxl: bool) -> torch.Tensor:
    """One VAE decode of scaled latents in `dtype` (pixels in [-1, 1]). The cached, shared VAE is cast for the call
    and back after it, as diffusers' SDXL upcast does, so the model manager's byte count stays right."""
    was = vae.dtype
    try:
        if dtype != was:
            vae.to(dtype)
        z, cfg = latents.to(dtype), vae.config
        if sdxl and getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(z.device, z.dtype)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(z.device, z.dtype)
            z = z * std / cfg.scaling_factor + mean
        else:
            z = z / cfg.scaling_factor
        with torch.inference_mode():
            return vae.decode(z, return_dict=False)[0]
    finally:
        if vae.dtype != was:
            vae.to(was)


_PIPELINES = {
    (False, "txt2img"): "StableDiffusionPipeline", (False, "img2img"): "StableDiffusionImg2ImgPipeline",
    (False, "inpaint"): "StableDiffusionInpaintPipeline", (True, "txt2img"): "StableDiffusionXLPipeline",
    (True, "img2img"): "StableDiffusionXLImg2ImgPipeline", (True, "inpaint"): "StableDiffusionXLInpaintPipeline",
}
_CONTROL_PIPELINES = {
    (False, "txt2img"): "StableDiffusionControlNetPipeline",
    (False, "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    (False, "inpaint"): "StableDiffusionControlNetInpaintPipeline",
    (True, "txt2img"): "StableDiffusionXLControlNetPipeline",
    (True, "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    (True, "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
}


def build_pipeline(comps: Components, scheduler: Any, kind: str = "txt2img", controlnet: Any = None) -> Any:
    """A per-job pipeline view over cached components: constructing it moves and copies nothing. With a
    `controlnet` (a ControlStack), the ControlNet variant of the same pipeline."""
    import diffusers

    sdxl = comps.sdxl
    cls = getattr(diffusers, (_PIPELINES if controlnet is None else _CONTROL_PIPELINES)[(sdxl, kind)])
    cn = {} if controlnet is None else {"controlnet": controlnet}
    if sdxl:
        pipe = cls(vae=comps.vae, text_encoder=comps.text_encoder, text_encoder_2=comps.text_encoder_2,
                   tokenizer=comps.tokenizer, tokenizer_2=comps.tokenizer_2, unet=comps.unet, scheduler=scheduler, **cn)
    else:
        pipe = cls(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
                   scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                   **cn)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, OutOfMemory)) or "out of memory" in str(e).lower()


__all__ = ["Engine", "GenerationResult", "build_pipeline", "is_oom"]
