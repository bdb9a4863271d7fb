"""Browser tests of the OpenPose editor (ui/pose_editor.py + ui/static/pose_editor.js), mounted in a throwaway
gr.Blocks served from this process (a real Studio over an empty, offline models folder: Detect fails clearly).
Chromium as in tests/test_ui.py (its `browser` fixture is reused). The editor's JavaScript exposes
`window.poseEditors[prefix]` (where each joint is drawn, the JSON it holds); drags are real mouse drags.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests import test_ui as ui
from tests.conftest import free_port
from tests.test_ui import expect
from tests.waiting import wait_for

pytestmark = pytest.mark.browser  # the editor in chromium

browser = ui.browser  # tests/test_ui.py's fixture

PREFIX = "pe"
POSE = {"canvas_width": 256, "canvas_height": 256, "people": [{"pose_keypoints_2d": [
    128, 40, 1, 128, 80, 1, 98, 80, 1, 80, 120, 1, 70, 160, 1, 158, 80, 1, 176, 120, 1, 186, 160, 1,
    110, 150, 1, 105, 200, 1, 100, 245, 1, 146, 150, 1, 151, 200, 1, 156, 245, 1, 120, 34, 1, 136, 34, 1,
    112, 40, 1, 144, 40, 1], "hand_right_keypoints_2d": [70 + (i % 5) * 3.5 if j == 0 else 165 + i * 1.25 if j == 1 else 0.9
                                                         for i in range(21) for j in range(3)]}]}
NORMALISED = {"canvas_width": 300, "canvas_height": 200, "version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": [
    round(0.1 + k * 0.037, 4) if j == 0 else round(0.2 + k * 0.031, 4) if j == 1 else (0.0 if k == 9 else 0.87)
    for k in range(18) for j in range(3)], "face_keypoints_2d": [
    round(0.4 + i * 0.003, 4) if j == 0 else 0.15 if j == 1 else 1 for i in range(70) for j in range(3)]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A gr.Blocks holding only the editor (prefix "pe"), on a free port of this process."""
    import gradio as gr

    from pipelines.jobs import JobRunner
    from pipelines.settings import Settings
    from pipelines.studio import Studio
    from ui.pose_editor import CSS, build_pose_editor

    root = tmp_path_factory.mktemp("pose-editor")
    settings = Settings(models_dir=root / "models", outputs_dir=root / "outputs", hub_endpoint=None)
    runner = JobRunner().start()
    studio = Studio(settings, runner, None)
    with gr.Blocks() as demo:
        build_pose_editor(studio, prefix=PREFIX, width=256, height=256)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True,
                css=CSS)
    yield f"http://127.0.0.1:{port}", root
    demo.close()
    runner.stop()


