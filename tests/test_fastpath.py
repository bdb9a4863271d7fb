"""Fast paths on tiny models (CPU): channels-last, torch.compile with its warm-up reported, TAESD live previews,
and the fp16 VAE NaN guard."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from pipelines.engine import devices, fastpath, previews
from pipelines.engine.generate import Engine, build_pipeline, vae_decode
from pipelines.engine.manager import ModelManager
from pipelines.jobs import EventKind
from pipelines.outputs import OutputWriter
from pipelines.params.specs import Txt2ImgParams
from tests.conftest import TEST_DEVICE, TEST_PRECISION

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

NAN_NOTE = "VAE produced NaNs in float16: decoded in float32"


def make_engine(world, tmp_path, precision: str = TEST_PRECISION, manager: ModelManager | None = None,
                **kw) -> Engine:
    """An engine beside the shared one: its own model cache unless `manager` is given (channels-last and
    compile are applied as the UNet enters the cache, so those need a fresh one)."""
    hw = devices.resolve(TEST_DEVICE, precision)  # the world engine's device (and by default its precision)
    manager = manager or ModelManager(device=hw.device, device_budget=2**30, cpu_budget=0)
    cache = world["root"] / "models" / ".cache"
    kw.setdefault("models_dir", tmp_path / "models")
    return Engine(hw, manager, OutputWriter(tmp_path / "outputs"), config_root=cache / "configs",
                  hash_cache=cache / "hashes.json", preview_every=1, **kw)


def run(world, engine, model="tiny-sd15", **params):
    """(result, events) of one txt2img job on `engine`."""
    params = {"prompt": "a red cube on a table", "steps": 2, "seed": 42, **params}
    job = world["runner"].submit(lambda ctx: engine.txt2img(ctx, Txt2ImgParams(**params), world["infos"][model]))
    events = list(job.events(timeout=600))
    return job.wait(1), events


def pixels(img):
    return np.asarray(img, dtype=np.int16)


# -- precision and channels-last ----------------------------------------------------------------------------
@pytest.mark.unit  # in a module of engine tests
def test_bf16_on_the_cpu_and_fp16_as_the_gpu_default():
    assert devices.resolve("cpu", "bf16").dtype == torch.bfloat16
    assert devices.resolve("cpu").dtype == torch.float32
    assert "fp16" in devices.resolve.__doc__ and "bf16" in devices.resolve.__doc__


def test_channels_last_unet_gives_the_same_image(world, tmp_path):
    fast = make_engine(world, tmp_path, channels_last=True)
    a, _ = run(world, world["engine"])
    b, _ = run(world, fast)
    with fast.components(world["infos"]["tiny-sd15"]) as comps:
        w = comps.unet.conv_in.weight
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    with world["engine"].components(world["infos"]["tiny-sd15"]) as comps:
        assert comps.unet.conv_in.weight.is_contiguous()  # the default engine's UNet stays as loaded
    assert np.abs(pixels(a.images[0]) - pixels(b.images[0])).max() <= 2


# -- torch.compile --------------------------------------------------------------------------------------------
def test_compiled_unet_matches_eager_and_reports_its_warm_up_once_per_size(world, tmp_path):
    """Inductor (the default backend) generates C++ here: over 10 minutes for the tiny UNet on this 2-core
    machine, aot_eager ~30 s a shape. The engine's `compile_backend` (no command-line setting) lets the test use
    "eager": the same dynamo capture, guards and per-shape recompiles that make a new size's first step slow,
    without code generation."""
    fast = make_engine(world, tmp_path, compile_unet=True, compile_backend="eager")
    eager, _ = run(world, world["engine"], steps=3)
    first, events = run(world, fast, steps=3)
    labels = [e.label for e in events if e.kind is EventKind.PROGRESS]
    assert "compiling UNet (first step)…" in labels
    warm = [w for w in first.warnings if w.startswith("torch.compile warm-up:")]
    assert len(warm) == 1 and "on the first step at 64x64 (later steps " in warm[0]
    assert np.abs(pixels(eager.images[0]) - pixels(first.images[0])).max() <= 2

    again, events = run(world, fast, steps=3, seed=43)  # same size: already compiled, nothing to say
    assert not [w for w in again.warnings if "warm-up" in w]
    assert "compiling UNet (first step)…" not in [e.label for e in events if e.kind is EventKind.PROGRESS]

    bigger, _ = run(world, fast, steps=3, width=96)  # a new size compiles again
    assert [w for w in bigger.warnings if w.startswith("torch.compile warm-up:") and "at 96x64" in w]
    with fast.components(world["infos"]["tiny-sd15"]) as comps:
        assert fastpath.is_compiled(comps.unet) and comps.unet.config.in_channels == 4  # still the module


# -- TAESD previews -------------------------------------------------------------------------------------------
def tiny_taesd(seed: int = 0):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                           num_encoder_blocks=(1,) * 4, num_decoder_blocks=(2, 1, 1, 1)).eval()


def a1111_layout(tiny) -> dict:
    """The decoder as A1111's taesd_decoder.pth stores it: an nn.Sequential whose item 0 is the Clamp."""
    out = {}
    for k, v in tiny.state_dict().items():
        if k.startswith("decoder.layers."):
            _, _, index, rest = k.split(".", 3)
            out[f"{int(index) + 1}.{rest}"] = v.clone()
    return out


