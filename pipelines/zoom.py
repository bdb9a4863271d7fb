"""The infinite zoom without the model: the prompt schedule, each keyframe's canvas and mask, the interpolated
frames, and the video (PyAV) and GIF (PIL) files. pipelines/engine/zoom.py runs the job with these.

Zoom out, as the recipe goes: keyframe k+1 is keyframe k shrunk by the zoom factor into the centre of the canvas,
its new border masked (plus `overlap` px of the shrunk image's edge) and inpainted; the shrunk pixels inside the
overlap are composited back unchanged. Playback between keyframes k and k+1 crops keyframe k+1 around the centre
by factor^(1-t) and scales the crop to the output size (t = 0..1): the scale changes geometrically, so the zoom
speed is constant. Zoom in plays the same frames backwards. Pure Python + PIL/numpy (+ PyAV for the video).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image, ImageChops, ImageDraw, ImageFilter

# "0: forest, 4: castle": a keyframe number and a colon at the start or after a comma, semicolon or line break
_ENTRY = re.compile(r"(?:^|[,;\n])\s*(\d+)\s*:")
ENCODERS = {"mp4": ("libx264", "h264", "libopenh264"), "webm": ("libvpx-vp9",)}
_OPTIONS = {"libx264": {"crf": "20", "preset": "medium"}, "libvpx-vp9": {"crf": "32", "b": "0", "row-mt": "1"}}


class ScheduleError(ValueError):
    """A prompt schedule that cannot be read; the message names what is wrong."""


def parse_schedule(text: str, keyframes: int) -> list[tuple[int, str]]:
    """A prompt or a schedule "0: forest, 4: castle" -> [(first keyframe, prompt), ...], sorted. A plain prompt
    (not starting with "N:") is every keyframe's. Entries must start at 0, grow, and lie below `keyframes`."""
    text = (text or "").strip()
    marks = list(_ENTRY.finditer(text))
    if not marks or marks[0].start() != 0:
        return [(0, text)]
    entries: list[tuple[int, str]] = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        key, prompt = int(m.group(1)), text[m.end():end].strip().strip(",;").strip()
        if not prompt:
            raise ScheduleError(f"keyframe {key} of the schedule has no prompt (write 'N: prompt, M: prompt')")
        if entries and key <= entries[-1][0]:
            raise ScheduleError(f"keyframe {key} comes after keyframe {entries[-1][0]}: list them in increasing order")
        if key >= keyframes:
            raise ScheduleError(f"keyframe {key} is beyond the last keyframe ({keyframes - 1}); there are "
                                f"{keyframes} keyframes, numbered from 0")
        entries.append((key, prompt))
    if entries[0][0] != 0:
        raise ScheduleError(f"the schedule starts at keyframe {entries[0][0]}: start it at 0 ('0: prompt')")
    return entries


def prompt_at(schedule: Sequence[tuple[int, str]], k: int) -> str:
    """Keyframe k's prompt: the last entry starting at or before k."""
    return [p for start, p in schedule if start <= k][-1]


def inner_box(size: tuple[int, int], factor: float) -> tuple[int, int, int, int]:
    """Where the previous keyframe goes in the next: `factor` of each side, centred (left, top, right, bottom)."""
    w, h = size
    bw, bh = max(1, round(w * factor)), max(1, round(h * factor))
    x0, y0 = (w - bw) // 2, (h - bh) // 2
    return x0, y0, x0 + bw, y0 + bh


