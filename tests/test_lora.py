"""LoRA / LyCORIS on the tiny models: every format equals a hand-merged model, restores are exact, the same set
re-patches nothing, SDXL's original-layout names, hashes and the infotext, family checks before queueing."""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipelines import discovery
from pipelines.engine import devices
from pipelines.engine.generate import Engine
from pipelines.engine.manager import ModelManager
from pipelines.errors import BadRequest
from pipelines.jobs import JobRunner
from pipelines.networks import tags
from pipelines.networks.loras import LoraLibrary, classify
from pipelines.outputs import OutputWriter
from pipelines.params.specs import Txt2ImgParams
from tests import tiny_loras
from tests.conftest import TEST_DEVICE, TEST_PRECISION

pytestmark = pytest.mark.engine

PROMPT = "a red cube on a table"


@pytest.fixture(scope="module")
def lw(tiny_store, tmp_path_factory):
    """An engine with a LoRA folder; `make(name, fmt, model)` writes a LoRA for that model and returns its deltas."""
    root = tmp_path_factory.mktemp("lora")
    models = root / "models"
    for name in ("tiny-sd15", "tiny-sdxl"):
        shutil.copytree(tiny_store / name, models / "Stable-diffusion" / name)
    (models / "Lora").mkdir(parents=True)
    hw = devices.resolve(TEST_DEVICE, TEST_PRECISION)
    library = LoraLibrary([models / "Lora"], models / ".cache" / "hashes.json")
    engine = Engine(hw, ModelManager(device=hw.device, device_budget=2**31, cpu_budget=0),
                    OutputWriter(root / "outputs"), config_root=models / ".cache" / "configs",
                    hash_cache=models / ".cache" / "hashes.json", preview_every=0, loras=library)
    runner = JobRunner().start()
    world = {"engine": engine, "runner": runner, "models": models, "root": root, "library": library}

    def load(model: str):
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        folder = models / "Stable-diffusion" / model
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        tes = [CLIPTextModel.from_pretrained(folder / "text_encoder")]
        if (folder / "text_encoder_2").is_dir():
            tes.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"))
        return folder, unet, tes

    def make(name: str, fmt: str, model: str = "tiny-sd15", seed: int = 0, **kw):
        folder, unet, tes = load(model)
        state, deltas = tiny_loras.build(unet, tes, fmt, seed=seed, **kw)
        save_file(state, str(models / "Lora" / f"{name}.safetensors"), metadata={"ss_output_name": name})
        library.refresh()
        return deltas

    def merged(model: str, name: str, parts: list[tuple[dict, float]]) -> None:
        """A copy of `model` with W + m * dW written into its weights by hand: the reference image's model."""
        folder, unet, tes = load(model)
        dest = models / "Stable-diffusion" / name
        shutil.copytree(folder, dest)
        for deltas, m in parts:
            tiny_loras.merge(unet, "unet", deltas, m)
            for i, te in enumerate(tes):
                tiny_loras.merge(te, "text_encoder_2" if i else "text_encoder", deltas, m)
        unet.save_pretrained(dest / "unet")
        for i, te in enumerate(tes):
            te.save_pretrained(dest / ("text_encoder_2" if i else "text_encoder"))

    world.update(make=make, merged=merged)
    yield world
    runner.stop()


def run(lw, model: str = "tiny-sd15", **params):
    infos = {i.name: i for i in discovery.scan(lw["models"])}
    params = {"prompt": PROMPT, "steps": 3, "seed": 7, "sampler_name": "Euler", **params}
    job = lw["runner"].submit(lambda ctx: lw["engine"].txt2img(ctx, Txt2ImgParams(**params), infos[model]))
    return job.wait(180)


