"""The prompt helper's logic: composing the prompt in the recommended order, A1111's style semantics
({prompt} placeholder), styles.csv read/write (round trip, files written by hand) and the StyleStore."""

from __future__ import annotations

import csv
import os
import threading

import pytest

from pipelines.advisor.prompt_builder import (
    NEGATIVE_PRESETS,
    PART_NAMES,
    PROMPT_PARTS,
    Style,
    StyleStore,
    UnknownStyle,
    apply_style,
    apply_styles,
    compose,
    read_styles,
    write_styles,
)

pytestmark = pytest.mark.unit  # pure Python, no model

# -- composing ------------------------------------------------------------------------------------


def test_parts_follow_the_recommended_order():
    assert PART_NAMES == ("subject", "details", "style", "extra", "quality", "lighting")
    assert all(p.label and p.why and p.example for p in PROMPT_PARTS)
    assert "weigh" in PROMPT_PARTS[0].why  # the reason the order matters is said where it starts
    assert set(NEGATIVE_PRESETS) >= {"people", "landscapes", "illustrations"}
    assert "hands" in NEGATIVE_PRESETS["people"] and "hands" not in NEGATIVE_PRESETS["landscapes"]


def test_compose_orders_and_trims_the_parts():
    parts = {"lighting": " golden hour,  ", "subject": "a knight", "quality": ",, highly detailed, sharp focus,",
             "style": "oil painting", "details": "  silver armour, , kneeling \n", "extra": ""}
    assert compose(parts) == ("a knight, silver armour, kneeling, oil painting, highly detailed, sharp focus, "
                              "golden hour")
    # a sequence is taken in PROMPT_PARTS order; blank and missing parts are left out
    assert compose(["a cat", None, "  ", "in a garden"]) == "a cat, in a garden"
    assert compose({"lighting": "backlit", "subject": "a fox"}) == "a fox, backlit"
    assert compose({}) == "" and compose([" , ", ""]) == ""
    assert compose({"subject": "(a red fox:1.2)", "style": "[sketch]"}) == "(a red fox:1.2), [sketch]"
    with pytest.raises(KeyError, match="mood"):
        compose({"subject": "x", "mood": "y"})


# -- A1111 style semantics ------------------------------------------------------------------------


def test_apply_style_with_and_without_placeholder():
    assert apply_style("a cat", "oil painting, {prompt}, masterpiece") == "oil painting, a cat, masterpiece"
    assert apply_style("a cat", "{prompt} in the rain, {prompt}") == "a cat in the rain, a cat"
    assert apply_style("a cat ", " oil painting") == "a cat, oil painting"
    assert apply_style("", "oil painting") == "oil painting"
    assert apply_style("a cat", "") == "a cat"
    assert apply_style("", "photo of {prompt}") == "photo of "  # as A1111: the placeholder is replaced by nothing


def test_apply_styles_in_order_to_prompt_and_negative():
    photo = Style("photo", "photo of {prompt}, 35mm", "drawing, {prompt}")
    sharp = Style("sharp", "sharp focus", "")
    moody = Style("moody", "", "bright colours")
    prompt, negative = apply_styles("a lighthouse", "blurry", [photo, sharp, moody])
    assert prompt == "photo of a lighthouse, 35mm, sharp focus"
    assert negative == "drawing, blurry, bright colours"
    assert apply_styles("a", "b", []) == ("a", "b")


# -- styles.csv -----------------------------------------------------------------------------------


TRICKY = [
    Style("cinematic", "cinematic still of {prompt}, shallow depth of field, film grain",
          "cartoon, painting, illustration, (worst quality:1.4)"),
    Style('quoted "name", with comma', 'a "quoted" word, and a comma', 'say "no", twice'),
    Style("multi-line", "line one\nline two, {prompt}\r\nline three", ""),
    Style("ünïcødé 風景", "水彩画, {prompt}, ぼかし — café crème", "низкое качество"),
    Style("empty", "", ""),
]


def test_styles_csv_round_trip(tmp_path):
    path = tmp_path / "styles.csv"
    write_styles(path, TRICKY)
    assert read_styles(path) == TRICKY
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfname,prompt,negative_prompt\r\n")  # A1111 writes utf-8-sig
    # what A1111 itself does with the file: csv.DictReader over utf-8-sig
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    assert [(r["name"], r["prompt"], r["negative_prompt"]) for r in rows] == \
        [(s.name, s.prompt, s.negative_prompt) for s in TRICKY]
    assert not [p for p in tmp_path.iterdir() if p.name != "styles.csv"]  # no temp file left behind
    write_styles(path, TRICKY[:1])  # rewriting replaces the whole file
    assert read_styles(path) == TRICKY[:1]


