"""First run with an empty models folder: the hub model that suits the hardware, the download size the UI shows
before the first Generate (the Hub's answer faked at the huggingface_hub boundary only), and the offline notice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub.hf_api import ModelInfo

from pipelines import discovery, first_run, hub
from pipelines.first_run import SD15, SD_TURBO, SDXL_BASE, Machine, recommended_model
from pipelines.hub import HubSizes, select_files
from pipelines.jobs import JobRunner
from pipelines.params.specs import PARAMS
from pipelines.settings import Settings
from pipelines.studio import BadRequest, Studio

pytestmark = pytest.mark.unit

GIB = 2**30

# stabilityai/stable-diffusion-xl-base-1.0 as the Hub lists it (model_info(files_metadata=True)), sizes in bytes
SDXL_FILES = {
    ".gitattributes": 1_683, "LICENSE.md": 14_076, "README.md": 8_576, "01.png": 4_608_613,
    "model_index.json": 609, "sd_xl_base_1.0.safetensors": 6_938_078_334,
    "sd_xl_base_1.0_0.9vae.safetensors": 6_938_078_334, "sd_xl_offset_example-lora_1.0.safetensors": 49_553_604,
    "scheduler/scheduler_config.json": 479,
    "text_encoder/config.json": 565, "text_encoder/flax_model.msgpack": 492_240_000,
    "text_encoder/model.fp16.safetensors": 246_144_152, "text_encoder/model.safetensors": 492_265_168,
    "text_encoder/openvino_model.bin": 492_242_672, "text_encoder/openvino_model.xml": 1_057_789,
    "text_encoder_2/config.json": 575, "text_encoder_2/flax_model.msgpack": 2_778_383_000,
    "text_encoder_2/model.fp16.safetensors": 1_389_382_176, "text_encoder_2/model.safetensors": 2_778_702_264,
    "tokenizer/merges.txt": 524_619, "tokenizer/special_tokens_map.json": 472,
    "tokenizer/tokenizer_config.json": 737, "tokenizer/vocab.json": 1_059_962,
    "tokenizer_2/merges.txt": 524_619, "tokenizer_2/special_tokens_map.json": 460,
    "tokenizer_2/tokenizer_config.json": 725, "tokenizer_2/vocab.json": 1_059_962,
    "unet/config.json": 1_680, "unet/diffusion_flax_model.msgpack": 10_270_040_000,
    "unet/diffusion_pytorch_model.fp16.safetensors": 5_135_149_760,
    "unet/diffusion_pytorch_model.safetensors": 10_270_077_736,
    "unet/openvino_model.bin": 10_269_953_360, "unet/openvino_model.xml": 2_349_005,
    "vae/config.json": 642, "vae/diffusion_flax_model.msgpack": 334_623_000,
    "vae/diffusion_pytorch_model.fp16.safetensors": 167_335_342,
    "vae/diffusion_pytorch_model.safetensors": 334_643_268,
    "vae_1_0/config.json": 674, "vae_1_0/diffusion_pytorch_model.fp16.safetensors": 167_335_342,
    "vae_decoder/config.json": 607, "vae_decoder/model.onnx": 198_079_601,
}
SMALL = [f for f in SDXL_FILES if f.endswith((".json", ".txt")) and "/" in f or f == "model_index.json"]


def hub_answer(files: dict[str, int]) -> ModelInfo:
    """What huggingface_hub returns for model_info(files_metadata=True): parsed by its own ModelInfo class."""
    siblings = [{"rfilename": name, "size": size} for name, size in files.items()]
    return ModelInfo(id="stabilityai/stable-diffusion-xl-base-1.0", siblings=siblings)


@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi.model_info answers from SDXL_FILES (or raises `error`); records each call."""
    import huggingface_hub

    calls: list[dict] = []
    state = SimpleNamespace(error=None, files=SDXL_FILES)

    def model_info(self, repo_id, **kw):
        calls.append({"repo": repo_id, "endpoint": self.endpoint, **kw})
        if state.error is not None:
            raise state.error
        return hub_answer(state.files)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    state.calls = calls
    return state


