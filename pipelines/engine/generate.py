"""The generation engine: runs on the device worker, one job at a time.

`Engine.generate` reads top to bottom as numbered steps: resolve size and seeds, pin the checkpoint's
components, encode the prompts once, then for each batch build a pipeline view over the cached components
with a fresh scheduler, denoise with cooperative cancellation, and save every image as soon as it is
decoded. A `Plan` supplies what differs between modes (txt2img here, hires fix in hires.py, img2img and
inpaint in img2img.py).
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

from extensions.base import ExtensionContext
from pipelines import discovery
from pipelines.discovery import CheckpointInfo
from pipelines.engine import control, fastpath, memory, previews, prompts
from pipelines.engine.control import ControlRequest
from pipelines.engine.devices import Hardware, apply_attention, free_memory
from pipelines.engine.loading import Components, load_components
from pipelines.engine.manager import ModelManager
from pipelines.jobs import Cancelled, JobContext, Skipped
from pipelines.outputs import OutputWriter
from pipelines.params import infotext, samplers
from pipelines.params.specs import PARAMS, SEED_MAX

log = logging.getLogger("studio.generate")
VERSION = "studio-0.1"
HIRES_KEYS = frozenset([n for n, spec in PARAMS.items() if spec.group == "hires"] + ["denoising_strength"])
COMPONENT_FIELDS = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler_config")


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
    denoising_steps: int = 0  # UNet steps run, one per image per step (pipelines/cost.py counts the same way)

    def add(self, image: Image.Image, path: Path, seed: int, subseed: int, text: str) -> None:
        self.images.append(image)
        self.paths.append(path)
        self.seeds.append(seed)
        self.subseeds.append(subseed)
        self.infotexts.append(text)

    def info(self) -> dict[str, Any]:
        """The A1111 `info` object (the API returns it JSON-encoded)."""
        p = self.parameters
        return {
            "prompt": p.get("prompt", ""), "all_prompts": [p.get("prompt", "")] * len(self.seeds),
            "negative_prompt": p.get("negative_prompt", ""),
            "all_negative_prompts": [p.get("negative_prompt", "")] * len(self.seeds),
            "seed": self.seeds[0] if self.seeds else p.get("seed"), "all_seeds": self.seeds,
            "subseed": self.subseeds[0] if self.subseeds else p.get("subseed"), "all_subseeds": self.subseeds,
            "subseed_strength": p.get("subseed_strength", 0), "width": p.get("width"), "height": p.get("height"),
            "sampler_name": p.get("sampler_name"), "scheduler": p.get("scheduler"), "cfg_scale": p.get("cfg_scale"),
            "steps": p.get("steps"), "batch_size": p.get("batch_size"), "n_iter": p.get("n_iter"),
            "restore_faces": False, "face_restoration_model": None, "sd_model_name": self.model,
            "sd_model_hash": p.get("model_hash"), "sd_vae_name": None, "sd_vae_hash": None,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": p.get("denoising_strength", 0),
            "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": self.infotexts, "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": p.get("clip_skip", 1),
            "is_using_inpainting_conditioning": False, "version": VERSION,
        }


def resolve_seed(seed: int) -> int:
    return random.randint(0, SEED_MAX) if seed is None or seed < 0 else int(seed)


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (variation seeds)."""
    a_n, b_n = a / a.norm(), b / b.norm()
    dot = (a_n * b_n).sum().clamp(-1, 1)
    if dot.abs() > 0.9995:
        return (1 - t) * a + t * b
    omega = torch.acos(dot)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