@pytest.fixture(scope="module")
def taesd_store(tmp_path_factory):
    """TAESD weights for SD 1.x three ways: a diffusers folder, A1111's .pth and a .safetensors decoder file."""
    from safetensors.torch import save_file

    store = tmp_path_factory.mktemp("taesd")
    tiny = tiny_taesd()
    tiny.save_pretrained(str(store / "folder" / "VAE-approx" / "taesd"))
    (store / "pth" / "VAE-approx").mkdir(parents=True)
    torch.save(a1111_layout(tiny), store / "pth" / "VAE-approx" / "taesd_decoder.pth")
    (store / "st" / "VAE-approx").mkdir(parents=True)
    save_file(a1111_layout(tiny), str(store / "st" / "VAE-approx" / "taesd_decoder.safetensors"))
    return store, tiny


def test_taesd_loads_from_a_diffusers_folder_and_from_a1111_decoder_files(taesd_store):
    store, tiny = taesd_store
    assert sorted(a1111_layout(tiny))[:2] == ["1.bias", "1.weight"]  # item 0 (the Clamp) has no weights
    latents = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    want = previews.taesd_preview(tiny, latents, (96, 64))
    approx = previews.latent_preview(latents, False, (96, 64))
    for kind in ("folder", "pth", "st"):
        path = previews.taesd_weights(store / kind, sdxl=False)
        assert path is not None and previews.taesd_weights(store / kind, sdxl=True) is None  # SDXL: taesdxl
        got = previews.taesd_preview(previews.load_taesd(path, torch.float32), latents, (96, 64))
        assert got.size == (96, 64) and np.array_equal(pixels(got), pixels(want)), kind
        assert np.abs(pixels(got) - pixels(approx)).mean() > 5  # a decoded image, not the linear map
    with pytest.raises(ValueError):
        previews.decoder_state_dict({"encoder.weight": torch.zeros(1)})


def test_auto_previews_use_taesd_when_present_and_the_latent_map_when_absent(world, taesd_store, tmp_path):
    store, _ = taesd_store
    with_taesd = make_engine(world, tmp_path, manager=world["manager"], models_dir=store / "pth")
    without = make_engine(world, tmp_path, manager=world["manager"], models_dir=tmp_path / "models")
    loads = len([h for h in world["manager"].history if h["action"] == "load" and h["key"].startswith("taesd::")])
    a, ev_a = run(world, with_taesd, steps=2)
    run(world, with_taesd, steps=2)
    b, ev_b = run(world, without, steps=2)
    pa = [e.image for e in ev_a if e.kind is EventKind.PREVIEW]
    pb = [e.image for e in ev_b if e.kind is EventKind.PREVIEW]
    assert len(pa) == len(pb) == 2 and all(p.size == (64, 64) for p in pa + pb)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))  # same latents, only the previews differ
    assert all(np.abs(pixels(x) - pixels(y)).mean() > 5 for x, y in zip(pa, pb))
    taesd_loads = [h for h in world["manager"].history if h["action"] == "load" and h["key"].startswith("taesd::")]
    assert len(taesd_loads) == loads + 1  # loaded once through the component cache, a hit after that
    assert taesd_loads[-1]["bytes"] > 0 and world["manager"].cached("taesd::")

    latent_only = make_engine(world, tmp_path, manager=world["manager"], models_dir=store / "pth",
                              preview_decoder="latent")
    _, ev_c = run(world, latent_only, steps=2)
    pc = [e.image for e in ev_c if e.kind is EventKind.PREVIEW]
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(pb, pc))