# -- the hardware rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("device, memory, expected", [
    ("cpu", 8 * GIB, SD_TURBO), ("cpu", 256 * GIB, SD_TURBO),  # the CPU: the few-step model, whatever the RAM
    ("cuda", 80 * GIB, SDXL_BASE), ("cuda", 24 * GIB, SDXL_BASE), ("cuda", 8 * GIB, SDXL_BASE),
    ("cuda", int(7.8 * GIB), SDXL_BASE),  # an "8 GB" card reports a little less
    ("cuda", 6 * GIB, SD15), ("cuda", 4 * GIB, SD15), ("cuda", 2 * GIB, SD15),
    ("mps", 32 * GIB, SDXL_BASE), ("mps", 16 * GIB, SDXL_BASE), ("mps", 8 * GIB, SD15),  # unified memory
])
def test_recommended_model_suits_the_hardware(device, memory, expected):
    assert recommended_model(device, memory) == expected
    assert Machine(device, memory, fp16=device != "cpu").recommended == expected


def test_sd_turbo_is_a_512_px_distilled_sd2_model(tmp_path):
    assert discovery.HUB_FAMILIES[SD_TURBO] == ("sd2", None)
    (turbo,) = discovery.scan(tmp_path / "models", [SD_TURBO], hub_cache=tmp_path / "hub-cache")
    assert (turbo.source, turbo.family, turbo.native, turbo.distilled, turbo.path) == ("hub", "sd2", 512, True, None)
    assert discovery.FAMILIES["sd2"].prediction == "epsilon"
    # an sd_turbo.safetensors single file is the same 512 px epsilon model, not the 768 px v-prediction SD 2.1
    assert not discovery._is_v_parameterization(None, None, "sd_turbo.safetensors")
    assert discovery._is_v_parameterization(None, None, "v2-1_768-ema-pruned.safetensors")


# -- the download size ------------------------------------------------------------------------------


