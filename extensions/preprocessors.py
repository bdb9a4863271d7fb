"""ControlNet preprocessors (A1111 module names): an input image -> the control map a ControlNet expects.

- `registry()` lists every `Preprocessor` by name: `none`, `canny` (weight-free), `depth_midas`, `normal_midas`
  (MiDaS depth and normals derived from it), `normal_bae` and the OpenPose variants `openpose`, `openpose_hand`,
  `openpose_face`, `openpose_full`. `for_type(reg, "Depth")` gives the names a control type offers.
- `Preprocessor.detect(image, resolution, a, b, ctx)` returns an RGB map whose short side is `resolution`
  (A1111's processor_res; aspect kept); `none` returns the image as it is. `a`/`b` are the A1111 API's
  threshold_a/threshold_b: None or -1 mean the slider's default, other values are clamped to its range.
- Detectors come from controlnet-aux and load their weights (`lllyasviel/Annotators` file names in `weights`)
  through `extensions.annotators.fetch`, which raises `AnnotatorMissing` when they are absent and cannot be
  downloaded. A loaded detector is wrapped in an `nn.Module` holder so the app's component cache can size it and
  move it between devices; it is cached as `annotator::<name>` (normal_midas shares depth_midas's entry).
- OpenPose maps carry the detected keypoints as OpenPose JSON in `image.info["openpose"]`
  (see `extensions.openpose_json`).

Importing this module imports neither torch nor controlnet-aux.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType
from typing import Any, Callable, Mapping

from PIL import Image

from extensions.base import ExtensionContext

DEFAULT_RESOLUTION = 512
MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048  # A1111's processor_res slider
CONTROL_TYPES: tuple[str, ...] = ("All", "Canny", "Depth", "NormalMap", "OpenPose")
ALIASES = MappingProxyType({"depth": "depth_midas", "normal_map": "normal_midas", "normal": "normal_bae",
                           "openpose_hands": "openpose_hand"})  # older A1111 API names

MIDAS_WEIGHTS = "dpt_hybrid-midas-501f0c75.pt"
NORMAL_BAE_WEIGHTS = "scannet.pt"
BODY_WEIGHTS, HAND_WEIGHTS, FACE_WEIGHTS = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"


@dataclass(frozen=True)
class Slider:
    """A preprocessor's own parameter; sent as threshold_a / threshold_b in the A1111 API."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float
    description: str

    def value(self, given: float | None) -> float:
        """`given` clamped to the range; None or -1 (the A1111 API's "unset") -> the default."""
        if given is None or given == -1:
            return self.default
        return min(self.maximum, max(self.minimum, float(given)))


def _passthrough(detector: Any, image: Image.Image, resolution: int, a: float, b: float) -> Image.Image:
    return image


@dataclass(frozen=True)
class Preprocessor:
    name: str  # A1111 module name
    control_type: str  # "Canny" | "Depth" | "NormalMap" | "OpenPose" | "None"
    model_keywords: tuple[str, ...]  # matching ControlNet model names contain one of these
    description: str
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    weights: tuple[str, ...] = ()  # annotator files it needs (names in lllyasviel/Annotators)
    loader: Callable[[ExtensionContext], Any] | None = None  # builds the detector (None = weight-free)
    run: Callable[[Any, Image.Image, int, float, float], Image.Image] = _passthrough
    shares: str | None = None  # another preprocessor whose detector (and cache entry) this one uses

    @property
    def cache_key(self) -> str:
        return f"annotator::{self.shares or self.name}"

    def detect(self, image: Image.Image, resolution: int, a: float | None, b: float | None,
               ctx: ExtensionContext) -> Image.Image:
        """RGB control map, `resolution` px on the short side, same aspect as the input (`none`: the input).
        The detector is cached through `ctx.cache` when set, else loaded (onto ctx.device) for this call."""
        a = self.threshold_a.value(a) if self.threshold_a else 0.0
        b = self.threshold_b.value(b) if self.threshold_b else 0.0
        resolution = _resolution(resolution)
        image = image.convert("RGB")
        ctx.hooks.check()
        if self.loader is None:
            return self.run(None, image, resolution, a, b)
        loader = self.loader

        def load() -> Any:
            return _holder(loader(ctx))

        cached = ctx.cache(self.cache_key, load) if ctx.cache else nullcontext(load().to(ctx.device))
        with cached as holder:
            ctx.hooks.check()
            return self.run(holder.detector, image, resolution, a, b)


# -- sizes and detector holders -----------------------------------------------------------------------------


def _resolution(resolution: int | None) -> int:
    if resolution is None or resolution <= 0:  # the A1111 API sends -1 for "default"
        return DEFAULT_RESOLUTION
    return int(min(MAX_RESOLUTION, max(MIN_RESOLUTION, resolution)))