def px(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def assert_same(a, b) -> None:
    diff = np.abs(px(a) - px(b))
    assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.mark.parametrize("fmt", ["lora", "loha", "lokr", "peft", "dora", "full"])
def test_each_format_equals_the_hand_merged_model(lw, fmt):
    deltas = lw["make"](f"x-{fmt}", fmt)
    assert any(p == "unet" for p, _ in deltas) and any(p == "text_encoder" for p, _ in deltas)
    lw["merged"]("tiny-sd15", f"merged-{fmt}", [(deltas, 0.7)])
    with_tag = run(lw, prompt=f"{PROMPT} <lora:x-{fmt}:0.7>")
    reference = run(lw, model=f"merged-{fmt}")
    plain = run(lw)
    assert np.abs(px(with_tag) - px(plain)).mean() > 1  # the LoRA changes the picture...
    assert_same(with_tag, reference)  # ...exactly as merging W + 0.7 dW by hand does
    assert f"<lora:x-{fmt}:0.7>" in with_tag.infotexts[0].splitlines()[0]  # the saved prompt keeps the tag


def test_two_loras_and_split_multipliers(lw):
    a, b = lw["make"]("pair-a", "lora", seed=1), lw["make"]("pair-b", "loha", seed=2)
    lw["merged"]("tiny-sd15", "merged-pair", [(a, 0.6), (b, 0.4)])
    assert_same(run(lw, prompt=f"<lora:pair-a:0.6> {PROMPT} <lyco:pair-b:0.4>"), run(lw, model="merged-pair"))
    # <lora:name:TE:UNET>: the text encoder's multiplier first (A1111), here the UNet only
    only_unet = {k: v for k, v in a.items() if k[0] == "unet"}
    lw["merged"]("tiny-sd15", "merged-unet-only", [(only_unet, 0.8)])
    assert_same(run(lw, prompt=f"{PROMPT} <lora:pair-a:0:0.8>"), run(lw, model="merged-unet-only"))


def test_restore_is_exact_and_the_same_set_repatches_nothing(lw):
    lw["make"]("exact", "lora", seed=3)
    before = run(lw)
    engine = lw["engine"]
    info = {i.name: i for i in discovery.scan(lw["models"])}["tiny-sd15"]
    with engine.components(info) as comps:
        original = {k: v.clone() for k, v in comps.unet.state_dict().items()}
        te_original = {k: v.clone() for k, v in comps.text_encoder.state_dict().items()}
        uses = engine.lora_uses("<lora:exact:0.9>")
        first = engine.patcher.activate(comps, uses)
        touched = first.layers
        assert touched and not first.unchanged
        state = engine.patcher._state[comps.unet]
        assert 0 < len(state.backups) < len(original)  # only the touched layers are backed up...
        assert all(saved.device.type == "cpu" for _, saved, _ in state.backups.values())  # ...on the CPU
        again = engine.patcher.activate(comps, engine.lora_uses("<lora:exact:0.9>"))
        assert again.unchanged and again.layers == 0  # the same set: nothing re-patched
        changed = engine.patcher.activate(comps, engine.lora_uses("<lora:exact:0.5>"))
        assert changed.restored == touched and changed.layers == touched
        engine.patcher.activate(comps, [])
        assert all(torch.equal(v, comps.unet.state_dict()[k]) for k, v in original.items())  # bit for bit
        assert all(torch.equal(v, comps.text_encoder.state_dict()[k]) for k, v in te_original.items())
    run(lw, prompt=f"{PROMPT} <lora:exact:1>")
    after = run(lw)  # a job without the tag after LoRA jobs: the first image, bit for bit
    assert np.array_equal(px(before), px(after))


def test_sdxl_original_layout_names(lw):
    deltas = lw["make"]("xl", "lora", model="tiny-sdxl", sdxl_names=True, unet_only_down_mid=True)
    info = lw["library"].find("xl")
    assert info.family == "sdxl" and info.context_dim == 64 and len(info.text_dims) == 2  # lora_te2_ keys: SDXL
    assert {p for p, _ in deltas} == {"unet", "text_encoder", "text_encoder_2"}
    lw["merged"]("tiny-sdxl", "merged-xl", [(deltas, 0.7)])
    with_tag = run(lw, model="tiny-sdxl", prompt=f"{PROMPT} <lora:xl:0.7>")
    assert not with_tag.warnings, with_tag.warnings  # every key found its layer
    assert_same(with_tag, run(lw, model="merged-xl"))


def test_hashes_in_the_infotext_are_a1111s(lw):
    lw["make"]("hashed", "lora", seed=5)
    path = lw["models"] / "Lora" / "hashed.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    addnet = hashlib.sha256(data[8 + length:]).hexdigest()[:12]  # kohya's hash: the bytes after the header
    result = run(lw, prompt=f"{PROMPT} <lora:hashed:0.5>")
    assert f'Lora hashes: "hashed: {addnet}"' in result.infotexts[0]
    from PIL import Image

    from pipelines.outputs import read_png_info

    back = read_png_info(Image.open(result.paths[0]))["parameters"]  # PNG Info / Send-to restore the prompt as is
    assert back["prompt"] == f"{PROMPT} <lora:hashed:0.5>" and back["extra"]["Lora hashes"] == f"hashed: {addnet}"
    assert addnet != hashlib.sha256(data).hexdigest()[:12]


def test_family_is_read_from_keys_and_shapes():
    sd15 = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 768),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 8),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (8, 768)}
    assert classify(sd15)["family"] == "sd15"
    xl = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.hada_w1_b": (8, 2048),
          "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.hada_w1_a": (640, 8),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lokr_w1": (4, 4)}
    got = classify(xl)
    assert got["family"] == "sdxl" and got["formats"] == ("loha", "lokr")
    sd2 = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 1024)}
    assert classify(sd2)["family"] == "sd2"
    with pytest.raises(ValueError, match="no LoRA weights"):
        classify({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)})


