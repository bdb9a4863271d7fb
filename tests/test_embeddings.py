"""Textual-inversion embeddings, A1111's way, on the tiny models: listing, formats, chunking, emphasis, images.

The test embeddings are made of the tiny text encoder's own token embeddings of "red cat": written as an embedding,
the name must then give exactly what the two words give (same prompt embeddings, same image).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from safetensors.torch import save_file

from pipelines import discovery
from pipelines.discovery import CheckpointInfo
from pipelines.engine.embeddings import EmbeddingSet, VectorCache, load_vectors
from pipelines.engine.prompts import CHUNK_TOKENS, count_tokens, encode_prompts, tokenize_prompt
from pipelines.folders import ModelFolders
from pipelines.networks.embeddings import Embeddings, checkpoint_te_dims, compatible, read_embedding
from pipelines.params.specs import Txt2ImgParams
from tests.conftest import Server

pytestmark = pytest.mark.engine  # tiny models on the CPU (one server test, marked as such)

CPU = dict(device="cpu", dtype=torch.float32)
WORD = "dog"  # one CLIP token


# --- helpers ---------------------------------------------------------------------------------------------

def token_vectors(tok, enc, text: str) -> torch.Tensor:
    """The encoder's own token embeddings of `text` ([n, width]): an embedding that means exactly these words."""
    ids = tok(text, add_special_tokens=False).input_ids
    return enc.get_input_embeddings().weight[ids].detach().clone()


def save_a1111_pt(path: Path, vec: torch.Tensor, step: int | None = 500) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec.clone().requires_grad_(True)},
                "name": "internal-name", "step": step, "sd_checkpoint": "a9263745",
                "sd_checkpoint_name": "v1-5-pruned"}, path)
    return path


def save_emb_params(path: Path, vec: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vec.contiguous()}, str(path))
    return path


def save_sdxl(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path


def save_diffusers_bin(path: Path, vec: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"<red-cat>": vec[0] if vec.shape[0] == 1 else vec}, path)
    return path


def embedding_set(folder: Path, toks, encs) -> EmbeddingSet:
    dims = tuple(e.get_input_embeddings().embedding_dim for e in encs)
    return EmbeddingSet(Embeddings([folder]).usable(dims), toks, VectorCache().get)


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def sd15(tiny_store):
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = tiny_store / "tiny-sd15"  # read only
    tok = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").eval()
    return tok, enc


