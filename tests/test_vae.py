"""VAE choice, A1111's rules (sd_vae): listing, Automatic / None / a named file, loading the original layout with the
checkpoint's VAE config, the component cache (a VAE switch keeps the UNet), the infotext, the advisor's fp16 rule,
and the API (sd-vae, refresh-vae, options, override_settings, the X/Y/Z plot's VAE axis).

The reference for "same image": a copy of the tiny SD 1.5 folder whose vae/ holds the other VAE's weights with the
model's own VAE config, which is what A1111 makes of a VAE file (it loads the weights into the model's VAE)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from pipelines import discovery
from pipelines.discovery import CheckpointInfo
from pipelines.errors import BadRequest
from pipelines.folders import ModelFolders
from pipelines.networks.vaes import VaeFile, VaeLibrary, scan
from pipelines.params.infotext import parse_infotext
from pipelines.params.specs import Img2ImgParams, Txt2ImgParams
from tests.conftest import TEST_DEVICE, TEST_PRECISION, Server
from tests.tiny_models import _vae, build_vae_file

pytestmark = pytest.mark.engine  # tiny models on the CPU; the listing and API tests carry their own marker

VAE = "tiny-vae-1.safetensors"  # the other VAE (seed 1), original layout, in models/VAE
BASE = {"prompt": "a red cube on a table", "steps": 2, "seed": 5, "width": 64, "height": 64, "sampler_name": "Euler"}


def with_vae(tiny_store: Path, dest: Path) -> Path:
    """A copy of tiny-sd15 whose vae/ holds the seed-1 VAE's weights under the model's own VAE config."""
    from diffusers import AutoencoderKL

    shutil.copytree(tiny_store / "tiny-sd15", dest)
    own = AutoencoderKL.load_config(str(dest / "vae"))
    vae = _vae(seed=1)
    vae.register_to_config(scaling_factor=own["scaling_factor"])
    shutil.rmtree(dest / "vae")
    vae.save_pretrained(str(dest / "vae"), safe_serialization=True)
    return dest


@pytest.fixture(scope="module")
def vworld(tiny_store, tmp_path_factory):
    """An engine over: tiny-sd15, tiny-sd15-vae1 (its VAE replaced), tiny-auto (a copy with tiny-auto.vae.safetensors
    beside it), tiny-sdxl, and models/VAE holding the seed-1 VAE as an original-layout file."""
    from pipelines.engine import devices
    from pipelines.engine.generate import Engine
    from pipelines.engine.manager import ModelManager
    from pipelines.jobs import JobRunner
    from pipelines.outputs import OutputWriter

    root = tmp_path_factory.mktemp("vae")
    models = root / "models"
    ckpts = models / "Stable-diffusion"
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-sd15")
    shutil.copytree(tiny_store / "tiny-sd15", ckpts / "tiny-auto")
    shutil.copytree(tiny_store / "tiny-sdxl", ckpts / "tiny-sdxl")
    with_vae(tiny_store, ckpts / "tiny-sd15-vae1")
    build_vae_file(ckpts / "tiny-auto.vae.safetensors", seed=1)
    build_vae_file(models / "VAE" / VAE, seed=1)
    build_vae_file(models / "VAE" / "tiny-vae-2.safetensors", seed=2)
    folders = ModelFolders.under(models)
    cache = models / ".cache" / "hashes.json"
    infos = {i.name: i for i in discovery.scan(models)}
    hw = devices.resolve(TEST_DEVICE, TEST_PRECISION)
    manager = ModelManager(device=hw.device, device_budget=2**30, cpu_budget=0)
    engine = Engine(hw, manager, OutputWriter(root / "outputs"), config_root=models / ".cache" / "configs",
                    hash_cache=cache, models_dir=models, preview_every=0, vaes=VaeLibrary(folders, cache))
    runner = JobRunner().start()
    yield {"engine": engine, "runner": runner, "infos": infos, "models": models, "manager": manager}
    runner.stop()


def txt2img(w, model: str, **params):
    p = Txt2ImgParams(**{**BASE, **params})
    return w["runner"].submit(lambda ctx: w["engine"].txt2img(ctx, p, w["infos"][model])).wait(180)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def same(a: Image.Image, b: Image.Image) -> bool:
    return int(np.abs(pixels(a) - pixels(b)).max()) <= 1


def sha10(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


# -- the original-layout file ---------------------------------------------------------------------------------------

def test_the_original_layout_file_loads_back_as_the_same_vae(vworld, tmp_path):
    """The test helper's diffusers -> original conversion, checked through diffusers' own loading (and our loader:
    the checkpoint's config is kept, force_upcast off), for a prefixed file, a .ckpt pickle and a diffusers folder."""
    from safetensors.torch import load_file

    from pipelines.engine.vae import load_vae

    ref = _vae(seed=1).state_dict()
    base = _vae(seed=0)
    keys = load_file(str(vworld["models"] / "VAE" / VAE))
    assert "encoder.down.0.block.0.conv1.weight" in keys and keys["decoder.mid.attn_1.q.weight"].ndim == 4
    # the original layout counts decoder blocks from the full-size end: up.0 has no upsampler, up.3 has one
    assert "decoder.up.0.upsample.conv.weight" not in keys and "decoder.up.3.upsample.conv.weight" in keys

    prefixed = build_vae_file(tmp_path / "prefixed.safetensors", seed=1, prefix="first_stage_model.")
    pickle = tmp_path / "nested.ckpt"
    torch.save({"state_dict": load_file(str(vworld["models"] / "VAE" / VAE)), "global_step": 840000}, pickle)
    folder = tmp_path / "folder-vae"
    _vae(seed=1).save_pretrained(str(folder), safe_serialization=True)
    diffusers_file = build_vae_file(tmp_path / "diffusers-layout.safetensors", seed=1, original_layout=False)
    for path in (vworld["models"] / "VAE" / VAE, prefixed, pickle, diffusers_file, folder):
        model = load_vae(VaeFile(path.name, path), base.config, dtype=torch.float32, config_root=tmp_path / "cfg")
        got = model.state_dict()
        assert set(got) == set(ref), path.name
        assert all(torch.equal(got[k], ref[k]) for k in ref), path.name
        if path is not folder:  # a file takes the checkpoint's config; a folder has its own
            assert model.config.scaling_factor == base.config.scaling_factor and model.config.force_upcast is False


def test_a_pickle_with_code_or_a_broken_file_is_refused_with_its_name(vworld, tmp_path):
    from pipelines.engine.loading import LoadError
    from pipelines.engine.vae import load_vae

    base = _vae(seed=0)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "callback": Path("x")}, evil)  # a pickled object: weights_only refuses it
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((vworld["models"] / "VAE" / VAE).read_bytes()[:4096])
    for path in (evil, cut):
        with pytest.raises(LoadError, match=f"Could not load VAE {path.name}"):
            load_vae(VaeFile(path.name, path), base.config, dtype=torch.float32, config_root=tmp_path / "cfg")


