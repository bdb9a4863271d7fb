"""The infinite zoom job: keyframes by repeated outpainting, then the video, the GIF, every keyframe a PNG.

Reads as numbered steps: 1. keyframe 0 is the input image (fitted to width x height) or a txt2img result;
2. each later keyframe is the previous one shrunk into the centre (pipelines/zoom.py), its border inpainted by an
img2img pass with a mask (Img2ImgPlan, as the tiled SD upscale redraws its tiles) under the schedule's prompt for
that keyframe, the shrunk pixels composited back unchanged; each is saved to outputs/zoom/DAY as it is made;
3. the interpolated frames are written as an MP4/WebM video (PyAV) and a GIF, read back to check the frame count.
Steps 1-2 run on the engine (`zoom_keyframes`, a Ray replica's too), step 3 where the keyframes are saved
(`finish_zoom`).

Interrupt: the keyframes finished so far are kept and a video of them is still written; the job then ends as
cancelled, with the files in its details["zoom"]. Skip: the keyframe being redrawn is abandoned and the zoom stops
there; the video of the finished keyframes is written and the job finishes (a warning says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipelines import imageops, zoom
from pipelines.discovery import CheckpointInfo
from pipelines.engine.generate import VERSION, GenerationResult
from pipelines.engine.img2img import Img2ImgPlan
from pipelines.engine.plans import Txt2ImgPlan
from pipelines.jobs import Cancelled, Skipped
from pipelines.params import cost, infotext, samplers
from pipelines.params.specs import Img2ImgParams, Txt2ImgParams, resolve_seed

if TYPE_CHECKING:
    from pipelines.engine.generate import Engine
    from pipelines.jobs import JobContext

_BASICS = ("negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "clip_skip", "sd_vae")


@dataclass
class ZoomResult(GenerationResult):
    """A GenerationResult (images = the keyframes) plus the zoom's files."""

    video: Path | None = None
    gif: Path | None = None
    frames: int = 0
    size: tuple[int, int] = (0, 0)
    stopped: str = ""  # "", "skipped" or "interrupted"
    cost: dict[str, Any] = field(default_factory=dict)

    def files(self) -> dict[str, Any]:
        return {"video": str(self.video) if self.video else None, "gif": str(self.gif) if self.gif else None,
                "frames": self.frames, "keyframes": [str(p) for p in self.paths], "stopped": self.stopped}


