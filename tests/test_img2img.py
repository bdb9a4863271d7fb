"""img2img and inpainting on tiny models: strength, sizes, masks, masked content, only-masked, 9-channel UNets."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipelines import imageops
from pipelines.engine.img2img import Img2ImgPlan
from pipelines.params.specs import Img2ImgParams
from pipelines.settings import Settings
from pipelines.studio import BadRequest, Studio

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server


def picture(size=(64, 64)):
    img = Image.new("RGB", size, (200, 100, 50))
    d = ImageDraw.Draw(img)
    d.ellipse([size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4], fill=(20, 180, 220))
    d.line([0, 0, size[0], size[1]], fill=(250, 250, 250), width=3)
    return img


def square_mask(size=(64, 64), box=(40, 40, 59, 59)):
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def run(world, image, mask=None, model="tiny-sd15", **params):
    params = {"prompt": "a blue ball", "steps": 8, "seed": 3, "sampler_name": "Euler", **params}
    job = world["runner"].submit(lambda ctx: world["engine"].img2img(ctx, Img2ImgParams(**params),
                                                                     world["infos"][model], image, mask))
    return job.wait(120)


def arr(img):
    return np.asarray(img, dtype=np.float64)


def test_strength_zero_returns_the_input(world):
    img = picture()
    r = run(world, img, denoising_strength=0)
    assert np.array_equal(arr(r.images[0]), arr(img))


def test_higher_strength_moves_further_from_the_input(world):
    """Distance to the input as the model's VAE sees it (its encode/decode round trip), fixed seed."""
    img = picture()
    engine = world["engine"]
    with engine.components(world["infos"]["tiny-sd15"]) as comps:
        latents = Img2ImgPlan._encode(engine, comps, img)
        with torch.inference_mode():
            rec = comps.vae.decode(latents / comps.vae.config.scaling_factor).sample
    reference = ((rec[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()
    distances = [np.abs(arr(run(world, img, denoising_strength=s, steps=20).images[0]) - reference).mean()
                 for s in (0.1, 0.3, 0.5, 0.8)]
    assert distances == sorted(distances) and distances[-1] > 1.5 * distances[0], distances


def test_sizes_follow_the_input_or_the_request(world):
    wide = picture((128, 64))
    r = run(world, wide, denoising_strength=0.3, steps=2)  # 2 x 0.3 rounds to 0: still one step runs
    assert r.images[0].size == imageops.default_size(wide.size, world["infos"]["tiny-sd15"].native)
    assert not np.array_equal(arr(r.images[0]), arr(wide.resize(r.images[0].size)))
    assert run(world, wide, denoising_strength=0.3, steps=2, width=64, height=64).images[0].size == (64, 64)
    assert run(world, wide, denoising_strength=0.3, steps=2, scale_by=0.5).images[0].size == (64, 64)
    for mode in range(4):  # every A1111 resize mode, including the latent upscale
        r = run(world, wide, denoising_strength=0.5, steps=2, width=64, height=64, resize_mode=mode)
        assert r.images[0].size == (64, 64)
        assert "Denoising strength: 0.5" in r.infotexts[0]


def test_inpaint_keeps_every_pixel_outside_the_blurred_mask(world):
    img, mask = picture(), square_mask()
    r = run(world, img, mask, denoising_strength=0.75, mask_blur=4)
    blurred, _ = imageops.prepare_mask(mask, img.size, invert=False, blur=4)
    outside = np.asarray(blurred) == 0
    changed = imageops.changed_pixels(img, r.images[0])
    assert changed.any() and not changed[outside].any()
    assert changed[45:55, 45:55].all()  # the middle of the masked square was repainted
    path = r.paths[0]
    assert path.parent.parent.name == "inpaint"
    assert "Mask blur: 4" in r.infotexts[0] and "Masked content: original" in r.infotexts[0]


def test_mask_invert_swaps_the_region(world):
    img, mask = picture(), square_mask()
    r = run(world, img, mask, denoising_strength=0.75, mask_blur=0, inpainting_mask_invert=1)
    changed = imageops.changed_pixels(img, r.images[0])
    assert not changed[40:60, 40:60].any() and changed[:30, :30].any()
    assert "Mask mode: Inpaint not masked" in r.infotexts[0]


def test_only_masked_crops_and_pastes_back_in_place(world):
    img, mask = picture((128, 128)), square_mask((128, 128), (90, 20, 109, 39))
    r = run(world, img, mask, denoising_strength=0.75, mask_blur=0, inpaint_full_res=1,
            inpaint_full_res_padding=8, width=64, height=64)
    assert r.images[0].size == (128, 128)  # the input's size: only the crop was regenerated
    changed = imageops.changed_pixels(img, r.images[0])
    ys, xs = np.nonzero(changed)
    assert changed[95:105, 95 - 70:105 - 70].sum() == 0  # the rest of the picture untouched
    assert ys.min() >= 20 and ys.max() <= 39 and xs.min() >= 90 and xs.max() <= 109
    assert changed[25:35, 95:105].all()
    assert "Inpaint area: Only masked" in r.infotexts[0]


@pytest.mark.parametrize("fill", ["fill", "original", "latent noise", "latent nothing"])
@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sd15-inpainting", "tiny-sdxl"])
def test_masked_content_modes_on_regular_inpainting_and_sdxl_models(world, fill, model):
    img, mask = picture(), square_mask()
    r = run(world, img, mask, model=model, denoising_strength=0.8, mask_blur=0, inpainting_fill=fill, steps=3)
    changed = imageops.changed_pixels(img, r.images[0])
    assert changed[40:60, 40:60].any() and not changed[:38, :38].any()


def test_masked_content_modes_start_differently(world):
    img, mask = picture(), square_mask()
    out = {f: arr(run(world, img, mask, denoising_strength=0.6, mask_blur=0, inpainting_fill=f).images[0])
           for f in ("fill", "original", "latent noise", "latent nothing")}
    keys = list(out)
    assert all(not np.array_equal(out[a], out[b]) for i, a in enumerate(keys) for b in keys[i + 1:])


def test_nine_channel_inpainting_checkpoint_is_detected_and_used(world):
    info = world["infos"]["tiny-sd15-inpainting"]
    assert info.inpainting and info.family == "sd15-inpaint"
    with world["engine"].components(info) as comps:
        assert comps.unet.config.in_channels == 9
    img, mask = picture(), square_mask()
    r = run(world, img, mask, model="tiny-sd15-inpainting", denoising_strength=1.0, mask_blur=0)
    changed = imageops.changed_pixels(img, r.images[0])
    assert changed[40:60, 40:60].any() and not changed[:38].any()
    assert run(world, img, model="tiny-sd15-inpainting", denoising_strength=0.5).images  # img2img on it too


def test_mask_of_another_size_is_resized_with_a_warning(world):
    img = picture()
    r = run(world, img, square_mask((32, 32), (20, 20, 29, 29)), denoising_strength=0.75, mask_blur=0)
    assert any("resized" in w for w in r.warnings)
    changed = imageops.changed_pixels(img, r.images[0])
    assert changed[42:58, 42:58].any() and not changed[:36, :36].any()
    full = run(world, img, Image.new("L", (64, 64), 255), denoising_strength=0.5)
    assert any("whole image" in w for w in full.warnings)


def test_modes_share_the_cached_components(world):
    run(world, picture(), denoising_strength=0.3, steps=2)
    loads = [h for h in world["manager"].history if h["action"] == "load"]
    run(world, picture(), square_mask(), denoising_strength=0.3, steps=2)
    assert [h for h in world["manager"].history if h["action"] == "load"] == loads


def test_bad_inputs_are_refused_before_queueing(world):
    settings = Settings(models_dir=world["root"] / "models", outputs_dir=world["root"] / "outputs", hub_models=(),
                        ckpt="tiny-sd15")
    studio = Studio(settings, world["runner"], world["engine"])
    params = studio.parse_img2img({"prompt": "x"})
    with pytest.raises(BadRequest, match="No input image"):
        studio.submit_img2img(params, None)
    with pytest.raises(BadRequest, match="mask is empty"):
        studio.submit_img2img(params, picture(), Image.new("L", (64, 64), 0))
    with pytest.raises(BadRequest, match="megapixels"):
        studio.submit_img2img(params, Image.new("RGB", (5000, 4000)))
    with pytest.raises(BadRequest, match="denoising_strength"):
        studio.parse_img2img({"denoising_strength": 1.5})
    assert studio.submit_img2img(params, picture(), square_mask()).wait(60).images  # and good input still works


def test_transparent_input_is_flattened_onto_white_and_img2img_infotext_has_no_mask_keys(world):
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    r = run(world, rgba, denoising_strength=0)
    assert (np.asarray(r.images[0]) == 255).all()
    text = run(world, picture(), denoising_strength=0.3, steps=2).infotexts[0]
    assert "Denoising strength: 0.3" in text and "Mask" not in text and "Inpaint area" not in text
