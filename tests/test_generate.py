"""The txt2img engine on tiny models: seeds, batches, variations, samplers, skip/interrupt, saving, sharing."""

from pathlib import Path

import numpy as np
import pytest

from pipelines import discovery
from pipelines.jobs import Cancelled, EventKind
from pipelines.outputs import read_png_info
from pipelines.params import samplers
from pipelines.params.specs import Txt2ImgParams

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server


def run(world, model="tiny-sd15", **params):
    params = {"prompt": "a red cube on a table", "steps": 3, "seed": 42, **params}
    job = world["runner"].submit(lambda ctx: world["engine"].txt2img(ctx, Txt2ImgParams(**params),
                                                                     world["infos"][model]))
    return job.wait(120)


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_image_and_seed_sequence(world):
    a, b = run(world, seed=7), run(world, seed=7)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    c = run(world, seed=8)
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))

    batch = run(world, seed=100, batch_size=2, n_iter=2)
    assert batch.seeds == [100, 101, 102, 103] and len(batch.images) == 4
    alone = run(world, seed=102)  # a seed gives the same picture whatever its position in a batch
    assert np.abs(pixels(batch.images[2]) - pixels(alone.images[0])).max() <= 2


def test_random_seed_is_resolved_and_recorded(world):
    r = run(world, seed=-1)
    assert r.seeds[0] >= 0 and f"Seed: {r.seeds[0]}" in r.infotexts[0]


def test_default_size_is_the_models_native_size(world):
    assert run(world).images[0].size == (64, 64)
    assert run(world, width=96, height=64).images[0].size == (96, 64)


def test_images_saved_with_infotext(world):
    r = run(world, seed=5, negative_prompt="blurry", cfg_scale=6.5, clip_skip=2)
    path = r.paths[0]
    assert path.exists() and path.parent.parent.name == "txt2img" and path.name.endswith("-5.png")
    info = read_png_info(__import__("PIL.Image", fromlist=["Image"]).open(path))
    p = info["parameters"]
    assert p["prompt"] == "a red cube on a table" and p["negative_prompt"] == "blurry"
    assert (p["seed"], p["steps"], p["cfg_scale"], p["clip_skip"]) == (5, 3, 6.5, 2)
    assert p["extra"]["Model"] == "tiny-sd15" and len(p["extra"]["Model hash"]) == 10
    assert not list(path.parent.glob("*.tmp"))


def test_variation_seed(world):
    base = pixels(run(world, seed=3).images[0])
    v1 = run(world, seed=3, subseed=9, subseed_strength=0.1)
    v2 = run(world, seed=3, subseed=9, subseed_strength=0.1)
    far = pixels(run(world, seed=3, subseed=9, subseed_strength=0.9).images[0])
    near = pixels(v1.images[0])
    assert np.array_equal(near, pixels(v2.images[0]))
    assert 0 < np.abs(near - base).mean() < np.abs(far - base).mean()
    assert "Variation seed: 9, Variation seed strength: 0.1" in v1.infotexts[0]


def test_clip_skip_and_long_prompts_change_the_image(world):
    a = pixels(run(world, seed=1).images[0])
    assert not np.array_equal(a, pixels(run(world, seed=1, clip_skip=2).images[0]))
    long = "a red cube on a table, " * 30  # ~180 tokens: three chunks, nothing cut
    assert not np.array_equal(a, pixels(run(world, seed=1, prompt=long).images[0]))


FEW, MORE = 3, 12  # steps


@pytest.fixture(scope="module")
def converged(world):
    """Where sampling converges for seed 11: DPM++ 2M Karras at 50 steps. Every deterministic sampler solves the same
    ODE from the same noise, so all of them approach this one image as their steps grow."""
    return pixels(run(world, sampler_name="DPM++ 2M", scheduler="Karras", steps=50, seed=11).images[0])


@pytest.mark.parametrize("sampler", samplers.sampler_names())
def test_every_sampler_generates(world, converged, sampler):
    """Every sampler runs and its seed fixes the image; each deterministic one (not ancestral, not SDE) converges: at
    12 steps its image is much closer to the converged image than at 3 (measured on the tiny model: 12 steps are at
    0.05-0.45 of the 3-step distance; given swapped steps or the wrong parameterisation, 0.9 or more)."""
    r = run(world, sampler_name=sampler, steps=FEW, seed=11)
    few = pixels(r.images[0])
    assert few.shape == (64, 64, 3) and f"Sampler: {sampler}, " in r.infotexts[0] and f"Steps: {FEW}, " in r.infotexts[0]
    assert np.array_equal(few, pixels(run(world, sampler_name=sampler, steps=FEW, seed=11).images[0]))
    if not samplers.is_ancestral(sampler):
        more = pixels(run(world, sampler_name=sampler, steps=MORE, seed=11).images[0])
        far, near = np.abs(few - converged).mean(), np.abs(more - converged).mean()
        assert near < 0.6 * far, f"{sampler}: {MORE} steps are {near:.2f} from the converged image, {FEW} steps {far:.2f}"


