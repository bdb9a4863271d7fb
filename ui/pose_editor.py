"""An OpenPose editor in the browser: make or fix a pose, then hand its skeleton map to ControlNet.

The canvas is a `gr.HTML` whose `js_on_load` is ui/static/pose_editor.js (Gradio 6's documented way to run
custom JavaScript in a component; nothing is fetched from a CDN). The body limb list and colours, the hand edges
and colours and the BODY_25 -> COCO-18 map come from extensions/openpose_json.py as the component's props, so
the editor draws what the JSON upload path renders. The JavaScript keeps the pose as OpenPose JSON in a hidden
textbox (`PoseEditor.pose_json`): every edit writes it there, and whatever Python puts there (Load JSON, Detect)
is loaded into the canvas. Send to ControlNet renders that JSON with `extensions.openpose_json.render_pose_json`
(the very function the pose JSON upload uses) into `PoseEditor.pose_map`. Nothing here imports torch.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from extensions.openpose_json import BODY_25_TO_COCO_18, BODY_COLORS, BODY_LIMBS, HAND_EDGES, hand_edge_color
from pipelines.jobs import EventKind
from pipelines.studio import Studio
from ui.generation import image_input, message_html, open_image

JS_FILE = Path(__file__).parent / "static" / "pose_editor.js"
DETECT_MODULE = "openpose_full"  # body, hands and face
# A standing person, COCO-18 order, normalised to the canvas (where "Add person" puts the first one).
DEFAULT_POSE = ((0.5, 0.16), (0.5, 0.31), (0.38, 0.31), (0.31, 0.47), (0.27, 0.63), (0.62, 0.31), (0.69, 0.47),
                (0.73, 0.63), (0.43, 0.59), (0.41, 0.78), (0.39, 0.96), (0.57, 0.59), (0.59, 0.78), (0.61, 0.96),
                (0.47, 0.13), (0.53, 0.13), (0.44, 0.16), (0.56, 0.16))

CSS = """
.pe-root {display:flex; flex-direction:column; gap:6px;}
.pe-tools {display:flex; flex-wrap:wrap; gap:4px; align-items:center; font-size:13px;}
.pe-tools button {padding:2px 8px; border:1px solid var(--border-color-primary); border-radius:6px;
  background:var(--button-secondary-background-fill); cursor:pointer;}
.pe-tools input[type=number] {width:64px;}
.pe-tools label {display:flex; gap:4px; align-items:center;}
.pe-canvas {max-width:100%; height:auto; touch-action:none; cursor:crosshair; align-self:flex-start;}
.pe-status {font-size:12px; opacity:.8;}
"""

TEMPLATE = """
<div class="pe-root" tabindex="0" data-prefix="${prefix}">
  <div class="pe-tools">
    <button data-pe="add" title="Add a person in the default pose">➕ Person</button>
    <button data-pe="remove" title="Remove the selected person">🗑 Person</button>
    <button data-pe="flip" title="Mirror the selected person">↔ Flip</button>
    <button data-pe="smaller" title="Shrink the selected person">➖ Scale</button>
    <button data-pe="bigger" title="Enlarge the selected person">➕ Scale</button>
    <button data-pe="left_hand" title="Add (or reset) the selected person's left hand">✋ Left hand</button>
    <button data-pe="right_hand" title="Add (or reset) the selected person's right hand">🤚 Right hand</button>
    <button data-pe="hide" title="Hide the selected joint (confidence 0: its limbs are not drawn); Delete key">🚫 Joint</button>
    <button data-pe="restore" title="Show the selected person's hidden joints again">♻ Joints</button>
    <button data-pe="undo" title="Undo (Ctrl+Z)">↶ Undo</button>
    <button data-pe="redo" title="Redo (Ctrl+Y)">↷ Redo</button>
    <label>Drag <select data-pe="mode"><option value="joint">a joint</option><option value="person">the person</option></select></label>
    <label>W <input type="number" data-pe="width" min="64" max="4096" step="8"></label>
    <label>H <input type="number" data-pe="height" min="64" max="4096" step="8"></label>
    <label>Reference <input type="range" data-pe="opacity" min="0" max="1" step="0.05" value="0.5"></label>
  </div>
  <canvas class="pe-canvas"></canvas>
  <div class="pe-status" data-pe="status"></div>