@pytest.fixture
def page(server, browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.goto(server[0])
    expect(pg.locator(f"#{PREFIX}-canvas .pe-root[data-ready='1']")).to_be_attached(timeout=60_000)
    yield pg
    context.close()


# -- helpers ----------------------------------------------------------------------------------------


def hidden_json(page) -> str:
    return page.locator(f"#{PREFIX}-json textarea, #{PREFIX}-json input").first.input_value()


def editor_json(page) -> dict:
    return json.loads(page.evaluate(f"window.poseEditors['{PREFIX}'].json()"))


def load(page, tmp_path, doc: dict) -> None:
    path = tmp_path / "pose.json"
    path.write_text(json.dumps(doc))
    with page.expect_file_chooser() as chooser:
        page.locator(f"#{PREFIX}-load").click()
    chooser.value.set_files(str(path))
    wait_for(lambda: len(editor_json(page)["people"]) == len(doc["people"]) and
             editor_json(page)["canvas_width"] == doc["canvas_width"], 30, what="the JSON loaded into the editor")


def joint(page, person: int, k: int) -> dict:
    return page.evaluate(f"window.poseEditors['{PREFIX}'].joint({person}, {k})")


def drag(page, person: int, k: int, dx: float, dy: float) -> None:
    j = joint(page, person, k)
    page.mouse.move(j["pageX"], j["pageY"])
    page.mouse.down()
    page.mouse.move(j["pageX"] + dx / 2, j["pageY"] + dy / 2, steps=3)
    page.mouse.move(j["pageX"] + dx, j["pageY"] + dy, steps=3)
    page.mouse.up()


def sent_map(page, server, before: str | None = None) -> np.ndarray:
    page.locator(f"#{PREFIX}-send").click()
    img = page.locator(f"#{PREFIX}-map img")

    def src():
        s = img.get_attribute("src") if img.count() else None
        return s if s and s != before else None

    url = wait_for(src, 60, what="the pose map")
    data = page.request.get(url if url.startswith("http") else server[0] + url).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def upload_map(doc: dict) -> np.ndarray:
    from extensions.openpose_json import render_pose_json

    return np.asarray(render_pose_json(json.dumps(doc)).convert("RGB"))


# -- tests ------------------------------------------------------------------------------------------


def test_drag_a_joint_moves_it_in_the_json_and_the_map(page, server, tmp_path):
    load(page, tmp_path, POSE)
    assert page.locator(f"#{PREFIX}-canvas canvas").bounding_box()["width"] == 256  # drawn 1:1 on the page
    drag(page, 0, 4, 30, -20)  # the right wrist
    wait_for(lambda: json.loads(hidden_json(page) or "{}").get("people"), 20, what="the JSON in the hidden textbox")
    saved = wait_for(lambda: (d := json.loads(hidden_json(page)))["people"][0]["pose_keypoints_2d"][12] != 70 and d,
                     20, what="the dragged joint in the hidden JSON")
    body = saved["people"][0]["pose_keypoints_2d"]
    assert body[12:15] == [pytest.approx(100, abs=0.6), pytest.approx(140, abs=0.6), 1]
    assert body[:12] == POSE["people"][0]["pose_keypoints_2d"][:12]  # nothing else moved
    assert body[15:] == POSE["people"][0]["pose_keypoints_2d"][15:]
    got = sent_map(page, server)
    assert np.array_equal(got, upload_map(saved))  # the JSON upload path's map for the same JSON
    wrist = (170, 255, 0)  # BODY_COLORS[4]: the joint dot's colour
    assert tuple(got[round(body[13]), round(body[12])]) == wrist
    assert tuple(got[160, 70]) != wrist


def test_add_and_remove_a_person(page):
    tools = page.locator(f"#{PREFIX}-canvas")
    tools.locator("button[data-pe=add]").click()
    tools.locator("button[data-pe=add]").click()
    doc = wait_for(lambda: (d := json.loads(hidden_json(page) or "{}")).get("people") and len(d["people"]) == 2 and d,
                   20, what="two people")
    assert [len(p["pose_keypoints_2d"]) for p in doc["people"]] == [54, 54]  # 18 keypoints each
    assert all(c == 1 for p in doc["people"] for c in p["pose_keypoints_2d"][2::3])
    tools.locator("button[data-pe=remove]").click()  # the last added is selected
    wait_for(lambda: len(json.loads(hidden_json(page))["people"]) == 1, 20, what="one person left")
    tools.locator("button[data-pe=undo]").click()
    wait_for(lambda: len(json.loads(hidden_json(page))["people"]) == 2, 20, what="undo brings the person back")
    tools.locator("button[data-pe=redo]").click()
    wait_for(lambda: len(json.loads(hidden_json(page))["people"]) == 1, 20, what="redo removes it again")


def test_load_edit_undo_save_gives_the_same_numbers(page, server, tmp_path):
    load(page, tmp_path, NORMALISED)
    drag(page, 0, 1, 15, 10)
    wait_for(lambda: json.loads(hidden_json(page)) != NORMALISED, 20, what="the drag in the JSON")
    page.locator(f"#{PREFIX}-canvas button[data-pe=undo]").click()
    wait_for(lambda: json.loads(hidden_json(page)) == NORMALISED, 20, what="undo back to the loaded JSON")
    page.locator(f"#{PREFIX}-save").click()
    link = page.locator(f"#{PREFIX}-saved a").first
    expect(link).to_be_attached(timeout=30_000)
    href = link.get_attribute("href")
    saved = json.loads(page.request.get(href if href.startswith("http") else server[0] + href).body())
    assert saved == NORMALISED  # same numbers, still normalised, extra keys kept


def test_flip_scale_and_hide_a_joint(page, tmp_path):
    load(page, tmp_path, POSE)
    j = joint(page, 0, 4)
    page.mouse.click(j["pageX"], j["pageY"])  # select the right wrist (and its person)
    tools = page.locator(f"#{PREFIX}-canvas")
    tools.locator("button[data-pe=hide]").click()
    wait_for(lambda: json.loads(hidden_json(page))["people"][0]["pose_keypoints_2d"][14] == 0, 20,
             what="the wrist at confidence 0")
    tools.locator("button[data-pe=flip]").click()
    doc = wait_for(lambda: (d := json.loads(hidden_json(page)))["people"][0].get("hand_left_keypoints_2d") and d, 20,
                   what="the flipped person (right hand -> left hand)")
    person = doc["people"][0]
    body, before = person["pose_keypoints_2d"], POSE["people"][0]
    assert body[7 * 3 + 2] == 0 and body[4 * 3 + 2] == 1  # the hidden wrist went with the flip (right 4 -> left 7)
    # mirrored about the person's centre (x = 128): the left hand is the right hand's mirror image
    assert "hand_right_keypoints_2d" not in person
    assert person["hand_left_keypoints_2d"][0::3] == [pytest.approx(256 - x) for x in before["hand_right_keypoints_2d"][0::3]]
    assert body[3 * 3:3 * 3 + 2] == [pytest.approx(256 - 176), pytest.approx(120)]  # right elbow <- left elbow's mirror


def test_send_with_an_empty_editor_and_detect_offline_say_why(page):
    page.locator(f"#{PREFIX}-detect").click()
    expect(page.locator(f"#{PREFIX}-message")).to_contain_text("upload a reference photo first")
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (40, 90, 160)).save(buf, format="PNG")
    page.locator(f"#{PREFIX}-reference input[type=file]").set_input_files(
        {"name": "ref.png", "mimeType": "image/png", "buffer": buf.getvalue()})
    # no people yet: the canvas takes the reference photo's size
    wait_for(lambda: editor_json(page)["canvas_width"] == 96, 30,
             what=f"the canvas at the reference's size ({page.locator(f'#{PREFIX}-message').inner_text()})")
    page.locator(f"#{PREFIX}-detect").click()
    msg = page.locator(f"#{PREFIX}-message")
    expect(msg).to_contain_text("offline", timeout=30_000)
    expect(msg).to_contain_text("openpose")
