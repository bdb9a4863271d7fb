"""OpenPose JSON <-> pose control maps, drawn with the standard OpenPose colours (controlnet-aux's functions).

- `render_pose_json(data)` draws OpenPose-format JSON (a str, bytes or dict; a top-level list -> its first
  item): `{"canvas_width": W, "canvas_height": H, "people": [{"pose_keypoints_2d": [x, y, c, ...],
  "hand_left_keypoints_2d": ..., "hand_right_keypoints_2d": ..., "face_keypoints_2d": ...}]}` on black.
  Coordinates are pixels, or normalised 0-1 when every drawn coordinate is <= 1. Points with confidence <= 0
  are skipped. Body keypoints follow the 18-point COCO order; BODY_25 (25 points) is mapped to it (MidHip and
  the feet points are dropped); any other count uses its first 18 points. Without a canvas size the canvas fits
  the keypoints (pixel coordinates; at least 64 px) or is 512x512 (normalised coordinates).
- `poses_to_json(poses, width, height)` is the inverse for what the OpenPose detector finds (pixel coordinates,
  missing points as 0, 0, 0; A1111's /controlnet/detect layout), `draw_pose_map` draws detector results.

controlnet-aux's `draw_handpose` needs matplotlib (for one HSV -> RGB conversion), which the stack does not
install; hands are drawn here with the same edges and colours through `colorsys`.
"""

from __future__ import annotations

import colorsys
import json
import math
from typing import Any

from PIL import Image

DEFAULT_CANVAS = 512
MIN_CANVAS = 64
MARGIN = 4  # px around the keypoints when the canvas is fitted to them (the joint dots' radius)
BODY_25_TO_COCO_18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
              (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
PARTS = ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d")
# controlnet-aux's draw_bodypose tables (kept inside that function there): limbs as 0-based COCO-18 index pairs, and
# one RGB colour per limb (drawn at 60%) and per joint. The pose editor (ui/pose_editor.py) draws with these.
BODY_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
              (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))

Point = tuple[float, float] | None


def _fail(why: str) -> ValueError:
    return ValueError(f"not OpenPose JSON: {why}")


def _document(data: str | bytes | dict | list) -> dict:
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _fail(f"invalid JSON ({e})") from e
    if isinstance(data, list):
        if not data:
            raise _fail("an empty list")
        data = data[0]
    if not isinstance(data, dict):
        raise _fail(f"expected an object with a 'people' list, got {type(data).__name__}")
    if not isinstance(data.get("people"), list):
        raise _fail("no 'people' list")
    return data


def _points(values: Any, where: str) -> list[Point] | None:
    """[x, y, c, ...] (or [[x, y, c], ...]) -> points, None where the confidence is <= 0; None if absent."""
    if values is None or values == []:
        return None
    if not isinstance(values, list):
        raise _fail(f"{where} is a {type(values).__name__}, expected a list of numbers")
    if all(isinstance(v, (list, tuple)) for v in values):
        values = [n for v in values for n in v]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise _fail(f"{where} holds something other than numbers")
    if len(values) % 3:
        raise _fail(f"{where} has {len(values)} numbers, expected x, y, confidence triples")
    triples = [values[i:i + 3] for i in range(0, len(values), 3)]
    return [(float(x), float(y)) if c > 0 else None for x, y, c in triples]


def _body18(points: list[Point] | None) -> list[Point]:
    if points is None:
        return [None] * 18
    if len(points) == 25:
        return [points[i] for i in BODY_25_TO_COCO_18]
    return (points + [None] * 18)[:18]


def _canvas(doc: dict, points: list[tuple[float, float]], normalised: bool) -> tuple[int, int]:
    def size(key: str) -> int | None:
        value = doc.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1
        return int(round(value)) if ok else None

    width, height = size("canvas_width"), size("canvas_height")
    if width and height:
        return width, height
    if normalised or not points:
        return width or DEFAULT_CANVAS, height or DEFAULT_CANVAS
    fit_w = max(MIN_CANVAS, math.ceil(max(x for x, _ in points)) + MARGIN)
    fit_h = max(MIN_CANVAS, math.ceil(max(y for _, y in points)) + MARGIN)
    return width or fit_w, height or fit_h


