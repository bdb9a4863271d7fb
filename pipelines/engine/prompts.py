"""A1111 prompt syntax -> prompt embeddings for diffusers pipelines.

Three steps, each usable on its own:

1. `parse_prompt_attention` turns ``a (red:1.3) [cat] BREAK sky`` into ``(text, weight)`` pieces.
2. `prompt_chunks` tokenizes the pieces and cuts the token stream into chunks of 75 tokens (breaking after a
   nearby comma when it can, and at every ``BREAK``); each chunk becomes 77 ids laid out like the
   tokenizer's own ``padding="max_length"`` output: BOS, tokens, EOS, pad... . Nothing is ever truncated.
3. `encode_prompts` runs the text encoder(s) on every chunk, applies clip skip and emphasis (each token's
   embedding times its weight, then the chunk rescaled to its unweighted mean), concatenates the chunks and
   returns the ``prompt_embeds`` / ``negative_prompt_embeds`` (and SDXL ``pooled_*``) pipeline kwargs.

Textual-inversion embeddings (A1111's `sd_hijack_clip.tokenize_line` + `EmbeddingsWithFixes`): while chunking,
tokens that spell an embedding's name become its n vectors' positions (token 0, the piece's weight), kept together
in one chunk; while encoding, a forward hook on the token-embedding module puts the vectors at those positions, so
emphasis, clip skip and SDXL's pooled output (taken at EOS) treat them like any token.

transformers 5 note: `CLIPTextModel` *is* the text transformer (``model.final_layer_norm``); only
`CLIPTextModelWithProjection` keeps it under ``model.text_model``. `_final_layer_norm` handles both.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

from pipelines.errors import BadRequest

if TYPE_CHECKING:
    from pipelines.engine.embeddings import EmbeddingSet, TokenEmbedding, Vocabulary

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


def _pieces(tokens: list[int], vocab: "Vocabulary | None") -> Iterator[int | TokenEmbedding]:
    """A piece's tokens, with every run of tokens that spells an embedding's name given as that embedding (the
    longest name starting at each position: A1111's `find_embedding_at_position`)."""
    position = 0
    while position < len(tokens):
        found = vocab.find(tokens, position) if vocab is not None else None
        if found is None:
            yield tokens[position]
            position += 1
        else:
            yield found
            position += len(found.ids)


def count_tokens(text: str, tokenizer, vocab: "Vocabulary | None" = None) -> int:
    """Prompt length in tokens after emphasis parsing (no BOS/EOS), for UI hints; an embedding counts as its
    number of vectors."""
    return sum(1 if isinstance(piece, int) else piece.count
               for item in _weighted_tokens(text, tokenizer) if item for piece in _pieces(item[0], vocab))


@dataclass
class Chunk:
    """One 77-token chunk: ids laid out like the tokenizer's ``padding="max_length"`` output, a weight per id, and
    the embeddings placed in it as (offset among its 75 tokens, embedding); their positions hold token 0."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, TokenEmbedding]] = field(default_factory=list)


def tokenize_prompt(text: str, tokenizer, vocab: "Vocabulary | None" = None) -> list[Chunk]:
    """The prompt's chunks: BOS, up to 75 tokens, EOS, pad (weight 1.0 for the specials). A full chunk breaks after
    a comma among its last 20 tokens when there is one; an embedding whose vectors do not fit in the chunk starts
    the next one (A1111's `tokenize_line`)."""
    comma = tokenizer(",", add_special_tokens=False).input_ids[-1]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    raw: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def close(rest: Chunk | None = None) -> None:
        nonlocal chunk, last_comma
        raw.append(chunk)
        chunk, last_comma = rest or Chunk(), -1

    def break_full_chunk() -> None:
        near = last_comma >= 0 and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK
        cut = last_comma + 1 if near else CHUNK_TOKENS  # break after the comma, carry the rest over
        rest = Chunk(chunk.ids[cut:], chunk.weights[cut:], [(at - cut, e) for at, e in chunk.fixes if at >= cut])
        del chunk.ids[cut:], chunk.weights[cut:]
        chunk.fixes[:] = [(at, e) for at, e in chunk.fixes if at < cut]
        close(rest)

    for item in _weighted_tokens(text, tokenizer):
        if item is None:
            close()
            continue
        tokens, weight = item
        for piece in _pieces(tokens, vocab):
            if len(chunk.ids) == CHUNK_TOKENS:
                break_full_chunk()
            if isinstance(piece, int):
                if piece == comma:
                    last_comma = len(chunk.ids)
                chunk.ids.append(piece)
                chunk.weights.append(weight)
                continue
            if len(chunk.ids) + piece.count > CHUNK_TOKENS:  # its vectors stay together, in the next chunk
                close()
            chunk.fixes.append((len(chunk.ids), piece))
            chunk.ids += [0] * piece.count
            chunk.weights += [weight] * piece.count
    if chunk.ids or not raw:
        close()

    for c in raw:
        fill = CHUNK_TOKENS - len(c.ids)
        c.ids = [bos, *c.ids, eos] + [pad] * fill
        c.weights = [1.0, *c.weights, 1.0] + [1.0] * fill
    return raw


def prompt_chunks(text: str, tokenizer, vocab: "Vocabulary | None" = None) -> list[tuple[list[int], list[float]]]:
    """Token ids and weights of each 77-token chunk (`tokenize_prompt` without the embeddings' placement)."""
    return [(c.ids, c.weights) for c in tokenize_prompt(text, tokenizer, vocab)]


@contextmanager
def _embeddings_placed(encoder, rows: list[list[tuple[int, torch.Tensor]]]) -> Iterator[None]:
    """While inside, the encoder's token embeddings of row i at each (offset, vectors) of rows[i] are those vectors
    (offset + 1: after BOS), as A1111's `EmbeddingsWithFixes` does; position embeddings are added after. A forward
    hook on the token-embedding module, removed on the way out: nothing is patched for longer than the call."""
    if not any(rows):
        yield
        return

    def place(module, args, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, fixes in enumerate(rows):
            for offset, vectors in fixes:
                n = min(output.shape[1] - offset - 1, vectors.shape[0])
                output[row, offset + 1:offset + 1 + n] = vectors[:n].to(output.device, output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(place)
    try:
        yield
    finally:
        handle.remove()


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


def _encode(chunks: list[Chunk], encoder, clip_skip: int, sdxl: bool, want_pooled: bool,
            vocab: "Vocabulary | None" = None):
    """Embeddings [n_chunks, 77, dim] (emphasis applied) and the pooled text_embeds of every chunk (or None); the
    chunks' embeddings (`vocab` holds their vectors) replace the token embeddings at their positions."""
    layers = encoder.config.num_hidden_layers
    most = layers - 1 if sdxl else layers  # SDXL already skips one layer; never fall through to the embeddings
    if not 1 <= clip_skip <= most:
        raise BadRequest(f"clip_skip must be between 1 and {most} for this {layers}-layer text encoder, "
                         f"got {clip_skip}")
    ids = torch.tensor([c.ids for c in chunks], dtype=torch.long, device=encoder.device)
    weights = torch.tensor([c.weights for c in chunks], dtype=torch.float32)
    rows = [[(at, vocab.vectors(e)) for at, e in c.fixes] for c in chunks] if vocab is not None else []
    with torch.no_grad(), _embeddings_placed(encoder, rows):
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


class PromptEmbeds(dict):
    """`encode_prompts`' answer: the pipeline kwargs (a plain dict to the pipeline: ``pipe(**embeds)``) and, as
    `used`, the names of the textual-inversion embeddings the prompts used, in the order they were met."""

    def __init__(self, tensors: dict[str, torch.Tensor], used: tuple[str, ...] = ()):
        super().__init__(tensors)
        self.used = used


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
    embeddings: "EmbeddingSet | None" = None,
) -> PromptEmbeds:
    """Pipeline kwargs for one prompt/negative pair (batch 1; the caller repeats).

    SD 1.x/2.x: one tokenizer/encoder; clip_skip 1 = last layer (with final layer norm), N>1 =
    ``final_layer_norm(hidden_states[-N])``. SDXL: two of each; every encoder uses ``hidden_states[-(clip_skip+1)]``
    (penultimate by default, no final norm), concatenated on the last dim; pooled = ``text_embeds`` of the second
    encoder on the first chunk. ``zero_empty_negative`` returns zeros for an empty negative (SDXL's
    ``force_zeros_for_empty_prompt``). ``embeddings``: the textual-inversion embeddings the encoders can use
    (pipelines/engine/embeddings.py); the names of those the prompts used come back as ``result.used``.
    """
    pairs = list(zip(tokenizers, text_encoders))
    if len(pairs) != (2 if sdxl else 1):
        raise ValueError(f"expected {2 if sdxl else 1} tokenizer/text encoder pair(s), got {len(pairs)}")
    zero_negative = zero_empty_negative and not negative.strip()

    pos_parts, neg_parts, pooled, used = [], [], None, {}
    for index, (tokenizer, encoder) in enumerate(pairs):
        vocab = embeddings.vocabulary(index) if embeddings is not None else None
        pos = tokenize_prompt(prompt, tokenizer, vocab)
        neg = tokenize_prompt("" if zero_negative else negative, tokenizer, vocab)
        empty = tokenize_prompt("", tokenizer)[0]
        n = max(len(pos), len(neg))
        pos += [empty] * (n - len(pos))
        neg += [empty] * (n - len(neg))
        used.update((e.name, None) for c in pos + neg for _, e in c.fixes)
        z, pooled_all = _encode(pos + neg, encoder, clip_skip, sdxl, want_pooled=sdxl and index == 1, vocab=vocab)
        pos_parts.append(z[:n].reshape(1, -1, z.shape[-1]))
        neg_parts.append(z[n:].reshape(1, -1, z.shape[-1]))
        if pooled_all is not None:
            pooled = (pooled_all[0:1], pooled_all[n:n + 1])

    def finish(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    result = PromptEmbeds({
        "prompt_embeds": finish(torch.cat(pos_parts, dim=-1)),
        "negative_prompt_embeds": finish(torch.cat(neg_parts, dim=-1)),
    }, used=tuple(used))
    if sdxl:
        result["pooled_prompt_embeds"] = finish(pooled[0])
        result["negative_pooled_prompt_embeds"] = finish(pooled[1])
    if zero_negative:
        for key in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
            if key in result:
                result[key] = torch.zeros_like(result[key])
    return result