def test_taesd_asked_for_without_weights_warns_once_and_uses_the_latent_map(world, tmp_path, caplog):
    engine = make_engine(world, tmp_path, manager=world["manager"], preview_decoder="taesd")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.WARNING, logger="studio.previews"):
        for _ in range(2):
            with engine._previewer(False, (64, 64)) as preview:
                img = preview(latents)
    assert np.array_equal(pixels(img), pixels(previews.latent_preview(latents, False, (64, 64))))
    assert len([r for r in caplog.records if "no taesd weights" in r.getMessage()]) == 1


# -- fp16 VAE NaN guard ---------------------------------------------------------------------------------------
def overflow_in_fp16(vae) -> None:
    """Fault injection: the decoder's last ResNet divides its output by 2^-20 (exact in float32), and the
    GroupNorm after it normalizes the scale away, so float32 decodes as before while float16 (max 65504)
    overflows to inf and the norm turns that into NaN, the way an fp16 SD VAE fails on large activations.
    bf16 would not show it: it has float32's range."""
    vae.decoder.up_blocks[-1].resnets[-1].output_scale_factor = 2.0 ** -20


def test_fp16_vae_overflow_is_decoded_again_in_float32_with_a_warning(world, tmp_path):
    engine = make_engine(world, tmp_path, precision="fp16")
    info = world["infos"]["tiny-sd15"]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half().to(engine.hw.device)
    with engine.components(info) as comps:
        overflow_in_fp16(comps.vae)
        before = engine.manager.usage()["device_bytes"]
        raw = vae_decode(comps.vae, latents, torch.float16, sdxl=False)
        assert torch.isnan(raw).any()  # what the pipeline would have turned into a black image
        reference = copy.deepcopy(comps.vae).float()
        want = vae_decode(reference, latents, torch.float32, sdxl=False)
        notes: list[str] = []
        images = engine.decode(comps, latents, notes)
        assert comps.vae.dtype == torch.float16 and engine.manager.usage()["device_bytes"] == before
    assert len(notes) == 1 and notes[0].startswith(NAN_NOTE) and "fp16-fix" in notes[0]
    want_px = ((want.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).cpu().numpy()
    for img, ref in zip(images, want_px):
        assert pixels(img).std() > 0 and np.abs(pixels(img) - ref).max() <= 1

    result, _ = run(world, engine, steps=2, batch_size=2)  # the job path: the pipeline stops at the latents
    assert [w for w in result.warnings if w.startswith(NAN_NOTE)] == [notes[0]]  # once per job, not per image
    assert all(pixels(img).max() > 0 for img in result.images)


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_own_decode_is_byte_identical_to_the_pipelines_in_fp16(world, tmp_path, model):
    """SDXL's fp16 VAE (force_upcast in its config) decodes in float32 inside the pipeline; SD 1.x decodes in
    float16: Engine.decode does the same, so taking the decode out of the pipeline changes no pixel."""
    from pipelines.params import samplers

    engine = make_engine(world, tmp_path, precision="fp16")
    with engine.components(world["infos"][model]) as comps:
        embeds = engine.encode(comps, "a red cube", "", 1)
        start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)).half()

        def call(output_type):
            scheduler = samplers.make_scheduler("Euler", "Automatic", comps.scheduler_config)
            pipe = build_pipeline(comps, scheduler)
            with torch.inference_mode():
                return pipe(num_inference_steps=2, width=64, height=64, latents=start.clone(),
                            output_type=output_type, **embeds).images

        assert (comps.vae.config.force_upcast, comps.vae.dtype) == (True, torch.float16)
        engine.round_pixels = True  # diffusers rounds to 8 bits (the studio truncates by default, as A1111)
        ours = engine.decode(comps, call("latent"))
        theirs = call("pil")
    assert np.array_equal(pixels(ours[0]), pixels(theirs[0]))
