"""Which plan runs a request: the one place that knows every mode (txt2img, Hires. fix, Hires. fix over a chosen
image, img2img, inpaint, outpaint). The tiled SD upscale (upscale.py) runs one img2img plan per tile."""

from __future__ import annotations

from typing import Any

from PIL import Image

from pipelines.engine.hires import HiresOnImagePlan, HiresPlan
from pipelines.engine.img2img import Img2ImgPlan
from pipelines.engine.outpaint import OutpaintPlan
from pipelines.engine.plans import Plan, Txt2ImgPlan


def txt2img(params: Any) -> Plan:
    """txt2img, with Hires. fix's second pass when the request turns it on."""
    return HiresPlan() if params.enable_hr else Txt2ImgPlan()


def hires_on_image(image: Image.Image) -> Plan:
    """Hires. fix's second pass over an image txt2img already made (the guided workflow's finalize)."""
    return HiresOnImagePlan(image)


def img2img(image: Image.Image, mask: Image.Image | None = None) -> Plan:
    """img2img, or inpaint with a mask (white = repaint)."""
    return Img2ImgPlan(image, mask)


def outpaint(image: Image.Image) -> Plan:
    """Outpainting: `image` extended by the request's outpaint_left/right/up/down, one inpaint pass per step."""
    return OutpaintPlan(image)
