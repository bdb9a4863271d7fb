"""A1111 prompt syntax -> prompt embeddings for diffusers pipelines.

Three steps, each usable on its own:

1. `parse_prompt_attention` turns ``a (red:1.3) [cat] BREAK sky`` into ``(text, weight)`` pieces.
2. `prompt_chunks` tokenizes the pieces and cuts the token stream into chunks of 75 tokens (breaking after a
   nearby comma when it can, and at every ``BREAK``); each chunk becomes 77 ids laid out like the
   tokenizer's own ``padding="max_length"`` output: BOS, tokens, EOS, pad... . Nothing is ever truncated.
3. `encode_prompts` runs the text encoder(s) on every chunk, applies clip skip and emphasis (each token's
   embedding times its weight, then the chunk rescaled to its unweighted mean), concatenates the chunks and
   returns the ``prompt_embeds`` / ``negative_prompt_embeds`` (and SDXL ``pooled_*``) pipeline kwargs.

transformers 5 note: `CLIPTextModel` *is* the text transformer (``model.final_layer_norm``); only
`CLIPTextModelWithProjection` keeps it under ``model.text_model``. `_final_layer_norm` handles both.
"""

from __future__ import annotations

import re

import torch

from pipelines.errors import BadRequest

CHUNK_TOKENS = 75        # tokens per chunk, without BOS/EOS
COMMA_BACKTRACK = 20     # a full chunk breaks after its last comma if that comma is this close to the end
BREAK = ("BREAK", -1.0)  # marker piece emitted by the parser