</div>
"""


@dataclass
class PoseEditor:
    """What `build_pose_editor` returns (all already placed in the current Blocks context)."""

    canvas: gr.HTML  # the editor (elem_id "<prefix>-canvas")
    pose_json: gr.Textbox  # hidden; the pose as OpenPose JSON, kept in sync by the JavaScript ("<prefix>-json")
    reference: gr.Image  # the reference photo: the canvas background, and what Detect runs on ("<prefix>-reference")
    load: gr.UploadButton  # Load JSON ("<prefix>-load")
    save: gr.Button  # Save JSON -> `saved` ("<prefix>-save")
    saved: gr.File  # the saved pose.json ("<prefix>-saved")
    detect: gr.Button  # Detect from the reference ("<prefix>-detect")
    send: gr.Button  # Send to ControlNet ("<prefix>-send")
    pose_map: gr.Image  # the rendered skeleton map (PIL), what Send to ControlNet hands over ("<prefix>-map")
    message: gr.HTML  # errors (bad JSON, no reference, detector unavailable) ("<prefix>-message")
    sent: Any  # the Send click's event: `.then(fn, [editor.pose_map], [unit image, ...])` hands the map on


def js_props(prefix: str, width: int, height: int) -> dict[str, Any]:
    """The tables the JavaScript draws with (from extensions/openpose_json.py) and its settings."""
    return {"prefix": prefix, "width": width, "height": height, "body_limbs": [list(p) for p in BODY_LIMBS],
            "body_colors": [list(c) for c in BODY_COLORS], "body25": list(BODY_25_TO_COCO_18),
            "hand_edges": [list(e) for e in HAND_EDGES],
            "hand_colors": [hand_edge_color(i) for i in range(len(HAND_EDGES))],
            "default_pose": [list(p) for p in DEFAULT_POSE]}


def data_url(image: Image.Image | None) -> str:
    """The reference photo as a PNG data URL for the canvas background ("" when there is none)."""
    if image is None:
        return ""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render(text: str | None) -> Image.Image:
    """The skeleton map for the editor's JSON, through the JSON upload's own renderer (ValueError when invalid)."""
    from extensions.openpose_json import render_pose_json  # imports controlnet-aux when called

    if not text or not text.strip():
        raise ValueError("not OpenPose JSON: the editor is empty")
    return render_pose_json(text)


def read_pose_file(path: str | None) -> str:
    """The uploaded file's text, checked as OpenPose JSON (ValueError "not OpenPose JSON: ...")."""
    from extensions.openpose_json import parse_pose_json

    if not path:
        raise ValueError("no file")
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    parse_pose_json(text)
    return text


