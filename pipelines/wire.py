"""Images on the wire between the head and its Ray replicas (pipelines/cluster.py, pipelines/engine/replica.py):
finished images as PNG (bit-exact), previews as JPEG (small, shown once)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def from_png(data: bytes | None) -> Any:
    """The image in `data` (PNG or JPEG bytes), fully loaded; None for None."""
    if data is None:
        return None
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
