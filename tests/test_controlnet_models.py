"""ControlNet checkpoints in models/ControlNet: listing, family, lookup, loading (tiny models, and one real-size file).

Every tiny ControlNet here is built from the same tiny UNet with the same seed, so they all hold the same weights:
a diffusers folder, diffusers-layout and original-layout single files, a .pth pickle. Loading any of them must give
back exactly those weights, and the same outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.controlnets import (
    ControlNetInfo,
    base_family,
    compatible,
    find,
    infer_config,
    legacy_hash,
    load_controlnet,
    scan,
)
from pipelines.engine.loading import LoadError
from tests.tiny_models import build_controlnet, to_original_layout

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Pickled with a reduce hook: torch.load(weights_only=True) must refuse to run it."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.fixture(scope="module")
def models(tiny_store, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("cn-models")
    cn = models / "ControlNet"
    sd15, sdxl = tiny_store / "tiny-sd15", tiny_store / "tiny-sdxl"
    build_controlnet(sd15, cn / "cn-sd15-folder")
    build_controlnet(sdxl, cn / "cn-sdxl-folder")
    # diffusers-layout single file with no sidecar: its config is inferred from the weights (SD 1.x conventions)
    build_controlnet(sd15, cn / "sub" / "cn-sd15-diffusers.safetensors", single_file=True).with_suffix(".json").unlink()
    build_controlnet(sd15, cn / "cn-sd15-original.safetensors", single_file=True, original_layout=True)
    (cn / "cn-sd15-original.json").unlink()
    # tiny SDXL heads (2, 4) do not follow SDXL's 64-channel convention: these keep their <stem>.json sidecar
    build_controlnet(sdxl, cn / "cn-sdxl-diffusers.safetensors", single_file=True)
    build_controlnet(sdxl, cn / "cn-sdxl-original.safetensors", single_file=True, original_layout=True)
    original = load_file(str(cn / "cn-sd15-original.safetensors"))
    torch.save({"state_dict": original}, cn / "cn-sd15-pickle.pth")
    # junk and broken entries
    (cn / "notes.txt").write_text("not a model")
    (cn / "control_v11p_sd15_canny.yaml").write_text("model:\n  target: cldm.cldm.ControlLDM\n")
    shutil.copy(cn / "cn-sd15-original.safetensors", cn / ".hidden.safetensors")
    (cn / "garbage.safetensors").write_bytes(b"\x00" * 100)
    torch.save({"weight": torch.zeros(2), "hook": Payload()}, cn / "evil.pth")
    save_file({"lora_unet_down.weight": torch.zeros(4, 4)}, str(cn / "some-lora.safetensors"))
    (cn / "empty-folder").mkdir()
    (cn / "empty-folder" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    return models


@pytest.fixture(scope="module")
def infos(models) -> dict[str, ControlNetInfo]:
    return {i.name: i for i in scan(models)}


@pytest.fixture(scope="module")
def reference(models) -> dict[str, torch.Tensor]:
    return load_file(str(models / "ControlNet" / "cn-sd15-folder" / "diffusion_pytorch_model.safetensors"))


def test_scan_lists_models_and_flags_broken_files(infos):
    good = {"cn-sd15-folder": ("folder", "sd15"), "cn-sdxl-folder": ("folder", "sdxl"),
            "cn-sd15-diffusers": ("file", "sd15"), "cn-sd15-original": ("file", "sd15"),
            "cn-sd15-pickle": ("file", "sd15"), "cn-sdxl-diffusers": ("file", "sdxl"),
            "cn-sdxl-original": ("file", "sdxl")}
    for name, (source, family) in good.items():
        info = infos[name]
        assert (info.source, info.family, info.error) == (source, family, None), name
        assert info.hash and len(info.hash) == 8 and info.title == f"{name} [{info.hash}]"
    assert infos["cn-sd15-diffusers"].path.parent.name == "sub"
    broken = {"garbage", "evil", "some-lora", "empty-folder"}
    assert set(infos) == set(good) | broken  # notes.txt, the .yaml, the sidecars and hidden files are not listed
    assert "holds code" in infos["evil"].error
    assert "not a safetensors file" in infos["garbage"].error
    assert "not a ControlNet" in infos["some-lora"].error
    assert "diffusion_pytorch_model" in infos["empty-folder"].error
    assert all(infos[n].family is None for n in broken)
    assert list(infos) == sorted(infos, key=str.lower)


def test_scan_without_folder_and_listing_without_torch(tmp_path, models):
    assert scan(tmp_path) == []
    code = ("import sys; from pathlib import Path; from pipelines import controlnets\n"
            f"infos = controlnets.scan(Path({str(models)!r}))\n"
            "assert any(i.family == 'sdxl' for i in infos)\n"
            "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    # pickles need torch to be read: leave them out of this listing
    tree = tmp_path / "m"
    shutil.copytree(models, tree, ignore=shutil.ignore_patterns("*.pth"))
    out = subprocess.run([sys.executable, "-c", code.replace(str(models), str(tree))], cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_find_by_title_name_or_stale_title(infos):
    values = list(infos.values())
    info = infos["cn-sd15-original"]
    assert find(values, info.title) is info
    assert find(values, "CN-SD15-Original") is info
    assert find(values, "cn-sd15-original [0badbeef]") is info  # file changed since the title was saved
    assert find(values, f"  {info.title.upper()}  ") is info
    assert find(values, "None") is None and find(values, "") is None and find(values, "none") is None
    assert find(values, "no-such-model") is None


def test_base_family_and_compatible(infos):
    assert [base_family(f) for f in ("sd15", "sd15-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-inpaint")] \
        == ["sd15", "sd15", "sd2", "sd2", "sd2", "sdxl", "sdxl"]
    sd15, sdxl = infos["cn-sd15-folder"], infos["cn-sdxl-diffusers"]
    assert compatible(sd15, "sd15") and compatible(sd15, "sd15-inpaint") and not compatible(sd15, "sdxl")
    assert compatible(sdxl, "sdxl-inpaint") and not compatible(sdxl, "sd2-v") and not compatible(sdxl, "sd15")
    assert compatible(ControlNetInfo("x", "hub", None, None, None), "sdxl")  # family unknown: let through
    assert compatible(sd15, "unknown")
    assert not compatible(infos["evil"], "sd15")


@pytest.mark.parametrize("name", ["cn-sd15-folder", "cn-sd15-diffusers", "cn-sd15-original", "cn-sd15-pickle"])
def test_sd15_loads_give_back_the_saved_weights(infos, reference, tmp_path, name, no_network):
    stages = []
    model = load_controlnet(infos[name], dtype=torch.float32, config_root=tmp_path, progress=lambda *a: stages.append(a))
    assert stages[0][0] == "loading ControlNet" and stages[-1] == ("loaded", 1, 1)
    state = model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert model.config.cross_attention_dim == 32 and not model.training
    assert no_network == []


def _run(model, sdxl: bool):
    g = torch.Generator().manual_seed(1)
    width = model.config.cross_attention_dim
    kwargs = {}
    if sdxl:
        pooled = model.config.projection_class_embeddings_input_dim - 6 * model.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        down, mid = model(torch.randn(1, 4, 8, 8, generator=g), 10, torch.randn(1, 7, width, generator=g),
                          torch.rand(1, 3, 64, 64, generator=g), return_dict=False, **kwargs)
    return [*down, mid]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_all_forms_compute_the_same(infos, tmp_path, family):
    names = [n for n, i in infos.items() if i.family == family and not i.error]
    outputs = {n: _run(load_controlnet(infos[n], dtype=torch.float32, config_root=tmp_path), family == "sdxl")
               for n in names}
    first = outputs[names[0]]
    assert any(o.abs().max() > 0 for o in first)  # the zero convolutions are not zero: the ControlNet steers
    for name in names[1:]:
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, outputs[name])), name


def test_half_precision_and_sdxl_original_layout(infos, tmp_path):
    model = load_controlnet(infos["cn-sdxl-original"], dtype=torch.float16, config_root=tmp_path)
    assert model.dtype == torch.float16 and model.config.addition_embed_type == "text_time"
    folder = load_file(str(Path(infos["cn-sdxl-folder"].path) / "diffusion_pytorch_model.safetensors"))
    state = model.state_dict()
    assert "add_embedding.linear_1.weight" in state  # SDXL's label_emb, which diffusers' converter skips
    assert all(torch.equal(state[k], folder[k].half()) for k in folder)


def test_broken_files_give_short_errors(infos, models, tmp_path, no_network):
    with pytest.raises(LoadError, match=r"^Could not load ControlNet evil: .*holds code"):
        load_controlnet(infos["evil"], dtype=torch.float32, config_root=tmp_path)
    with pytest.raises(LoadError, match=r"^Could not load ControlNet garbage: "):
        load_controlnet(infos["garbage"], dtype=torch.float32, config_root=tmp_path)
    # an evil pickle renamed after the scan is still refused at load time
    sneaky = tmp_path / "sneaky.pth"
    shutil.copy(models / "ControlNet" / "evil.pth", sneaky)
    with pytest.raises(LoadError, match="holds code"):
        load_controlnet(ControlNetInfo("sneaky", "file", sneaky, "sd15", None), dtype=torch.float32,
                        config_root=tmp_path)
    # a tensor with the wrong shape: named in one line
    state = load_file(str(infos["cn-sd15-diffusers"].path))
    state["controlnet_mid_block.weight"] = torch.zeros(64, 64, 3, 3)
    save_file(state, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(LoadError, match=r"do not fit.*controlnet_mid_block.weight") as err:
        load_controlnet(ControlNetInfo("wrong", "file", tmp_path / "wrong.safetensors", "sd15", None),
                        dtype=torch.float32, config_root=tmp_path)
    assert "\n" not in str(err.value)
    assert no_network == []


def test_uncached_hub_id_offline_says_where_to_put_files(models, tmp_path, no_network):
    hub = scan(models, ["someone/controlnet-sd21-canny", "diffusers/controlnet-canny-sdxl-1.0",
                        "lllyasviel/control_v11p_sd15_canny", "someone/mystery"], hub_cache=tmp_path / "hf")
    by_name = {i.name: i for i in hub if i.source == "hub"}
    assert {n: (i.family, i.hash, i.path) for n, i in by_name.items()} == {
        "someone/controlnet-sd21-canny": ("sd2", None, None), "diffusers/controlnet-canny-sdxl-1.0": ("sdxl", None, None),
        "lllyasviel/control_v11p_sd15_canny": ("sd15", None, None), "someone/mystery": (None, None, None)}
    assert by_name["someone/mystery"].title == "someone/mystery"
    with pytest.raises(LoadError, match=r"someone/controlnet-sd21-canny.*models/ControlNet/"):
        load_controlnet(by_name["someone/controlnet-sd21-canny"], dtype=torch.float16, config_root=tmp_path,
                        hub_cache=tmp_path / "hf")
    assert no_network == []


def test_cached_hub_snapshot_loads_offline(infos, reference, tmp_path, no_network):
    repo = tmp_path / "hf" / "models--someone--tiny-controlnet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(infos["cn-sd15-folder"].path, repo / "snapshots" / ("0" * 40))
    [info] = scan(tmp_path / "nothing", ["someone/tiny-controlnet"], hub_cache=tmp_path / "hf")
    assert (info.source, info.family, info.hash, info.error) == ("hub", "sd15", None, None)
    assert info.path == repo / "snapshots" / ("0" * 40)
    model = load_controlnet(info, dtype=torch.float32, config_root=tmp_path)
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)
    assert no_network == []


@pytest.mark.unit  # in a module of engine tests
def test_legacy_hash_matches_a1111(tmp_path):
    data = bytes(range(256)) * 0x1200  # 1.125 MiB: the hashed window is 0x100000..0x110000
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert legacy_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    small = tmp_path / "small.pth"
    small.write_bytes(b"x" * 1000)  # shorter than 1 MiB: A1111 hashes an empty read
    assert legacy_hash(small) == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"


@pytest.mark.unit  # in a module of engine tests
def test_infer_config_reads_sdxl_variants_from_shapes():
    """An SDXL 'mid'-style ControlNet (no transformer layers in the second block) gets its own config."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    published = json.loads((ROOT / "pipelines/configs/controlnet-sdxl/config.json").read_text())
    variant = dict(published, transformer_layers_per_block=[0, 0, 1])
    with init_empty_weights():
        model = ControlNetModel.from_config(variant)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cfg = infer_config("sdxl", shapes)
    assert cfg["transformer_layers_per_block"][1:] == [0, 1] and cfg["attention_head_dim"] == [5, 10, 20]
    with init_empty_weights():
        rebuilt = ControlNetModel.from_config(cfg)
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes


# ---------------------------------------------------------------- a real-size SD 1.5 ControlNet, original layout


def test_real_size_sd15_original_layout_loads_offline(tmp_path, no_network):
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    from tests.test_single_file import write_sparse_safetensors

    config = json.loads((ROOT / "pipelines/configs/controlnet-sd15/config.json").read_text())
    with init_empty_weights():
        shapes = {k: list(v.shape) for k, v in ControlNetModel.from_config(config).state_dict().items()}
    specs = {k: (shape, torch.float16) for k, shape in to_original_layout(shapes).items()}
    assert "control_model.input_hint_block.14.weight" in specs and "control_model.zero_convs.11.0.weight" in specs
    cn = tmp_path / "ControlNet"
    cn.mkdir()
    path = cn / "control_v11p_sd15_canny.safetensors"
    marker = {"control_model.middle_block_out.0.bias": torch.arange(1280, dtype=torch.float16)}
    write_sparse_safetensors(path, specs, marker)
    assert path.stat().st_size > 700_000_000
    try:
        [info] = scan(tmp_path)
        assert (info.name, info.family, info.error) == ("control_v11p_sd15_canny", "sd15", None)
        model = load_controlnet(info, dtype=torch.float16, config_root=tmp_path)
        params = dict(model.named_parameters())
        assert not any(p.is_meta for p in params.values())  # every weight assigned from the file
        assert 360_000_000 < sum(p.numel() for p in params.values()) < 362_000_000
        assert torch.equal(params["controlnet_mid_block.bias"], marker["control_model.middle_block_out.0.bias"])
        assert model.config.cross_attention_dim == 768 and model.config.attention_head_dim == 8
        assert model.dtype == torch.float16 and no_network == []
    finally:
        path.unlink()