@pytest.fixture(scope="module")
def sdxl(tiny_store):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = tiny_store / "tiny-sdxl"  # read only
    toks = [CLIPTokenizer.from_pretrained(str(folder), subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    encs = [CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").eval(),
            CLIPTextModelWithProjection.from_pretrained(str(folder), subfolder="text_encoder_2").eval()]
    return toks, encs


@pytest.fixture
def redcat(sd15, tmp_path):
    """A folder with the "redcat" embedding (the tiny SD 1.5 encoder's "red cat") in A1111's .pt format."""
    tok, enc = sd15
    save_a1111_pt(tmp_path / "embeddings" / "redcat.pt", token_vectors(tok, enc, "red cat"))
    return embedding_set(tmp_path / "embeddings", [tok], [enc])


def sd_encode(sd15, prompt, negative="", embeddings=None, **kw):
    tok, enc = sd15
    return encode_prompts(prompt, negative, tokenizers=[tok], text_encoders=[enc], embeddings=embeddings, **CPU, **kw)


# --- listing (no vectors loaded) -------------------------------------------------------------------------

@pytest.mark.unit
def test_every_format_is_listed_from_its_header(tmp_path):
    vec = torch.randn(2, 32)
    folder = tmp_path / "models" / "embeddings"
    save_a1111_pt(folder / "a1111.pt", vec)
    save_emb_params(folder / "sub" / "easy.safetensors", vec)
    save_sdxl(folder / "xl.safetensors", torch.randn(3, 768), torch.randn(3, 1280))
    save_diffusers_bin(folder / "learned_embeds.bin", vec[:1])
    torch.save({"emb_params": vec}, folder / "direct.pt")
    (folder / "broken.pt").write_bytes(b"not a pickle")
    save_file({"a": vec, "b": vec.clone()}, str(folder / "lora-like.safetensors"))
    (folder / "a1111.preview.png").write_bytes(b"png")
    top = tmp_path / "embeddings"  # A1111's top-level folder: searched second, so the same name loses
    save_emb_params(top / "a1111.safetensors", torch.randn(1, 32))
    save_emb_params(top / "other.safetensors", torch.randn(1, 1024))

    listed = {e.name: e for e in Embeddings((folder, top)).list()}
    assert sorted(listed) == ["a1111", "broken", "direct", "easy", "learned_embeds", "lora-like", "other", "xl"]
    a = listed["a1111"]
    assert (a.path, a.dims, a.vectors, a.step, a.sd_checkpoint, a.sd_checkpoint_name) == (
        folder / "a1111.pt", (32,), 2, 500, "a9263745", "v1-5-pruned")
    assert a.preview == folder / "a1111.preview.png" and a.error is None
    assert (listed["easy"].dims, listed["easy"].vectors, listed["easy"].step) == ((32,), 2, None)
    assert (listed["xl"].dims, listed["xl"].vectors, listed["xl"].shape, listed["xl"].family) == ((768, 1280), 3, 2048,
                                                                                                   "SDXL")
    assert (listed["learned_embeds"].dims, listed["learned_embeds"].vectors) == ((32,), 1)
    assert (listed["direct"].dims, listed["direct"].vectors) == ((32,), 2)
    assert listed["other"].family == "SD 2.x"
    assert "unreadable" in listed["broken"].error
    assert "not an embedding format" in listed["lora-like"].error
    assert listed["a1111"].api() == {"step": 500, "sd_checkpoint": "a9263745", "sd_checkpoint_name": "v1-5-pruned",
                                     "shape": 32, "vectors": 2}


@pytest.mark.unit
def test_a_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "x": Evil()}, tmp_path / "evil.pt")
    info = read_embedding(tmp_path / "evil.pt")
    assert info.error and "code" in info.error


@pytest.mark.unit
def test_compatibility_by_width_names_the_families(tmp_path):
    sd1 = read_embedding(save_emb_params(tmp_path / "sd1.safetensors", torch.zeros(1, 768)))
    sd2 = read_embedding(save_emb_params(tmp_path / "sd2.safetensors", torch.zeros(1, 1024)))
    xl = read_embedding(save_sdxl(tmp_path / "xl.safetensors", torch.zeros(2, 768), torch.zeros(2, 1280)))
    huge = read_embedding(save_emb_params(tmp_path / "huge.safetensors", torch.zeros(CHUNK_TOKENS + 1, 768)))
    assert compatible(sd1, (768,)) is None and compatible(sd2, (1024,)) is None and compatible(xl, (768, 1280)) is None
    assert compatible(sd1, (1024,)) == ("made for a 768-wide text encoder (SD 1.x); this model has a 1024-wide text "
                                        "encoder (SD 2.x)")
    assert compatible(sd1, (768, 1280)) == ("made for a 768-wide text encoder (SD 1.x); this model has two text "
                                            "encoders, 768- and 1280-wide (SDXL)")  # A1111 skips these on SDXL
    assert "made for two text encoders, 768- and 1280-wide (SDXL)" in compatible(xl, (768,))
    assert "at most 75" in compatible(huge, (768,))
    assert compatible(sd2, None) is None  # no model to compare with: every readable one is usable