def test_reading_a_hand_written_a1111_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(
        "name,prompt,negative_prompt,description\n"
        "# PORTRAITS,,\n"
        "Portrait, \"portrait of {prompt}, 85mm, bokeh\", \"deformed, blurry\",for faces\n"
        "Anime,anime artwork {prompt},photo\n"
        "\n"
        "No negative,watercolor\n"
        "Portrait,\"portrait of {prompt}, 50mm\",\"blurry\"\n",
        encoding="utf-8")
    styles = read_styles(path)
    assert styles == [Style("Portrait", "portrait of {prompt}, 50mm", "blurry"),  # the later row wins, in place
                      Style("Anime", "anime artwork {prompt}", "photo"),
                      Style("No negative", "watercolor", "")]
    # the old two-column format ("name,text") and a file without the negative_prompt column
    path.write_text("name,text\nOld,old style text\n", encoding="utf-8-sig")
    assert read_styles(path) == [Style("Old", "old style text", "")]
    path.write_text("name,prompt\nOnly prompt,\"a, b\"\n", encoding="utf-8")
    assert read_styles(path) == [Style("Only prompt", "a, b", "")]
    assert read_styles(tmp_path / "missing.csv") == []
    (tmp_path / "empty.csv").write_text("")
    assert read_styles(tmp_path / "empty.csv") == []
    path.write_text("just,some,words\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a styles file"):
        read_styles(path)


# -- StyleStore -----------------------------------------------------------------------------------


def test_store_saves_replaces_deletes_and_picks(tmp_path):
    path = tmp_path / "sub" / "styles.csv"
    store = StyleStore(path)
    assert store.list() == [] and store.get("x") is None and not path.exists()
    assert store.save(Style("  photo ", "photo of {prompt}", "drawing")) is False  # added (name trimmed)
    assert store.save(Style("anime", "anime {prompt}", "")) is False
    assert store.save(Style("photo", "35mm photo of {prompt}", "cartoon")) is True  # replaced in place
    assert store.names() == ["photo", "anime"]
    assert read_styles(path) == store.list() == [Style("photo", "35mm photo of {prompt}", "cartoon"),
                                                 Style("anime", "anime {prompt}", "")]
    assert [s.name for s in store.pick(["anime", "photo"])] == ["anime", "photo"]
    with pytest.raises(UnknownStyle, match=r"'nope'.*'photo', 'anime'"):
        store.pick(["photo", "nope"])
    for bad in ("", "   ", "# divider"):
        with pytest.raises(ValueError):
            store.save(Style(bad, "x", ""))
    assert store.delete("photo") is True and store.delete("photo") is False
    assert StyleStore(path).names() == ["anime"]  # what a fresh process reads


def test_store_picks_up_an_edit_by_hand(tmp_path):
    path = tmp_path / "styles.csv"
    store = StyleStore(path)
    store.save(Style("first", "a", ""))
    assert store.names() == ["first"]
    with open(path, "a", encoding="utf-8", newline="") as f:  # the user adds a row in a text editor
        f.write('by hand,"hand, written {prompt}",ugly\r\n')
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse file-system clocks
    assert store.get("by hand") == Style("by hand", "hand, written {prompt}", "ugly")
    assert store.names() == ["first", "by hand"]
    path.unlink()  # the file removed by hand: no styles
    assert store.list() == []


def test_store_never_overwrites_a_file_it_cannot_read(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("these are my notes, not styles\n", encoding="utf-8")
    store = StyleStore(path)
    assert store.list() == [] and "cannot be read" in store.error
    with pytest.raises(ValueError, match="not overwritten"):
        store.save(Style("x", "y", ""))
    assert path.read_text(encoding="utf-8") == "these are my notes, not styles\n"
    path.write_text("name,prompt,negative_prompt\nok,fine,\n", encoding="utf-8")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))
    assert store.names() == ["ok"] and store.error is None


def test_store_is_safe_across_threads(tmp_path):
    store = StyleStore(tmp_path / "styles.csv")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(10):
                store.save(Style(f"s{i}-{j}", f"prompt {i} {j}", ""))
                store.list()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(read_styles(store.path)) == 40 and len(store.list()) == 40
