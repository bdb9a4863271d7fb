"""Component cache: hits, LRU eviction by memory budget (device -> CPU -> dropped), pins, history."""

import threading

import pytest
import torch

from pipelines.engine.manager import ModelManager, nbytes

pytestmark = pytest.mark.unit  # pure Python, no model

MIB = 2**20


def module(mib: int) -> torch.nn.Module:
    return torch.nn.Linear(1, mib * MIB // 4, bias=False)  # fp32: mib MiB of weights


def loader(calls, name, sizes):
    def load():
        calls.append(name)
        return {f"{name}::{c}": module(m) for c, m in sizes.items()}
    return load


def test_hit_returns_same_objects_without_reload():
    m = ModelManager(device="cpu", device_budget=100 * MIB, cpu_budget=0)
    calls = []
    keys = ["a::unet", "a::vae"]
    with m.use(keys, loader(calls, "a", {"unet": 4, "vae": 1})) as first:
        pass
    with m.use(keys, loader(calls, "a", {"unet": 4, "vae": 1})) as second:
        assert second["a::unet"] is first["a::unet"]
    assert calls == ["a"]
    actions = [(h["action"], h["key"]) for h in m.history]
    assert actions[:2] == [("load", "a::unet"), ("load", "a::vae")]
    assert ("hit", "a::unet") in actions
    assert all(h["seconds"] >= 0 for h in m.history)


def test_single_tier_evicts_least_recently_used_by_budget():
    m = ModelManager(device="cpu", device_budget=10 * MIB, cpu_budget=0)
    calls = []
    for name in ["a", "b", "a", "c"]:  # a is used again before c arrives, so b is the LRU
        with m.use([f"{name}::unet"], loader(calls, name, {"unet": 4})):
            pass
    assert sorted(m.cached()) == ["a::unet", "c::unet"]
    assert calls == ["a", "b", "c"]
    assert m.usage()["device_bytes"] <= 10 * MIB
    assert ("drop", "b::unet") in [(h["action"], h["key"]) for h in m.history]


def test_two_tiers_device_to_cpu_then_dropped():
    m = ModelManager(device="cpu", device_budget=8 * MIB, cpu_budget=5 * MIB, two_tier=True)
    calls = []
    for name in ["a", "b", "c"]:
        with m.use([f"{name}::unet"], loader(calls, name, {"unet": 4})):
            pass
    # a went device -> cpu when c needed room; b is still on the device with c
    assert m.where("a::unet") == "cpu" and m.where("b::unet") == "device" and m.where("c::unet") == "device"
    with m.use(["a::unet"], loader(calls, "a", {"unet": 4})):
        assert m.where("a::unet") == "device"
    assert calls == ["a", "b", "c"]  # coming back from CPU RAM is a move, not a disk read
    assert m.where("b::unet") == "cpu"
    with m.use(["d::unet"], loader(calls, "d", {"unet": 4})):
        pass
    # CPU budget holds one 4 MiB entry: the older one there was dropped for good
    u = m.usage()
    assert u["device_bytes"] <= 8 * MIB and u["cpu_bytes"] <= 5 * MIB
    assert len(m.cached()) == 3


def test_pinned_entries_are_never_evicted():
    m = ModelManager(device="cpu", device_budget=6 * MIB, cpu_budget=0)
    calls = []
    with m.use(["a::unet"], loader(calls, "a", {"unet": 4})) as held:
        with m.use(["b::unet"], loader(calls, "b", {"unet": 4})):
            assert set(m.cached()) == {"a::unet", "b::unet"}  # over budget while both are in use
        assert held["a::unet"].weight.numel() > 0
    with m.use(["c::unet"], loader(calls, "c", {"unet": 4})):
        pass
    assert m.cached() == ["c::unet"]


def test_concurrent_use_is_safe():
    m = ModelManager(device="cpu", device_budget=12 * MIB, cpu_budget=0)
    calls, errors = [], []

    def work(name):
        try:
            for _ in range(5):
                with m.use([f"{name}::unet"], loader(calls, name, {"unet": 2})) as objs:
                    assert objs[f"{name}::unet"] is not None
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in "abcd"]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and sorted(set(calls)) == list("abcd")


def test_failed_load_leaves_no_entry_and_free_releases():
    m = ModelManager(device="cpu", device_budget=20 * MIB, cpu_budget=0)

    def broken():
        raise RuntimeError("Could not load x: truncated file")

    with pytest.raises(RuntimeError, match="truncated"):
        with m.use(["x::unet"], broken):
            pass
    assert m.cached() == []
    with m.use(["a::unet"], loader([], "a", {"unet": 2})):
        pass
    assert m.free(drop=True) == nbytes(module(2))
    assert m.cached() == []


def test_a_checkpoint_is_dropped_whole_not_in_part():
    # single tier, room for two 4+1 MiB checkpoints: a third evicts the least recently used one entirely
    m = ModelManager(device="cpu", device_budget=11 * MIB, cpu_budget=0)
    calls = []
    sizes = {"unet": 4, "vae": 1}
    for name in ["a", "b", "c"]:
        with m.use([f"{name}::unet", f"{name}::vae"], loader(calls, name, sizes)):
            pass
    assert sorted(m.cached()) == ["b::unet", "b::vae", "c::unet", "c::vae"]  # no orphaned a::vae
    dropped = [h["key"] for h in m.history if h["action"] == "drop"]
    assert sorted(dropped) == ["a::unet", "a::vae"]


def test_group_drop_spares_pinned_members_and_other_groups():
    m = ModelManager(device="cpu", device_budget=8 * MIB, cpu_budget=0)
    calls = []
    with m.use(["a::unet", "a::vae"], loader(calls, "a", {"unet": 4, "vae": 1})):
        pass
    with m.use(["x::one"], loader(calls, "x", {"one": 1})):
        pass
    with m.use(["a::vae"], loader(calls, "a", {"vae": 1})):  # a job holds a's VAE
        with m.use(["b::unet"], loader(calls, "b", {"unet": 4})):  # needs room: a's UNet is the oldest
            assert m.where("a::unet") is None
            assert m.where("a::vae") == "device"  # pinned: stays although its group was dropped
            assert m.where("x::one") == "device"  # another group, and room was made without it
    assert calls == ["a", "x", "b"]


def test_two_tiers_dropping_from_ram_takes_the_device_siblings_too():
    # a's UNet goes to CPU RAM (4 MiB there), its VAE stays on the device and is used again; when the RAM copy
    # must go, the VAE leaves the device with it: the next use of a reads the checkpoint from disk anyway
    m = ModelManager(device="cpu", device_budget=10 * MIB, cpu_budget=4 * MIB, two_tier=True)
    calls = []
    with m.use(["a::unet", "a::vae"], loader(calls, "a", {"unet": 4, "vae": 1})):
        pass
    for name in ["b", "c"]:
        with m.use([f"{name}::unet"], loader(calls, name, {"unet": 4})):
            pass
    assert m.where("a::unet") == "cpu" and m.where("a::vae") == "device"
    with m.use(["a::vae"], loader(calls, "a", {"vae": 1})):
        pass  # a's VAE is now the most recently used entry on the device
    with m.use(["d::unet"], loader(calls, "d", {"unet": 4})):
        pass  # b moves to RAM, pushing a's UNet out of it
    assert m.where("a::unet") is None and m.where("a::vae") is None
    assert m.where("b::unet") == "cpu" and m.where("c::unet") == "device" and m.where("d::unet") == "device"
    with m.use(["a::unet", "a::vae"], loader(calls, "a", {"unet": 4, "vae": 1})):
        pass
    assert calls == ["a", "b", "c", "d", "a"]
