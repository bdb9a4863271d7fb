"""Memory modes on the tiny SD 1.5 model (CPU): the automatic pick, every mode applied to a real pipeline view and
fully undone, the manager's RAM placement, and out-of-memory in a step: retried one mode lower or failed cleanly."""

import gc
import shutil
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import discovery
from pipelines.engine import devices, memory
from pipelines.engine import generate as generate_mod
from pipelines.engine.generate import Engine, build_pipeline
from pipelines.engine.manager import ModelManager
from pipelines.jobs import EventKind, JobRunner
from pipelines.outputs import OutputWriter, read_png_info
from pipelines.params.samplers import make_scheduler
from pipelines.params.specs import Txt2ImgParams
from tests.conftest import TEST_DEVICE, TEST_PRECISION

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

GIB = 2**30


@pytest.fixture(scope="module")
def mem(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    info = discovery.scan(root / "models")[0]
    hw = devices.resolve(TEST_DEVICE, TEST_PRECISION)  # the CPU unless bench/gpu_check.py sets cuda + fp16
    manager = ModelManager(device=hw.device, device_budget=GIB, cpu_budget=GIB)  # RAM tier: offload modes on a GPU
    engine = Engine(hw, manager, OutputWriter(root / "outputs"), config_root=root / "configs",
                    preview_every=0)
    runner = JobRunner().start()
    yield {"engine": engine, "runner": runner, "info": info, "manager": manager}
    runner.stop()


def run(mem, mode="high", retry=False, **params):
    engine = mem["engine"]
    engine.memory_mode, engine.oom_retry = mode, retry
    params = Txt2ImgParams(**{"prompt": "a red cube", "steps": 3, "seed": 7, **params})
    job = mem["runner"].submit(lambda ctx: engine.txt2img(ctx, params, mem["info"]))
    return job


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def fake_hw(kind):
    return devices.Hardware(torch.device(kind), torch.float16, "sdpa", 24 * GIB, kind)


# -- choosing a mode ---------------------------------------------------------------------------
@pytest.mark.unit  # in a module of engine tests
def test_pick_mode_thresholds_and_order():
    cuda = fake_hw("cuda")
    assert [memory.pick_mode("auto", cuda, free_bytes=g * GIB)[0] for g in (20, 12, 9, 8, 6, 5, 4.9, 1)] == \
        ["high", "high", "normal", "normal", "low", "low", "minimal", "minimal"]
    mode, why = memory.pick_mode("auto", cuda, free_bytes=6 * GIB)
    assert "6.0 GiB free" in why
    assert memory.pick_mode("minimal", cuda, free_bytes=40 * GIB) == ("minimal", "set by --memory")
    assert memory.pick_mode("auto", fake_hw("cpu"))[0] == "high"  # RAM is the device
    assert memory.pick_mode("auto", fake_hw("mps"))[0] == "high"
    with pytest.raises(ValueError, match="auto, high, normal, low, minimal"):
        memory.pick_mode("huge", cuda)
    assert [memory.lower(m) for m in memory.MODES] == ["normal", "low", "minimal", None]
    assert set(memory.DESCRIPTIONS) == set(memory.MODES)


@pytest.mark.unit  # in a module of engine tests
def test_manager_hands_out_components_in_ram_for_offload_modes():
    def load():
        return {"a::unet": torch.nn.Linear(1, 2**18, bias=False)}  # 1 MiB

    m = ModelManager(device="cpu", device_budget=8 * 2**20, cpu_budget=2**19, two_tier=True)
    with m.use(["a::unet"], load, place="cpu") as objs:  # fresh from disk straight to RAM
        assert m.where("a::unet") == "cpu" and m.pinned() == {"a::unet": 1}
        assert m.usage()["cpu_bytes"] == 2**20  # in use: over the RAM budget, but never dropped
    assert m.pinned() == {}
    with m.use(["a::unet"], load):
        assert m.where("a::unet") == "device" and m.usage()["cpu_bytes"] == 0
    with m.use(["a::unet"], load, place="cpu") as objs:
        assert m.where("a::unet") == "cpu" and m.usage()["device_bytes"] == 0
        assert objs["a::unet"].weight.device.type == "cpu"
    assert [h["action"] for h in m.history].count("load") == 1
    with pytest.raises(ValueError):
        with m.use(["a::unet"], load, place="gpu"):
            pass


# -- applying and undoing a mode -----------------------------------------------------------------
def snapshot(comps):
    procs = {n: (p, type(p)) for n, p in comps.unet.attn_processors.items()}
    vae_procs = dict(comps.vae.attn_processors)
    where = {n: next(m.parameters()).device for n, m in (("unet", comps.unet), ("vae", comps.vae),
                                                         ("text_encoder", comps.text_encoder))}
    weights = float(sum(p.detach().double().sum() for p in comps.unet.parameters()))
    hooks = [hasattr(m, "_hf_hook") for m in (comps.unet, comps.vae, comps.text_encoder)]
    return procs, vae_procs, where, weights, hooks, (comps.vae.use_tiling, comps.vae.use_slicing)


@pytest.mark.parametrize("mode,offload", [("high", False), ("normal", False), ("low", False), ("minimal", False),
                                          ("low", True)])
def test_each_mode_applies_and_undoes_everything(mem, mode, offload):
    engine = mem["engine"]
    with engine.components(mem["info"]) as comps:
        before = snapshot(comps)
        pipe = build_pipeline(comps, make_scheduler("Euler", "Automatic", comps.scheduler_config))
        # 2048x2048 is "large"; offload=True forces the accelerate hooks even on this CPU device
        with memory.applied(pipe, mode, engine.hw.device, (2048, 2048), offload=offload) as done:
            procs = list(comps.unet.attn_processors.values())
            sliced = all(type(p).__name__ == "SlicedAttnProcessor" for p in procs)
            assert sliced == (mode == "minimal") and ("attention slicing" in done) == sliced
            assert comps.vae.use_tiling == (mode != "high")
            assert comps.vae.use_slicing == (mode in ("low", "minimal"))
            assert hasattr(comps.unet, "_hf_hook") == offload
            assert ("model CPU offload" in done) == offload
        assert snapshot(comps) == before  # same processor objects, VAE flags, devices, weights, no hooks


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="chains components that high mode put on the device; on a GPU the "
                    "engine's own chain runs in the low-mode jobs below")
