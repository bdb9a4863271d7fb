"""Model discovery: scanning models/Stable-diffusion, family detection from weights, hashes, safe paths.

Also loads the tiny diffusers folders (and a hub snapshot in a private HF cache) with `load_components`,
since they are built here anyway. Everything is local: no network.
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
from safetensors.torch import save_file

from pipelines import discovery
from pipelines.discovery import CheckpointInfo, ensure_hash, resolve_model_path, scan, sha256_of

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

REPO = Path(__file__).resolve().parents[1]
U = "model.diffusion_model."
SD1_TE = "cond_stage_model.transformer.text_model."
SD2_TE = "cond_stage_model.model."
XL_TE1 = "conditioner.embedders.0.transformer.text_model."
XL_TE2 = "conditioner.embedders.1.model."


def _z(*shape):
    return torch.zeros(shape, dtype=torch.float16)


def _ldm(in_channels=4, width=768, extra=None):
    """A tiny checkpoint with original-layout (LDM) key names; only the shapes that matter are real-sized."""
    t = {U + "input_blocks.0.0.weight": _z(8, in_channels, 3, 3),
         U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": _z(8, width),
         U + "out.2.weight": _z(4, 8, 3, 3), "first_stage_model.encoder.conv_in.weight": _z(8, 3, 3, 3)}
    t.update(extra or {})
    return t


SD1 = {SD1_TE + "embeddings.token_embedding.weight": _z(16, 8),
       SD1_TE + "encoder.layers.0.self_attn.k_proj.weight": _z(8, 8)}
SD2 = {SD2_TE + "token_embedding.weight": _z(16, 8), SD2_TE + "transformer.resblocks.0.attn.in_proj_weight": _z(24, 8)}
XL = {XL_TE1 + "embeddings.token_embedding.weight": _z(16, 8),
      XL_TE2 + "transformer.resblocks.0.attn.in_proj_weight": _z(24, 8), U + "label_emb.0.0.weight": _z(8, 2816)}

# name -> (family, native, inpainting) expected for the hand-written single files
EXPECTED_FILES = {
    "sd1-inpainting.safetensors": ("sd15-inpaint", 512, True),
    "sd1/dreamy_v3.safetensors": ("sd15", 512, False),
    "sd2/v2-1_768-ema-pruned.safetensors": ("sd2-v", 768, False),
    "sd2/v2-1_512-ema-pruned.safetensors": ("sd2", 512, False),
    "sd2/anime-v.safetensors": ("sd2-v", 768, False),  # sidecar yaml says parameterization: "v"
    "sd2/photo-eps.safetensors": ("sd2", 512, False),  # sidecar yaml without parameterization
    "sd2/base-step.ckpt": ("sd2", 512, False),  # global_step 875000 (diffusers' rule), name gives no hint
    "sd2/512-inpainting-ema.safetensors": ("sd2-inpaint", 512, True),
    "sdxl/juggernaut-lightning-4step.safetensors": ("sdxl", 1024, False),
    "sdxl/xl-inpaint.safetensors": ("sdxl-inpaint", 1024, True),
    "sdxl/unet-only.safetensors": ("sdxl", 1024, False),  # no text encoders: UNet widths decide
}
BAD_FILES = ("broken.safetensors", "truncated.safetensors", "evil.ckpt", "lora.safetensors")


class Evil:
    """Pickles to code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_store) -> Path:
    models = tmp_path_factory.mktemp("models")
    sd = models / "Stable-diffusion"
    shutil.copytree(tiny_store / "tiny-sd15", sd / "tiny-sd15")  # the session's tiny models, built once
    shutil.copytree(tiny_store / "tiny-sd15-inpainting", sd / "tiny-sd15-inpaint")
    shutil.copytree(tiny_store / "tiny-sdxl", sd / "sub" / "tiny-sdxl")
    for d in ("sd1", "sd2", "sdxl", ".trash"):
        (sd / d).mkdir(parents=True, exist_ok=True)
    save_file(_ldm(9, extra=SD1), sd / "sd1-inpainting.safetensors")
    save_file(_ldm(extra=SD1), sd / "sd1" / "dreamy_v3.safetensors")
    for name in ("v2-1_768-ema-pruned", "v2-1_512-ema-pruned", "anime-v", "photo-eps"):
        save_file(_ldm(width=1024, extra=SD2), sd / "sd2" / f"{name}.safetensors")
    (sd / "sd2" / "anime-v.yaml").write_text('model:\n  params:\n    parameterization: "v"\n    timesteps: 1000\n')
    (sd / "sd2" / "photo-eps.yaml").write_text("model:\n  params:\n    timesteps: 1000\n")
    torch.save({"state_dict": _ldm(width=1024, extra=SD2), "global_step": 875000}, sd / "sd2" / "base-step.ckpt")
    save_file(_ldm(9, width=1024, extra=SD2), sd / "sd2" / "512-inpainting-ema.safetensors")
    save_file(_ldm(width=2048, extra=XL), sd / "sdxl" / "juggernaut-lightning-4step.safetensors")
    save_file(_ldm(9, width=2048, extra=XL), sd / "sdxl" / "xl-inpaint.safetensors")
    save_file(_ldm(width=2048, extra={U + "label_emb.0.0.weight": _z(8, 2816)}), sd / "sdxl" / "unet-only.safetensors")
    # files that must not break the scan
    (sd / "broken.safetensors").write_bytes(os.urandom(4096))
    whole = (sd / "sd1" / "dreamy_v3.safetensors").read_bytes()
    (sd / "truncated.safetensors").write_bytes(whole[: len(whole) - 100])
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": Evil()}, sd / "evil.ckpt")
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": _z(4, 8)}, sd / "lora.safetensors")
    # files that must not be listed
    save_file(_ldm(extra=SD1), sd / ".hidden.safetensors")
    save_file(_ldm(extra=SD1), sd / ".trash" / "old.safetensors")
    (sd / "notes.txt").write_text("not a model")
    return models


