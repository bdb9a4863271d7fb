"""Model switching: recently used checkpoints stay in RAM within the budget, so switching back is a cache hit
(or a CPU -> device move), not a disk read; and switching back and forth does not grow memory.

Each test builds its own engine, manager and job runner (the `world` fixture's budgets are fixed) and switches
through `Studio.select_model`, the path the UI's checkpoint dropdown and the API's options call take. Memory is
the process's resident set (/proc/self/statm) after each switch; leaks of Python references are checked
directly with weak references to the UNets each load produced.
"""

from __future__ import annotations

import os
import shutil
import weakref
from pathlib import Path

import pytest
import torch

from pipelines.engine import devices
from pipelines.engine.generate import Engine
from pipelines.engine.manager import ModelManager, nbytes
from pipelines.jobs import JobRunner
from pipelines.outputs import OutputWriter
from pipelines.settings import Settings
from pipelines.studio import Studio

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

MIB = 2**20
SWITCHES = 20
# RSS after switch 20 against RSS after switch 2. Measured on the 2-core dev machine with a tiny checkpoint of
# 14 MiB: cache hits move RSS by < 1 MiB; reloading from disk every switch grows RSS by 16-45 MiB over the
# first ~15 switches (allocator warm-up), then it stays flat (60 switches: +43 MiB, flat from switch 20 on).
# One leaked checkpoint per switch would add 18 x 14 = 252 MiB; leaked Python references are also caught
# exactly by the weak references below.
RSS_BOUND = 64 * MIB


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def models(tiny_store, tmp_path_factory) -> Path:
    """models/ with two tiny SD 1.5 checkpoints of the same architecture but different weights."""
    from tests.tiny_models import build_sd15

    root = tmp_path_factory.mktemp("switching") / "models"
    shutil.copytree(tiny_store / "tiny-sd15", root / "Stable-diffusion" / "tiny-a")
    build_sd15(root / "Stable-diffusion" / "tiny-b", seed=1)
    return root


@pytest.fixture(scope="module")
def checkpoint_bytes(models) -> int:
    """Bytes one tiny checkpoint takes in the cache (both have the same architecture)."""
    from pipelines.discovery import scan
    from pipelines.engine.loading import load_components

    info = next(i for i in scan(models) if i.name == "tiny-a")
    c = load_components(info, dtype=torch.float32, config_root=models / ".cache" / "configs")
    return sum(nbytes(m) for m in c.modules().values())


@pytest.fixture
def make_studio(models, tmp_path):
    """make_studio(device_budget, cpu_budget=0, two_tier=None, dtype=float32) -> Studio over a fresh engine."""
    runners: list[JobRunner] = []

    def make(device_budget: int, cpu_budget: int = 0, two_tier: bool | None = None,
             dtype: torch.dtype = torch.float32) -> Studio:
        hw = devices.Hardware(torch.device("cpu"), dtype, "sdpa", devices.system_ram(), "CPU")
        manager = ModelManager(device=hw.device, device_budget=device_budget, cpu_budget=cpu_budget,
                               two_tier=two_tier)
        engine = Engine(hw, manager, OutputWriter(tmp_path / "outputs"), config_root=models / ".cache" / "configs",
                        hash_cache=models / ".cache" / "hashes.json", preview_every=0)
        runners.append(JobRunner().start())
        settings = Settings(models_dir=models, outputs_dir=tmp_path / "outputs", hub_models=(), hub_endpoint=None,
                            styles_file=tmp_path / "styles.csv")
        return Studio(settings, runners[-1], engine)

    yield make
    for r in runners:
        r.stop()


def switch(studio: Studio, name: str) -> list[dict]:
    """Select `name` and wait; return the manager history entries this switch added."""
    history = studio.engine.manager.history
    before = len(history)
    assert studio.select_model(name).wait(timeout=300) == name
    assert studio.current_model().name == name
    return list(history)[before:]


def actions(entries: list[dict]) -> set[str]:
    return {e["action"] for e in entries}


def unet_ref(studio: Studio, name: str) -> weakref.ref:
    """A weak reference to the UNet the cache holds for `name` now (taken inside a job, like all engine work)."""
    info = studio.find_model(name)

    def grab(ctx):
        with studio.engine.components(info, ctx) as c:
            return weakref.ref(c.unet)

    return studio.runner.submit(grab).wait(timeout=60)


def image_bytes(studio: Studio, name: str) -> bytes:
    params = studio.parse_txt2img({"prompt": "a red cube", "negative_prompt": "blurry", "steps": 2, "width": 64,
                                   "height": 64, "seed": 7, "cfg_scale": 7, "sampler_name": "Euler"})
    result = studio.submit_txt2img(params, model=name).wait(timeout=300)
    assert result.model == name
    return result.images[0].tobytes()