def test_job_offload_chain_and_per_call_modes_leave_the_modules_as_they_were(mem):
    engine = mem["engine"]
    with engine.components(mem["info"]) as comps:
        before = snapshot(comps)
        chain = memory.OffloadChain([comps.text_encoder, comps.unet, comps.vae], "cpu")
        with chain.active():
            assert all(hasattr(m, "_hf_hook") for m in (comps.text_encoder, comps.unet, comps.vae))
            pipe = build_pipeline(comps, make_scheduler("Euler", "Automatic", comps.scheduler_config))
            with memory.applied(pipe, "low", "cpu", (64, 64), offload=True, chain=chain) as done:
                assert done == ["model CPU offload (job)", "VAE slicing"]  # the job's hooks already offload
            assert chain.installed and hasattr(comps.unet, "_hf_hook")
        assert snapshot(comps) == before


def test_minimal_mode_job_matches_high_and_leaks_nothing(mem, caplog):
    caplog.set_level("INFO", logger="studio.generate")
    high = run(mem, "high", seed=11).wait(120)
    minimal = run(mem, "minimal", seed=11, n_iter=2).wait(120)
    assert "no offloading" in caplog.text and caplog.text.count("no offloading") == 1  # said once
    assert np.abs(pixels(minimal.images[0]) - pixels(high.images[0])).max() <= 2
    again = run(mem, "high", seed=11).wait(120)
    assert np.array_equal(pixels(again.images[0]), pixels(high.images[0]))  # nothing of minimal mode leaked


# -- out of memory inside a step ------------------------------------------------------------------
class Explode:
    """Fault injection: the tiny UNet's forward raises CUDA's out-of-memory error once, at call `at`; records the
    attention processor type each call ran with (so we see which memory mode each call used)."""

    def __init__(self, unet, at):
        self.at, self.calls, self.kinds = at, 0, []
        self.handle = unet.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.kinds.append(type(next(iter(module.attn_processors.values()))).__name__)
        if self.calls == self.at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def unet_of(mem):
    with mem["engine"].components(mem["info"]) as comps:
        return comps.unet


