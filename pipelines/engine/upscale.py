"""The Upscale tab's jobs: plain upscaling (A1111 "extras") and the tiled SD upscale.

`extras`: each image through the chosen upscaler (ESRGAN-family model, Lanczos, Nearest), optionally blended
with a second one, saved to outputs/extras with its original parameters plus the postprocessing keys.

`sd_upscale` reads as numbered steps: 1. enlarge with the upscaler to the target size, 2. pin the
checkpoint and encode the prompt once, 3. redraw tile by tile (extensions.tiled_upscale) where every redraw
is an img2img pass over the tile and its padding, 4. save only a complete result (a cancel raises before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image

from extensions import tiled_upscale, upscalers
from pipelines import imageops
from pipelines.discovery import CheckpointInfo
from pipelines.engine.generate import VERSION, GenerationResult
from pipelines.engine.img2img import Img2ImgPlan
from pipelines.jobs import Skipped
from pipelines.outputs import read_png_info
from pipelines.params import cost, infotext, samplers
from pipelines.params.specs import Img2ImgParams, resolve_seed

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.jobs import JobContext
    from pipelines.params.specs import ExtrasParams, SdUpscaleParams

MAX_SIDE = 8192  # results beyond this are refused before any work


def target_size(size: tuple[int, int], p: dict) -> tuple[int, int]:
    return imageops.scaled_size(size, p["upscaling_resize"], p.get("upscaling_resize_w") or 0,
                                p.get("upscaling_resize_h") or 0, snap=False)


def check_target(size: tuple[int, int], p: dict) -> tuple[int, int]:
    tw, th = target_size(size, p)
    if max(tw, th) > MAX_SIDE:
        raise ValueError(f"The result would be {tw}x{th}; the limit is {MAX_SIDE} px a side. Use a smaller factor.")
    return tw, th


def _enlarge(engine: "Engine", ctx: "JobContext", image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
    """The image at `size` through upscaler `name` ("None" resamples with Lanczos: the redraw needs the size)."""
    up = upscalers.get_upscaler("Lanczos" if name == "None" else name, engine.models_dir, engine.esrgan_dir)
    scale = max(size[0] / image.width, size[1] / image.height)
    big = up.upscale(image, scale, engine.extension_context(ctx))
    return imageops.resize_image(big, *size, "Crop and resize") if big.size != size else big


def _postprocess_text(original: str, extra: dict[str, Any]) -> str:
    """Keep the image's own parameters and add the postprocessing keys to its last line (A1111 extras)."""
    tail = ", ".join(f"{k}: {infotext.quote(v)}" for k, v in extra.items() if v not in (None, "", "None"))
    return f"{original.rstrip()}, {tail}" if original.strip() else tail


def extras(engine: "Engine", ctx: "JobContext", images: list[tuple[str, Image.Image]],
           params: "ExtrasParams") -> GenerationResult:
    """Each image through the upscaler(s). Skip abandons the image being upscaled and goes on with the next."""
    p = params.model_dump()
    result = GenerationResult(parameters=p)
    hooks = _SkipPoints(ctx)  # the upscalers' per-tile checks become skip points
    for i, (name, image) in enumerate(images):
        ctx.check()
        ctx.progress(i, len(images), label=f"image {i + 1}/{len(images)}: {name}")
        rgb = image.convert("RGB")
        try:
            ctx.skip_point()
            # A1111: "None" leaves the image as it is; otherwise enlarge to the target size
            out = rgb if p["upscaler_1"] == "None" else _enlarge(engine, hooks, rgb, p["upscaler_1"],
                                                                 size := check_target(image.size, p))
            size = out.size
            if p["upscaler_2"] not in (None, "", "None") and p["extras_upscaler_2_visibility"] > 0:
                second = _enlarge(engine, hooks, rgb, p["upscaler_2"], size)
                out = Image.blend(out, second, p["extras_upscaler_2_visibility"])
        except Skipped:
            ctx.clear_skip()
            result.skipped += 1
            continue
        text = _postprocess_text(read_png_info(image)["info"], {
            "Postprocess upscale by": p["upscaling_resize"] if not (p["upscaling_resize_w"] or p["upscaling_resize_h"])
            else None,
            "Postprocess upscale to": f"{size[0]}x{size[1]}" if p["upscaling_resize_w"] or p["upscaling_resize_h"]
            else None,
            "Postprocess upscaler": p["upscaler_1"], "Postprocess upscaler 2": p["upscaler_2"]})
        path = engine.writer.save(out, text, "extras", i)
        result.add(out, path, i, i, text)
        ctx.image(out, {"path": str(path), "seed": i, "infotext": text}, label=f"image {i + 1}/{len(images)}")
    ctx.progress(len(images), len(images), label="done")
    return result


