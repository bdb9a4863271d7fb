"""What the bench scripts share: the repository on sys.path, and test models built from nothing.

Full-size models get random weights from the shipped configs (pipelines/configs/<family>): the same modules,
shapes and kernels as a real checkpoint, so they time the same (nothing here downloads anything).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCHS = {"tiny": "sd15", "tiny-sdxl": "sdxl", "sd15": "sd15", "sdxl": "sdxl"}  # --arch -> model family


def build_random(family: str, path: Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """A diffusers folder of `family`'s full architecture with random weights saved in `dtype`.

    The modules are created on `device` (a GPU initialises SDXL's 2.6 billion UNet weights in a second; the
    CPU takes minutes) and saved from there."""
    import diffusers
    import transformers

    from pipelines.engine.loading import materialize_config

    path = Path(path)
    config = materialize_config(family, path.parent / ".bench-configs")
    index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
    parts: dict = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        cls = getattr(diffusers if spec[0] == "diffusers" else transformers, spec[1])
        if name.startswith("tokenizer"):
            parts[name] = cls.from_pretrained(config / name)
        elif name == "scheduler":
            parts[name] = cls.from_config(cls.load_config(config / name))
        else:
            with torch.device(device):
                model = (cls.from_config(cls.load_config(config / name)) if spec[0] == "diffusers"
                         else cls(cls.config_class.from_pretrained(config / name)))
            parts[name] = model.to(dtype).eval()
    extra = {"safety_checker": None, "feature_extractor": None} if "safety_checker" in index else {}
    pipe = getattr(diffusers, index["_class_name"])(**parts, **extra)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_sd15_random(path: Path) -> Path:
    """Full-size SD 1.5 architecture with random weights (fp32), from the shipped configs."""
    return build_random("sd15", path)


def build_model(arch: str, path: Path, *, device: str = "cpu") -> Path:
    """`--arch` -> a diffusers folder: the tests' tiny models, or full-size random ones saved in fp16 (like
    most published checkpoints; half the disk and build time)."""
    if arch == "tiny":
        from tests.tiny_models import build_sd15

        return build_sd15(path)
    if arch == "tiny-sdxl":
        from tests.tiny_models import build_sdxl

        return build_sdxl(path)
    return build_random(ARCHS[arch], path, dtype=torch.float16, device=device)