def test_download_size_counts_exactly_the_files_the_loader_fetches(fake_hub):
    sizes = HubSizes("https://huggingface.co")
    half = sizes.size(SDXL_BASE, fp16=True)
    weights_fp16 = ["text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                    "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert set(half.files) == set(SMALL) | set(weights_fp16)
    assert list(half.files) == select_files(list(SDXL_FILES), fp16=True)  # the loader's selection rule itself
    assert half.bytes == sum(SDXL_FILES[f] for f in (*SMALL, *weights_fp16))
    assert half.error is None and half.text == "~6.9 GB"
    assert fake_hub.calls == [{"repo": SDXL_BASE, "endpoint": "https://huggingface.co", "files_metadata": True,
                               "timeout": 10}]

    full = sizes.size(SDXL_BASE, fp16=False)  # fp32 (the CPU): the full-precision files
    weights_fp32 = [f.replace(".fp16", "") for f in weights_fp16]
    assert set(full.files) == set(SMALL) | set(weights_fp32)
    assert full.bytes == sum(SDXL_FILES[f] for f in (*SMALL, *weights_fp32)) and full.text == "~13.9 GB"

    assert sizes.size(SDXL_BASE, fp16=True) is half and len(fake_hub.calls) == 2  # asked once per variant
    assert half.to_dict()["size"] == "~6.9 GB" and half.to_dict()["bytes"] == half.bytes


@pytest.mark.engine  # imports torch
def test_the_engine_selection_is_the_same_rule():
    torch = pytest.importorskip("torch")
    from pipelines.engine.loading import hub_allow_patterns

    for dtype, fp16 in ((torch.float16, True), (torch.float32, False), (torch.bfloat16, False)):
        assert hub_allow_patterns(list(SDXL_FILES), dtype) == select_files(list(SDXL_FILES), fp16=fp16)


def test_download_size_errors_are_said_plainly_and_retried_later(fake_hub):
    fake_hub.error = OSError("Connection refused")
    sizes = HubSizes("https://huggingface.co", retry_after=300)
    answer = sizes.size(SDXL_BASE, fp16=True)
    assert answer.bytes is None and answer.text == ""
    assert answer.error == "could not ask the Hugging Face Hub (Connection refused)"
    assert sizes.size(SDXL_BASE, fp16=True) is answer and len(fake_hub.calls) == 1  # not asked again at once
    sizes.retry_after = 0
    fake_hub.error = None
    assert sizes.size(SDXL_BASE, fp16=True).text == "~6.9 GB" and len(fake_hub.calls) == 2

    fake_hub.files = {"README.md": 10, "model.safetensors": 5 * 10**9}  # not a diffusers repo
    assert "not a diffusers repository" in HubSizes("https://x").size("a/b", fp16=True).error


def test_offline_nothing_is_asked(fake_hub):
    answer = HubSizes(None).size(SDXL_BASE, fp16=True)
    assert answer.bytes is None and "offline" in answer.error and fake_hub.calls == []


def test_sizes_are_shown_in_decimal_units():
    assert [hub.human_size(n) for n in (6_938_011_430, 335_000_000, 2_000)] == ["6.9 GB", "335 MB", "2 kB"]


# -- the studio: listed, selected, explained ----------------------------------------------------------


def make_studio(tmp_path: Path, machine: Machine | None, endpoint: str | None = None, **settings) -> Studio:
    s = Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", hub_endpoint=endpoint,
                 styles_file=tmp_path / "styles.csv", **settings)
    return Studio(s, JobRunner(), engine=None, machine=machine)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache: no hub model counts as downloaded because this machine has it."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_empty_folder_selects_the_recommended_model_and_explains_offline(tmp_path, hub_cache, fake_hub):
    studio = make_studio(tmp_path, Machine("cpu", 16 * GIB, fp16=False), ckpt_dir=tmp_path / "elsewhere")
    names = [m.name for m in studio.models()]
    assert SD_TURBO in names and set(Settings().hub_models) <= set(names)  # offered besides the defaults
    assert studio.current_model().name == SD_TURBO
    assert studio.hint_context().distilled and studio.hint_context().native == 512
    steps = {b.verdict: (b.lo, b.hi) for b in PARAMS["steps"].bands_for(studio.hint_context())}
    assert steps["best"] == (1, 8)  # the advisor judges it as the few-step model it is

    facts = studio.first_run()
    folder = str((tmp_path / "elsewhere").absolute())  # --ckpt-dir moves it
    assert (facts["model"], facts["downloaded"], facts["offline"], facts["recommended"]) == (SD_TURBO, False, True, SD_TURBO)
    assert facts["checkpoints_dir"] == folder and facts["local_checkpoints"] == 0
    assert folder in facts["notice"] and ".safetensors" in facts["notice"] and ".ckpt" in facts["notice"]
    assert "diffusers folder" in facts["notice"] and fake_hub.calls == []
    with pytest.raises(BadRequest, match="offline") as err:  # what a Generate gets, before anything is queued
        studio.usable_model()
    assert folder in str(err.value) and ".safetensors" in str(err.value)


def test_online_notice_gives_the_download_size(tmp_path, hub_cache, fake_hub):
    studio = make_studio(tmp_path, Machine("cuda", 24 * GIB, fp16=True), endpoint="https://huggingface.co")
    assert studio.current_model().name == SDXL_BASE
    facts = studio.first_run()
    assert facts["notice"] == f"{SDXL_BASE} is not downloaded yet: ~6.9 GB will be downloaded on the first Generate."
    assert facts["download"]["bytes"] == studio.hub_sizes.size(SDXL_BASE, fp16=True).bytes
    assert studio.usable_model().name == SDXL_BASE  # online: the Generate downloads it
    fake_hub.error = TimeoutError("read timed out")
    other = studio.first_run(SD15)
    assert other["download"]["bytes"] is None
    assert other["notice"] == (f"{SD15} is not downloaded yet: it will be downloaded on the first Generate (download "
                               "size unknown: could not ask the Hugging Face Hub (read timed out)).")


def put_checkpoint(tmp_path: Path, name: str = "mine") -> None:
    """A diffusers folder in models/Stable-diffusion (only what discovery reads: an SD 1.x UNet config)."""
    folder = tmp_path / "models" / "Stable-diffusion" / name
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text('{"cross_attention_dim": 768, "sample_size": 64}')


