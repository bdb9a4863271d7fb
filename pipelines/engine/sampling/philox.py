"""A1111's "NV" noise source in plain numpy: CUDA's `torch.randn` stream, reproduced on any hardware.

PyTorch draws CUDA normal noise from a Philox 4x32-10 counter-based generator (Salmon, Moraes, Dror and Shaw,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011) followed by a Box-Muller transform. AUTOMATIC1111's
stable-diffusion-webui ships a numpy imitation of it (`modules/rng_philox.py`, used when the "Random number generator
source" setting is "NV"); this module is an independent MIT-compatible re-implementation that follows the same
semantics and gives the same numbers, with credit to A1111 for working out the layout.

Why it exists: images made with A1111's default GPU noise on an NVIDIA card can then be reproduced bit-for-bit (noise
wise) on a Mac, an AMD card or a plain CPU, where `torch.randn(..., device=...)` would give different numbers.

Layout, as in A1111: the key is the 64-bit seed split into two uint32 words (low, high); the counter of element `i`
is `(offset, 0, i, 0)`; only the first of the four Philox outputs and the first Box-Muller value are used; each
`randn` call advances `offset` by one, whatever its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # Weyl key increments (golden ratio, sqrt(3) - 1)
_MASK32 = 0xFFFFFFFF

# CUDA's float32 constants, applied in float64 as A1111's numpy code ends up doing (uint32 * float32 array -> float64).
_INV_2_32 = float(np.float32(2.3283064e-10))
_INV_2_32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32(counter: Iterable, key: tuple[int, int], rounds: int = 10) -> tuple[np.ndarray, ...]:
    """Philox 4x32 on vectors: `counter` is four uint32 arrays (or ints), `key` two uint32 ints; returns four arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    for r in range(rounds):
        if r:  # the key is bumped between rounds, not before the first
            k0, k1 = (k0 + PHILOX_W[0]) & _MASK32, (k1 + PHILOX_W[1]) & _MASK32
        p0 = c0.astype(np.uint64) * m0
        p1 = c2.astype(np.uint64) * m1
        hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), p0.astype(np.uint32)
        hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), p1.astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint32(k0), lo1, hi0 ^ c3 ^ np.uint32(k1), lo0
    return c0, c1, c2, c3


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """First Box-Muller normal from two uint32 arrays, as float32: sqrt(-2 ln u) * sin(2 pi v), u and v in (0, 1)."""
    u = x.astype(np.float64) * _INV_2_32 + _INV_2_32 / 2
    v = y.astype(np.float64) * _INV_2_32_2PI + _INV_2_32_2PI / 2  # 2 pi v directly
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class Generator:
    """Gives what `torch.randn(shape, generator=torch.Generator('cuda').manual_seed(seed), device='cuda')` gives on
    NVIDIA GPUs, on the CPU; successive `randn` calls continue the stream the way A1111's NV source does."""

    def __init__(self, seed: int, offset: int = 0):
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.seed = seed
        self.offset = int(offset)

    @property
    def key(self) -> tuple[int, int]:
        return self.seed & _MASK32, self.seed >> 32

    def randn(self, shape: int | Iterable[int]) -> np.ndarray:
        """Standard normal float32 noise of `shape`; advances `offset` by one."""
        shape = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
        n = math.prod(shape)
        if n > 2**32:
            raise ValueError(f"at most 2**32 values per call, asked for {n}")
        index = np.arange(n, dtype=np.uint64).astype(np.uint32)
        zeros = np.zeros(n, dtype=np.uint32)
        counter = (np.full(n, self.offset & _MASK32, dtype=np.uint32), zeros, index, zeros)
        self.offset += 1
        g0, g1, _, _ = philox4x32(counter, self.key)
        return box_muller(g0, g1).reshape(shape)