# -- choosing -------------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_listing_names_and_automatic_beside_a_single_file_checkpoint(tmp_path):
    models = tmp_path / "models"
    ckpts, vae_dir = models / "Stable-diffusion", models / "VAE"
    (ckpts / "sub").mkdir(parents=True)
    (vae_dir / "folder-vae").mkdir(parents=True)
    for path in (ckpts / "sub" / "my-model.safetensors", ckpts / "sub" / "my-model.vae.pt",
                 ckpts / "sub" / "my-model.vae.safetensors", ckpts / "sub" / "my-model-2.vae.ckpt",
                 vae_dir / "vae-ft-mse-840000-ema-pruned.safetensors", vae_dir / "kl-f8-anime2.ckpt",
                 vae_dir / "notes.txt", vae_dir / "folder-vae" / "diffusion_pytorch_model.safetensors"):
        path.write_bytes(b"x")
    (vae_dir / "folder-vae" / "config.json").write_text("{}")
    (vae_dir / "no-weights").mkdir()
    (vae_dir / "no-weights" / "config.json").write_text("{}")
    lib = VaeLibrary(ModelFolders.under(models))
    assert [v.name for v in lib.list()] == ["folder-vae", "kl-f8-anime2.ckpt", "my-model-2.vae.ckpt", "my-model.vae.pt",
                                            "my-model.vae.safetensors", "vae-ft-mse-840000-ema-pruned.safetensors"]
    assert lib.names()[:2] == ["Automatic", "None"]
    # A1111 keeps NAME.vae.* files out of the checkpoint list
    assert [i.name for i in discovery.scan(models)] == ["sub/my-model.safetensors"]

    single = CheckpointInfo("sub/my-model.safetensors", "file", ckpts / "sub" / "my-model.safetensors")
    assert lib.choose("Automatic", single) == VaeFile("my-model.vae.safetensors", ckpts / "sub" / "my-model.vae.safetensors")
    (ckpts / "sub" / "my-model.vae.safetensors").unlink()
    assert lib.choose(None, single).name == "my-model.vae.pt"  # empty = Automatic; .vae.pt next in A1111's order
    assert lib.choose("None", single) is None
    other = CheckpointInfo("other.safetensors", "file", ckpts / "other.safetensors")
    assert lib.choose("Automatic", other) is None  # nothing beside it: the checkpoint's own
    assert lib.choose("kl-f8-anime2.ckpt", other).path == vae_dir / "kl-f8-anime2.ckpt"
    assert lib.check("vae-ft-mse-840000-ema-pruned") == "vae-ft-mse-840000-ema-pruned.safetensors"  # stem
    assert lib.check("automatic") == "Automatic" and lib.check("NONE") == "None"
    with pytest.raises(ValueError, match=r"Unknown VAE 'nope'\. Available: Automatic, None, folder-vae, .*kl-f8"):
        lib.check("nope")
    with pytest.raises(ValueError, match="Unknown VAE"):
        lib.choose("nope", single)
    # --vae-dir points the listing elsewhere
    elsewhere = tmp_path / "shared-vaes"
    elsewhere.mkdir()
    (elsewhere / "sdxl-vae-fp16-fix.safetensors").write_bytes(b"x")
    assert [v.name for v in scan(ModelFolders.under(models, vae=elsewhere))] == ["my-model-2.vae.ckpt", "my-model.vae.pt",
                                                                              "sdxl-vae-fp16-fix.safetensors"]