def test_a_local_checkpoint_wins_and_needs_no_notice(tmp_path, hub_cache, fake_hub):
    put_checkpoint(tmp_path)
    studio = make_studio(tmp_path, Machine("cpu", 16 * GIB, fp16=False))
    assert studio.current_model().name == "mine"
    facts = studio.first_run()
    assert facts["downloaded"] and facts["notice"] == "" and facts["local_checkpoints"] == 1
    assert SD_TURBO in [m.name for m in studio.models()]  # still offered


def test_a_checkpoint_put_into_the_folder_replaces_the_first_run_pick(tmp_path, hub_cache):
    studio = make_studio(tmp_path, Machine("cpu", 16 * GIB, fp16=False))
    asked = make_studio(tmp_path, Machine("cpu", 16 * GIB, fp16=False), ckpt=SD15)  # --ckpt: kept
    assert (studio.current_model().name, asked.current_model().name) == (SD_TURBO, SD15)
    put_checkpoint(tmp_path)
    studio.refresh_models()  # the 🔄 button
    asked.refresh_models()
    assert (studio.current_model().name, asked.current_model().name) == ("mine", SD15)
    assert studio.first_run()["notice"] == ""


def test_no_machine_no_recommendation_and_nothing_listed(tmp_path, hub_cache):
    studio = make_studio(tmp_path, None, hub_models=())
    assert studio.models() == [] and studio.first_run()["notice"] == first_run.no_model_text(studio.checkpoints_folder())


# -- while it downloads -------------------------------------------------------------------------------


@pytest.mark.engine  # imports torch
@pytest.mark.parametrize("disable", [True, False])
def test_download_progress_forwards_the_bytes_written_against_the_expected_total(disable):
    """snapshot_download drives three bars with the loader's tqdm class (bytes received, bytes written, files):
    the bytes written reach the job's progress, against the size the UI announced."""
    import io

    from pipelines.engine.loading import _tqdm_to

    seen: list[tuple[str, int, int]] = []
    cls = _tqdm_to(lambda label, done, total: seen.append((label, done, total)), "download a/b", expected=1000)
    quiet = dict(disable=disable, file=io.StringIO())
    transfer = cls(desc="Downloading bytes", total=0, unit="B", **quiet)
    written = cls(desc="Reconstructing (incomplete total...)", total=0, unit="B", **quiet)
    files = cls(desc="Fetching 3 files", total=3, **quiet)
    written.total = 400  # grows as each file starts
    written.update(100)
    transfer.update(150)
    files.update(1)
    written.update(300)
    assert seen == [("download a/b", 100, 1000), ("download a/b", 400, 1000)]


@pytest.mark.engine  # imports torch
def test_offline_load_of_a_hub_id_names_the_checkpoints_folder(tmp_path, hub_cache, no_network):
    import torch

    from pipelines.engine.loading import LoadError, load_components

    info = discovery.CheckpointInfo(name=SD_TURBO, source="hub", hub_id=SD_TURBO)
    folder = tmp_path / "my-checkpoints"
    with pytest.raises(LoadError, match="offline") as err:
        load_components(info, dtype=torch.float32, config_root=tmp_path, checkpoints_dir=folder, offline=True)
    assert str(folder) in str(err.value) and ".safetensors or .ckpt file, or a diffusers folder" in str(err.value)
    assert no_network == []


def test_the_ui_shows_download_progress_in_bytes():
    from ui.generation import step_text
    from ui.topbar import download_note

    ev = SimpleNamespace(label=f"download {SD_TURBO}", step=1_300_000_000, total=5_200_000_000, it_per_s=35e6,
                         eta_s=111.0)
    assert download_note(ev) == f"Downloading {SD_TURBO}: 1.3 GB of 5.2 GB · 35 MB/s · ETA 2 min"
    assert step_text(ev) == download_note(ev)
    steps = SimpleNamespace(label="image 1/1", step=3, total=20, it_per_s=2.0, eta_s=8.5)
    assert download_note(steps) is None and step_text(steps).startswith("Step 3/20")
