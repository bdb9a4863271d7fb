"""What a job costs in denoising steps, counted the way the engine runs them (one UNet step on one image).

The sweep planner shows this before a grid starts, the guided workflow keeps its ledger with it, and the
engine's plans use the same formulas, so the figure shown is the figure run. Pure Python: no torch.
"""

from __future__ import annotations

from typing import Any, Mapping


def strength_steps(steps: int, strength: float) -> int:
    """Steps an img2img pass runs at `strength`, as A1111 counts them: the last int(min(strength, 0.999) x steps) + 1
    steps of a `steps`-long schedule (none at strength 0)."""
    return int(min(strength, 0.999) * steps) + 1 if strength > 0 else 0


def schedule_length(steps: int, strength: float) -> int:
    """The num_inference_steps an img2img pipeline is given: `steps`, lengthened until int(n x strength) >= 1, which
    diffusers requires (the A1111 scheduler then runs A1111's steps whatever n is). At strength 0 nothing is
    denoised: `steps` as it is."""
    if strength <= 0:
        return steps
    n = steps
    while int(n * strength) < 1:
        n += 1
    return n


def hires_steps(p: Mapping[str, Any]) -> int:
    """The Hires. fix second pass of one image (0 when hires fix is off)."""
    if not p.get("enable_hr"):
        return 0
    return int(p.get("hr_second_pass_steps") or p["steps"])  # A1111 runs all of them, at any denoising strength


def image_steps(p: Mapping[str, Any], mode: str = "txt2img") -> int:
    """Denoising steps one image of a job with parameters `p` runs, all passes included."""
    if mode in ("img2img", "inpaint"):
        return strength_steps(int(p["steps"]), float(p["denoising_strength"]))
    return int(p["steps"]) + hires_steps(p)


def job_images(p: Mapping[str, Any]) -> int:
    return int(p.get("batch_size") or 1) * int(p.get("n_iter") or 1)


def job_steps(p: Mapping[str, Any], mode: str = "txt2img") -> int:
    """Denoising steps of a whole job: per image, times batch size and batch count."""
    return image_steps(p, mode) * job_images(p)


def tiled_settings(p: Mapping[str, Any]) -> Any:
    """The tiled SD upscale's settings from its parameters."""
    from extensions.tiled_upscale import TiledSettings

    return TiledSettings(
        tile_width=p["tile_width"], tile_height=p["tile_height"], padding=p["tile_padding"],
        mask_blur=p["tile_mask_blur"], redraw_order=p["redraw_order"], seams_fix=p["seams_fix"],
        seams_width=p["seams_fix_width"], seams_padding=p["seams_fix_padding"],
        seams_mask_blur=p["seams_fix_mask_blur"], seams_denoise=p["seams_fix_denoise"])


def sd_upscale_steps(p: Mapping[str, Any], size: tuple[int, int]) -> int:
    """Denoising steps of a tiled SD upscale to `size`: an img2img pass per tile, and per seam band."""
    from extensions.tiled_upscale import cost

    n = cost(size[0], size[1], tiled_settings(p))
    per_tile = max(strength_steps(int(p["steps"]), float(p["denoising_strength"])), 1)
    per_seam = max(strength_steps(int(p["steps"]), float(p["seams_fix_denoise"])), 1)
    return n["tiles"] * per_tile + n["seams"] * per_seam


def zoom_cost(p: Mapping[str, Any], has_image: bool) -> dict[str, Any]:
    """What an infinite zoom costs before it starts: keyframes, inpaint passes and denoising steps (keyframe 0 is
    a txt2img pass when no image is given, each later keyframe an inpaint pass at the border denoising), and the
    video's frames and seconds (`per keyframe` frames between each two keyframes, plus the last one)."""
    keyframes, steps = int(p["zoom_keyframes"]), int(p["steps"])
    first = 0 if has_image else steps
    per_redraw = strength_steps(steps, float(p["zoom_denoising"]))
    frames = (keyframes - 1) * int(p["zoom_frames_per_keyframe"]) + 1
    fps = int(p["zoom_fps"])
    return {"keyframes": keyframes, "inpaint_passes": keyframes - 1, "steps_per_keyframe": per_redraw,
            "denoising_steps": first + (keyframes - 1) * per_redraw, "frames": frames, "fps": fps,
            "seconds": round(frames / fps, 2)}


def zoom_cost_text(c: Mapping[str, Any]) -> str:
    """The cost as the UI shows it."""
    return (f"{c['keyframes']} keyframes ({c['inpaint_passes']} inpaint passes × {c['steps_per_keyframe']} steps) = "
            f"{c['denoising_steps']} denoising steps · video: {c['frames']} frames at {c['fps']} fps = "
            f"{c['seconds']:g} s")