@pytest.mark.unit
def test_infotext_keys_parse_back_and_send_to_keeps_the_vae_when_absent():
    from pipelines.params.infotext import build_infotext
    from pipelines.params.specs import TXT2IMG_FIELDS
    from ui.pnginfo_tab import txt2img_values

    text = build_infotext({**Txt2ImgParams(**BASE, sd_vae="Automatic").model_dump()}, seed=5, model_name="m",
                          model_hash="0123456789", extra={"VAE hash": "abcdef0123", "VAE": "a, b.safetensors",
                                                          "Version": "v"})
    assert "Model: m, VAE hash: abcdef0123, VAE: \"a, b.safetensors\", " in text and "VAE: Automatic" not in text
    parsed = parse_infotext(text)
    assert parsed["sd_vae"] == "a, b.safetensors" and parsed["extra"]["VAE hash"] == "abcdef0123"
    values = dict(zip(TXT2IMG_FIELDS, txt2img_values(parsed)))
    assert values["sd_vae"] == "a, b.safetensors"
    bare = dict(zip(TXT2IMG_FIELDS, txt2img_values(parse_infotext("a cat\nSteps: 20, Sampler: Euler, Seed: 1"))))
    assert values["clip_skip"] == 1 and not isinstance(bare["sd_vae"], str)  # absent: the dropdown stays as it is


# -- generating -----------------------------------------------------------------------------------------------------

def test_a_vae_file_gives_the_image_of_a_model_holding_that_vae(vworld):
    own = txt2img(vworld, "tiny-sd15", sd_vae="None")
    filed = txt2img(vworld, "tiny-sd15", sd_vae=VAE)
    folder = txt2img(vworld, "tiny-sd15-vae1", sd_vae="None")
    assert same(filed.images[0], folder.images[0])
    assert not same(filed.images[0], own.images[0])
    text = filed.infotexts[0]
    assert f"Model: tiny-sd15, VAE hash: {sha10(vworld['models'] / 'VAE' / VAE)}, VAE: {VAE}, " in text
    assert (filed.vae, filed.vae_hash) == (VAE, sha10(vworld["models"] / "VAE" / VAE))
    assert "VAE" not in own.infotexts[0] and own.vae is None
    assert parse_infotext(text)["sd_vae"] == VAE and filed.parameters["sd_vae"] == VAE
    # img2img encodes with the chosen VAE too
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    params = Img2ImgParams(**{**BASE, "denoising_strength": 0.5})

    def img2img(model: str, vae: str):
        p = params.model_copy(update={"sd_vae": vae})
        job = vworld["runner"].submit(lambda ctx: vworld["engine"].img2img(ctx, p, vworld["infos"][model], image))
        return job.wait(180).images[0]

    assert same(img2img("tiny-sd15", VAE), img2img("tiny-sd15-vae1", "None"))


