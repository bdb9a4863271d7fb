"""The NV noise source (pipelines/engine/sampling/philox.py): CUDA's torch.randn numbers, on the CPU, in numpy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.engine.sampling.philox import Generator, philox4x32

pytestmark = pytest.mark.unit  # pure Python, no model

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "pipelines" / "engine" / "sampling" / "philox.py"

# The expected output documented in A1111's modules/rng_philox.py for Generator(seed=0).randn(shape=(3, 4)). These are
# the numbers torch.randn gives on an NVIDIA GPU (CUDA's float32 log/sin), so the numpy port lands within ~3e-7.
A1111_SEED0_3x4 = np.array([
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
])
ATOL = 5e-7


def test_seed0_matches_a1111_documented_values():
    out = Generator(0).randn((3, 4))
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, A1111_SEED0_3x4, rtol=0, atol=ATOL)


def test_seed0_flat_shape_is_the_same_stream():
    # element i uses counter (offset, 0, i, 0), so the shape only reshapes: (10,) is the first ten of the 3x4 values
    out = Generator(0).randn((10,))
    np.testing.assert_allclose(out, A1111_SEED0_3x4.ravel()[:10], rtol=0, atol=ATOL)
    assert np.array_equal(out, Generator(0).randn((3, 4)).ravel()[:10])
    assert np.array_equal(Generator(0).randn(10), out)  # an int shape is accepted too


@pytest.mark.parametrize(("counter", "key", "expected"), [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    # Random123's known-answer vectors for philox4x32 with 10 rounds
    assert tuple(int(v) for v in philox4x32(counter, key)) == expected


def test_offset_advances_by_one_per_call():
    g = Generator(0)
    assert g.offset == 0
    first = g.randn((5,))
    assert g.offset == 1
    second = g.randn((5,))
    assert g.offset == 2
    whole = Generator(0).randn((10,))
    # A1111's semantics: a call takes counter (offset, 0, 0..n-1, 0) and bumps offset by 1, whatever n is, so the first
    # call is the start of the offset-0 stream and the second call restarts at index 0 of the offset-1 stream, not at
    # element 5 of the offset-0 stream
    assert np.array_equal(first, whole[:5])
    assert not np.allclose(second, whole[5:])
    assert np.array_equal(second, Generator(0, offset=1).randn((5,)))
    assert not np.allclose(first, second)
    # a fresh generator replays the same calls exactly
    g2 = Generator(0)
    assert np.array_equal(g2.randn((5,)), first) and np.array_equal(g2.randn((5,)), second)


@pytest.mark.parametrize("shape", [(4, 8, 8), (1, 4, 64, 64), (2, 3), ()])
def test_multidimensional_shapes(shape):
    out = Generator(1234).randn(shape)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
    assert np.isfinite(out).all()
    assert np.array_equal(out.ravel(), Generator(1234).randn((out.size,)))


def test_statistics_look_standard_normal():
    out = Generator(42).randn((4, 64, 64)).astype(np.float64)
    assert abs(out.mean()) < 0.03 and abs(out.std() - 1) < 0.03


def test_different_seeds_differ():
    outs = [Generator(s).randn((4, 8, 8)) for s in (0, 1, 2, 12345)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not np.allclose(outs[i], outs[j])


@pytest.mark.parametrize("seed", [4294967295, 2**32 + 5, 2**63 + 7, 2**64 - 1])
def test_large_seeds(seed):
    g = Generator(seed)
    assert g.key == (seed & 0xFFFFFFFF, seed >> 32)
    out = g.randn((4, 8, 8))
    assert out.dtype == np.float32 and out.shape == (4, 8, 8) and np.isfinite(out).all()
    # the high word of the seed is part of the key: seeds equal modulo 2**32 give different noise
    if seed >= 2**32:
        assert not np.allclose(out, Generator(seed & 0xFFFFFFFF).randn((4, 8, 8)))
    assert not np.allclose(out, Generator(seed - 1).randn((4, 8, 8)))


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_out_of_range_seeds_are_refused(seed):
    with pytest.raises(ValueError):
        Generator(seed)


def test_source_does_not_import_torch():
    tree = ast.parse(SOURCE.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] == "torch"]


def test_loading_the_module_does_not_load_torch():
    # load the file by path so that the check covers philox.py's own imports, not the packages above it
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('philox_alone', {str(SOURCE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "mod.Generator(0).randn((2, 2))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