def target_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """(width, height) of the map: short side `resolution`, the image's aspect."""
    k = resolution / min(image.size)
    return max(1, round(image.width * k)), max(1, round(image.height * k))


def _fit(detected: Image.Image, size: tuple[int, int]) -> Image.Image:
    """controlnet-aux works at sizes rounded to multiples of 64; bring its map back to the exact aspect."""
    detected = detected.convert("RGB")
    return detected if detected.size == size else detected.resize(size, Image.BILINEAR)


def _holder(detector: Any) -> Any:
    """An `nn.Module` that registers the detector's networks (so it can be sized and moved) and keeps the
    detector itself as `.detector` (it shares those networks, so it follows the moves)."""
    import torch

    holder = torch.nn.Module()
    parts = [detector, *vars(detector).values()] if hasattr(detector, "__dict__") else [detector]
    for i, part in enumerate(parts):
        net = part if isinstance(part, torch.nn.Module) else getattr(part, "model", None)
        if isinstance(net, torch.nn.Module):
            holder.add_module(f"net{i}", net)
    holder.detector = detector
    return holder


# -- runs: (detector, RGB image, resolution, a, b) -> map ---------------------------------------------------


def _canny(detector: Any, image: Image.Image, resolution: int, low: float, high: float) -> Image.Image:
    """cv2.Canny on the image resized to the map size (as controlnet-aux's CannyDetector, without its rounding
    to multiples of 64 and the blurring resize back): white edges on black."""
    import cv2
    import numpy as np

    size = target_size(image, resolution)
    pixels = np.asarray(image)
    if size != image.size:
        shrink = size[0] < image.width
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
    edges = cv2.Canny(pixels, int(low), int(high))
    return Image.fromarray(edges).convert("RGB")


def _depth_midas(detector: Any, image: Image.Image, resolution: int, a: float, b: float) -> Image.Image:
    depth = detector(image, detect_resolution=resolution, image_resolution=resolution, output_type="pil")
    return _fit(depth, target_size(image, resolution))


def _normal_midas(detector: Any, image: Image.Image, resolution: int, bg: float, b: float) -> Image.Image:
    _, normal = detector(image, bg_th=bg, depth_and_normal=True, detect_resolution=resolution,
                         image_resolution=resolution, output_type="pil")
    return _fit(normal, target_size(image, resolution))


def _normal_bae(detector: Any, image: Image.Image, resolution: int, a: float, b: float) -> Image.Image:
    normal = detector(image, detect_resolution=resolution, image_resolution=resolution, output_type="pil")
    return _fit(normal, target_size(image, resolution))


def _openpose(detector: Any, image: Image.Image, resolution: int, a: float, b: float, *,
              hand: bool = False, face: bool = False) -> Image.Image:
    """Detect at the 64-rounded size controlnet-aux expects, draw at the exact map size (keypoints are
    normalised), and attach the keypoints as OpenPose JSON in `info["openpose"]`."""
    import numpy as np
    from controlnet_aux.util import resize_image

    from extensions.openpose_json import draw_pose_map, poses_to_json

    pixels = resize_image(np.asarray(image), resolution)
    poses = detector.detect_poses(pixels, include_hand=hand, include_face=face)
    width, height = target_size(image, resolution)
    result = Image.fromarray(draw_pose_map(poses, width, height, hand=hand, face=face))
    result.info["openpose"] = poses_to_json(poses, width, height)
    return result


# -- loaders: ctx -> detector (on the CPU; weights fetched first, so a missing file is reported quickly) -----


def _load_midas(ctx: ExtensionContext) -> Any:
    from extensions.annotators import fetch

    path = fetch(MIDAS_WEIGHTS, ctx)
    from controlnet_aux.midas import MidasDetector

    return MidasDetector.from_pretrained(str(path.parent), filename=path.name)


def _load_normal_bae(ctx: ExtensionContext) -> Any:
    """NormalBae's EfficientNet-B5 encoder is built by `torch.hub.load(<vendored repo>, pretrained=False,
    source="local")`: no network, the weights all come from scannet.pt."""
    from extensions.annotators import fetch

    path = fetch(NORMAL_BAE_WEIGHTS, ctx)
    from controlnet_aux.normalbae import NormalBaeDetector

    return NormalBaeDetector.from_pretrained(str(path.parent), filename=path.name)