def parse_pose_json(data: str | bytes | dict | list) -> tuple[list[Any], int, int]:
    """(controlnet-aux PoseResults with normalised keypoints, canvas width, canvas height)."""
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    doc = _document(data)
    people = []
    for i, person in enumerate(doc["people"]):
        if not isinstance(person, dict):
            raise _fail(f"people[{i}] is a {type(person).__name__}, expected an object")
        parts = {key: _points(person.get(key), f"people[{i}].{key}") for key in PARTS}
        parts["pose_keypoints_2d"] = _body18(parts["pose_keypoints_2d"])
        people.append(parts)
    drawn = [p for parts in people for pts in parts.values() if pts for p in pts if p is not None]
    normalised = all(x <= 1 and y <= 1 for x, y in drawn)
    width, height = _canvas(doc, drawn, normalised)
    sx, sy = (1.0, 1.0) if normalised else (1.0 / width, 1.0 / height)

    def keypoint(p: Point, missing: Any) -> Any:
        return missing if p is None else Keypoint(p[0] * sx, p[1] * sy)

    def listed(points: list[Point] | None) -> list[Any] | None:  # hands, face: missing points at -1, -1
        return None if points is None else [keypoint(p, Keypoint(-1.0, -1.0)) for p in points]

    poses = []
    for parts in people:
        body = [keypoint(p, None) for p in parts["pose_keypoints_2d"]]
        found = sum(k is not None for k in body)
        poses.append(PoseResult(BodyResult(body, float(found), found), listed(parts["hand_left_keypoints_2d"]),
                                listed(parts["hand_right_keypoints_2d"]), listed(parts["face_keypoints_2d"])))
    return poses, width, height


def render_pose_json(data: str | bytes | dict | list) -> Image.Image:
    """The RGB pose map the JSON describes (see the module docstring); ValueError "not OpenPose JSON: ..."."""
    poses, width, height = parse_pose_json(data)
    return Image.fromarray(draw_pose_map(poses, width, height))


# -- drawing and encoding detector results ------------------------------------------------------------------


def hand_edge_color(i: int) -> list[float]:
    """The RGB colour (0-255 floats) of hand edge i: HSV hues spread over HAND_EDGES, as controlnet-aux draws them."""
    return [c * 255 for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)]


def _draw_hand(canvas: Any, keypoints: list[Any] | None) -> Any:
    """controlnet-aux's draw_handpose without matplotlib: edges in HSV-spread colours, joints in blue."""
    import cv2

    if not keypoints:
        return canvas
    h, w = canvas.shape[:2]
    eps = 0.01

    def pixel(k: Any) -> tuple[int, int] | None:
        if k is None:
            return None
        x, y = int(k.x * w), int(k.y * h)
        return (x, y) if x > eps and y > eps else None

    def at(i: int) -> tuple[int, int] | None:
        return pixel(keypoints[i]) if i < len(keypoints) else None

    for i, (a, b) in enumerate(HAND_EDGES):
        pa, pb = at(a), at(b)
        if pa and pb:
            color = hand_edge_color(i)
            cv2.line(canvas, pa, pb, color, thickness=2)
    for k in keypoints:
        p = pixel(k)
        if p:
            cv2.circle(canvas, p, 4, (0, 0, 255), thickness=-1)
    return canvas


def draw_pose_map(poses: list[Any], width: int, height: int, *, body: bool = True, hand: bool = True,
                  face: bool = True) -> Any:
    """HxWx3 uint8 RGB array: the poses (normalised keypoints) drawn on black, like controlnet-aux's draw_poses."""
    import numpy as np
    from controlnet_aux.open_pose import util

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        if body:
            canvas = util.draw_bodypose(canvas, pose.body.keypoints)
        if hand:
            canvas = _draw_hand(canvas, pose.left_hand)
            canvas = _draw_hand(canvas, pose.right_hand)
        if face and pose.face:
            canvas = util.draw_facepose(canvas, [k for k in pose.face if k is not None])
    return canvas


def poses_to_json(poses: list[Any], width: int, height: int) -> dict:
    """OpenPose JSON (pixel coordinates on a width x height canvas) for detector results."""

    def flat(keypoints: list[Any] | None) -> list[float] | None:
        if keypoints is None:
            return None
        values: list[float] = []
        for k in keypoints:
            ok = k is not None and k.x >= 0 and k.y >= 0
            values += [float(k.x) * width, float(k.y) * height, float(k.score)] if ok else [0.0, 0.0, 0.0]
        return values

    people = [{"pose_keypoints_2d": flat(p.body.keypoints), "hand_left_keypoints_2d": flat(p.left_hand),
               "hand_right_keypoints_2d": flat(p.right_hand), "face_keypoints_2d": flat(p.face)} for p in poses]
    return {"people": people, "canvas_width": int(width), "canvas_height": int(height)}