def kept_box(size: tuple[int, int], factor: float, overlap: int) -> tuple[int, int, int, int]:
    """The part of the shrunk keyframe kept exactly as it is: the inner box less `overlap` px a side."""
    x0, y0, x1, y1 = inner_box(size, factor)
    o = max(0, min(overlap, (x1 - x0) // 2 - 1, (y1 - y0) // 2 - 1))
    return x0 + o, y0 + o, x1 - o, y1 - o


def zoom_canvas(previous: Image.Image, factor: float, overlap: int) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(canvas, mask, keep) for the next keyframe: the previous one shrunk into the centre of a black canvas, the
    mask white over the border and the overlap, `keep` white where the shrunk pixels go back unchanged (with a soft
    ramp across the overlap)."""
    size = previous.size
    box = inner_box(size, factor)
    small = previous.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size)
    canvas.paste(small, box[:2])
    kept = kept_box(size, factor, overlap)
    mask = Image.new("L", size, 255)
    ImageDraw.Draw(mask).rectangle((kept[0], kept[1], kept[2] - 1, kept[3] - 1), fill=0)
    keep = Image.new("L", size, 0)
    o = kept[0] - box[0]
    if o > 1:  # a ramp across the overlap: 255 at the kept box, 0 at the shrunk image's edge
        half = o // 2
        ImageDraw.Draw(keep).rectangle((box[0] + half, box[1] + half, box[2] - half - 1, box[3] - half - 1), fill=255)
        keep = keep.filter(ImageFilter.GaussianBlur(o / 4))
        inside = Image.new("L", size, 0)
        ImageDraw.Draw(inside).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
        keep = ImageChops.multiply(keep, inside)
    ImageDraw.Draw(keep).rectangle((kept[0], kept[1], kept[2] - 1, kept[3] - 1), fill=255)
    return canvas, mask, keep


def keep_centre(inpainted: Image.Image, canvas: Image.Image, keep: Image.Image) -> Image.Image:
    """The inpainted keyframe with the shrunk previous keyframe composited back (unchanged inside the kept box)."""
    return Image.composite(canvas, inpainted.convert("RGB").resize(canvas.size, Image.Resampling.LANCZOS)
                           if inpainted.size != canvas.size else inpainted.convert("RGB"), keep)


def frame_count(keyframes: int, per_keyframe: int) -> int:
    """Frames of a zoom over `keyframes` keyframes: `per_keyframe` between each two, plus the last keyframe."""
    return max(keyframes - 1, 0) * per_keyframe + 1 if keyframes > 0 else 0


def frames(keyframes: Sequence[Image.Image], factor: float, per_keyframe: int, direction: str = "zoom out"
           ) -> Iterator[Image.Image]:
    """The video's frames, zoom out (first keyframe to last) or zoom in (the same, reversed), at the keyframes'
    size. Between keyframes k and k+1, frame i of `per_keyframe` is keyframe k+1 cropped around the centre by
    factor^(1 - i/per_keyframe), scaled up, with keyframe k (sharper than its shrunk copy) drawn over its part."""
    out = [_frame(keyframes, k, i / per_keyframe, factor) for k in range(len(keyframes) - 1)
           for i in range(per_keyframe)]
    if keyframes:
        out.append(keyframes[-1].convert("RGB"))
    yield from (reversed(out) if direction == "zoom in" else out)


def _frame(keyframes: Sequence[Image.Image], k: int, t: float, factor: float) -> Image.Image:
    outer, inner = keyframes[k + 1].convert("RGB"), keyframes[k].convert("RGB")
    w, h = outer.size
    s = factor ** (1 - t)  # the crop's share of each side: factor at t=0 (keyframe k), 1 at t=1 (keyframe k+1)
    cw, ch = w * s, h * s
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    frame = outer.resize((w, h), Image.Resampling.BICUBIC, box=box)
    iw, ih = round(w * factor / s), round(h * factor / s)  # where keyframe k lands in this frame
    if iw >= 4 and ih >= 4:
        o = max(1, round(iw * 0.02))  # leave its outermost pixels to the crop: they are the blended overlap
        part = inner.resize((iw, ih), Image.Resampling.LANCZOS).crop((o, o, iw - o, ih - o))
        frame.paste(part, ((w - iw) // 2 + o, (h - ih) // 2 + o))
    return frame


# -- files --------------------------------------------------------------------------------------------------------


def encoder(fmt: str) -> str:
    """The encoder of a video format that this PyAV's bundled ffmpeg has; ValueError naming the format otherwise."""
    import av

    have = set(av.codecs_available)
    for name in ENCODERS.get(fmt, ()):
        if name in have:
            return name
    raise ValueError(f"zoom_format {fmt!r}: no encoder ({', '.join(ENCODERS.get(fmt, ())) or 'unknown format'}) "
                     "in this PyAV's ffmpeg")


def write_video(images: Sequence[Image.Image], path: Path, fps: int, fmt: str) -> Path:
    """Write `images` as an MP4 (H.264) or WebM (VP9) video at `fps`; atomic (a hidden temporary file, then
    renamed). Sizes must be even (the keyframes' are multiples of 8)."""
    import av

    codec = encoder(fmt)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with av.open(str(tmp), "w", format="mp4" if fmt == "mp4" else "webm") as container:
            stream = container.add_stream(codec, rate=int(fps))
            stream.width, stream.height = images[0].size
            stream.pix_fmt = "yuv420p"
            stream.options = dict(_OPTIONS.get(codec, {}))
            for image in images:
                for packet in stream.encode(av.VideoFrame.from_image(image.convert("RGB"))):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_gif(images: Sequence[Image.Image], path: Path, fps: int) -> Path:
    """An animated GIF of `images` (looping) at about `fps` (GIF frame times are whole 1/100 s)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        first, *rest = [im.convert("RGB") for im in images]
        first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=max(20, round(1000 / fps)),
                   loop=0, optimize=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_video(path: Path | str) -> dict[str, Any]:
    """A video read back with PyAV: {"frames": decoded frame count, "size": (w, h), "codec": name, "fps": rate}."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count, size = 0, (stream.codec_context.width, stream.codec_context.height)
        for frame in container.decode(stream):
            count += 1
            size = (frame.width, frame.height)
        return {"frames": count, "size": size, "codec": stream.codec_context.name,
                "fps": float(stream.average_rate or stream.base_rate or 0)}