def test_automatic_takes_the_vae_beside_the_checkpoint_and_none_the_baked_in_one(vworld):
    auto = txt2img(vworld, "tiny-auto", sd_vae="Automatic")
    baked = txt2img(vworld, "tiny-auto", sd_vae="None")
    assert same(auto.images[0], txt2img(vworld, "tiny-sd15", sd_vae=VAE).images[0])
    assert same(baked.images[0], txt2img(vworld, "tiny-sd15", sd_vae="None").images[0])
    beside = vworld["models"] / "Stable-diffusion" / "tiny-auto.vae.safetensors"
    assert f"VAE hash: {sha10(beside)}, VAE: tiny-auto.vae.safetensors" in auto.infotexts[0]
    assert "VAE" not in baked.infotexts[0]
    assert "VAE" not in txt2img(vworld, "tiny-sd15").infotexts[0]  # Automatic, nothing beside it: its own


def test_switching_the_vae_never_reloads_the_unet(vworld):
    manager = vworld["manager"]
    first = txt2img(vworld, "tiny-sd15", sd_vae=VAE).images[0]
    txt2img(vworld, "tiny-sd15", sd_vae="tiny-vae-2.safetensors")
    txt2img(vworld, "tiny-sd15", sd_vae="None")
    again = txt2img(vworld, "tiny-sd15", sd_vae=VAE).images[0]
    assert same(first, again)
    loads = [h["key"] for h in manager.history if h["action"] == "load"]
    assert sum(k.startswith("tiny-sd15@") and k.endswith("::unet") for k in loads) == 1, loads
    vae_loads = [k for k in loads if k.startswith(f"vae:{VAE}@")]
    assert len(vae_loads) == 1, loads  # cached like any component: the second use is a hit
    assert any(h["action"] == "hit" and h["key"] == vae_loads[0] for h in manager.history)
    assert not manager.pinned()  # nothing stays pinned after the jobs


def test_an_unknown_vae_fails_the_job_with_the_available_names(vworld):
    with pytest.raises(RuntimeError, match=rf"Unknown VAE 'nope\.safetensors'\. Available: Automatic, None, .*{VAE}"):
        txt2img(vworld, "tiny-sd15", sd_vae="nope.safetensors")


def test_offloading_memory_mode_and_sdxl_use_the_chosen_vae(vworld):
    """In a memory mode that offloads (on a GPU: the VAE file's module goes into the offload chain, not the
    checkpoint's) and on SDXL, whose decode reads the VAE config (force_upcast is off for a file)."""
    engine = vworld["engine"]
    low = txt2img(vworld, "tiny-sd15", sd_vae=VAE)
    engine.memory_mode = "low"
    try:
        assert same(txt2img(vworld, "tiny-sd15", sd_vae=VAE).images[0], low.images[0])
    finally:
        engine.memory_mode = "high"
    xl_own = txt2img(vworld, "tiny-sdxl", sd_vae="None")
    xl_file = txt2img(vworld, "tiny-sdxl", sd_vae=VAE)
    assert not same(xl_own.images[0], xl_file.images[0]) and f"VAE: {VAE}" in xl_file.infotexts[0]
    assert not vworld["manager"].pinned()


# -- the studio: options, checks before queueing, sweeps, advice ----------------------------------------------------

@pytest.fixture(scope="module")
def studio(vworld):
    from pipelines.settings import Settings
    from pipelines.studio import Studio

    settings = Settings(models_dir=vworld["models"], outputs_dir=vworld["models"].parent / "outputs", hub_models=(),
                        styles_file=vworld["models"].parent / "styles.csv")
    return Studio(settings, vworld["runner"], vworld["engine"], vaes=vworld["engine"].vaes)


def test_the_option_is_the_default_and_names_are_checked_before_queueing(studio, vworld):
    assert studio.options()["sd_vae"] == "Automatic"
    assert studio.vae_names() == ["Automatic", "None", "tiny-auto.vae.safetensors", VAE, "tiny-vae-2.safetensors"]
    with pytest.raises(BadRequest, match=rf"Unknown VAE 'nope'\. Available: .*{VAE}"):
        studio.set_options({"sd_vae": "nope"})
    with pytest.raises(BadRequest, match="Unknown VAE 'nope'"):
        studio.submit_txt2img({**BASE, "sd_vae": "nope"}, model="tiny-sd15")
    assert studio.runner.queue() == []  # refused before queueing
    studio.set_options({"sd_vae": "tiny-vae-1"})  # the stem is accepted, the option keeps the listed name
    try:
        assert studio.options()["sd_vae"] == VAE
        r = studio.submit_txt2img(dict(BASE), model="tiny-sd15").wait(180)
        assert r.parameters["sd_vae"] == VAE and f"VAE: {VAE}" in r.infotexts[0]
        r = studio.submit_txt2img({**BASE, "sd_vae": "None"}, model="tiny-sd15").wait(180)  # the request's wins
        assert "VAE" not in r.infotexts[0]
    finally:
        studio.set_options({"sd_vae": "Automatic"})


