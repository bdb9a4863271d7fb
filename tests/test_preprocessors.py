"""ControlNet preprocessors: canny on drawn shapes, the real controlnet-aux detectors around tiny injected networks
(MiDaS depth/normals, NormalBae, OpenPose body and hands), the offline loader path, caching, and OpenPose JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from extensions.base import ExtensionContext
from extensions.openpose_json import render_pose_json
from extensions.preprocessors import CONTROL_TYPES, for_type, lookup, registry

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

ROOT = Path(__file__).resolve().parents[1]


def make_ctx(tmp_path: Path, **kw) -> ExtensionContext:
    return ExtensionContext(device=torch.device("cpu"), dtype=torch.float32, models_dir=tmp_path / "models", **kw)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def gradient(w: int, h: int) -> Image.Image:
    ramp = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([ramp, ramp, ramp], -1).astype(np.uint8))


def blob(w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / w, (yy - h / 2) / h)
    v = (np.clip(1 - 2 * r, 0, 1) ** 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([v, v, v], -1))


# -- registry -------------------------------------------------------------------------------------------------


def test_registry_names_types_and_sliders():
    reg = registry()
    assert list(reg) == ["none", "canny", "depth_midas", "normal_bae", "normal_midas", "openpose", "openpose_hand",
                         "openpose_face", "openpose_full"]
    assert CONTROL_TYPES == ("All", "Canny", "Depth", "NormalMap", "OpenPose")
    assert for_type(reg, "Canny") == ["canny", "none"]
    assert for_type(reg, "depth") == ["depth_midas", "none"]
    assert for_type(reg, "NormalMap") == ["normal_bae", "normal_midas", "none"]
    assert for_type(reg, "OpenPose")[-1] == "none" and len(for_type(reg, "OpenPose")) == 5
    assert for_type(reg, "All") == list(reg)
    with pytest.raises(ValueError, match="Available: All, Canny"):
        for_type(reg, "Scribble")
    canny = reg["canny"]
    assert (canny.threshold_a.label, canny.threshold_a.default, canny.threshold_b.default) == (
        "Canny low threshold", 100, 200)
    assert reg["normal_midas"].threshold_a.default == 0.4 and reg["normal_midas"].threshold_b is None
    assert reg["canny"].loader is None and reg["canny"].weights == ()
    assert reg["openpose"].weights == ("body_pose_model.pth",)
    assert reg["openpose_full"].weights == ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
    assert reg["depth_midas"].model_keywords == ("depth",)
    assert lookup(reg, "depth") is reg["depth_midas"] and lookup(reg, "Canny") is reg["canny"]
    with pytest.raises(ValueError, match="Unknown preprocessor"):
        lookup(reg, "lineart")
    with pytest.raises(ValueError, match="No preprocessor named dpeth"):
        registry(loaders={"dpeth": lambda ctx: None})


def test_import_needs_neither_torch_nor_controlnet_aux():
    code = ("import sys, extensions.preprocessors, extensions.openpose_json; "
            "bad = [m for m in ('torch', 'controlnet_aux', 'cv2') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_none_returns_the_image(tmp_path):
    image = gradient(90, 60)
    out = registry()["none"].detect(image, 512, None, None, make_ctx(tmp_path))
    assert out.size == (90, 60) and np.array_equal(np.asarray(out), np.asarray(image))


# -- canny ----------------------------------------------------------------------------------------------------


def rectangle(fill: int, bg: int = 0, size=(160, 120), box=(40, 30, 120, 90)) -> Image.Image:
    image = Image.new("RGB", size, (bg,) * 3)
    ImageDraw.Draw(image).rectangle(box, fill=(fill,) * 3)
    return image


def test_canny_edges_lie_on_the_rectangle_border(tmp_path):
    out = registry()["canny"].detect(rectangle(255), 120, None, None, make_ctx(tmp_path))
    assert out.size == (160, 120)
    p = pixels(out)
    assert set(np.unique(p)) <= {0, 255} and (p[..., 0] == p[..., 1]).all() and (p[..., 0] == p[..., 2]).all()
    ys, xs = np.nonzero(p[..., 0])
    x0, y0, x1, y1 = 40, 30, 120, 90
    near_x = (np.minimum(abs(xs - x0), abs(xs - x1)) <= 2) & (ys >= y0 - 2) & (ys <= y1 + 2)
    near_y = (np.minimum(abs(ys - y0), abs(ys - y1)) <= 2) & (xs >= x0 - 2) & (xs <= x1 + 2)
    assert (near_x | near_y).all(), "edge pixels off the border"
    assert len(xs) >= 0.9 * 2 * ((x1 - x0) + (y1 - y0))  # the whole outline
    for side in (xs <= x0 + 2, xs >= x1 - 2, ys <= y0 + 2, ys >= y1 - 2):
        assert side.sum() > 50


def test_canny_resolution_keeps_aspect(tmp_path):
    out = registry()["canny"].detect(rectangle(255), 240, None, None, make_ctx(tmp_path))
    assert out.size == (320, 240)
    out = registry()["canny"].detect(rectangle(255), -1, -1, -1, make_ctx(tmp_path))  # A1111 "unset" values
    assert out.size == (683, 512)


def test_canny_thresholds_change_the_result(tmp_path):
    faint = rectangle(40, bg=20)  # a weak step: Sobel magnitude ~80
    canny = registry()["canny"]
    assert pixels(canny.detect(faint, 120, None, None, make_ctx(tmp_path))).max() == 0  # defaults 100/200
    low = pixels(canny.detect(faint, 120, 20, 40, make_ctx(tmp_path)))
    assert (low[..., 0] > 0).sum() > 200


# -- tiny networks inside the real controlnet-aux detectors ----------------------------------------------------


class TinyDepthNet(torch.nn.Module):
    """(1, 3, H, W) -> (1, H, W): brightness as depth (scaled like MiDaS's relative inverse depth, 0 - ~1000)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.full((1,), 500.0))

    def forward(self, x):
        return (x.mean(dim=1) + 1) * self.scale


class TinyNormalNet(torch.nn.Module):
    """NNET's output layout: a list of predictions, the last (1, 4, H, W) holding normals and a confidence."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return [[torch.tanh(self.conv(x))]]


def midas_loader(calls: list | None = None):
    def load(ctx):
        from controlnet_aux.midas import MidasDetector

        if calls is not None:
            calls.append(ctx)
        return MidasDetector(model=TinyDepthNet())

    return load


def test_depth_midas_with_a_tiny_network(tmp_path):
    out = registry(loaders={"depth_midas": midas_loader()})["depth_midas"].detect(
        gradient(310, 200), 256, None, None, make_ctx(tmp_path))
    assert out.size == (397, 256)  # 310x200 at 256 on the short side (controlnet-aux ran at 384x256)
    p = pixels(out)
    assert (p[..., 0] == p[..., 1]).all()
    row = p[128, :, 0]
    assert row[-5] - row[5] > 200 and (np.diff(row[5:-5]) >= -2).all()  # brighter to the right, like the input


def test_normal_midas_shares_the_depth_detector_and_uses_its_threshold(tmp_path):
    calls: list = []
    normal = registry(loaders={"depth_midas": midas_loader(calls)})["normal_midas"]
    assert normal.cache_key == "annotator::depth_midas"
    ctx = make_ctx(tmp_path)
    shaded = pixels(normal.detect(blob(256, 192), 192, None, None, ctx))
    assert shaded.shape == (192, 256, 3) and len(calls) == 1
    assert shaded.reshape(-1, 3).std(0).max() > 10
    flat = pixels(normal.detect(blob(256, 192), 192, 1.0, None, ctx))  # everything below the threshold
    assert flat.reshape(-1, 3).std(0).max() < 3


def test_normal_bae_with_a_tiny_network(tmp_path):
    def load(ctx):
        from controlnet_aux.normalbae import NormalBaeDetector

        return NormalBaeDetector(TinyNormalNet())

    out = registry(loaders={"normal_bae": load})["normal_bae"].detect(blob(300, 400), 128, None, None,
                                                                      make_ctx(tmp_path))
    assert out.size == (128, 171)
    assert pixels(out).reshape(-1, 3).std(0).min() > 1


# OpenPose: the body network's heatmaps (19) and part affinity fields (38) as controlnet-aux's Body decodes them
LIMBS = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14],
         [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]
PAF_CHANNELS = [[31, 32], [39, 40], [33, 34], [35, 36], [41, 42], [43, 44], [19, 20], [21, 22], [23, 24], [25, 26],
                [27, 28], [29, 30], [47, 48], [49, 50], [53, 54], [51, 52], [55, 56], [37, 38], [45, 46]]
# COCO index -> normalised (x, y): nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist
JOINTS = {0: (0.5, 0.2), 1: (0.5, 0.35), 2: (0.42, 0.35), 3: (0.38, 0.55), 4: (0.36, 0.75),
          5: (0.58, 0.35), 6: (0.62, 0.55), 7: (0.64, 0.75)}
# 21 hand points inside the hand crop: the wrist, then four joints per finger spread in a fan
HAND = [(0.5, 0.85)] + [(0.5 + r * math.sin(a), 0.85 - r * math.cos(a))
                        for a in np.radians([-45, -22, 0, 22, 45]) for r in (0.15, 0.3, 0.45, 0.6)]


def blobs(points, h: int, w: int, channels: int) -> torch.Tensor:
    """(1, channels, h/8, w/8) maps with a unit Gaussian at each point (channel i <- points[i])."""
    gh, gw = h // 8, w // 8
    ys, xs = torch.arange(gh, dtype=torch.float32)[:, None], torch.arange(gw, dtype=torch.float32)[None, :]
    maps = torch.zeros(1, channels, gh, gw)
    for i, (nx, ny) in points:
        maps[0, i] = torch.exp(-((xs - (nx * gw - 0.5)) ** 2 + (ys - (ny * gh - 0.5)) ** 2) / 2)
    return maps


class TinyBody(torch.nn.Module):
    """Ignores the pixels: heatmap peaks at JOINTS, affinity fields pointing along each limb between them."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # detectors read their device from the parameters

    def forward(self, x):
        h, w = x.shape[-2:]
        heat = blobs(JOINTS.items(), h, w, 19)
        paf = torch.zeros(1, 38, h // 8, w // 8)
        for (a, b), (cx, cy) in zip(LIMBS, PAF_CHANNELS):
            if a - 1 in JOINTS and b - 1 in JOINTS:
                dx = (JOINTS[b - 1][0] - JOINTS[a - 1][0]) * w
                dy = (JOINTS[b - 1][1] - JOINTS[a - 1][1]) * h
                paf[0, cx - 19], paf[0, cy - 19] = dx / math.hypot(dx, dy), dy / math.hypot(dx, dy)
        return paf + self.anchor, heat


class TinyHand(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        h, w = x.shape[-2:]
        return blobs(enumerate(HAND), h, w, 22) + self.anchor


def openpose_loader(hand: bool = False):
    def load(ctx):
        from controlnet_aux.open_pose import Body, Hand, OpenposeDetector

        body = Body.__new__(Body)  # Body/Hand(path) build the full-size networks; put the tiny ones in instead
        body.model = TinyBody().eval()
        hand_estimation = None
        if hand:
            hand_estimation = Hand.__new__(Hand)
            hand_estimation.model = TinyHand().eval()
        return OpenposeDetector(body, hand_estimation)

    return load


def near(p: np.ndarray, x: float, y: float, r: int = 3) -> np.ndarray:
    x, y = int(round(x)), int(round(y))
    return p[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].reshape(-1, 3)


def test_openpose_draws_limbs_at_the_planted_joints(tmp_path):
    out = registry(loaders={"openpose": openpose_loader()})["openpose"].detect(
        Image.new("RGB", (200, 100), (90, 90, 90)), 256, None, None, make_ctx(tmp_path))
    assert out.size == (512, 256)
    p = pixels(out)
    w, h = out.size
    for x, y in JOINTS.values():
        assert near(p, x * w, y * h).max() > 100, (x, y)
    neck, r_shoulder = JOINTS[1], JOINTS[2]
    mid = ((neck[0] + r_shoulder[0]) / 2 * w, (neck[1] + r_shoulder[1]) / 2 * h)
    assert (np.abs(near(p, *mid, r=1) - [153, 0, 0]) <= 2).all(axis=1).any()  # limb 1: 0.6 x red
    assert p[:, :100].max() == 0 and p[:, -100:].max() == 0 and p[-20:].max() == 0  # black away from the body

    pose = out.info["openpose"]
    assert (pose["canvas_width"], pose["canvas_height"]) == (512, 256) and len(pose["people"]) == 1
    body = np.array(pose["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    for i, (x, y) in JOINTS.items():
        assert abs(body[i, 0] - x * w) <= 6 and abs(body[i, 1] - y * h) <= 6 and body[i, 2] > 0
    assert body[8:, 2].max() == 0  # nothing planted there
    again = pixels(render_pose_json(json.dumps(pose)))  # the JSON redraws the same map
    assert (np.abs(again - p).max(-1) > 30).mean() < 0.01


def test_openpose_hand_detects_and_draws_hands(tmp_path):
    image = Image.new("RGB", (200, 100), (90, 90, 90))
    reg = registry(loaders={"openpose": openpose_loader(), "openpose_hand": openpose_loader(hand=True)})
    body_only = pixels(reg["openpose"].detect(image, 256, None, None, make_ctx(tmp_path)))
    out = reg["openpose_hand"].detect(image, 256, None, None, make_ctx(tmp_path))
    p = pixels(out)
    person = out.info["openpose"]["people"][0]
    for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"):
        points = np.array(person[key]).reshape(21, 3)
        assert (points[:, 2] > 0).all()
        for x, y, _ in points[1:]:
            assert near(p, x, y, r=2).max() > 100
    changed = np.abs(p - body_only).max(-1) > 0
    assert changed.sum() > 500 and not changed[:, :100].any()


# -- loading, caching, cancelling -----------------------------------------------------------------------------


def test_missing_weights_offline_name_the_file(tmp_path):
    from extensions.annotators import AnnotatorMissing

    ctx = make_ctx(tmp_path, hub_endpoint=None)
    with pytest.raises(AnnotatorMissing, match="dpt_hybrid-midas-501f0c75.pt"):
        registry()["depth_midas"].detect(gradient(64, 64), 512, None, None, ctx)
    with pytest.raises(AnnotatorMissing, match="scannet.pt"):
        registry()["normal_bae"].detect(gradient(64, 64), 512, None, None, ctx)


def test_openpose_variants_fetch_only_their_files(tmp_path, monkeypatch):
    import extensions.annotators

    fetched: list[str] = []

    def fetch(filename, ctx, **kw):
        fetched.append(filename)
        return tmp_path / "nowhere" / filename

    monkeypatch.setattr(extensions.annotators, "fetch", fetch)
    for name in ("openpose", "openpose_face", "openpose_full"):
        fetched.clear()
        with pytest.raises(Exception):  # the fake paths do not exist: loading stops after the fetches
            registry()[name].detect(gradient(64, 64), 512, None, None, make_ctx(tmp_path))
        assert tuple(fetched) == registry()[name].weights


def test_detectors_load_once_through_the_cache(tmp_path):
    calls: list = []
    keys: list[str] = []
    store: dict = {}

    def cache(key, load):
        keys.append(key)
        if key not in store:
            store[key] = load()
        return nullcontext(store[key])

    reg = registry(loaders={"depth_midas": midas_loader(calls)})
    ctx = make_ctx(tmp_path, cache=cache)
    first = reg["depth_midas"].detect(gradient(96, 64), 64, None, None, ctx)
    second = reg["depth_midas"].detect(gradient(96, 64), 64, None, None, ctx)
    reg["normal_midas"].detect(gradient(96, 64), 64, None, None, ctx)
    assert len(calls) == 1 and keys == ["annotator::depth_midas"] * 3
    assert np.array_equal(np.asarray(first), np.asarray(second))
    holder = store["annotator::depth_midas"]
    assert isinstance(holder, torch.nn.Module) and sum(t.numel() for t in holder.parameters()) == 1  # sizeable


def test_cancel_before_loading(tmp_path):
    calls: list = []

    class Cancelled(Exception):
        pass

    class Hooks:
        def check(self):
            raise Cancelled()

    with pytest.raises(Cancelled):
        registry(loaders={"depth_midas": midas_loader(calls)})["depth_midas"].detect(
            gradient(64, 64), 64, None, None, make_ctx(tmp_path, hooks=Hooks()))
    assert calls == []


# -- OpenPose JSON --------------------------------------------------------------------------------------------

# pixels on a 256x256 canvas: nose (confidence 0: skipped), neck, right shoulder/elbow, left shoulder/elbow
ARMS = {0: (100, 40, 0.0), 1: (100, 100, 1.0), 2: (60, 100, 0.9), 3: (50, 160, 0.8), 5: (140, 100, 0.9),
        6: (150, 160, 0.8)}


def pose_json(points: dict, n: int = 18, scale: float = 1.0, canvas: bool = True, **extra) -> dict:
    flat = [0.0] * (3 * n)
    for i, (x, y, c) in points.items():
        flat[3 * i:3 * i + 3] = [x * scale, y * scale, c]
    doc = {"people": [{"pose_keypoints_2d": flat, **extra}]}
    if canvas:
        doc.update(canvas_width=256, canvas_height=256)
    return doc


def check_arms(p: np.ndarray, k: float = 1.0) -> None:
    def at(x, y):
        return near(p, x * k, y * k, r=1)

    assert (np.abs(at(80, 100) - [153, 0, 0]) <= 2).all(axis=1).any()  # neck - right shoulder: 0.6 x red
    assert (np.abs(at(120, 100) - [153, 51, 0]) <= 2).all(axis=1).any()  # neck - left shoulder
    assert (np.abs(at(55, 130) - [153, 102, 0]) <= 2).all(axis=1).any()  # right upper arm
    assert at(145, 130).max() > 100  # left upper arm
    assert at(100, 40).max() == 0  # the confidence-0 nose is not drawn
    assert at(220, 220).max() == 0 and at(10, 240).max() == 0


def test_render_pose_json_draws_limbs_at_the_keypoints():
    image = render_pose_json(json.dumps(pose_json(ARMS)))
    assert image.size == (256, 256) and image.mode == "RGB"
    check_arms(pixels(image))
    listed = render_pose_json(json.dumps([pose_json(ARMS)]).encode())  # a list: its first document
    assert np.array_equal(np.asarray(listed), np.asarray(image))


def test_render_pose_json_normalised_and_fitted_canvas():
    image = pixels(render_pose_json(pose_json(ARMS)))
    normalised = pixels(render_pose_json(pose_json(ARMS, scale=1 / 256)))
    assert (np.abs(normalised - image).max(-1) > 30).mean() < 0.005
    no_canvas = render_pose_json(pose_json(ARMS, scale=1 / 256, canvas=False))
    assert no_canvas.size == (512, 512)
    check_arms(pixels(no_canvas), k=2.0)
    fitted = render_pose_json(pose_json(ARMS, canvas=False))
    assert fitted.size == (154, 164)  # the keypoints' extent plus the joint dots
    assert render_pose_json({"people": [{"pose_keypoints_2d": [10, 10, 1, 20, 20, 1]}]}).size == (64, 64)


def test_render_pose_json_body25_hands_and_face():
    body25 = {**ARMS, 8: (100, 200, 1.0), 9: (80, 200, 1.0)}  # MidHip (dropped) and RHip (COCO 8)
    hand = [(60, 200, 1.0)] + [(40 + 10 * f, 230 - 6 * j, 1.0) for f in range(5) for j in range(1, 5)]
    face = [(200 + 3 * i, 40, 1.0) for i in range(10)] + [(0, 0, 0.0)] * 60
    doc = pose_json(body25, n=25, hand_right_keypoints_2d=[v for pt in hand for v in pt],
                    face_keypoints_2d=[[*pt] for pt in face])  # nested triples are accepted too
    p = pixels(render_pose_json(doc))
    check_arms(p)
    assert (np.abs(near(p, 90, 150, r=1) - [0, 153, 0]) <= 2).all(axis=1).any()  # neck - right hip: green
    assert near(p, 100, 150, r=1).max() == 0 and near(p, 100, 200, r=2).max() == 0  # MidHip is not drawn
    assert ((p[:, :, 2] == 255) & (p[:, :, 0] == 0) & (p[:, :, 1] == 0))[195:235, 35:95].any()  # blue hand joints
    assert (p[35:46, 195:230] == 255).all(-1).sum() > 20  # white face dots
    assert p[5:30, 195:230].max() == 0


@pytest.mark.parametrize("bad, why", [
    ("{nope", "invalid JSON"),
    ('{"width": 3}', "no 'people' list"),
    ("[]", "an empty list"),
    ('{"people": [{"pose_keypoints_2d": [1, 2, 3, 4]}]}', "4 numbers"),
    ('{"people": [{"pose_keypoints_2d": [1, "a", 3]}]}', "other than numbers"),
    ('{"people": ["x"]}', "expected an object"),
])
def test_render_pose_json_rejects_bad_input(bad, why):
    with pytest.raises(ValueError, match=f"not OpenPose JSON: .*{why}"):
        render_pose_json(bad)
