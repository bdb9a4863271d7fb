"""pipelines.engine.prompts on tiny real models: A1111 parsing, 75-token chunking, clip skip, emphasis, pipeline use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.engine.prompts import count_tokens, encode_prompts, parse_prompt_attention, prompt_chunks

pytestmark = pytest.mark.engine  # tiny models on the CPU, no server

WORDS = ["red", "cat", "sky", "blue", "house", "tree", "dog", "sun"]  # one CLIP token each
LONG = " ".join(WORDS[i % len(WORDS)] for i in range(200))
CPU = dict(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def sd15(tiny_store):
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = tiny_store / "tiny-sd15"  # read only
    tok = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").eval()
    with torch.no_grad():  # a trained CLIP's final norm has a bias; a fresh one gives every token mean 0
        enc.final_layer_norm.bias.copy_(torch.randn(32, generator=torch.Generator().manual_seed(0)) * 0.5)
    return folder, tok, enc


@pytest.fixture(scope="module")
def sdxl(tiny_store):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = tiny_store / "tiny-sdxl"  # read only
    toks = [CLIPTokenizer.from_pretrained(str(folder), subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    encs = [CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").eval(),
            CLIPTextModelWithProjection.from_pretrained(str(folder), subfolder="text_encoder_2").eval()]
    return folder, toks, encs


def sd_encode(sd15, prompt, negative="", **kw):
    _, tok, enc = sd15
    return encode_prompts(prompt, negative, tokenizers=[tok], text_encoders=[enc], **CPU, **kw)


def plain(tok, enc, text):
    ids = tok(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, enc(ids, output_hidden_states=True)


# --- parsing ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("((a)) [b] [[c]]", [("a", 1.1 * 1.1), (" ", 1.0), ("b", 1 / 1.1), (" ", 1.0), ("c", 1 / 1.1 / 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("(x: 1.5 )", [("x", 1.5)]),
    ("\\(literal\\] \\\\ \\[", [("(literal] \\ [", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("[open (both", [("open ", 1 / 1.1), ("both", 1.1 / 1.1)]),
    ("stray) close]", [("stray) close]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]),
    ("BREAKfast break", [("BREAKfast break", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


# --- tokens and chunks -----------------------------------------------------------------------------------

def test_count_tokens_ignores_syntax(sd15):
    tok = sd15[1]
    assert count_tokens("(red:1.4) [cat] BREAK sky", tok) == 3
    assert count_tokens(LONG, tok) == 200
    assert count_tokens("", tok) == 0


def test_long_prompt_is_chunked_not_truncated(sd15):
    tok = sd15[1]
    chunks = prompt_chunks(LONG, tok)
    assert len(chunks) == 3
    assert all(len(ids) == 77 and len(w) == 77 for ids, w in chunks)
    assert all(ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id for ids, _ in chunks)
    body = [t for ids, _ in chunks for t in ids[1:-1] if t != tok.pad_token_id]
    assert body == tok(LONG, add_special_tokens=False).input_ids
    assert chunks[2][0][51:] == [tok.eos_token_id] * 26  # 50 tokens, then EOS and pad (pad == EOS for SD 1.x)


def test_chunk_layout_matches_tokenizer_padding(sd15):
    tok = sd15[1]
    ids, weights = prompt_chunks("a photo of a cat", tok)[0]
    assert ids == tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert weights == [1.0] * 77
    tok_bang = tok.__class__.from_pretrained(str(sd15[0]), subfolder="tokenizer", pad_token="!")  # SDXL clip-G style
    assert prompt_chunks("a cat", tok_bang)[0][0] == tok_bang("a cat", padding="max_length", max_length=77).input_ids


def test_weights_follow_tokens(sd15):
    tok = sd15[1]
    ids, weights = prompt_chunks("a (cat:1.5) [dog]", tok)[0]
    assert weights[:5] == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0])
    assert set(weights[4:]) == {1.0}


def test_break_starts_a_new_chunk(sd15):
    tok = sd15[1]
    chunks = prompt_chunks("red cat BREAK blue sky", tok)
    assert len(chunks) == 2
    assert chunks[1][0][1:4] == tok("blue sky", add_special_tokens=False).input_ids + [tok.eos_token_id]


def test_comma_aware_split(sd15):
    tok = sd15[1]
    # comma at token 70: the chunk breaks right after it, the 4 words behind it move to the next chunk
    text = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    first, second = prompt_chunks(text, tok)
    comma = tok(",", add_special_tokens=False).input_ids[0]
    assert first[0][71] == comma and first[0][72] == tok.eos_token_id
    assert second[0][1:12] == tok(" ".join(["dog"] * 10), add_special_tokens=False).input_ids + [tok.eos_token_id]
    # comma too far back (> 20 tokens from the end): plain cut at 75
    text = " ".join(["cat"] * 10) + ", " + " ".join(["dog"] * 70)
    first, second = prompt_chunks(text, tok)
    assert first[0][75] != tok.eos_token_id and first[0][76] == tok.eos_token_id
    assert second[0][1:8] == [tok("dog", add_special_tokens=False).input_ids[0]] * 6 + [tok.eos_token_id]


# --- encoding --------------------------------------------------------------------------------------------

def test_long_prompt_and_negative_padded_to_same_length(sd15):
    out = sd_encode(sd15, LONG, "blurry")
    assert out["prompt_embeds"].shape == (1, 231, 32)
    assert out["negative_prompt_embeds"].shape == (1, 231, 32)
    _, empty = plain(sd15[1], sd15[2], "")
    neg = out["negative_prompt_embeds"][0]
    assert torch.allclose(neg[77:154], empty.last_hidden_state[0], atol=1e-6)  # extra chunks = empty string
    assert torch.allclose(neg[154:], empty.last_hidden_state[0], atol=1e-6)
    short = sd_encode(sd15, "cat", LONG)  # the other way round too
    assert short["prompt_embeds"].shape == short["negative_prompt_embeds"].shape == (1, 231, 32)


def test_unweighted_equals_plain_encoder(sd15):
    _, tok, enc = sd15
    out = sd_encode(sd15, "a photo of a cat", "ugly")
    assert torch.allclose(out["prompt_embeds"], plain(tok, enc, "a photo of a cat")[1].last_hidden_state, atol=1e-6)
    assert torch.allclose(out["negative_prompt_embeds"], plain(tok, enc, "ugly")[1].last_hidden_state, atol=1e-6)


def test_emphasis_scales_token_and_keeps_mean(sd15):
    weighted = sd_encode(sd15, "a (cat:1.5) on a mat")["prompt_embeds"][0]
    base = sd_encode(sd15, "a cat on a mat")["prompt_embeds"][0]
    assert not torch.allclose(weighted, base)
    assert weighted.mean().item() == pytest.approx(base.mean().item(), rel=1e-4)
    ratio = weighted / base  # every token scaled by the same mean-restoring factor, "cat" (position 2) 1.5x more
    factor = ratio[0, 0]
    assert torch.allclose(ratio[[0, 1, 3, 4, 5, 6]], factor.expand(6, 32), rtol=1e-4)
    assert torch.allclose(ratio[2], (factor * 1.5).expand(32), rtol=1e-4)


def test_emphasis_without_usable_mean_skips_rescale(sd15):
    enc = sd15[2]
    bias = enc.final_layer_norm.bias.detach().clone()
    try:
        with torch.no_grad():
            enc.final_layer_norm.bias.zero_()  # every token's embedding now has mean 0: no rescale possible
        weighted = sd_encode(sd15, "a (cat:1.5) on a mat")["prompt_embeds"][0]
        base = sd_encode(sd15, "a cat on a mat")["prompt_embeds"][0]
    finally:
        with torch.no_grad():
            enc.final_layer_norm.bias.copy_(bias)
    assert torch.isfinite(weighted).all()
    assert torch.allclose(weighted[2], base[2] * 1.5, atol=1e-6) and torch.allclose(weighted[3:], base[3:])


def test_clip_skip(sd15):
    _, tok, enc = sd15
    one = sd_encode(sd15, "a photo of a cat")["prompt_embeds"]
    two = sd_encode(sd15, "a photo of a cat", clip_skip=2)["prompt_embeds"]
    assert not torch.allclose(one, two)
    with torch.no_grad():
        expected = enc.final_layer_norm(plain(tok, enc, "a photo of a cat")[1].hidden_states[-2])
    assert torch.allclose(two, expected, atol=1e-6)
    for bad in (0, 5):  # the tiny encoder has 4 layers
        with pytest.raises(ValueError, match="clip_skip"):
            sd_encode(sd15, "cat", clip_skip=bad)


def test_sdxl_embeddings(sdxl):
    _, toks, encs = sdxl
    out = encode_prompts(LONG, "", tokenizers=toks, text_encoders=encs, sdxl=True, **CPU)
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 231, 64)
    assert out["pooled_prompt_embeds"].shape == out["negative_pooled_prompt_embeds"].shape == (1, 32)

    out = encode_prompts("a photo of a cat", "", tokenizers=toks, text_encoders=encs, sdxl=True, **CPU)
    (_, o1), (_, o2) = plain(toks[0], encs[0], "a photo of a cat"), plain(toks[1], encs[1], "a photo of a cat")
    expected = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
    assert torch.allclose(out["prompt_embeds"], expected, atol=1e-6)
    assert torch.allclose(out["pooled_prompt_embeds"], o2.text_embeds, atol=1e-6)
    skip2 = encode_prompts("a photo of a cat", "", tokenizers=toks, text_encoders=encs, sdxl=True, clip_skip=2, **CPU)
    assert torch.allclose(skip2["prompt_embeds"][..., :32], o1.hidden_states[-3], atol=1e-6)

    zeros = encode_prompts(LONG, " ", tokenizers=toks, text_encoders=encs, sdxl=True, zero_empty_negative=True, **CPU)
    assert zeros["negative_prompt_embeds"].shape == (1, 231, 64)
    assert not zeros["negative_prompt_embeds"].any() and not zeros["negative_pooled_prompt_embeds"].any()
    with pytest.raises(ValueError, match="clip_skip"):  # 4 layers, one already skipped
        encode_prompts("cat", "", tokenizers=toks, text_encoders=encs, sdxl=True, clip_skip=4, **CPU)
    with pytest.raises(ValueError):
        encode_prompts("cat", "", tokenizers=toks[:1], text_encoders=encs[:1], sdxl=True, **CPU)


# --- the embeddings drive real pipelines -----------------------------------------------------------------

def _run(pipe, kwargs):
    pipe.set_progress_bar_config(disable=True)
    image = pipe(**kwargs, num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_sd15_pipeline_accepts_long_prompt_embeds(sd15):
    from diffusers import StableDiffusionPipeline

    folder, tok, enc = sd15
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), tokenizer=tok, text_encoder=enc,
                                                   safety_checker=None, requires_safety_checker=False)
    _run(pipe, sd_encode(sd15, "a (very:1.3) long, [prompt] BREAK " + LONG, "blurry", clip_skip=2))


def test_sdxl_pipeline_accepts_long_prompt_embeds(sdxl):
    from diffusers import StableDiffusionXLPipeline

    folder, toks, encs = sdxl
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), tokenizer=toks[0], tokenizer_2=toks[1],
                                                     text_encoder=encs[0], text_encoder_2=encs[1])
    _run(pipe, encode_prompts("a (very:1.3) long, [prompt] " + LONG, "", tokenizers=toks, text_encoders=encs,
                              sdxl=True, zero_empty_negative=True, **CPU))