def test_budget_holding_both_switches_back_from_ram(make_studio, checkpoint_bytes):
    studio = make_studio(device_budget=3 * checkpoint_bytes)
    per_switch, sizes = [], []
    for i in range(SWITCHES):
        per_switch.append(switch(studio, "tiny-a" if i % 2 == 0 else "tiny-b"))
        sizes.append(rss())
    assert "load" in actions(per_switch[0]) and "load" in actions(per_switch[1])
    for entries in per_switch[2:]:  # from the third switch on: nothing read from disk, nothing dropped
        assert actions(entries) == {"hit"}, entries
    usage = studio.engine.manager.usage()
    assert 2 * checkpoint_bytes <= usage["device_bytes"] <= 3 * checkpoint_bytes
    assert sizes[-1] - sizes[1] < RSS_BOUND, [s // MIB for s in sizes]


def test_budget_holding_one_reloads_without_growing(make_studio, checkpoint_bytes):
    studio = make_studio(device_budget=int(1.5 * checkpoint_bytes))
    before = image_bytes(studio, "tiny-a")
    per_switch, sizes, unets = [], [], []
    for i in range(SWITCHES):
        name = "tiny-b" if i % 2 == 0 else "tiny-a"
        per_switch.append(switch(studio, name))
        sizes.append(rss())
        unets.append(unet_ref(studio, name))
    for entries in per_switch:  # the other checkpoint never fits beside: every switch reads from disk
        assert {"load", "drop"} <= actions(entries), entries
    assert studio.engine.manager.usage()["device_bytes"] <= 1.5 * checkpoint_bytes
    devices.free_memory()
    assert [r() is not None for r in unets] == [False] * (SWITCHES - 1) + [True]  # nothing else holds a UNet
    assert sizes[-1] - sizes[1] < RSS_BOUND, [s // MIB for s in sizes]
    assert image_bytes(studio, "tiny-a") == before  # reloaded from disk: the very same image


def test_two_tiers_switch_back_is_a_move_not_a_load(make_studio, checkpoint_bytes):
    size = checkpoint_bytes
    studio = make_studio(device_budget=int(1.5 * size), cpu_budget=int(1.5 * size), two_tier=True)
    before = image_bytes(studio, "tiny-a")
    manager = studio.engine.manager
    per_switch, sizes = [], []
    for i in range(SWITCHES // 2):
        per_switch.append(switch(studio, "tiny-b" if i % 2 == 0 else "tiny-a"))
        sizes.append(rss())
    assert "load" in actions(per_switch[0])
    for entries in per_switch[1:]:  # the other checkpoint waits in CPU RAM and comes back by a move
        assert {"to-device", "to-cpu"} <= actions(entries) and not {"load", "drop"} & actions(entries), entries
    unet = next(k for k in manager.cached("tiny-b@") if k.endswith("::unet"))
    assert manager.where(unet) == "cpu"
    usage = manager.usage()
    assert usage["device_bytes"] <= 1.5 * size and usage["cpu_bytes"] <= 1.5 * size
    assert sizes[-1] - sizes[1] < RSS_BOUND, [s // MIB for s in sizes]
    assert image_bytes(studio, "tiny-a") == before


@pytest.fixture
def single_file(models):
    """A real-size SD 1.5 single file (zeros, sparse on disk: see test_single_file.py) beside the tiny models."""
    from tests.test_single_file import POSITION_IDS, sd15_specs, write_sparse_safetensors

    path = models / "Stable-diffusion" / "sd15-zeros.safetensors"
    write_sparse_safetensors(path, sd15_specs(), {POSITION_IDS: torch.arange(77, dtype=torch.int64).unsqueeze(0)})
    yield path
    path.unlink()


def test_single_file_reloads_leave_nothing_behind(make_studio, single_file, checkpoint_bytes):
    """A single file is loaded through a whole diffusers pipeline and a converted state dict: once the cache drops
    it, none of that may stay referenced."""
    big = single_file.stat().st_size  # fp16 on disk ~ fp16 in memory (2.1 GB; the header makes the file larger)
    budget = big + checkpoint_bytes // 8  # the tiny model in fp16 is checkpoint_bytes / 2: it does not fit beside
    studio = make_studio(device_budget=budget, dtype=torch.float16)
    unets = []
    for name in ["sd15-zeros.safetensors", "tiny-a"] * 3:
        entries = switch(studio, name)
        assert "load" in actions(entries), entries  # the two never fit together: each switch reads the file
        if name != "tiny-a":
            unets.append(unet_ref(studio, name))
            assert unets[-1]().dtype == torch.float16 and unets[-1]().config.cross_attention_dim == 768
    devices.free_memory()
    assert [r() is None for r in unets] == [True] * 3
    assert studio.engine.manager.usage()["device_bytes"] <= budget