def _load_openpose(ctx: ExtensionContext, *, hand: bool = False, face: bool = False) -> Any:
    """Only the networks the variant uses (controlnet-aux's from_pretrained would load all three)."""
    from extensions.annotators import fetch

    body_path = fetch(BODY_WEIGHTS, ctx)
    hand_path = fetch(HAND_WEIGHTS, ctx) if hand else None
    face_path = fetch(FACE_WEIGHTS, ctx) if face else None
    from controlnet_aux.open_pose import Body, Face, Hand, OpenposeDetector

    return OpenposeDetector(Body(str(body_path)), Hand(str(hand_path)) if hand_path else None,
                            Face(str(face_path)) if face_path else None)


# -- registry -----------------------------------------------------------------------------------------------

_CANNY_LOW = Slider("Canny low threshold", 1, 255, 100, 1,
                    "Gradients below this are never edges; lower it to keep fainter edges.")
_CANNY_HIGH = Slider("Canny high threshold", 1, 255, 200, 1,
                     "Gradients above this always start an edge; lower it for more edges.")
_NORMAL_BG = Slider("Normal background threshold", 0, 1, 0.4, 0.01,
                    "Depth (0 far - 1 near) below which the surface is treated as flat background.")


def _openpose_entry(name: str, description: str, hand: bool, face: bool) -> Preprocessor:
    weights = (BODY_WEIGHTS, *((HAND_WEIGHTS,) if hand else ()), *((FACE_WEIGHTS,) if face else ()))
    return Preprocessor(name, "OpenPose", ("openpose",), description, weights=weights,
                        loader=partial(_load_openpose, hand=hand, face=face),
                        run=partial(_openpose, hand=hand, face=face))


_PREPROCESSORS: tuple[Preprocessor, ...] = (
    Preprocessor("none", "None", (), "No preprocessing: the image already is a control map."),
    Preprocessor("canny", "Canny", ("canny",), "Canny edge detection: white edges on black.",
                 threshold_a=_CANNY_LOW, threshold_b=_CANNY_HIGH, run=_canny),
    Preprocessor("depth_midas", "Depth", ("depth",), "MiDaS (DPT-Hybrid) depth map: near is bright.",
                 weights=(MIDAS_WEIGHTS,), loader=_load_midas, run=_depth_midas),
    Preprocessor("normal_bae", "NormalMap", ("normal",), "Bae et al. surface normals (ScanNet model).",
                 weights=(NORMAL_BAE_WEIGHTS,), loader=_load_normal_bae, run=_normal_bae),
    Preprocessor("normal_midas", "NormalMap", ("normal",), "Surface normals derived from MiDaS depth.",
                 threshold_a=_NORMAL_BG, weights=(MIDAS_WEIGHTS,), loader=_load_midas, run=_normal_midas,
                 shares="depth_midas"),
    _openpose_entry("openpose", "OpenPose body keypoints.", hand=False, face=False),
    _openpose_entry("openpose_hand", "OpenPose body and hand keypoints.", hand=True, face=False),
    _openpose_entry("openpose_face", "OpenPose body and face keypoints.", hand=False, face=True),
    _openpose_entry("openpose_full", "OpenPose body, hand and face keypoints.", hand=True, face=True),
)


def registry(loaders: Mapping[str, Callable[[ExtensionContext], Any]] | None = None) -> dict[str, Preprocessor]:
    """All preprocessors by name; `loaders` overrides detector builders by preprocessor name (tests inject small
    detector models). A preprocessor that shares another's detector also takes that one's override."""
    loaders = dict(loaders or {})
    names = {p.name for p in _PREPROCESSORS}
    unknown = sorted(set(loaders) - names)
    if unknown:
        raise ValueError(f"No preprocessor named {', '.join(unknown)}. Available: {', '.join(sorted(names))}")
    result = {}
    for p in _PREPROCESSORS:
        override = loaders.get(p.name) or (loaders.get(p.shares) if p.shares else None)
        result[p.name] = replace(p, loader=override) if override else p
    return result


def lookup(reg: Mapping[str, Preprocessor], name: str) -> Preprocessor:
    """The preprocessor called `name` (case-insensitive, A1111 aliases such as "depth" accepted)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in reg:
        return reg[key]
    raise ValueError(f"Unknown preprocessor '{name}'. Available: {', '.join(reg)}")


def for_type(reg: Mapping[str, Preprocessor], control_type: str) -> list[str]:
    """Module names a control type offers, its default first and "none" last; "All" lists every one."""
    wanted = next((t for t in CONTROL_TYPES if t.lower() == str(control_type).strip().lower()), None)
    if wanted is None:
        raise ValueError(f"Unknown control type '{control_type}'. Available: {', '.join(CONTROL_TYPES)}")
    if wanted == "All":
        return list(reg)
    return [n for n, p in reg.items() if p.control_type == wanted] + (["none"] if "none" in reg else [])