def test_the_sweep_has_a1111s_vae_axis(studio):
    assert studio.sweep_choices("VAE")[:3] == ["Automatic", "None", "tiny-auto.vae.safetensors"]
    with pytest.raises(BadRequest, match="'nope' is not a known vae"):
        studio.plan_sweep(dict(BASE), [("VAE", "None, nope")], model="tiny-sd15")
    result = studio.submit_sweep(dict(BASE), [("VAE", f"None, {VAE}")], model="tiny-sd15").wait(300)
    cells = [c.result for c in result.cells]
    assert ["VAE" in c.infotexts[0] for c in cells] == [False, True]
    assert result.plan.axes[0].labels == ["VAE: None", f"VAE: {VAE}"]


def test_advisor_suggests_an_fp16_fixed_vae_for_sdxl_in_fp16(studio, vworld, tmp_path):
    import dataclasses

    from pipelines.advisor.rules import check

    ctx, found = studio.advise({"prompt": "a cat"}, model="tiny-sdxl")
    assert ctx.vaes == ("tiny-auto.vae.safetensors", VAE, "tiny-vae-2.safetensors")
    assert ctx.half == (vworld["engine"].hw.dtype == torch.float16)
    half = dataclasses.replace(ctx, half=True)
    rule = [f for f in check({"sd_vae": "Automatic"}, half) if f.rule == "sdxl-vae-fp16"]
    assert rule and rule[0].fix == {} and "sdxl-vae-fp16-fix.safetensors" in rule[0].message  # none listed
    listed = dataclasses.replace(half, vaes=(*half.vaes, "sdxl_vae_fp16fix.safetensors"))
    rule = [f for f in check({"sd_vae": VAE}, listed) if f.rule == "sdxl-vae-fp16"]
    assert rule[0].fix == {"sd_vae": "sdxl_vae_fp16fix.safetensors"} and VAE in rule[0].message
    assert not [f for f in check({"sd_vae": "sdxl_vae_fp16fix.safetensors"}, listed) if f.rule == "sdxl-vae-fp16"]
    sd15 = dataclasses.replace(studio.hint_context(vworld["infos"]["tiny-sd15"]), half=True)
    assert not [f for f in check({}, sd15) if f.rule == "sdxl-vae-fp16"]


# -- the API --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-vae")
    models = root / "models"
    shutil.copytree(tiny_store / "tiny-sd15", models / "Stable-diffusion" / "tiny-sd15")
    build_vae_file(models / "VAE" / VAE, seed=1)
    with Server(models, root / "outputs", "--api", "--ckpt", "tiny-sd15") as server:
        server.models = models
        yield server


def api(server, method: str, path: str, body=None):
    return requests.request(method, server.url + path, json=body, timeout=300)


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def infotext_of(answer: dict) -> str:
    return decode(answer["images"][0]).info["parameters"]


