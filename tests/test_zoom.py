"""The infinite zoom on tiny models (64x64, 2 steps): keyframes by outpainting, the prompt schedule, the video
read back with PyAV, interrupt and skip."""

import numpy as np
import pytest
from PIL import Image

from pipelines import zoom
from pipelines.jobs import Cancelled, EventKind
from pipelines.outputs import read_png_info
from pipelines.params import cost
from pipelines.settings import Settings
from pipelines.studio import BadRequest, Studio

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

BASE = {"prompt": "a forest", "steps": 2, "width": 64, "height": 64, "seed": 5, "zoom_factor": 0.5,
        "zoom_keyframes": 3, "zoom_overlap": 4, "zoom_mask_blur": 2, "zoom_frames_per_keyframe": 4, "zoom_fps": 8}


@pytest.fixture(scope="module")
def studio(world):
    settings = Settings(models_dir=world["root"] / "models", outputs_dir=world["root"] / "outputs", hub_models=(),
                        ckpt="tiny-sd15")
    return Studio(settings, world["runner"], world["engine"])


def picture(size=(64, 64)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_schedule_parsing(studio):
    assert zoom.parse_schedule("0: a forest, misty, 4: castle, (red:1.2)", 6) == [
        (0, "a forest, misty"), (4, "castle, (red:1.2)")]
    assert zoom.parse_schedule("just a prompt, 4k", 6) == [(0, "just a prompt, 4k")]
    schedule = zoom.parse_schedule("0: forest\n2: castle", 4)
    assert [zoom.prompt_at(schedule, k) for k in range(4)] == ["forest", "forest", "castle", "castle"]
    for bad, why in [("0: a, 0: b", "increasing"), ("1: a", "start it at 0"), ("0: a, 9: b", "beyond"),
                     ("0: , 2: b", "no prompt")]:
        with pytest.raises(zoom.ScheduleError, match=why):
            zoom.parse_schedule(bad, 6)
    with pytest.raises(BadRequest, match="prompt: keyframe 9 is beyond"):
        studio.parse_zoom({"prompt": "0: a, 9: b"})
    with pytest.raises(BadRequest, match="zoom_factor"):
        studio.parse_zoom({"zoom_factor": 0.1})
    with pytest.raises(BadRequest, match="zoom_frames_per_keyframe: 23761 frames of 2048x2048 are too many"):
        studio.submit_zoom({"zoom_keyframes": 100, "zoom_frames_per_keyframe": 240, "width": 2048, "height": 2048})


def test_cost_before_starting():
    c = cost.zoom_cost({**BASE, "zoom_denoising": 1.0}, has_image=False)
    assert (c["keyframes"], c["denoising_steps"], c["frames"]) == (3, 2 + 2 * 2, 9)
    assert cost.zoom_cost({**BASE, "zoom_denoising": 1.0}, has_image=True)["denoising_steps"] == 4
    assert "9 frames" in cost.zoom_cost_text(c)


def test_zoom_from_an_image_keeps_each_previous_keyframe_in_the_centre(studio):
    image = picture()
    job = studio.submit_zoom({**BASE, "prompt": "0: a forest, 2: a castle"}, image)
    events = list(job.events(timeout=300))
    assert events[-1].kind is EventKind.FINISHED, events[-1].message
    result = job.result
    assert len(result.images) == 3 and all(im.size == (64, 64) for im in result.images)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(image))  # keyframe 0 is the input
    x0, y0, x1, y1 = zoom.inner_box((64, 64), 0.5)
    kx0, ky0, kx1, ky1 = zoom.kept_box((64, 64), 0.5, 4)
    for prev, nxt in zip(result.images, result.images[1:]):
        shrunk = prev.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        expected = np.asarray(shrunk)[ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
        assert np.array_equal(np.asarray(nxt)[ky0:ky1, kx0:kx1], expected)
        assert not np.array_equal(np.asarray(nxt)[:4], np.zeros((4, 64, 3)))  # the border was painted
    labels = {e.label for e in events if e.kind is EventKind.PROGRESS and e.label}
    assert {"keyframe 2/3", "keyframe 3/3"} <= labels
    texts = [read_png_info(Image.open(p))["info"] for p in result.paths]
    assert texts[1].startswith("a forest\n") and texts[2].startswith("a castle\n")
    assert "Zoom factor: 0.5" in texts[2] and "Zoom keyframe: 2/2" in texts[2]
    assert all(p.parent.parent.name == "zoom" for p in result.paths)
    video = zoom.read_video(result.video)  # read back with PyAV
    assert video["frames"] == result.frames == 2 * 4 + 1 and video["size"] == (64, 64)
    assert result.video.suffix == ".mp4" and result.video.parent == result.paths[0].parent
    assert Image.open(result.gif).n_frames == 9
    assert result.denoising_steps == cost.zoom_cost({**BASE, "zoom_denoising": 1.0}, True)["denoising_steps"]


def test_zoom_without_image_starts_from_txt2img_and_writes_webm(studio):
    job = studio.submit_zoom({**BASE, "zoom_keyframes": 2, "zoom_format": "webm", "zoom_direction": "zoom in"})
    job.wait(300)
    result = job.result
    assert len(result.images) == 2 and "Zoom input: txt2img" in result.infotexts[0]
    video = zoom.read_video(result.video)
    assert (video["frames"], video["size"], video["codec"]) == (5, (64, 64), "vp9")


def test_interrupt_keeps_the_keyframes_and_writes_a_video(studio):
    job = studio.submit_zoom({**BASE, "steps": 6, "zoom_keyframes": 5}, picture())
    for ev in job.events(timeout=300):
        if ev.kind is EventKind.IMAGE and ev.result.get("keyframe") == 1:
            studio.runner.interrupt(job)
    with pytest.raises(Cancelled):
        job.wait(5)
    result = job.details["zoom"]
    assert result.stopped == "interrupted" and 2 <= len(result.images) < 5
    assert all(p.exists() for p in result.paths)
    video = zoom.read_video(result.video)
    assert video["frames"] == (len(result.images) - 1) * 4 + 1 and video["size"] == (64, 64)


def test_skip_stops_and_keeps_what_is_done(studio):
    job = studio.submit_zoom({**BASE, "steps": 6, "zoom_keyframes": 5}, picture())
    for ev in job.events(timeout=300):
        if ev.kind is EventKind.PROGRESS and ev.label == "keyframe 3/5" and (ev.step or 0) > 0:
            studio.runner.skip(job)
    result = job.wait(5)
    assert result.stopped == "skipped" and len(result.images) in (2, 3)
    assert any("Skipped" in w for w in result.warnings)
    assert zoom.read_video(result.video)["frames"] == (len(result.images) - 1) * 4 + 1
