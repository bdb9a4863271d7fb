"""Infotext build/parse (A1111 format) and PNG output writing/reading."""

from __future__ import annotations

import io
import threading
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from pipelines.outputs import OutputWriter, read_png_info, save_png
from pipelines.params.infotext import build_infotext, parse_infotext

pytestmark = pytest.mark.unit  # pure Python, no model

NOW = datetime(2024, 5, 17, 12, 0, 0)

VALUES = {
    "prompt": 'a cat, sitting\non a "red" mat: close-up',
    "negative_prompt": "blurry, lowres\nugly hands",
    "sampler_name": "DPM++ 2M",
    "scheduler": "Karras",
    "steps": 20,
    "cfg_scale": 7.5,
    "width": 512,
    "height": 768,
    "clip_skip": 2,
    "subseed_strength": 0.1,
    "denoising_strength": 0.4,
}
EXTRA = {
    "Hires upscale": 2,
    "ControlNet 0": "Module: canny, Model: x, Weight: 1",
    "Note": 'say "hi"',
}


def _image(color: str = "red") -> Image.Image:
    return Image.new("RGB", (16, 16), color)


def test_build_exact_a1111_format() -> None:
    values = {**VALUES, "prompt": "a cat", "negative_prompt": "ugly", "cfg_scale": 7.0}
    text = build_infotext(values, seed=123, subseed=5, model_name="v1-5-pruned-emaonly", model_hash="6ce0161689")
    assert text == (
        "a cat\nNegative prompt: ugly\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Variation seed: 5, Variation seed strength: 0.1, "
        "Clip skip: 2, Denoising strength: 0.4, Version: studio-0.1"
    )


def test_build_omits_defaults_and_quotes_extra() -> None:
    values = {"prompt": "p", "negative_prompt": "", "sampler_name": "Euler a", "scheduler": "Automatic",
              "steps": 25, "cfg_scale": 7.5, "width": 512, "height": 512, "clip_skip": 1, "subseed_strength": 0}
    text = build_infotext(values, seed=1, subseed=9, model_name=None, model_hash=None,
                          extra={"ControlNet 0": "Module: canny, Model: x, Weight: 1", "Hires upscale": 2.0})
    assert text == (
        "p\nSteps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 1, Size: 512x512, "
        'ControlNet 0: "Module: canny, Model: x, Weight: 1", Hires upscale: 2, Version: studio-0.1'
    )


def test_round_trip_build_save_read_parse(tmp_path: Path) -> None:
    text = build_infotext(VALUES, seed=123, subseed=5, model_name="my, model", model_hash="6ce0161689", extra=EXTRA)
    path = save_png(_image(), text, tmp_path, "txt2img", 123, now=NOW)
    assert path == tmp_path / "txt2img" / "2024-05-17" / "00001-123.png"
    with Image.open(path) as im:
        got = read_png_info(im)
    assert got["info"] == text
    assert got["items"]["parameters"] == text
    p = got["parameters"]
    for name, value in VALUES.items():
        assert p[name] == value, name
    assert type(p["steps"]) is int and type(p["cfg_scale"]) is float
    assert (p["seed"], p["subseed"]) == (123, 5)
    assert (p["model_name"], p["model_hash"]) == ("my, model", "6ce0161689")
    assert p["extra"] == {"Model hash": "6ce0161689", "Model": "my, model",
                          "ControlNet 0": "Module: canny, Model: x, Weight: 1", "Note": 'say "hi"',
                          "Version": "studio-0.1"}
    assert p["hr_scale"] == 2.0 and p["enable_hr"]  # hires keys are parameters of their own


def test_round_trip_unicode_and_empty_prompt(tmp_path: Path) -> None:
    values = {**VALUES, "prompt": "", "negative_prompt": "", "clip_skip": 1, "subseed_strength": 0.0}
    text = build_infotext(values, seed=7, model_name=None, model_hash=None)
    p = parse_infotext(text)
    assert (p["prompt"], p["negative_prompt"], p["seed"]) == ("", "", 7)
    assert "clip_skip" not in p and "subseed" not in p

    values["prompt"] = "東京の夜景, ネオン"  # not latin-1: stored as iTXt
    text = build_infotext(values, seed=7, model_name=None, model_hash=None)
    with Image.open(save_png(_image(), text, tmp_path, "txt2img", 7, now=NOW)) as im:
        assert read_png_info(im)["parameters"]["prompt"] == values["prompt"]


A1111_OLD = (
    "masterpiece, best quality, 1girl, solo, (looking at viewer:1.2), [smile]\n"
    "Negative prompt: lowres, bad anatomy, bad hands, (worst quality:1.4)\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 2837469152, Size: 512x768, "
    "Model hash: 7f96a1a9ca, Model: anything-v5, Clip skip: 2, ENSD: 31337, Version: v1.6.0"
)

A1111_HIRES = (
    "a photo of a castle on a hill, golden hour\n"
    "dramatic sky, <lora:add_detail:0.8>\n"
    "Negative prompt: blurry, lowres,\n"
    "watermark, text\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Variation seed: 42, Variation seed strength: 0.15, "
    "Denoising strength: 0.45, Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, "
    'Lora hashes: "add_detail: 7c6bad76eb54", '
    'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, '
    'Resize Mode: Crop and Resize, Guidance Start: 0, Guidance End: 1", '
    'Template: "a \\"quoted\\" word, yes", Version: v1.10.1'
)

FORGE_NO_NEGATIVE = (
    "cinematic film still of a lighthouse in a storm\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 1, Size: 896x1152, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Version: f0.0.17v1.8.0rc-latest-276-g29be1da7"
)