@pytest.fixture(scope="module")
def infos(models) -> dict[str, CheckpointInfo]:
    return {i.name: i for i in scan(models)}


def test_scan_lists_checkpoints_sorted_and_skips_hidden(infos):
    expected = {"tiny-sd15", "tiny-sd15-inpaint", "sub/tiny-sdxl", *EXPECTED_FILES, *BAD_FILES}
    assert set(infos) == expected
    names = list(infos)
    assert names == sorted(names, key=str.lower)


def test_diffusers_folders_classified_by_structure(infos):
    sd15, inpaint, sdxl = infos["tiny-sd15"], infos["tiny-sd15-inpaint"], infos["sub/tiny-sdxl"]
    assert (sd15.source, sd15.family, sd15.native, sd15.inpainting) == ("folder", "sd15", 64, False)
    assert (inpaint.family, inpaint.native, inpaint.inpainting) == ("sd15-inpaint", 64, True)
    assert (sdxl.family, sdxl.native, sdxl.inpainting) == ("sdxl", 64, False)
    assert sdxl.model_name == "tiny-sdxl" and sdxl.path.name == "tiny-sdxl"


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_single_file_family_from_weights(infos, name):
    info = infos[name]
    assert info.error is None
    assert (info.family, info.native, info.inpainting) == EXPECTED_FILES[name]
    assert info.source == "file" and info.path.is_file()


def test_bad_files_are_listed_with_an_error(infos):
    for name in BAD_FILES:
        assert infos[name].family == "unknown" and infos[name].error, name
    assert "truncated" in infos["truncated.safetensors"].error
    assert "not a plain tensor checkpoint" in infos["evil.ckpt"].error
    assert "no UNet" in infos["lora.safetensors"].error


def test_detect_family_raises_clear_errors(models):
    with pytest.raises(ValueError, match="safetensors"):
        discovery.detect_family(models / "Stable-diffusion" / "broken.safetensors")
    with pytest.raises(ValueError, match="refiner"):
        discovery.classify_weights({U + "input_blocks.0.0.weight": (8, 4, 3, 3),
                                    "conditioner.embedders.0.model.ln_final.weight": (8,)})
    assert discovery.detect_family(models / "Stable-diffusion" / "tiny-sd15") == ("sd15", 64, False)


def test_names_titles_and_distilled_guess(infos):
    xl = infos["sdxl/juggernaut-lightning-4step.safetensors"]
    assert xl.model_name == "juggernaut-lightning-4step" and xl.distilled
    assert not infos["sd1/dreamy_v3.safetensors"].distilled
    assert xl.title == xl.name and xl.short_hash is None  # nothing hashed during a scan
    assert discovery.FAMILIES["sdxl"].sdxl and discovery.FAMILIES["sd2-v"].prediction == "v_prediction"


def test_hash_is_cached_by_path_size_and_mtime(models, tmp_path):
    src = models / "Stable-diffusion" / "sd1" / "dreamy_v3.safetensors"
    path = tmp_path / "Stable-diffusion" / "model.safetensors"
    path.parent.mkdir()
    shutil.copy(src, path)
    cache = tmp_path / ".cache" / "hashes.json"
    real = hashlib.sha256(path.read_bytes()).hexdigest()

    info = scan(tmp_path)[0]
    assert ensure_hash(info, cache) == real
    assert info.short_hash == real[:10] and info.title == f"model.safetensors [{real[:10]}]"
    entry = json.loads(cache.read_text())[str(path.resolve())]
    assert entry == {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns, "sha256": real}

    # a second call takes the cached value without reading the file: prove it with a planted value
    data = json.loads(cache.read_text())
    data[str(path.resolve())]["sha256"] = "f" * 64
    cache.write_text(json.dumps(data))
    assert sha256_of(path, cache) == "f" * 64
    assert scan(tmp_path, hash_cache=cache)[0].short_hash == "f" * 10  # scan fills known hashes in

    # a changed mtime invalidates the entry
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert sha256_of(path, cache) == real
    assert json.loads(cache.read_text())[str(path.resolve())]["sha256"] == real