def test_out_of_memory_retries_the_batch_one_mode_lower(mem):
    reference = run(mem, "low", seed=500, n_iter=3).wait(120)
    folder = reference.paths[0].parent
    saved = {s: len(list(folder.glob(f"*-{s}.png"))) for s in reference.seeds}
    boom = Explode(unet_of(mem), at=3 + 2)  # 3 steps per batch: step 2 of batch 2
    try:
        result = run(mem, "low", retry=True, seed=500, n_iter=3).wait(120)
    finally:
        boom.handle.remove()
    assert result.seeds == [500, 501, 502] and len(set(result.paths)) == 3
    for seed, path in zip(result.seeds, result.paths):
        assert path.exists() and f"Seed: {seed}" in read_png_info(Image.open(path))["info"]
        assert len(list(folder.glob(f"*-{seed}.png"))) == saved[seed] + 1  # no duplicate of the retried batch
    assert result.warnings == ["Out of memory in low mode at 64x64: retried in minimal mode"]
    # batch 1 and the failed try ran in low mode (SDPA), the retry and batch 3 in minimal (sliced attention)
    assert boom.kinds == ["AttnProcessor2_0"] * 5 + ["SlicedAttnProcessor"] * 6
    assert result.memory_mode == "minimal"
    assert np.array_equal(pixels(result.images[0]), pixels(reference.images[0]))
    for got, want in zip(result.images[1:], reference.images[1:]):  # same seeds -> same pictures, up to slicing
        assert np.abs(pixels(got) - pixels(want)).max() <= 2
    assert mem["manager"].pinned() == {}
    nxt = run(mem, "low", retry=True, seed=500, n_iter=3).wait(120)  # the next job starts in the set mode again
    assert nxt.memory_mode == "low" and not nxt.warnings
    for got, want in zip(nxt.images, reference.images):
        assert np.array_equal(pixels(got), pixels(want))


def test_out_of_memory_without_retry_fails_clearly_and_frees_everything(mem, monkeypatch):
    pipes, noises = [], []
    real_build, real_noise = generate_mod.build_pipeline, generate_mod.A1111Scheduler.first_noise

    def spy_build(*a, **k):
        pipe = real_build(*a, **k)
        pipes.append(weakref.ref(pipe))
        return pipe

    def spy_noise(*a, **k):  # the batch's initial latents
        x = real_noise(*a, **k)
        noises.append(weakref.ref(x))
        return x

    monkeypatch.setattr(generate_mod, "build_pipeline", spy_build)
    monkeypatch.setattr(generate_mod.A1111Scheduler, "first_noise", spy_noise)
    boom = Explode(unet_of(mem), at=3 + 2)
    try:
        job = run(mem, "high", retry=False, seed=700, n_iter=3)
        events = list(job.events(timeout=120))
    finally:
        boom.handle.remove()
    failed = events[-1]
    assert failed.kind is EventKind.FAILED
    assert failed.message.startswith("Out of device memory at 64x64, batch size 1 in high memory mode")
    assert "--memory normal" in failed.message
    images = [e for e in events if e.kind is EventKind.IMAGE]
    assert len(images) == 1 and images[0].result["seed"] == 700
    assert "Seed: 700" in read_png_info(Image.open(images[0].result["path"]))["info"]  # batch 1 stays, with infotext
    assert boom.calls == 5  # batch 3 never ran
    gc.collect()
    assert len(pipes) == 2 and len(noises) == 2
    assert all(r() is None for r in pipes + noises)  # the failed call's pipeline and latents are gone...
    assert job.exception is not None  # ...although the failed job keeps its exception
    assert mem["manager"].pinned() == {}
    assert run(mem, "high", seed=701).wait(120).images  # the worker and the cached model are fine


# -- what the UI and the API show -------------------------------------------------------------------
def test_memory_endpoint_and_status_line_show_the_mode(mem, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipelines.settings import parse_args
    from pipelines.studio import Studio
    from ui.api import build_api
    from ui.topbar import status_text

    settings = parse_args(["--models-dir", str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "outputs"),
                           "--styles-file", str(tmp_path / "styles.csv"), "--memory", "low"])
    mem["engine"].memory_mode = "low"
    studio = Studio(settings, mem["runner"], mem["engine"], hardware="CPU")
    app = FastAPI()
    app.include_router(build_api(studio))
    body = TestClient(app).get("/sdapi/v1/memory").json()
    assert body["mode"] == "low" and body["mode_setting"] == "low"
    assert body["cuda"] == {"error": "unavailable"}  # A1111's answer without CUDA
    assert body["ram"]["used"] > 0 and body["ram"]["total"] >= body["ram"]["used"]
    assert {"device_bytes", "device_budget"} <= set(body["models"])
    line = status_text(studio)
    assert "memory low (set) · process RAM " in line and "models: " in line
    # a job that ended in minimal mode, as an out-of-memory retry leaves it (jobs report their mode)
    mem["runner"].submit(lambda ctx: [ctx.report("memory_mode", "minimal"), ctx.report("memory_mode_lowered", True)]
                         ).wait(30)
    assert "memory minimal (lowered from low after out of memory)" in status_text(studio)