def test_tags():
    parsed = tags.parse("a <lora:one> b <lora:two:0.5> <lyco:three:0.2:0.9> <lora:four:te=0.3:unet=1.2:dyn=4> "
                        "<hypernet:h:1>")
    assert parsed.text == "a  b    "
    assert [(t.name, t.te, t.unet, t.dyn) for t in parsed.loras] == [
        ("one", 1, 1, None), ("two", 0.5, 0.5, None), ("three", 0.2, 0.9, None), ("four", 0.3, 1.2, 4)]
    assert parsed.other == ("<hypernet:h:1>",)
    for bad in ("<lora:x:abc>", "<lora::1>", "<lora:x:nan>", "<lora:x:1:1:0>"):
        with pytest.raises(BadRequest):
            tags.parse(bad)


def test_unknown_and_wrong_family_are_refused_before_queueing(lw, tmp_path):
    from pipelines.settings import Settings
    from pipelines.studio import Studio

    lw["make"]("for-sd15", "lora", seed=6)
    studio = Studio(Settings(models_dir=lw["models"], outputs_dir=tmp_path), lw["runner"], lw["engine"],
                    loras=lw["library"])
    with pytest.raises(BadRequest, match="Unknown LoRA 'nope'"):
        studio.submit_txt2img({"prompt": "x <lora:nope:1>", "steps": 1}, model="tiny-sd15")
    with pytest.raises(BadRequest, match=r"LoRA 'for-sd15' does not fit tiny-sdxl: .*32-wide.*64-wide"):
        studio.submit_txt2img({"prompt": "x <lora:for-sd15:1>", "steps": 1}, model="tiny-sdxl")
    with pytest.raises(BadRequest, match="Unknown LoRA"):  # the hires prompt is checked too
        studio.submit_txt2img({"prompt": "x", "enable_hr": True, "hr_prompt": "<lora:gone:1>", "steps": 1},
                              model="tiny-sd15")
    assert studio.submit_txt2img({"prompt": "x <lora:for-sd15:1>", "steps": 1}, model="tiny-sd15").wait(120)
    # a hires prompt is not used without Hires. fix: its tags are neither checked nor applied nor recorded
    done = studio.submit_txt2img({"prompt": "x", "hr_prompt": "<lora:gone:1>", "steps": 1}, model="tiny-sd15").wait(120)
    assert "Lora hashes" not in done.infotexts[0]


def test_symlinked_lora_folder_is_listed(lw, tmp_path):
    shared = tmp_path / "shared-loras"
    shared.mkdir()
    lw["make"]("linked-src", "lora", seed=8)
    shutil.move(lw["models"] / "Lora" / "linked-src.safetensors", shared / "linked.safetensors")
    (lw["models"] / "Lora" / "team").symlink_to(shared, target_is_directory=True)
    info = lw["library"].find("linked") or (lw["library"].refresh() and lw["library"].find("linked"))
    assert info is not None and info.rel == "team/linked.safetensors" and not info.error
    assert run(lw, prompt=f"{PROMPT} <lora:linked:0.5>").images
    Path(lw["models"] / "Lora" / "team").unlink()
    lw["library"].refresh()


@pytest.mark.parametrize("mode", ["low", "minimal"])
def test_patches_survive_offload_hooks_and_still_restore_exactly(lw, mode):
    """Model / sequential CPU offload put hooks on the modules (sequential offload even swaps their Parameters when
    it is removed): the patched values stay, and the restore still reaches the layers' current weights."""
    from pipelines.engine import memory
    from pipelines.engine.generate import build_pipeline
    from pipelines.params.samplers import make_scheduler

    lw["make"]("offload", "lora", seed=9)
    engine = lw["engine"]
    info = {i.name: i for i in discovery.scan(lw["models"])}["tiny-sd15"]
    with engine.components(info) as comps:
        engine.patcher.activate(comps, [])
        original = {k: v.clone() for k, v in comps.unet.state_dict().items()}
        engine.patcher.activate(comps, engine.lora_uses("<lora:offload:1>"))
        patched = {k: v.clone() for k, v in comps.unet.state_dict().items()}
        assert any(not torch.equal(original[k], patched[k]) for k in original)
        pipe = build_pipeline(comps, make_scheduler("Euler", "Automatic", comps.scheduler_config))
        with memory.applied(pipe, mode, "cpu", (64, 64), offload=True):
            pass
        assert all(torch.equal(v, comps.unet.state_dict()[k]) for k, v in patched.items())
        engine.patcher.activate(comps, [])
        assert all(torch.equal(v, comps.unet.state_dict()[k]) for k, v in original.items())