_TOKEN_RE = re.compile(
    r"""
    \\[()\[\]\\]                                           # escaped bracket or backslash
  | \(                                                     # open round
  | \[                                                     # open square
  | :\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)                # ":1.3)" closes round with an explicit weight
  | \)                                                     # close round
  | \]                                                     # close square
  | [^\\()\[\]:]+                                          # plain text
  | [\\:]                                                  # lone backslash or colon: literal
    """,
    re.VERBOSE,
)
_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` pieces; ``BREAK`` becomes ``("BREAK", -1.0)``."""
    pieces: list[list] = []  # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    for m in _TOKEN_RE.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok[0] == "\\" and len(tok) == 2:
            pieces.append([tok[1], 1.0, False])
        elif tok == "(":
            round_open.append(len(pieces))
        elif tok == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif tok == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:  # text, or a closing bracket with nothing open
            for i, part in enumerate(_BREAK_RE.split(tok)):
                if i:
                    pieces.append([BREAK[0], BREAK[1], True])
                if part:
                    pieces.append([part, 1.0, False])
    for start in round_open:  # unbalanced: close at the end
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)

    merged: list[list] = []
    for piece in pieces:
        if merged and not piece[2] and not merged[-1][2] and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w, _ in merged] or [("", 1.0)]


def _weighted_tokens(text: str, tokenizer) -> list[tuple[list[int], float] | None]:
    """Per parsed piece its token ids and weight; None for a BREAK."""
    pieces = parse_prompt_attention(text)
    texts = [piece[0] for piece in pieces if piece != BREAK]
    ids = iter(tokenizer(texts, add_special_tokens=False, verbose=False).input_ids if texts else [])
    return [None if piece == BREAK else (next(ids), piece[1]) for piece in pieces]


def count_tokens(text: str, tokenizer) -> int:
    """Prompt length in tokens after emphasis parsing (no BOS/EOS), for UI hints."""
    return sum(len(item[0]) for item in _weighted_tokens(text, tokenizer) if item)


def prompt_chunks(text: str, tokenizer) -> list[tuple[list[int], list[float]]]:
    """Token ids and weights of each 77-token chunk: BOS, up to 75 tokens, EOS, pad (weight 1.0 for specials)."""
    comma = tokenizer(",", add_special_tokens=False).input_ids[-1]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    raw: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        raw.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for item in _weighted_tokens(text, tokenizer):
        if item is None:
            close()
            continue
        tokens, weight = item
        for token in tokens:
            if len(ids) == CHUNK_TOKENS:
                near = last_comma >= 0 and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK
                cut = last_comma + 1 if near else CHUNK_TOKENS  # break after the comma, carry the rest over
                rest = ids[cut:], weights[cut:]
                del ids[cut:], weights[cut:]
                close()
                ids, weights = rest
            if token == comma:
                last_comma = len(ids)
            ids.append(token)
            weights.append(weight)
    if ids or not raw:
        close()

    out = []
    for ids, weights in raw:
        fill = CHUNK_TOKENS - len(ids)
        out.append(([bos, *ids, eos] + [pad] * fill, [1.0, *weights, 1.0] + [1.0] * fill))
    return out


def _final_layer_norm(encoder) -> torch.nn.Module:
    norm = getattr(encoder, "final_layer_norm", None)  # transformers 5 CLIPTextModel
    return norm if norm is not None else encoder.text_model.final_layer_norm


def _emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 emphasis: scale each token by its weight, then rescale each chunk back to its unweighted mean.

    The rescale is skipped for a chunk whose mean (before or after weighting) is negligible next to its
    magnitude (e.g. right after a layer norm without bias): dividing by ~0 would blow the chunk up.
    """
    before = z.mean(dim=(1, 2), keepdim=True)
    z = z * weights[..., None]
    after = z.mean(dim=(1, 2), keepdim=True)
    scale = 1e-3 * z.abs().mean(dim=(1, 2), keepdim=True)
    usable = (before.abs() > scale) & (after.abs() > scale)
    return z * torch.where(usable, before / torch.where(usable, after, 1.0), 1.0)


def _encode(chunks, encoder, clip_skip: int, sdxl: bool, want_pooled: bool):
    """Embeddings [n_chunks, 77, dim] (emphasis applied) and the pooled text_embeds of every chunk (or None)."""
    layers = encoder.config.num_hidden_layers
    most = layers - 1 if sdxl else layers  # SDXL already skips one layer; never fall through to the embeddings
    if not 1 <= clip_skip <= most:
        raise BadRequest(f"clip_skip must be between 1 and {most} for this {layers}-layer text encoder, "
                         f"got {clip_skip}")
    ids = torch.tensor([c[0] for c in chunks], dtype=torch.long, device=encoder.device)
    weights = torch.tensor([c[1] for c in chunks], dtype=torch.float32)
    with torch.no_grad():
        out = encoder(ids, output_hidden_states=True)
        if sdxl:
            z = out.hidden_states[-(clip_skip + 1)]
        elif clip_skip == 1:
            z = out.last_hidden_state
        else:
            z = _final_layer_norm(encoder)(out.hidden_states[-clip_skip])
        z = z.float()
        if not torch.all(weights == 1.0):
            z = _emphasize(z, weights.to(z.device))
    pooled = out.text_embeds.float() if want_pooled else None
    return z, pooled


def encode_prompts(
    prompt: str,
    negative: str,
    *,
    tokenizers,
    text_encoders,
    clip_skip: int = 1,
    device,
    dtype,
    sdxl: bool = False,
    zero_empty_negative: bool = False,
) -> dict:
    """Pipeline kwargs for one prompt/negative pair (batch 1; the caller repeats).

    SD 1.x/2.x: one tokenizer/encoder; clip_skip 1 = last layer (with final layer norm), N>1 =
    ``final_layer_norm(hidden_states[-N])``. SDXL: two of each; every encoder uses ``hidden_states[-(clip_skip+1)]``
    (penultimate by default, no final norm), concatenated on the last dim; pooled = ``text_embeds`` of the second
    encoder on the first chunk. ``zero_empty_negative`` returns zeros for an empty negative (SDXL's
    ``force_zeros_for_empty_prompt``).
    """
    pairs = list(zip(tokenizers, text_encoders))
    if len(pairs) != (2 if sdxl else 1):
        raise ValueError(f"expected {2 if sdxl else 1} tokenizer/text encoder pair(s), got {len(pairs)}")
    zero_negative = zero_empty_negative and not negative.strip()

    pos_parts, neg_parts, pooled = [], [], None
    for index, (tokenizer, encoder) in enumerate(pairs):
        pos = prompt_chunks(prompt, tokenizer)
        neg = prompt_chunks("" if zero_negative else negative, tokenizer)
        empty = prompt_chunks("", tokenizer)[0]
        n = max(len(pos), len(neg))
        pos += [empty] * (n - len(pos))
        neg += [empty] * (n - len(neg))
        z, pooled_all = _encode(pos + neg, encoder, clip_skip, sdxl, want_pooled=sdxl and index == 1)
        pos_parts.append(z[:n].reshape(1, -1, z.shape[-1]))
        neg_parts.append(z[n:].reshape(1, -1, z.shape[-1]))
        if pooled_all is not None:
            pooled = (pooled_all[0:1], pooled_all[n:n + 1])

    def finish(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    result = {
        "prompt_embeds": finish(torch.cat(pos_parts, dim=-1)),
        "negative_prompt_embeds": finish(torch.cat(neg_parts, dim=-1)),
    }
    if sdxl:
        result["pooled_prompt_embeds"] = finish(pooled[0])
        result["negative_pooled_prompt_embeds"] = finish(pooled[1])
    if zero_negative:
        for key in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
            if key in result:
                result[key] = torch.zeros_like(result[key])
    return result
