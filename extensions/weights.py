"""Reading a weights file without running code: the one place that decides how model files are opened.

`.safetensors` holds tensors only. Anything else (`.ckpt`, `.pt`, `.pth`, `.bin`) is a pickle, loaded with
`torch.load(weights_only=True)`: tensors and plain containers only, so a pickle that carries code raises
`pickle.UnpicklingError` instead of running it. Zip-format pickles are memory-mapped (read as used).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any


def read_weights(path: Path | str) -> Any:
    """The object stored in a weights file, on the CPU (a dict of tensors, or a pickle's plain containers)."""
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