def test_parse_old_style_combined_sampler() -> None:
    p = parse_infotext(A1111_OLD)
    assert p["prompt"] == "masterpiece, best quality, 1girl, solo, (looking at viewer:1.2), [smile]"
    assert p["negative_prompt"] == "lowres, bad anatomy, bad hands, (worst quality:1.4)"
    assert (p["sampler_name"], p["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (p["steps"], p["cfg_scale"], p["seed"]) == (28, 7.5, 2837469152)
    assert (p["width"], p["height"], p["clip_skip"]) == (512, 768, 2)
    assert (p["model_name"], p["model_hash"]) == ("anything-v5", "7f96a1a9ca")
    assert p["eta_noise_seed_delta"] == 31337 and "ENSD" not in p["extra"] and p["extra"]["Version"] == "v1.6.0"
    assert p["randn_source"] == "NV"  # no RNG: A1111's default GPU noise on an NVIDIA card


def test_parse_schedule_type_hires_multiline_negative_quotes() -> None:
    p = parse_infotext(A1111_HIRES)
    assert p["prompt"] == "a photo of a castle on a hill, golden hour\ndramatic sky, <lora:add_detail:0.8>"
    assert p["negative_prompt"] == "blurry, lowres,\nwatermark, text"
    assert (p["sampler_name"], p["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (p["subseed"], p["subseed_strength"], p["denoising_strength"]) == (42, 0.15, 0.45)
    extra = p["extra"]
    assert (p["hr_scale"], p["hr_second_pass_steps"], p["hr_upscaler"], p["enable_hr"]) == (2.0, 10, "R-ESRGAN 4x+",
                                                                                            True)
    assert extra["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert extra["ControlNet 0"].startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1")
    assert extra["Template"] == 'a "quoted" word, yes'
    assert extra["Version"] == "v1.10.1"
    assert "Sampler" not in extra and "Size" not in extra and "Steps" not in extra


def test_parse_forge_without_negative() -> None:
    p = parse_infotext(FORGE_NO_NEGATIVE)
    assert p["prompt"] == "cinematic film still of a lighthouse in a storm"
    assert p["negative_prompt"] == ""
    assert (p["sampler_name"], p["scheduler"], p["cfg_scale"]) == ("Euler a", "Automatic", 5.0)
    assert (p["width"], p["height"]) == (896, 1152)


@pytest.mark.parametrize("text", ["", "just a prompt, with commas", "::::", "\x00\x01 garbage\n\n", 'a: "b'])
def test_parse_garbage_gives_prompt(text: str) -> None:
    assert parse_infotext(text) == {"prompt": text}


def test_parse_bad_values_do_not_raise() -> None:
    p = parse_infotext("x\nSteps: many, Sampler: Euler, CFG scale: high, Seed: 3, Size: big")
    assert p["seed"] == 3 and p["extra"]["Steps"] == "many" and p["extra"]["Size"] == "big"
    assert parse_infotext(None) == {"prompt": ""}  # type: ignore[arg-type]


def test_numbering_increments_and_skips_foreign_files(tmp_path: Path) -> None:
    writer = OutputWriter(tmp_path)
    day = tmp_path / "txt2img" / "2024-05-17"
    day.mkdir(parents=True)
    (day / "00041-9.png").write_bytes(b"")
    (day / "notes.txt").write_text("x")
    a = writer.save(_image(), "a", "txt2img", 5, now=NOW)
    b = writer.save(_image(), "b", "txt2img", 5, now=NOW)
    assert (a.name, b.name) == ("00042-5.png", "00043-5.png")
    assert writer.save(_image(), "c", "img2img", 5, now=NOW).name == "00001-5.png"


def test_concurrent_saves_get_distinct_numbers(tmp_path: Path) -> None:
    writer = OutputWriter(tmp_path)
    paths: list[Path] = []
    errors: list[BaseException] = []
    guard = threading.Lock()
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(5):
                p = writer.save(_image(), f"t{t} i{i}", "txt2img", 1000 + t % 2, now=NOW)
                with guard:
                    paths.append(p)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    folder = tmp_path / "txt2img" / "2024-05-17"
    numbers = sorted(int(p.name[:5]) for p in paths)
    assert numbers == list(range(1, 41))
    assert len(set(paths)) == 40 and sorted(folder.iterdir()) == sorted(paths)
    assert not list(tmp_path.rglob("*.tmp"))
    with Image.open(paths[0]) as im:
        assert read_png_info(im)["info"].startswith("t")


@pytest.mark.parametrize("mode", ["../x", "TXT2IMG", "", "a/b", ".", "..", "x y"])
def test_invalid_mode_rejected(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ValueError):
        save_png(_image(), "p", tmp_path, mode, 1, now=NOW)
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.outputs as outputs

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(outputs.os, "replace", boom)
    with pytest.raises(OSError):
        save_png(_image(), "p", tmp_path, "txt2img", 1, now=NOW)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_read_png_without_parameters(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    _image().save(path)
    with Image.open(path) as im:
        assert read_png_info(im) == {"info": "", "items": {}, "parameters": {}}


def test_read_jpeg_exif_user_comment() -> None:
    text = build_infotext(VALUES, seed=9, model_name="m", model_hash=None)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")  # as A1111 (piexif) writes it
    buf = io.BytesIO()
    _image().save(buf, format="JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        got = read_png_info(im)
    assert got["info"] == text and got["items"]["UserComment"] == text
    assert got["parameters"]["prompt"] == VALUES["prompt"]