def sd_upscale(engine: "Engine", ctx: "JobContext", params: "SdUpscaleParams", info: CheckpointInfo,
               image: Image.Image) -> GenerationResult:
    """Skip abandons the tile in progress and stops the redraw, and saves the image with the tiles (and seam
    passes) finished so far; the infotext and the job's warnings say how many."""
    # 1. Enlarge to the target size with the chosen upscaler.
    p = params
    run = engine.start(ctx, params, info)  # and the job's VAE (sd_vae)
    seed = resolve_seed(p.seed)
    values = p.model_dump()
    size = check_target(image.size, values)
    settings = cost.tiled_settings(values)
    n = tiled_upscale.cost(*size, settings)
    regions = n["tiles"] + n["seams"]
    run.total = cost.sd_upscale_steps(values, size)
    ctx.progress(0, 1, label=f"upscaling to {size[0]}x{size[1]} ({n['tiles']} tiles, {n['seams']} seam passes)")
    big = _enlarge(engine, ctx, image.convert("RGB"), p.upscaler_1, size)
    values.update(seed=seed, scheduler=samplers.resolve_schedule(p.sampler_name, p.scheduler), width=size[0],
                  height=size[1], model_hash=info.short_hash)
    result = GenerationResult(parameters=values, model=info.model_name, warnings=run.warnings)
    # every tile is an img2img pass over the tile and its padding: its request, typed like any other
    tile_request = Img2ImgParams.model_validate({
        **{k: getattr(p, k) for k in ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale",
                                      "clip_skip")},
        "batch_size": 1, "n_iter": 1, "resize_mode": imageops.RESIZE_MODES[0], "mask_blur": 0,
        "inpainting_fill": "original", "inpainting_mask_invert": "Inpaint masked",
        "inpaint_full_res": "Whole picture"})

    # 2. Pin the checkpoint and encode the prompt once for every tile.
    with engine.components(info, run=run) as comps:
        embeds = engine.encode(comps, p.prompt, p.negative_prompt, p.clip_skip, run=run)
        done = {"regions": 0, "steps": 0}
        stop = {"skipped": False}

        def redraw(region: Image.Image, mask: Image.Image | None, tile_seed: int,
                   strength: float | None) -> Image.Image:
            """3. One tile: an img2img pass over the tile and its padding, the tile's mask kept; out of memory
            retries it in a lower memory mode, as a batch would be."""
            tp = tile_request.model_copy(update={
                "seed": tile_seed, "denoising_strength": strength or p.denoising_strength,
                "width": imageops.snap8(region.width), "height": imageops.snap8(region.height)})
            plan = Img2ImgPlan(region, mask)
            r = plan.resolve(tp, info, run)
            k = done["regions"]
            label = f"{'tile' if k < n['tiles'] else 'seam'} {k + 1}/{regions}"
            try:
                out = engine.with_oom_retry(run, r.size, 1, lambda: engine.run_passes(
                    run, comps, plan, r, embeds, [tile_seed], [tile_seed], label))
            except Skipped:  # this tile stays as it was; tiled_redraw stops before the next one
                ctx.clear_skip()
                stop["skipped"] = True
                return region
            done["regions"] += 1
            done["steps"] += plan.steps(r)
            return plan.finish(out)[0].resize(region.size, Image.Resampling.LANCZOS)

        ext = engine.extension_context(ctx)
        ext.redraw = redraw
        ext.hooks = _NoProgress(ctx, stop)  # step progress comes from the redraws themselves
        final = tiled_upscale.tiled_redraw(big, settings, ext, seed)

    # 4. Save the result: complete, or as far as it got when the user pressed Skip (a cancel raised before).
    tiles = f"{n['tiles']} tiles"
    if stop["skipped"]:
        if done["regions"] == 0:
            raise Skipped()  # nothing redrawn: the job ends as skipped, with no image
        tiles = f"{n['tiles']} tiles, stopped after {done['regions']} of {regions} redraws"
        run.note(f"Skipped: {done['regions']} of {regions} tiles and seam passes were redrawn; the rest of the "
                 "image is the upscaler's output.")
    text = infotext.build_infotext(values, seed=seed, model_name=info.model_name, model_hash=info.short_hash,
                                   extra=engine.with_network_hashes({"Size": f"{size[0]}x{size[1]}",
                                                                     "Tiled upscale": tiles, **engine.vae_infotext(run),
                                                                     "Version": VERSION}, run))
    path = engine.writer.save(final, text, "extras", seed)
    result.add(final, path, seed, seed, text)
    result.denoising_steps = done["steps"]
    result.memory_mode = run.mode
    result.vae, result.vae_hash = (run.vae.name, engine.vaes.short_hash(run.vae)) if run.vae else (None, None)
    ctx.image(final, {"path": str(path), "seed": seed, "infotext": text}, label="done")
    return result


class _NoProgress:
    """The job's check/preview, without the extension's coarse per-tile progress; `stop_requested` once a Skip
    abandoned a tile."""

    def __init__(self, ctx: "JobContext", stop: dict[str, bool]):
        self.ctx, self.stop = ctx, stop

    def check(self) -> None:
        self.ctx.check()

    def stop_requested(self) -> bool:
        return self.stop["skipped"]

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        return None

    def preview(self, image: Any, step: int | None = None) -> None:
        self.ctx.preview(image, step)


class _SkipPoints:
    """The job's hooks with every cancel check a skip point too (an upscaler checks between its tiles)."""

    def __init__(self, ctx: "JobContext"):
        self.ctx = ctx

    def check(self) -> None:
        self.ctx.skip_point()

    def stop_requested(self) -> bool:
        return False

    def progress(self, step: int, total: int, label: str | None = None) -> None:
        self.ctx.progress(step, total, label)

    def preview(self, image: Any, step: int | None = None) -> None:
        self.ctx.preview(image, step)