@pytest.mark.server
def test_api_lists_refreshes_and_sets_the_vae(server):
    path = server.models / "VAE" / VAE
    assert api(server, "GET", "/sdapi/v1/sd-vae").json() == [{"model_name": VAE, "filename": str(path)}]
    assert api(server, "GET", "/sdapi/v1/options").json()["sd_vae"] == "Automatic"

    plain = api(server, "POST", "/sdapi/v1/txt2img", BASE)
    assert plain.status_code == 200, plain.text
    assert "VAE" not in infotext_of(plain.json()) and json.loads(plain.json()["info"])["sd_vae_name"] is None

    over = api(server, "POST", "/sdapi/v1/txt2img", {**BASE, "override_settings": {"sd_vae": VAE}})
    assert over.status_code == 200, over.text
    info = json.loads(over.json()["info"])
    assert f"VAE hash: {sha10(path)}, VAE: {VAE}" in infotext_of(over.json())
    assert (info["sd_vae_name"], info["sd_vae_hash"]) == (VAE, sha10(path)) and info["warnings"] == []
    assert over.json()["images"][0] != plain.json()["images"][0]

    bad = api(server, "POST", "/sdapi/v1/txt2img", {**BASE, "override_settings": {"sd_vae": "nope"}})
    assert bad.status_code == 422 and "Unknown VAE 'nope'" in bad.json()["detail"] and VAE in bad.json()["detail"]

    # the option: the VAE of requests that name none
    assert api(server, "POST", "/sdapi/v1/options", {"sd_vae": VAE}).status_code == 200
    assert api(server, "GET", "/sdapi/v1/options").json()["sd_vae"] == VAE
    by_option = api(server, "POST", "/sdapi/v1/txt2img", BASE).json()
    assert same(decode(by_option["images"][0]), decode(over.json()["images"][0]))
    assert f"VAE: {VAE}" in infotext_of(by_option)
    missing = api(server, "POST", "/sdapi/v1/options", {"sd_vae": "nope"})
    assert missing.status_code == 404 and missing.json()["error"] == "VaeNotFound" and VAE in missing.json()["detail"]
    assert api(server, "GET", "/sdapi/v1/options").json()["sd_vae"] == VAE  # unchanged
    assert api(server, "POST", "/sdapi/v1/options", {"sd_vae": "None"}).status_code == 200

    # a file added later is listed after a refresh
    shutil.copy(path, server.models / "VAE" / "added.safetensors")
    assert [v["model_name"] for v in api(server, "GET", "/sdapi/v1/sd-vae").json()] == [VAE]
    assert api(server, "POST", "/sdapi/v1/refresh-vae").status_code == 200
    assert [v["model_name"] for v in api(server, "GET", "/sdapi/v1/sd-vae").json()] == ["added.safetensors", VAE]

    # the X/Y/Z plot's VAE axis
    sweep = api(server, "POST", "/studio/v1/sweep", {"params": BASE, "axes": [{"type": "VAE", "values": f"None, {VAE}"}]})
    assert sweep.status_code == 200, sweep.text
    texts = sweep.json()["info"]["infotexts"][1:]
    assert ["VAE: " in t for t in texts] == [False, True]
    unknown = api(server, "POST", "/studio/v1/sweep/plan", {"params": BASE, "axes": [{"type": "VAE", "values": "x"}]})
    assert unknown.status_code == 400 and "'x' is not a known vae" in unknown.json()["detail"]

    schema = api(server, "GET", "/openapi.json").json()
    assert "/sdapi/v1/refresh-vae" in schema["paths"] and "sd_vae" in schema["components"]["schemas"]["Txt2ImgRequest"][
        "properties"]


# -- the web UI -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    # tests.test_ui is imported here, not at the top: it skips its module without playwright, and this module's
    # engine tests must run where playwright is missing (the GPU check)
    from tests.test_ui import CHROMIUM, CHROMIUM_ARGS, playwright

    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium at /usr/bin/chromium")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def choose_vae(page, name: str) -> None:
    page.locator("#sd-vae input").click()
    page.get_by_role("option", name=name, exact=True).click()


@pytest.mark.browser
def test_the_vae_dropdown_beside_the_checkpoint_reaches_the_job_and_send_to(server, browser):
    from tests.test_ui import expect, generate

    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        page.goto(server.url)
        expect(page.locator("#txt2img-generate")).to_be_visible(timeout=60_000)
        choose_vae(page, VAE)
        expect(page.locator("#status-line")).to_contain_text(f"VAE: {VAE}")
        assert api(server, "GET", "/sdapi/v1/options").json()["sd_vae"] == VAE  # the option follows the dropdown
        assert f"VAE: {VAE}" in generate(page, steps=2)
        png = max((server.outputs_dir / "txt2img").rglob("*.png"), key=lambda p: p.stat().st_mtime_ns)

        choose_vae(page, "None")
        expect(page.locator("#sd-vae input")).to_have_value("None")
        generate(page, prompt="a blue ball", steps=2)
        info = page.locator("#txt2img-info textarea")  # this job's text, not the last one's
        expect(info).to_have_value(re.compile(r"^a blue ball\n.*Seed: \d+", re.S), timeout=90_000)
        assert "VAE" not in info.input_value()

        # an image's infotext brings its VAE back into the dropdown
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo-image input[type=file]").set_input_files(str(png))
        expect(page.locator("#pnginfo-text textarea")).to_have_value(re.compile(f"VAE: {re.escape(VAE)}"))
        page.locator("#pnginfo-send").click()
        expect(page.locator("#sd-vae input")).to_have_value(VAE)
    finally:
        context.close()
        api(server, "POST", "/sdapi/v1/options", {"sd_vae": "Automatic"})