@pytest.mark.unit
def test_checkpoint_text_encoder_widths_without_loading(tiny_store, tmp_path):
    def info(name, path, family):
        return CheckpointInfo(name=name, source="file" if path and path.is_file() else "folder", path=path,
                              family=family)

    assert checkpoint_te_dims(info("sd15", tiny_store / "tiny-sd15", "sd15")) == (32,)
    assert checkpoint_te_dims(info("xl", tiny_store / "tiny-sdxl", "sdxl")) == (32, 32)
    te = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    save_file({te: torch.zeros(4, 768)}, str(tmp_path / "sd1.safetensors"))
    save_file({"cond_stage_model.model.token_embedding.weight": torch.zeros(4, 1024)}, str(tmp_path / "sd2.safetensors"))
    save_file({"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 768),
               "conditioner.embedders.1.model.token_embedding.weight": torch.zeros(4, 1280)},
              str(tmp_path / "xl.safetensors"))
    assert checkpoint_te_dims(info("a", tmp_path / "sd1.safetensors", "sd15")) == (768,)
    assert checkpoint_te_dims(info("b", tmp_path / "sd2.safetensors", "sd2-v")) == (1024,)
    assert checkpoint_te_dims(info("c", tmp_path / "xl.safetensors", "sdxl")) == (768, 1280)
    hub = CheckpointInfo(name="stabilityai/stable-diffusion-xl-base-1.0", source="hub", family="sdxl")
    assert checkpoint_te_dims(hub) == (768, 1280)  # not downloaded: the family's widths
    assert checkpoint_te_dims(CheckpointInfo(name="x/y", source="hub")) is None


@pytest.mark.unit
def test_listing_sees_new_and_changed_files_and_caches_the_rest(tmp_path, monkeypatch):
    folder = tmp_path / "embeddings"
    save_emb_params(folder / "one.safetensors", torch.zeros(1, 32))
    listing = Embeddings([folder])
    assert [e.name for e in listing.list()] == ["one"]
    reads = []
    real = read_embedding
    monkeypatch.setattr("pipelines.networks.embeddings.read_embedding", lambda p: reads.append(p.name) or real(p))
    save_emb_params(folder / "two.safetensors", torch.zeros(3, 32))
    assert [(e.name, e.vectors) for e in listing.list()] == [("one", 1), ("two", 3)]
    assert reads == ["two.safetensors"]  # the unchanged file is not read again
    (folder / "one.safetensors").unlink()
    assert [e.name for e in listing.list()] == ["two"]
    listing.refresh()
    assert reads == ["two.safetensors", "two.safetensors"]


# --- prompts: the name gives exactly what its words give -------------------------------------------------

def test_embedding_is_its_words_in_prompt_and_negative(sd15, redcat):
    plain = sd_encode(sd15, "a red cat on grass", "red cat, blurry")
    with_ti = sd_encode(sd15, "a redcat on grass", "redcat, blurry", embeddings=redcat)
    same(plain, with_ti)
    assert with_ti.used == ("redcat",) and plain.used == ()
    # without the embeddings the name is plain text, as before
    assert not torch.equal(sd_encode(sd15, "a redcat on grass")["prompt_embeds"], plain["prompt_embeds"])


@pytest.mark.parametrize("prompt, words", [
    ("a (redcat:1.4) on grass", "a (red cat:1.4) on grass"),
    ("a [redcat] BREAK on grass", "a [red cat] BREAK on grass"),
    ("((redcat)), redcat", "((red cat)), red cat"),
])
def test_emphasis_break_and_clip_skip_apply_to_the_vectors(sd15, redcat, prompt, words):
    same(sd_encode(sd15, words), sd_encode(sd15, prompt, embeddings=redcat))
    same(sd_encode(sd15, words, clip_skip=2), sd_encode(sd15, prompt, embeddings=redcat, clip_skip=2))
    chunk = tokenize_prompt(prompt, sd15[0], redcat.vocabulary(0))[0]
    at, emb = chunk.fixes[0]
    weight = tokenize_prompt(words, sd15[0])[0].weights[1 + at]
    assert chunk.weights[1 + at:1 + at + 2] == [weight, weight] and emb.name == "redcat"