def test_folder_hash_is_the_unet_weights(models):
    folder = models / "Stable-diffusion" / "tiny-sd15"
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert sha256_of(folder) == hashlib.sha256(unet.read_bytes()).hexdigest()
    assert ensure_hash(CheckpointInfo(name="x/y", source="hub", hub_id="x/y")) is None  # not downloaded


def test_names_are_checked_and_owner_symlinks_are_followed(models, tmp_path):
    root = models / "Stable-diffusion"
    assert resolve_model_path(root, "sd1/dreamy_v3.safetensors") == root / "sd1" / "dreamy_v3.safetensors"
    assert resolve_model_path(root, "sd1\\dreamy_v3.safetensors") == root / "sd1" / "dreamy_v3.safetensors"
    for bad in ("../secret.safetensors", "sd1/../../x", "/etc/passwd", "C:\\models\\x.ckpt", "", "a\x00b"):
        with pytest.raises(ValueError, match="invalid"):
            resolve_model_path(root, bad)

    # a file and a folder the owner linked in from a shared tree are listed and classified like local ones
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(root / "sd1" / "dreamy_v3.safetensors", shared / "outside.safetensors")
    (shared / "more").mkdir()
    shutil.copy(root / "sd1" / "dreamy_v3.safetensors", shared / "more" / "deep.safetensors")
    (shared / "more" / "loop").symlink_to(shared, target_is_directory=True)  # a link loop ends
    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Stable-diffusion" / "link.safetensors").symlink_to(shared / "outside.safetensors")
    (tmp_path / "Stable-diffusion" / "linked-dir").symlink_to(shared / "more", target_is_directory=True)
    infos = {i.name: i for i in scan(tmp_path)}
    assert set(infos) == {"link.safetensors", "linked-dir/deep.safetensors", "linked-dir/loop/outside.safetensors"}
    assert all(i.family == "sd15" and not i.error for i in infos.values()), infos


def _fake_hf_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay out a hub snapshot the way huggingface_hub caches it (refs/main -> snapshots/<commit>)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(folder, snapshot)
    return snapshot


def test_hub_ids_known_table_and_local_cache(models, tmp_path):
    snapshot = _fake_hf_cache(tmp_path, "tiny/sd15", models / "Stable-diffusion" / "tiny-sd15")
    found = {i.name: i for i in scan(models, ["stabilityai/sdxl-turbo", "stabilityai/stable-diffusion-2-1",
                                              "tiny/sd15", "someone/unknown-model"], hub_cache=tmp_path)}
    turbo = found["stabilityai/sdxl-turbo"]
    assert (turbo.source, turbo.family, turbo.native, turbo.distilled, turbo.path) == ("hub", "sdxl", 512, True, None)
    assert (found["stabilityai/stable-diffusion-2-1"].family, found["stabilityai/stable-diffusion-2-1"].native) == ("sd2-v", 768)
    assert found["someone/unknown-model"].family == "unknown"
    tiny = found["tiny/sd15"]
    assert (tiny.family, tiny.native, tiny.path, tiny.model_name) == ("sd15", 64, snapshot, "sd15")


def test_find_checkpoint_by_name_title_or_hash(infos):
    info = infos["sd1/dreamy_v3.safetensors"]
    listed = list(infos.values())
    assert discovery.find_checkpoint(listed, "sd1/dreamy_v3.safetensors") is info
    assert discovery.find_checkpoint(listed, "dreamy_v3") is info
    assert discovery.find_checkpoint(listed, "nope") is None


def test_discovery_does_not_import_torch():
    code = "import sys, pipelines.discovery; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---------------------------------------------------------------- loading the diffusers folders


def test_load_tiny_folders(infos, tmp_path, no_network):
    from pipelines.engine.loading import load_components

    seen = []
    sd15 = load_components(infos["tiny-sd15"], dtype=torch.float32, config_root=tmp_path,
                           progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert sd15.family == "sd15" and sd15.text_encoder_2 is None and sd15.tokenizer_2 is None
    assert set(sd15.modules()) == {"unet", "vae", "text_encoder"}
    assert sd15.unet.dtype == torch.float32 and sd15.scheduler_config["prediction_type"] == "epsilon"
    assert seen[-1][1] == seen[-1][2] > 0

    xl = load_components(infos["sub/tiny-sdxl"], dtype=torch.float32, config_root=tmp_path)
    assert xl.family == "sdxl" and set(xl.modules()) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert xl.tokenizer_2("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert no_network == []


def test_load_cached_hub_snapshot_offline(models, tmp_path, no_network):
    from pipelines.engine.loading import load_components

    _fake_hf_cache(tmp_path, "tiny/inpaint", models / "Stable-diffusion" / "tiny-sd15-inpaint")
    [info] = scan(tmp_path / "no-models", ["tiny/inpaint"], hub_cache=tmp_path)
    parts = load_components(info, dtype=torch.float32, config_root=tmp_path / "configs")
    assert parts.family == "sd15-inpaint" and parts.unet.config.in_channels == 9
    assert no_network == []