def build_pose_editor(studio: Studio, *, prefix: str = "pose", width: int = 512, height: int = 512) -> PoseEditor:
    """Build the OpenPose editor inside the current Blocks context and wire its events; returns its components.

    Takes: `studio` (its `submit_detect` runs the OpenPose detector for Detect), `prefix` (every elem_id starts
    with it, and the JavaScript finds its hidden textbox by it: use one prefix per editor on a page), and the
    initial canvas `width` x `height` (the canvas follows the loaded JSON's `canvas_width` / `canvas_height`,
    or the reference photo's size while the canvas has no people).
    Returns a `PoseEditor` (see its fields). Mount it, e.g. in the ControlNet tab:

        editor = build_pose_editor(studio, prefix="cn-pose")
        editor.sent.then(lambda im: im, editor.pose_map, unit_image)  # hand the map to a ControlNet unit

    Put `ui.pose_editor.CSS` into the page's css (the editor works without it, only plainer).
    """
    js = JS_FILE.read_text(encoding="utf-8")
    find = f"(window.poseEditors && window.poseEditors[{json.dumps(prefix)}])"
    with gr.Column(elem_id=f"{prefix}-editor", elem_classes="pose-editor"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                canvas = gr.HTML(html_template=TEMPLATE, js_on_load=js, css_template=CSS, elem_id=f"{prefix}-canvas",
                                 **js_props(prefix, width, height))
            with gr.Column(scale=2):
                reference = image_input(label="Reference photo", type="filepath", sources=["upload", "clipboard"],
                                        elem_id=f"{prefix}-reference", height=220)
                with gr.Row():
                    load = gr.UploadButton("📂 Load JSON", file_types=[".json"], type="filepath", size="sm",
                                           elem_id=f"{prefix}-load")
                    save = gr.Button("💾 Save JSON", size="sm", elem_id=f"{prefix}-save")
                    detect = gr.Button("🔍 Detect from the reference", size="sm", elem_id=f"{prefix}-detect")
                send = gr.Button("➡ Send to ControlNet", variant="primary", size="sm", elem_id=f"{prefix}-send")
                message = gr.HTML(visible=False, elem_id=f"{prefix}-message")
                saved = gr.File(label="pose.json", visible=False, elem_id=f"{prefix}-saved", interactive=False)
                pose_map = gr.Image(label="Pose map", type="pil", interactive=False, elem_id=f"{prefix}-map",
                                    height=220, format="png")
        pose_json = gr.Textbox(visible="hidden", elem_id=f"{prefix}-json", lines=1, max_lines=1)
        background = gr.Textbox(visible="hidden", elem_id=f"{prefix}-background")

    # Python -> JavaScript: JSON put into the hidden textbox is loaded into the canvas (its own edits are ignored)
    pose_json.change(None, [pose_json], None, js=f"(text) => {{ {find}?.load(text); }}")
    background.change(None, [background], None, js=f"(url) => {{ {find}?.setBackground(url); }}")

    def on_reference(value: Any) -> dict:
        try:
            image = open_image(value, "reference photo")
        except Exception as e:  # BadRequest: not an image
            return {message: message_html(str(e))}
        return {background: data_url(image), message: message_html("")}

    reference.change(on_reference, [reference], [background, message], show_progress="hidden", api_visibility="private")

    def on_load(path: str | None) -> dict:
        try:
            return {pose_json: read_pose_file(path), message: message_html("")}
        except (ValueError, OSError) as e:
            return {message: message_html(f"Load JSON: {e}")}

    load.upload(on_load, [load], [pose_json, message], api_visibility="private")

    def on_save(text: str) -> dict:
        try:
            render(text)  # only valid JSON is saved
        except ValueError as e:
            return {message: message_html(f"Save JSON: {e}"), saved: gr.File(visible=False)}
        path = Path(tempfile.mkdtemp(prefix="pose-editor-")) / "pose.json"
        path.write_text(json.dumps(json.loads(text), indent=1), encoding="utf-8")
        return {saved: gr.File(value=str(path), visible=True), message: message_html("")}

    save.click(on_save, [pose_json], [saved, message], api_visibility="private")

    def on_detect(value: Any, request: gr.Request) -> Iterator[dict]:
        def fail(text: str) -> dict:
            return {message: message_html(f"Detect: {text}")}

        try:
            image = open_image(value, "reference photo")
            if image is None:
                yield fail("upload a reference photo first.")
                return
            job = studio.submit_detect(DETECT_MODULE, [image], owner=request.session_hash if request else None)
            for ev in job.events():
                if ev.kind is EventKind.PROGRESS and (ev.total or 0) > 1:  # e.g. downloading annotator weights
                    yield {message: message_html(f"{ev.label or DETECT_MODULE}: {(ev.step or 0) / ev.total:.0%}", "info")}
                elif ev.kind is EventKind.FINISHED:
                    maps = list(ev.result or [])
                    found = maps[0].info.get("openpose") if maps else None
                    if not found or not found.get("people"):
                        yield fail("no person found in the reference photo.")
                    else:
                        yield {pose_json: json.dumps(found), message: message_html("")}
                    return
                elif ev.kind in (EventKind.FAILED, EventKind.CANCELLED):
                    yield fail(ev.message or "the detection was interrupted.")
                    return
        except Exception as e:  # BadRequest (offline without annotator weights, bad image), QueueFull: never crash
            yield fail(str(e))

    detect.click(on_detect, [reference], [pose_json, message], api_visibility="private")

    def on_send(text: str) -> dict:
        try:
            return {pose_map: render(text), message: message_html("")}
        except ValueError as e:
            return {message: message_html(f"Send to ControlNet: {e}")}

    sent = send.click(on_send, [pose_json], [pose_map, message], api_visibility="private")
    return PoseEditor(canvas, pose_json, reference, load, save, saved, detect, send, pose_map, message, sent)
