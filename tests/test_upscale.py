"""The Upscale tab's jobs on tiny models: plain upscaling (single, batch, blended) and the tiled SD upscale."""

import numpy as np
import pytest
from PIL import Image

from pipelines.jobs import Cancelled, EventKind
from pipelines.outputs import read_png_info
from pipelines.settings import Settings
from pipelines.studio import BadRequest, Studio
from tests.tiny_upscalers import esrgan_state_dict, save_pth

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server


@pytest.fixture(scope="module")
def studio(world):
    save_pth(esrgan_state_dict(scale=4), world["root"] / "models" / "ESRGAN" / "4x-tiny.pth")
    world["engine"].models_dir = world["root"] / "models"
    settings = Settings(models_dir=world["root"] / "models", outputs_dir=world["root"] / "outputs", hub_models=(),
                        ckpt="tiny-sd15")
    return Studio(settings, world["runner"], world["engine"])


def picture(size=(48, 32)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_upscalers_listed_and_unknown_refused(studio):
    names = studio.upscaler_names()
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "4x-tiny" in names
    with pytest.raises(BadRequest, match="Unknown upscaler 'Nope'.*4x-tiny"):
        studio.submit_extras({"upscaler_1": "Nope"}, [("a", picture())])


def test_extras_single_batch_and_blend(studio):
    r = studio.submit_extras({"upscaler_1": "4x-tiny", "upscaling_resize": 2},
                             [("a.png", picture()), ("b.png", picture((32, 32)))]).wait(120)
    assert [i.size for i in r.images] == [(96, 64), (64, 64)]
    assert all(p.parent.parent.name == "extras" for p in r.paths)
    assert "Postprocess upscaler: 4x-tiny" in read_png_info(Image.open(r.paths[0]))["info"]
    exact = studio.submit_extras({"upscaler_1": "Lanczos", "upscaling_resize_w": 100, "upscaling_resize_h": 40},
                                 [("a", picture())]).wait(60)
    assert exact.images[0].size == (100, 40)
    a = np.asarray(studio.submit_extras({"upscaler_1": "Lanczos"}, [("a", picture())]).wait(60).images[0], float)
    b = np.asarray(studio.submit_extras({"upscaler_1": "Nearest"}, [("a", picture())]).wait(60).images[0], float)
    mix = np.asarray(studio.submit_extras({"upscaler_1": "Lanczos", "upscaler_2": "Nearest",
                                           "extras_upscaler_2_visibility": 0.5}, [("a", picture())]).wait(60).images[0],
                     float)
    assert np.abs(mix - (a + b) / 2).max() <= 1


def test_extras_keeps_the_images_own_parameters(studio):
    from PIL.PngImagePlugin import PngInfo

    src = picture()
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, Seed: 5, Size: 48x32")
    path = studio.settings.outputs_dir / "src.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    src.save(path, pnginfo=info)
    r = studio.submit_extras({"upscaler_1": "Lanczos"}, [("src", Image.open(path))]).wait(60)
    p = read_png_info(Image.open(r.paths[0]))["parameters"]
    assert p["prompt"] == "a cat" and p["seed"] == 5 and p["extra"]["Postprocess upscaler"] == "Lanczos"


def test_tiled_sd_upscale_redraws_every_tile(studio):
    params = {"prompt": "a city", "steps": 4, "denoising_strength": 0.5, "seed": 3, "upscaler_1": "4x-tiny",
              "upscaling_resize": 2, "tile_width": 64, "tile_height": 64, "tile_padding": 8, "seams_fix": "band pass",
              "seams_fix_width": 16}
    job = studio.submit_sd_upscale(params, picture((64, 64)))
    events = list(job.events(timeout=300))
    result = job.result
    assert events[-1].kind is EventKind.FINISHED and result.images[0].size == (128, 128)
    labels = {e.label for e in events if e.kind is EventKind.PROGRESS and e.label}
    assert {f"tile {i}/6" for i in range(1, 5)} <= labels  # 4 tiles, then 2 seam bands
    assert {"seam 5/6", "seam 6/6"} <= labels
    steps = [(e.step, e.total) for e in events if e.kind is EventKind.PROGRESS and e.total == 16]
    assert steps[-1] == (16, 16)  # 4 tiles x (int(4 x 0.5) + 1) steps + 2 seams x (int(4 x 0.35) + 1) (A1111's)
    text = result.infotexts[0]
    assert "Tile width: 64" in text and "Seams fix: band pass" in text and "Denoising strength: 0.5" in text
    assert result.paths[0].parent.parent.name == "extras"


def test_cancelled_tiled_upscale_writes_nothing(studio):
    before = set(studio.settings.outputs_dir.rglob("*.png"))
    params = {"prompt": "x", "steps": 20, "denoising_strength": 0.5, "upscaler_1": "Lanczos", "upscaling_resize": 2,
              "tile_width": 64, "tile_height": 64}
    job = studio.submit_sd_upscale(params, picture((64, 64)))
    for ev in job.events(timeout=300):
        if ev.kind is EventKind.PROGRESS and ev.label and ev.label.startswith("tile 2/"):
            studio.runner.interrupt(job)
    with pytest.raises(Cancelled):
        job.wait(5)
    assert set(studio.settings.outputs_dir.rglob("*.png")) == before
    assert not list(studio.settings.outputs_dir.rglob("*.tmp"))


def test_bad_upscale_requests(studio):
    with pytest.raises(BadRequest, match="tile is larger than the 96x64 result"):
        studio.submit_sd_upscale({"upscaler_1": "Lanczos", "tile_width": 128}, picture())
    with pytest.raises(BadRequest, match="limit is 8192"):
        studio.submit_extras({"upscaler_1": "Lanczos", "upscaling_resize": 8}, [("a", picture((2000, 1200)))])
    with pytest.raises(BadRequest, match="No image"):
        studio.submit_extras({}, [])
    with pytest.raises(BadRequest, match="seams_fix"):
        studio.parse_sd_upscale({"seams_fix": "glue"})


def test_hires_fix_with_a_model_upscaler(studio, world):
    job = studio.submit_txt2img({"prompt": "x", "steps": 3, "enable_hr": True, "hr_upscaler": "4x-tiny",
                                 "hr_scale": 2, "seed": 1})
    r = job.wait(120)
    assert r.images[0].size == (128, 128) and "Hires upscaler: 4x-tiny" in r.infotexts[0]
    with pytest.raises(BadRequest, match="Unknown upscaler"):
        studio.submit_txt2img({"prompt": "x", "enable_hr": True, "hr_upscaler": "5x-missing"})


def test_none_upscaler_keeps_the_image_and_names_ignore_case(studio):
    src = picture()
    r = studio.submit_extras({"upscaler_1": "None"}, [("a", src)]).wait(60)
    assert np.array_equal(np.asarray(r.images[0]), np.asarray(src))
    r = studio.submit_extras({"upscaler_1": "lanczos", "upscaler_2": "missing-but-unused"}, [("a", src)]).wait(60)
    assert r.images[0].size == (96, 64)