def test_an_embedding_that_does_not_fit_starts_the_next_chunk(sd15, redcat):
    tok = sd15[0]
    words = " ".join([WORD] * 74)
    first, second = tokenize_prompt(f"{words} redcat", tok, redcat.vocabulary(0))
    assert first.ids[75:77] == [tok.eos_token_id] * 2 and not first.fixes  # 74 tokens, then EOS / padding
    assert second.ids[1:3] == [0, 0] and [at for at, _ in second.fixes] == [0]
    same(sd_encode(sd15, f"{words} BREAK red cat"), sd_encode(sd15, f"{words} redcat", embeddings=redcat))
    # 73 words + 2 vectors = 75: it fits
    fits = tokenize_prompt(" ".join([WORD] * 73) + " redcat", tok, redcat.vocabulary(0))
    assert len(fits) == 1 and [at for at, _ in fits[0].fixes] == [73]
    # a full chunk that breaks after its last comma carries the embedding over with the tokens after the comma
    carried = f"{' '.join([WORD] * 60)}, redcat {' '.join([WORD] * 13)}"
    one, two = tokenize_prompt(carried, tok, redcat.vocabulary(0))
    assert not one.fixes and [at for at, _ in two.fixes] == [0]
    same(sd_encode(sd15, f"{' '.join([WORD] * 60)}, BREAK red cat {' '.join([WORD] * 13)}"),
         sd_encode(sd15, carried, embeddings=redcat))


def test_count_tokens_counts_the_vectors(sd15, tmp_path):
    tok, enc = sd15
    save_emb_params(tmp_path / "e" / "five.safetensors", torch.randn(5, 32))
    vocab = embedding_set(tmp_path / "e", [tok], [enc]).vocabulary(0)
    assert count_tokens("a (five:1.2) dog", tok, vocab) == 7
    assert count_tokens("a (five:1.2) dog", tok) == 3  # without embeddings: the name's own token


def test_longest_name_wins(sd15, tmp_path):
    tok, enc = sd15
    save_emb_params(tmp_path / "e" / "red.safetensors", token_vectors(tok, enc, "blue"))
    save_emb_params(tmp_path / "e" / "red cat.safetensors", token_vectors(tok, enc, "sky tree house"))
    ti = embedding_set(tmp_path / "e", [tok], [enc])
    same(sd_encode(sd15, "a sky tree house, blue dog"), sd_encode(sd15, "a red cat, red dog", embeddings=ti))


# --- every format is used ----------------------------------------------------------------------------------

@pytest.mark.parametrize("save", [save_a1111_pt, save_emb_params, save_diffusers_bin,
                                  lambda p, v: torch.save({"emb_params": v}, p) or p])
def test_each_sd_format_loads_and_is_used(sd15, tmp_path, save):
    tok, enc = sd15
    for n, text in ((1, "cat"), (2, "red cat")):
        ext = ".safetensors" if save is save_emb_params else ".bin" if save is save_diffusers_bin else ".pt"
        folder = tmp_path / f"e{n}"
        folder.mkdir()
        path = save(folder / f"thing{ext}", token_vectors(tok, enc, text))
        assert [v.shape for v in load_vectors(path)] == [(n, 32)]
        same(sd_encode(sd15, f"a {text}"), sd_encode(sd15, "a thing", embeddings=embedding_set(folder, [tok], [enc])))


def test_sdxl_embedding_feeds_both_encoders_and_the_pooled_output(sdxl, tmp_path):
    toks, encs = sdxl
    folder = tmp_path / "embeddings"
    save_sdxl(folder / "redcat.safetensors", token_vectors(toks[0], encs[0], "red cat"),
              token_vectors(toks[1], encs[1], "red cat"))
    save_emb_params(folder / "sd1.safetensors", token_vectors(toks[0], encs[0], "red cat"))  # one 32-wide tensor
    ti = embedding_set(folder, toks, encs)
    assert [e.name for e in ti.infos] == ["redcat"]  # an SD 1.x-format embedding is skipped on SDXL

    def xl(prompt, negative="", embeddings=None):
        return encode_prompts(prompt, negative, tokenizers=toks, text_encoders=encs, sdxl=True,
                              zero_empty_negative=True, embeddings=embeddings, **CPU)

    same(xl("redcat at night", "redcat", ti), xl("red cat at night", "red cat"))
    assert not torch.equal(xl("a red cat")["pooled_prompt_embeds"], xl("a sd1")["pooled_prompt_embeds"])
    split = Embeddings([folder]).split((32, 32))
    assert list(split["loaded"]) == ["redcat"] and list(split["skipped"]) == ["sd1"]
    assert split["skipped"]["sd1"]["reason"] == ("made for a 32-wide text encoder; this model has two text encoders, "
                                                 "32- and 32-wide")


