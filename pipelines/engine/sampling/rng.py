"""A job's noise, drawn as A1111 draws it (modules/rng.py): one generator per image, seeded with that image's seed.

`ImageRNG.next()` gives a batch's noise: the first call is the initial noise (with variation seeds and "resize seed
from" applied), later calls are the step noise of ancestral samplers, drawn from the same per-image generators in
the same order, so an image is the same in any batch position and any batch size. With an eta noise seed delta
(ENSD), the generators are seeded again with seed + ENSD after the first noise, as A1111 does.

Sources (A1111's `randn_source` option):
- "CPU": torch's CPU generator: the same numbers on every machine (also what diffusers and ComfyUI use);
- "GPU": the device's own generator (CUDA, ROCm and CPU give different numbers; Apple's MPS falls back to CPU, as
  in A1111);
- "NV": philox.py, A1111's numpy emulation of CUDA's generator: the numbers an NVIDIA card gives, on any machine.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from pipelines.settings import canonical_rng


def canonical_source(source: str | None) -> str:
    """CPU / GPU / NV for any spelling the settings accept (pipelines/settings.py); None is CPU."""
    return canonical_rng(source or "CPU")


class Source:
    """Creates the per-image generators of one random source on one device."""

    def __init__(self, source: str, device: torch.device):
        self.name = canonical_source(source)
        self.device = device
        gpu = self.name == "GPU" and device.type != "mps"  # A1111 draws MPS noise on the CPU
        self.gen_device = device if gpu else torch.device("cpu")

    def generator(self, seed: int) -> Any:
        if self.name == "NV":
            from pipelines.engine.sampling.philox import Generator

            return Generator(int(seed))
        return torch.Generator(self.gen_device).manual_seed(int(seed))

    def randn(self, shape: Sequence[int], generator: Any) -> torch.Tensor:
        """float32 noise of `shape` from `generator`, on the job's device."""
        if self.name == "NV":
            return torch.asarray(generator.randn(tuple(shape)), device=self.device)
        return torch.randn(tuple(shape), generator=generator, device=self.gen_device).to(self.device)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two (C, H, W) noises, column-wise along dim 1 as A1111 computes it (its
    near-parallel fallback included)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    """The noise of one batch: `shape` is one image's latent shape (C, H, W); `seeds` one per image."""

    def __init__(self, source: Source, shape: Sequence[int], seeds: Sequence[int], *,
                 subseeds: Sequence[int] | None = None, subseed_strength: float = 0.0,
                 resize_from: tuple[int, int] = (0, 0), ensd: int = 0):
        self.source = source
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = subseed_strength
        self.resize_from = resize_from  # (width, height) of A1111's "resize seed from"; (0, 0): off
        self.ensd = int(ensd or 0)
        self.generators = [source.generator(s) for s in self.seeds]
        self.drawn = 0  # calls of next() so far

    def next(self) -> torch.Tensor:
        """The next noise of the batch, (B, C, H, W) float32: the initial noise first, then step noise."""
        self.drawn += 1
        if self.drawn == 1:
            return self._first()
        return torch.stack([self.source.randn(self.shape, g) for g in self.generators])

    def _first(self) -> torch.Tensor:
        src, shape = self.source, self.shape
        rw, rh = self.resize_from
        noise_shape = shape if rh <= 0 or rw <= 0 else (shape[0], int(rh) // 8, int(rw) // 8)
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else int(self.subseeds[i])
                subnoise = src.randn(noise_shape, src.generator(subseed))
            if noise_shape != shape:
                noise = src.randn(noise_shape, src.generator(seed))
            else:
                noise = src.randn(shape, generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != shape:  # the small seed's noise pasted into the middle of this size's noise
                x = src.randn(shape, generator)
                dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx, ty = max(dx, 0), max(dy, 0)
                dx, dy = max(-dx, 0), max(-dy, 0)
                x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
                noise = x
            xs.append(noise)
        if self.ensd:
            self.generators = [src.generator(s + self.ensd) for s in self.seeds]
        return torch.stack(xs)