class Engine:
    """Device-side work. Owned by the job worker thread; the UI and API reach it through jobs only."""

    def __init__(self, hardware: Hardware, manager: ModelManager, writer: OutputWriter, *, config_root: Path,
                 hash_cache: Path | None = None, rng: str = "cpu", preview_every: int = 5,
                 models_dir: Path = Path("models"), hub_endpoint: str | None = None, memory_mode: str = "high",
                 oom_retry: bool = False, channels_last: bool = False, compile_unet: bool = False,
                 preview_decoder: str = "auto", compile_backend: str = "inductor"):
        self.hw = hardware
        self.models_dir = Path(models_dir)
        self.hash_cache = hash_cache
        self.manager = manager
        self.writer = writer
        self.config_root = Path(config_root)
        self.rng = rng
        self.preview_every = preview_every
        self.hub_endpoint = hub_endpoint  # annotator downloads; None = offline
        self.memory_mode = memory_mode  # pipelines/memory.py: high | normal | low | minimal
        self.active_mode = memory_mode  # the running (or last) job's mode: reset per job, lowered by an OOM retry
        self.oom_retry = oom_retry  # retry once in the next lower memory mode after an out-of-memory error
        self._offload: memory.OffloadChain | None = None  # the job's offload hooks when its models live in RAM
        self.channels_last = channels_last  # pipelines/fastpath.py, applied as a UNet/ControlNet is loaded
        self.compile_unet = compile_unet
        self.compile_backend = compile_backend  # torch.compile backend (tests use a cheaper one; no setting)
        self.preview_decoder = preview_decoder  # auto | taesd | latent (pipelines/previews.py)
        self.warned: set[str] = set()  # warnings logged once per process (e.g. missing TAESD weights)

    # -- components ----------------------------------------------------------------------------
    @staticmethod
    def identity(info: Any) -> str:
        """A cache key part that changes when the file behind a checkpoint or ControlNet model changes."""
        if info.path is not None and info.path.exists():
            st = info.path.stat()
            return f"{info.name}@{st.st_size}-{int(st.st_mtime)}"
        return info.name

    @contextmanager
    def components(self, info: CheckpointInfo, ctx: JobContext | None = None) -> Iterator[Components]:
        ident = self.identity(info)
        keys = [f"{ident}::{f}" for f in COMPONENT_FIELDS]

        def load() -> dict[str, Any]:
            if ctx is not None:
                ctx.progress(0, 1, label=f"loading {info.name}")
            c = load_components(info, dtype=self.hw.dtype, config_root=self.config_root,
                                progress=self.download_progress(ctx))
            if ctx is not None:
                ctx.progress(0, 1, label=f"hashing {info.name}")
            discovery.ensure_hash(info, self.hash_cache)  # A1111 "Model hash", cached after the first time
            for m in (c.unet, c.vae):
                apply_attention(m, self.hw.attention)
            self.prepare_denoiser(c.unet)
            return {f"{ident}::{f}": getattr(c, f) for f in COMPONENT_FIELDS}

        self.active_mode = self.memory_mode  # a job starts in the configured mode (an OOM retry may lower it)
        offload = memory.offloads(self.active_mode) and self.hw.device.type != "cpu"
        with self.manager.use(keys, load, place="cpu" if offload else "device") as objs:
            comps = Components(**{f: objs[f"{ident}::{f}"] for f in COMPONENT_FIELDS}, family=info.family)
            if not offload:
                yield comps
                return
            chain = memory.OffloadChain([comps.text_encoder, comps.text_encoder_2, comps.unet, comps.vae],
                                        self.hw.device)
            with chain.active():  # models stay in RAM: hooks bring each one to the device while it runs
                self._offload = chain
                try:
                    yield comps
                finally:
                    self._offload = None

    def prepare_denoiser(self, model: torch.nn.Module) -> torch.nn.Module:
        """Channels-last / torch.compile for a UNet or ControlNet, once per module (pipelines/fastpath.py)."""
        return fastpath.prepare_unet(model, channels_last=self.channels_last, compile=self.compile_unet,
                                     backend=self.compile_backend)

    @contextmanager
    def cached(self, key: str, load: Any) -> Iterator[Any]:
        """One component from the model manager's cache (loaded by `load()` on a miss), pinned while inside."""
        with self.manager.use([key], lambda: {key: load()}) as objs:
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
    def txt2img(self, ctx: JobContext, params: Any, info: CheckpointInfo,
                controls: list[ControlRequest] = ()) -> GenerationResult:
        if params.enable_hr:
            from pipelines.engine.hires import HiresPlan  # hires.py builds on this module

            return self.generate(ctx, params, info, HiresPlan(), controls)
        return self.generate(ctx, params, info, Txt2ImgPlan(), controls)

    def hires_fix(self, ctx: JobContext, params: Any, info: CheckpointInfo, image: Image.Image) -> GenerationResult:
        """Hires. fix's second pass over `image`, an image txt2img already made with `params` (its first pass)."""
        from pipelines.engine.hires import HiresOnImagePlan

        return self.generate(ctx, params, info, HiresOnImagePlan(image))

    def img2img(self, ctx: JobContext, params: Any, info: CheckpointInfo, image: Image.Image,
                mask: Image.Image | None = None, controls: list[ControlRequest] = ()) -> GenerationResult:
        from pipelines.engine.img2img import Img2ImgPlan  # img2img.py builds on this module

        return self.generate(ctx, params, info, Img2ImgPlan(image, mask), controls)

    def generate(self, ctx: JobContext, params: Any, info: CheckpointInfo, plan: "Plan",
                 controls: list[ControlRequest] = ()) -> GenerationResult:
        """Run a job of any mode; `plan` supplies what differs between txt2img, img2img and inpaint, and
        `controls` are the enabled ControlNet units (checked by the studio)."""
        # 1. Resolve the seeds and what "default" means for this model and input.
        p = params.model_dump(exclude={"controlnet"})
        seed = resolve_seed(p["seed"])
        subseed = resolve_seed(p["subseed"]) if "subseed" in p else seed  # variation seeds: txt2img only
        p.update(seed=seed, subseed=subseed, scheduler=samplers.resolve_schedule(p["sampler_name"], p["scheduler"]))
        plan.resolve(p, info)
        # the plan's list itself: what the passes note later (a VAE decoded in fp32, compile warm-up) reaches it
        result = GenerationResult(parameters=p, model=info.model_name, warnings=plan.warnings)
        total_images = p["n_iter"] * p["batch_size"]
        ctx.check()

        # 2. Pin the checkpoint's components on the device (loads or moves them only when needed), detect the
        #    ControlNet maps and pin the ControlNet models.
        with self.components(info, ctx) as comps, control.prepare(
                self, ctx, list(controls), (p["width"], p["height"]), plan.control_source, plan.control_frame,
                cfg=p["cfg_scale"] > 1) as plan.control:
            ctx.check()
            p["model_hash"] = info.short_hash
            extra_info = {**plan.infotext_extra(p), **(plan.control.infotext() if plan.control else {}),
                          "Version": VERSION}
            self._save_maps(plan, result, seed)
            # 3. Encode prompt and negative prompt once: emphasis, 75-token chunks, clip skip.
            embeds = self.encode(comps, p["prompt"], p["negative_prompt"], p["clip_skip"])
            steps = plan.steps(p)
            steps_total = p["n_iter"] * steps

            # 4. One pipeline call per batch; every image is saved as soon as it is decoded.
            for it in range(p["n_iter"]):
                ctx.check()
                seeds = [seed + it * p["batch_size"] + i for i in range(p["batch_size"])]
                subseeds = [subseed + it * p["batch_size"] + i for i in range(p["batch_size"])]
                try:
                    images = plan.shortcut(p)
                    if images is None:
                        images = self._batch_with_retry(ctx, comps, plan, p, embeds, seeds, subseeds, it * steps,
                                                        steps_total, result)
                        result.denoising_steps += steps * len(seeds)
                except Skipped:
                    ctx.clear_skip()
                    result.skipped += len(seeds)
                    log.info("batch %d/%d skipped", it + 1, p["n_iter"])
                    continue
                for img, s in plan.keep:  # e.g. hires fix's first pass, when asked to keep it
                    first = {k: v for k, v in p.items() if k not in HIRES_KEYS}
                    self.writer.save(img, infotext.build_infotext(
                        first, seed=s, subseed=s, model_name=info.model_name, model_hash=info.short_hash,
                        extra={k: v for k, v in extra_info.items() if k != "Hires resize"}), plan.mode, s,
                        suffix="-before-highres-fix")
                plan.keep.clear()
                for img, s, sub in zip(plan.finish(images), seeds, subseeds):
                    text = infotext.build_infotext(p, seed=s, subseed=sub, model_name=info.model_name,
                                                   model_hash=info.short_hash, extra=extra_info)
                    path = self.writer.save(img, text, plan.mode, s)
                    result.add(img, path, s, sub, text)
                    ctx.image(img, {"path": str(path), "seed": s, "infotext": text},
                              label=f"image {len(result.images)}/{total_images}")
        return result

    def _save_maps(self, plan: "Plan", result: GenerationResult, seed: int) -> None:
        """Save each detected ControlNet map (as fitted to the image) beside the output, once per job."""
        if plan.control is None:
            return
        infos = plan.control.infotext()
        for unit, fitted in zip(plan.control.units, plan.control.maps):
            if unit.unit.module != "none":  # a ready-made map is the user's own file
                result.control_maps[unit.request.index] = fitted
                key = f"ControlNet {unit.request.index}"
                self.writer.save(fitted, f"{key} map: {infos[key]}", plan.mode, seed,
                                 suffix=f"-controlnet-{unit.request.index}")

    def encode(self, comps: Components, prompt: str, negative: str, clip_skip: int) -> dict[str, torch.Tensor]:
        """Prompt embeddings for the pipeline (A1111 emphasis, 75-token chunks, clip skip; SDXL's two encoders)."""
        sdxl = comps.text_encoder_2 is not None
        return prompts.encode_prompts(
            prompt, negative, tokenizers=[t for t in (comps.tokenizer, comps.tokenizer_2) if t],
            text_encoders=[e for e in (comps.text_encoder, comps.text_encoder_2) if e is not None],
            clip_skip=clip_skip, device=self.hw.device, dtype=self.hw.dtype, sdxl=sdxl, zero_empty_negative=sdxl)

    def noise(self, seeds: list[int], subseeds: list[int], strength: float, shape: tuple[int, ...]) -> torch.Tensor:
        """Initial latents, one generator per image so a seed gives the same picture in any batch position."""
        dev = torch.device("cpu") if self.rng == "cpu" else self.hw.device
        out = []
        for s, sub in zip(seeds, subseeds):
            x = torch.randn(shape, generator=torch.Generator(dev).manual_seed(s), device=dev, dtype=torch.float32)
            if strength > 0:
                y = torch.randn(shape, generator=torch.Generator(dev).manual_seed(sub), device=dev, dtype=torch.float32)
                x = slerp(strength, x, y)
            out.append(x)
        return torch.stack(out).to(self.hw.device, self.hw.dtype)

    def generators(self, seeds: list[int]) -> list[torch.Generator]:
        dev = "cpu" if self.rng == "cpu" else self.hw.device
        return [torch.Generator(dev).manual_seed(s) for s in seeds]

    def _batch_with_retry(self, ctx: JobContext, comps: Components, plan: "Plan", p: dict, embeds: dict,
                          seeds: list[int], subseeds: list[int], done_before: int, steps_total: int,
                          result: GenerationResult) -> list[Image.Image]:
        """One batch; after running out of device memory, once more in the next lower memory mode (when allowed).
        The job's later batches keep the lower mode; the seeds stay the same, so no image is lost or doubled."""
        retried = False
        while True:
            try:
                return self._run_batch(ctx, comps, plan, p, embeds, seeds, subseeds, done_before, steps_total)
            except RuntimeError as e:  # OutOfMemory from denoise, or e.g. a hires pass' VAE decode running out
                if not is_oom(e):
                    raise
            # leaving the handler dropped the traceback: the failed batch's latents and pipeline went with it
            failed = self.active_mode
            self.manager.free()  # unpinned cached models leave the device; ends with gc + empty_cache
            lower = memory.lower(failed) if self.oom_retry and not retried else None
            if lower is None:
                raise OutOfMemory(memory.oom_message((p["width"], p["height"]), len(seeds), failed, retried))
            note = f"Out of memory in {failed} mode at {p['width']}x{p['height']}: retried in {lower} mode"
            log.warning(note)
            result.warnings.append(note)
            self.active_mode, retried = lower, True

    def _run_batch(self, ctx: JobContext, comps: Components, plan: "Plan", p: dict, embeds: dict, seeds: list[int],
                   subseeds: list[int], done_before: int, steps_total: int) -> list[Image.Image]:
        label = f"batch {done_before // max(plan.steps(p), 1) + 1}/{p['n_iter']}"
        first = plan.first_pass_steps(p)
        out = plan.first_pass(self, ctx, comps, p, embeds, seeds, subseeds, done_before=done_before,
                              steps_total=steps_total, label=label)
        return plan.after(self, ctx, comps, p, embeds, out, seeds, done_before=done_before + first,
                          steps_total=steps_total, label=label)

    def denoise(self, ctx: JobContext, comps: Components, kind: str, p: dict, embeds: dict, seeds: list[int],
                extra: dict[str, Any], *, done_before: int, pass_steps: int, steps_total: int, label: str,
                control: "control.Control | None" = None, hires: bool = False,
                notes: list[str] | None = None) -> Any:
        """One pipeline call over a batch (sampler, steps, CFG and size from `p`); returns PIL images, or latents
        when `extra` asks for output_type="latent". The pipeline stops at the latents either way and `decode`
        makes the images (its fp16 NaN guard). With `control`, the ControlNet variant of the pipeline runs with
        the units' maps fitted to this pass. Warnings for the job's result (a float32 re-decode, the compile
        warm-up) go to `notes`."""
        w, h, sdxl = p["width"], p["height"], comps.text_encoder_2 is not None
        scheduler = samplers.make_scheduler(p["sampler_name"], p["scheduler"], comps.scheduler_config, seed=seeds)
        stack = None
        if control is not None:
            stack, args = control.for_pass(kind, (w, h), hires=hires)
            extra = dict(extra, **args)
            if "masked_image_latents" in extra:  # the ControlNet inpaint pipelines start from pixels only
                extra.pop("masked_image_latents")
                extra["image"] = self.decode(comps, extra["image"], notes)
        pipe = build_pipeline(comps, scheduler, kind, controlnet=stack)
        order = getattr(scheduler, "order", 1)  # 2nd-order samplers (Heun, DPM2) call back ~twice per step
        per_pass = max(pass_steps, 1)
        # A compiled UNet/ControlNet compiles again for each new input shape: say so before the slow first step.
        nets = [comps.unet, *(u.net for u in control.units)] if control is not None else [comps.unet]
        unet_batch = len(seeds) * (2 if p["cfg_scale"] > 1 else 1)
        warm = fastpath.Warmup.begin(nets, (w, h, unet_batch, embeds["prompt_embeds"].shape[1]))
        if warm is not None:
            ctx.progress(done_before, steps_total, label="compiling UNet (first step)…")

        def on_step(pipe_: Any, i: int, t: Any, kw: dict) -> dict:
            ctx.check()
            if ctx.skip_requested():
                raise Skipped()
            if warm is not None:
                warm.step()
            ctx.progress(done_before + min(-(-(i + 1) // order), per_pass), steps_total, label=label)
            if self.preview_every and (i + 1) % self.preview_every == 0:
                ctx.preview(preview(kw["latents"]), step=i + 1)
            return kw

        call: dict[str, Any] = dict(
            num_inference_steps=p["steps"], guidance_scale=p["cfg_scale"], width=w, height=h,
            num_images_per_prompt=len(seeds), callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"], output_type="pil", **embeds)
        call.update(extra)  # the plan may override e.g. num_inference_steps
        want_latents = call["output_type"] == "latent"
        call["output_type"] = "latent"
        mode = self.active_mode
        try:
            with self._memory_mode(pipe, mode, (w, h)), self._previewer(sdxl, (w, h)) as preview, \
                    torch.inference_mode():
                latents = pipe(**call).images
                if warm is not None and (note := warm.report((w, h))):
                    self.note(note, notes)
                if want_latents:
                    return latents
                return self.decode(comps, latents, notes, watermark=getattr(pipe, "watermark", None))
        except RuntimeError as e:  # torch.OutOfMemoryError, or MPS' / cuDNN's out-of-memory RuntimeErrors
            if not is_oom(e):
                raise
        # Outside the handler the error's traceback is gone, and with it the failed call's frames and tensors.
        del pipe, call, extra, stack
        free_memory()
        raise OutOfMemory(memory.oom_message((w, h), len(seeds), mode, retried=False))

    def _memory_mode(self, pipe: Any, mode: str, size: tuple[int, int]):
        """pipelines/memory.py's mode for one pipeline call (undone after it)."""
        if memory.offloads(mode) and self.hw.device.type == "cpu" and "cpu-offload" not in self.warned:
            self.warned.add("cpu-offload")
            log.info("memory mode %s on a CPU device: no offloading (RAM is the device), only slicing and tiling",
                     mode)
        return memory.applied(pipe, mode, self.hw.device, size, chain=self._offload)

    def _previewer(self, sdxl: bool, size: tuple[int, int]):
        """The live-preview decoder for one pass (TAESD from the component cache, or the latent approximation)."""
        return previews.previewer(self.preview_decoder if self.preview_every else "latent", self.models_dir, sdxl,
                                  size, dtype=self.hw.dtype, cache=self.cached, warned=self.warned)

    def decode(self, comps: Components, latents: torch.Tensor, notes: list[str] | None = None, *,
               watermark: Any = None) -> list[Image.Image]:
        """Latents (scaled, as the pipelines hold them) -> PIL images, decoded as the pipeline itself would, byte
        for byte: SDXL upcasts an fp16 VAE whose config says force_upcast, and denormalizes with latents_mean /
        latents_std when its config has them (StableDiffusionXLPipeline.__call__); SD 1.x/2.x decode in the VAE's
        dtype. NaN guard: an fp16 VAE that overflows gives NaN/Inf (a black image); then the batch is decoded
        again in float32 and a warning goes to `notes`. `watermark`: the SDXL pipeline's, when it has one."""
        from diffusers.image_processor import VaeImageProcessor

        vae, sdxl = comps.vae, comps.text_encoder_2 is not None
        dtype = torch.float32 if sdxl and vae.dtype == torch.float16 and vae.config.force_upcast else vae.dtype
        pixels = vae_decode(vae, latents, dtype, sdxl)
        if dtype != torch.float32 and not torch.isfinite(pixels).all():
            pixels = vae_decode(vae, latents, torch.float32, sdxl)
            self.note(f"VAE produced NaNs in {str(dtype).removeprefix('torch.')}: decoded in float32; use an "
                      "fp16-fixed VAE (e.g. sdxl-vae-fp16-fix) to avoid the slower decode", notes)
        if watermark is not None:
            pixels = watermark.apply_watermark(pixels)
        return VaeImageProcessor().postprocess(pixels, output_type="pil")

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


class Plan:
    """What differs between modes; the defaults fit a plain txt2img batch and subclasses override the rest."""

    mode = "txt2img"  # output folder

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.keep: list[tuple[Image.Image, int]] = []  # extra images to save as they are (image, seed)
        self.control: control.Control | None = None  # the job's ControlNet units, set by Engine.generate

    @property
    def control_source(self) -> Image.Image | None:
        """The image a ControlNet unit without its own image uses (img2img: the input)."""
        return None

    def control_frame(self, image: Image.Image, resize_mode: str, size: tuple[int, int]) -> Image.Image:
        """Fit a control map to a pass of `size` the way this plan frames its image."""
        from pipelines.imageops import fit_control_map

        return fit_control_map(image, size[0], size[1], resize_mode)

    def resolve(self, p: dict, info: CheckpointInfo) -> None:
        """Fill in derived values (size) before anything is loaded."""
        p["width"] = p.get("width") or info.native
        p["height"] = p.get("height") or info.native

    def steps(self, p: dict) -> int:
        """Denoising steps one batch runs (all passes)."""
        return p["steps"]

    def first_pass_steps(self, p: dict) -> int:
        return self.steps(p)

    def shortcut(self, p: dict) -> list[Image.Image] | None:
        """Images that need no denoising at all (e.g. img2img at strength 0), else None."""
        return None

    def call(self, engine: Engine, comps: Components, p: dict, seeds: list[int],
             subseeds: list[int]) -> tuple[str, dict[str, Any]]:
        """(pipeline kind, extra pipeline kwargs) for one batch."""
        raise NotImplementedError

    def first_pass(self, engine: Engine, ctx: JobContext, comps: Components, p: dict, embeds: dict,
                   seeds: list[int], subseeds: list[int], *, done_before: int, steps_total: int, label: str) -> Any:
        """The batch's first (often only) pass: the pipeline call `call` describes."""
        kind, extra = self.call(engine, comps, p, seeds, subseeds)
        return engine.denoise(ctx, comps, kind, p, embeds, seeds, extra, done_before=done_before,
                              pass_steps=self.first_pass_steps(p), steps_total=steps_total, label=label,
                              control=self.control, notes=self.warnings)

    def after(self, engine: Engine, ctx: JobContext, comps: Components, p: dict, embeds: dict, output: Any,
              seeds: list[int], *, done_before: int, steps_total: int, label: str) -> list[Image.Image]:
        """A further pass over the first pass's output (hires fix); by default the output is final."""
        return output

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        return images

    def infotext_extra(self, p: dict) -> dict[str, Any]:
        return {}


class Txt2ImgPlan(Plan):
    def resolve(self, p: dict, info: CheckpointInfo) -> None:
        super().resolve(p, info)
        for key in HIRES_KEYS:  # hires settings mean nothing without hires fix: keep them out of the infotext
            p.pop(key, None)

    def call(self, engine: Engine, comps: Components, p: dict, seeds: list[int],
             subseeds: list[int]) -> tuple[str, dict[str, Any]]:
        w, h = p["width"], p["height"]
        extra: dict[str, Any] = dict(latents=engine.noise(seeds, subseeds, p["subseed_strength"], (4, h // 8, w // 8)),
                                     generator=engine.generators([s + 0x5EED for s in seeds]))  # ancestral noise
        if comps.unet.config.in_channels == 9:  # inpainting checkpoint used for txt2img: everything is "masked"
            extra.update(image=Image.new("RGB", (w, h), (127, 127, 127)), mask_image=Image.new("L", (w, h), 255),
                         strength=1.0)
            return "inpaint", extra
        return "txt2img", extra


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

    sdxl = comps.text_encoder_2 is not None
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


__all__ = ["Engine", "GenerationResult", "Plan", "Txt2ImgPlan", "build_pipeline", "Cancelled", "is_oom"]