def test_hook_is_removed_after_the_call(sd15, redcat):
    tok, enc = sd15
    sd_encode(sd15, "redcat", embeddings=redcat)
    assert not enc.get_input_embeddings()._forward_hooks


# --- the engine: images and infotext -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ti_engine(world, tiny_store):
    """The real engine over the world's models, with an embedding folder (A1111's top-level embeddings/)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from pipelines.engine.generate import Engine
    from pipelines.outputs import OutputWriter

    root = world["root"]
    folder = root / "embeddings"
    tok = CLIPTokenizer.from_pretrained(str(tiny_store / "tiny-sd15"), subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(str(tiny_store / "tiny-sd15"), subfolder="text_encoder")
    save_a1111_pt(folder / "redcat.pt", token_vectors(tok, enc, "red cat"))
    save_emb_params(folder / "wide.safetensors", torch.zeros(1, 768))
    base = world["engine"]
    engine = Engine(base.hw, world["manager"], OutputWriter(root / "ti-outputs"), config_root=base.config_root,
                    hash_cache=base.hash_cache, preview_every=0,
                    embeddings=Embeddings(ModelFolders.under(root / "models").embeddings, base.hash_cache))
    return engine, folder


def generate(world, engine, **params):
    params = {"steps": 2, "seed": 11, "width": 64, "height": 64, **params}
    job = world["runner"].submit(lambda ctx: engine.txt2img(ctx, Txt2ImgParams(**params), world["infos"]["tiny-sd15"]))
    return job.wait(120)


def test_image_with_the_embedding_is_the_image_with_its_words(world, ti_engine):
    engine, folder = ti_engine
    words = generate(world, engine, prompt="a red cat on a mat", negative_prompt="red cat, ugly")
    ti = generate(world, engine, prompt="a redcat on a mat", negative_prompt="redcat, ugly")
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (words, ti))
    assert np.abs(a - b).max() <= 1
    text = generate(world, world["engine"], prompt="a redcat on a mat").images[0]  # an engine without embeddings
    assert np.abs(np.asarray(text, dtype=np.int16) - a).max() > 1

    short = hashlib.sha256((folder / "redcat.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "redcat: {short}"' in ti.infotexts[0]
    assert "TI hashes" not in words.infotexts[0]
    cached = discovery.cached_sha256(folder / "redcat.pt", engine.embeddings.listing.hash_cache)
    assert cached and cached.startswith(short)  # hashed once, then from models/.cache/hashes.json


@pytest.mark.server
def test_api_lists_loaded_and_skipped_embeddings(models_dir, tiny_store, tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_store / "tiny-sd15"), subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(str(tiny_store / "tiny-sd15"), subfolder="text_encoder")
    save_a1111_pt(models_dir / "embeddings" / "redcat.pt", token_vectors(tok, enc, "red cat"))
    save_emb_params(models_dir / "embeddings" / "sd1-style.safetensors", torch.zeros(2, 768))
    with Server(models_dir, tmp_path / "outputs", "--api", "--nowebui", "--ckpt", "tiny-sd15") as server:
        url = server.url + "/sdapi/v1"
        answer = requests.get(url + "/embeddings", timeout=60).json()
        assert answer["loaded"] == {"redcat": {"step": 500, "sd_checkpoint": "a9263745",
                                               "sd_checkpoint_name": "v1-5-pruned", "shape": 32, "vectors": 2}}
        skipped = answer["skipped"]["sd1-style"]
        assert (skipped["shape"], skipped["vectors"]) == (768, 2) and "768-wide" in skipped["reason"]
        shutil.copy(models_dir / "embeddings" / "redcat.pt", models_dir / "embeddings" / "another.pt")
        assert requests.post(url + "/refresh-embeddings", timeout=60).status_code == 200
        assert set(requests.get(url + "/embeddings", timeout=60).json()["loaded"]) == {"redcat", "another"}
        r = requests.post(url + "/txt2img", json={"prompt": "a redcat", "steps": 1, "width": 64, "height": 64},
                          timeout=120)
        assert r.status_code == 200 and "TI hashes: " in r.json()["info"]