def test_sdxl_and_inpainting_checkpoints(world):
    xl = run(world, model="tiny-sdxl", seed=4)
    assert xl.images[0].size == (64, 64) and "Model: tiny-sdxl" in xl.infotexts[0]
    inp = run(world, model="tiny-sd15-inpainting", seed=4)  # 9-channel UNet used for txt2img
    assert inp.images[0].size == (64, 64)


def test_components_are_loaded_once_and_shared(world):
    run(world, seed=1)
    mark = world["manager"].history[-1]  # the history is bounded: look at what the second job logged
    run(world, seed=2, sampler_name="Euler a")
    entries = list(world["manager"].history)
    since = entries[next(i for i, h in enumerate(entries) if h is mark) + 1:]
    assert since and not [h for h in since if h["action"] == "load"]
    assert world["manager"].history[-1]["action"] == "hit"


def test_events_progress_preview_images(world):
    params = Txt2ImgParams(prompt="x", steps=3, seed=1, n_iter=2)
    job = world["runner"].submit(lambda ctx: world["engine"].txt2img(ctx, params, world["infos"]["tiny-sd15"]))
    events = list(job.events(timeout=60))
    kinds = [e.kind for e in events]
    steps = [(e.step, e.total) for e in events if e.kind is EventKind.PROGRESS and e.total == 6]
    assert steps == [(i, 6) for i in range(1, 7)]
    assert EventKind.PREVIEW in kinds and kinds.count(EventKind.IMAGE) == 2 and kinds[-1] is EventKind.FINISHED
    img = next(e for e in events if e.kind is EventKind.IMAGE)
    assert Path(img.result["path"]).exists() and "Steps: 3" in img.result["infotext"]


def test_skip_moves_to_next_batch_and_interrupt_keeps_finished_images(world):
    engine, runner, info = world["engine"], world["runner"], world["infos"]["tiny-sd15"]
    params = Txt2ImgParams(prompt="x", steps=40, seed=20, n_iter=3)
    job = runner.submit(lambda ctx: engine.txt2img(ctx, params, info))
    for ev in job.events(timeout=60):
        if ev.kind is EventKind.PROGRESS and ev.total == 120 and ev.step == 2:
            runner.skip(job)  # abandon batch 1, go on with 2 and 3
    result = job.result
    assert result.skipped == 1 and result.seeds == [21, 22]

    job = runner.submit(lambda ctx: engine.txt2img(ctx, params, info))
    saved = []
    for ev in job.events(timeout=60):
        if ev.kind is EventKind.IMAGE:
            saved.append(Path(ev.result["path"]))
            runner.interrupt(job)
    assert job.status == "cancelled" and len(saved) == 1 and saved[0].exists()
    with pytest.raises(Cancelled):
        job.wait(1)


def test_out_of_memory_in_a_step_is_reported_and_the_next_job_runs(world):
    import torch

    engine, runner, info = world["engine"], world["runner"], world["infos"]["tiny-sd15"]
    run(world, seed=1)  # components cached
    with engine.components(info) as comps:
        unet = comps.unet
    calls = {"n": 0}

    def explode(module, args):
        calls["n"] += 1
        if calls["n"] == 5:  # fails inside the second batch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = unet.register_forward_pre_hook(explode)
    try:
        params = Txt2ImgParams(prompt="x", steps=3, seed=30, n_iter=2)
        job = runner.submit(lambda ctx: engine.txt2img(ctx, params, info))
        events = list(job.events(timeout=60))
    finally:
        hook.remove()
    failed = events[-1]
    assert failed.kind is EventKind.FAILED and "Out of device memory at 64x64" in failed.message
    finished = [e for e in events if e.kind is EventKind.IMAGE]
    assert len(finished) == 1 and Path(finished[0].result["path"]).exists()  # batch 1 was kept
    assert all(world["manager"].where(k) for k in world["manager"].cached("tiny-sd15"))  # nothing half-dropped
    assert run(world, seed=31).images  # the worker and the cached model are fine


def test_corrupt_checkpoint_fails_with_a_clear_message(world, tmp_path):
    bad_dir = tmp_path / "models" / "Stable-diffusion"
    bad_dir.mkdir(parents=True)
    (bad_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    info = next(i for i in discovery.scan(tmp_path / "models") if i.name == "broken.safetensors")
    assert info.error
    job = world["runner"].submit(lambda ctx: world["engine"].txt2img(ctx, Txt2ImgParams(prompt="x"), info))
    with pytest.raises(RuntimeError, match="broken.safetensors"):
        job.wait(60)
    assert run(world, seed=2).images


def test_second_order_samplers_report_steps_within_the_total(world):
    params = Txt2ImgParams(prompt="x", steps=4, seed=1, sampler_name="Heun")
    job = world["runner"].submit(lambda ctx: world["engine"].txt2img(ctx, params, world["infos"]["tiny-sd15"]))
    steps = [e.step for e in job.events(timeout=60) if e.kind is EventKind.PROGRESS and e.total == 4]
    assert steps[-1] == 4 and all(0 < s <= 4 for s in steps) and steps == sorted(steps)