def zoom_keyframes(engine: "Engine", ctx: "JobContext", params: Any, info: CheckpointInfo,
                   image: Image.Image | None = None) -> ZoomResult:
    """Steps 1-2: the keyframes, each saved as it is made. An Interrupt or Skip after the first keyframe returns
    the ones finished (`stopped` says which); before it, the job ends as cancelled or skipped."""
    p = params
    schedule = zoom.parse_schedule(p.prompt, p.zoom_keyframes)
    run = engine.start(ctx, params, info)
    seed = resolve_seed(p.seed)
    size = (p.width or info.native, p.height or info.native)
    n = p.zoom_keyframes
    values = p.model_dump()
    values.update(seed=seed, scheduler=samplers.resolve_schedule(p.sampler_name, p.scheduler), width=size[0],
                  height=size[1])
    plan_cost = cost.zoom_cost(values, image is not None)
    run.total = plan_cost["denoising_steps"]
    result = ZoomResult(parameters=values, model=info.model_name, warnings=run.warnings, size=size, cost=plan_cost)
    basics = {k: getattr(p, k) for k in _BASICS}
    keyframes: list[Image.Image] = []

    def save(img: Image.Image, k: int, prompt: str) -> None:
        s = seed + k
        text = infotext.build_infotext(
            {**values, "prompt": prompt}, seed=s, model_name=info.model_name, model_hash=info.short_hash,
            extra=engine.with_network_hashes({
                "Zoom keyframe": f"{k}/{n - 1}", "Zoom input": "image" if image is not None else "txt2img",
                **engine.vae_infotext(run),
                "Version": VERSION}, run))
        path = engine.writer.save(img, text, "zoom", s, suffix=f"-keyframe-{k}")
        keyframes.append(img)
        result.add(img, path, s, s, text)
        ctx.image(img, {"path": str(path), "seed": s, "infotext": text, "keyframe": k},
                  label=f"keyframe {k + 1}/{n}")

    try:
        with engine.components(info, run=run) as comps:
            embeds: dict[str, dict] = {}
            for k in range(n):
                ctx.check()
                prompt = zoom.prompt_at(schedule, k)
                label = f"keyframe {k + 1}/{n}"
                ctx.progress(run.done, run.total, label=label)
                if k == 0 and image is not None:  # 1. the input, fitted to the zoom's size
                    save(imageops.resize_image(imageops.to_rgb(image), *size, imageops.RESIZE_MODES[1]), 0, prompt)
                    continue
                if prompt not in embeds:
                    embeds[prompt] = engine.encode(comps, prompt, p.negative_prompt, p.clip_skip, run=run)
                start = run.done
                try:
                    if k == 0:  # 1. no input: keyframe 0 is a txt2img image
                        req = Txt2ImgParams.model_validate({**basics, "prompt": prompt, "seed": seed, "width": size[0],
                                                            "height": size[1], "batch_size": 1, "n_iter": 1})
                        plan: Any = Txt2ImgPlan()
                        canvas = keep = None
                    else:  # 2. the previous keyframe shrunk into the centre, its border inpainted
                        canvas, mask, keep = zoom.zoom_canvas(keyframes[-1], p.zoom_factor, p.zoom_overlap)
                        req = Img2ImgParams.model_validate({
                            **basics, "prompt": prompt, "seed": seed + k, "width": size[0], "height": size[1],
                            "batch_size": 1, "n_iter": 1, "denoising_strength": p.zoom_denoising,
                            "mask_blur": p.zoom_mask_blur, "inpainting_fill": p.zoom_fill,
                            "resize_mode": imageops.RESIZE_MODES[0], "inpainting_mask_invert": "Inpaint masked",
                            "inpaint_full_res": "Whole picture"})
                        plan = Img2ImgPlan(canvas, mask)
                    r = plan.resolve(req, info, run)
                    out = engine.with_oom_retry(run, r.size, 1, lambda: engine.run_passes(
                        run, comps, plan, r, embeds[prompt], [seed + k], [seed + k], label))
                    run.done = start + plan.steps(r)
                    img = plan.finish(out)[0]
                    if canvas is not None:
                        img = zoom.keep_centre(img, canvas, keep)
                    result.denoising_steps += plan.steps(r)
                except Skipped:  # the keyframe being redrawn is dropped and the zoom stops here
                    ctx.clear_skip()
                    result.stopped = "skipped"
                    result.skipped += 1
                    run.note(f"Skipped: the zoom stopped after {len(keyframes)} of {n} keyframes.")
                    break
                save(img, k, prompt)
    except Cancelled:
        result.stopped = "interrupted"
    if not keyframes:
        if result.stopped == "interrupted":
            raise Cancelled("interrupted")
        raise Skipped()
    if result.stopped == "interrupted":
        run.note(f"Interrupted: the video shows the {len(keyframes)} of {n} keyframes finished.")
    result.memory_mode = run.mode
    return result


def finish_zoom(ctx: "JobContext", result: ZoomResult, params: Any) -> ZoomResult:
    """Step 3: the video and the GIF of `result`'s keyframes, beside them; the video is read back to check it.
    Runs where the keyframes are saved (the head, with the Ray backend). Ends the job as cancelled after an
    Interrupt, with the files in details["zoom"]."""
    p, keyframes, size = params, result.images, result.size
    total = int(result.cost.get("denoising_steps") or result.denoising_steps)
    ctx.progress(result.denoising_steps, total, label="writing the video")
    frames = list(zoom.frames(keyframes, p.zoom_factor, p.zoom_frames_per_keyframe, p.zoom_direction))
    first = result.paths[0]
    stem = first.name.removesuffix("-keyframe-0.png") + "-" + p.zoom_direction.replace(" ", "-")
    result.video = zoom.write_video(frames, first.with_name(f"{stem}.{p.zoom_format}"), p.zoom_fps, p.zoom_format)
    result.gif = zoom.write_gif(frames, first.with_name(f"{stem}.gif"), p.zoom_fps)
    check = zoom.read_video(result.video)
    if check["frames"] != len(frames) or tuple(check["size"]) != tuple(size):
        result.warnings.append(f"The video reads back as {check['frames']} frames of {check['size']}, not "
                               f"{len(frames)} of {tuple(size)}.")
    result.frames = len(frames)
    ctx.report("zoom", result)
    ctx.progress(total, total, label="done")
    if result.stopped == "interrupted":
        raise Cancelled("interrupted")
    return result
