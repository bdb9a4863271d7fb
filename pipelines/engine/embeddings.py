"""Textual-inversion embeddings on the device side: their vectors, and which prompt tokens name one.

pipelines/networks/embeddings.py lists the files (no torch); here `EmbeddingLoader` (one per Engine) reads the
vectors of the embeddings a model can use, keeping them while the file is unchanged, and gives each encode call an
`EmbeddingSet`: per tokenizer / text encoder, the token ids of every usable embedding's NAME (A1111 tokenizes the
name without BOS/EOS) and a lookup of the longest name starting at a prompt position
(A1111's `EmbeddingDatabase.find_embedding_at_position`). pipelines/engine/prompts.py puts the vectors in place.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from pipelines.networks.embeddings import EmbeddingInfo, Embeddings, at, tensor_paths


def load_vectors(path: Path) -> tuple[torch.Tensor, ...]:
    """An embedding file's vectors, one float32 [n, width] tensor per text encoder (SDXL: clip_l, clip_g)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path), device="cpu")
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    out = []
    for where in tensor_paths(data, lambda v: isinstance(v, torch.Tensor)):
        vec = at(data, where).detach().to(torch.float32)
        out.append(vec.reshape(1, -1) if vec.dim() == 1 else vec)
    return tuple(out)


class VectorCache:
    """Loaded vectors by file, kept while its size and mtime stay the same (a second job reads nothing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[int, int, tuple[torch.Tensor, ...]]] = {}

    def get(self, info: EmbeddingInfo) -> tuple[torch.Tensor, ...]:
        st = info.path.stat()
        key = str(info.path)
        with self._lock:
            hit = self._data.get(key)
        if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        vectors = load_vectors(info.path)
        with self._lock:
            self._data[key] = (st.st_size, st.st_mtime_ns, vectors)
        return vectors


@dataclass(frozen=True, eq=False)
class TokenEmbedding:
    """One embedding as one tokenizer / text encoder sees it."""

    info: EmbeddingInfo
    ids: tuple[int, ...]  # the name's token ids
    encoder: int  # which text encoder (0; SDXL: 0 = clip_l, 1 = clip_g)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def count(self) -> int:
        """Positions (vectors) it takes in a chunk."""
        return self.info.vectors


class Vocabulary:
    """The usable embeddings of one tokenizer / text encoder, looked up by the token stream."""

    def __init__(self, items: Iterable[TokenEmbedding], vectors: Callable[[EmbeddingInfo], tuple[torch.Tensor, ...]]):
        self._by_first: dict[int, list[TokenEmbedding]] = {}
        for item in items:
            self._by_first.setdefault(item.ids[0], []).append(item)
        for found in self._by_first.values():
            found.sort(key=lambda e: len(e.ids), reverse=True)  # longest name first; stable: first file wins
        self._vectors = vectors

    def find(self, tokens: Sequence[int], position: int) -> TokenEmbedding | None:
        """The embedding whose name's tokens start at `position` (the longest, when several do)."""
        for item in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position:position + len(item.ids)]) == item.ids:
                return item
        return None

    def vectors(self, item: TokenEmbedding) -> torch.Tensor:
        """[count, width] vectors for this text encoder."""
        return self._vectors(item.info)[item.encoder]


class EmbeddingSet:
    """The embeddings one checkpoint's text encoders can use, with each name tokenized by each tokenizer."""

    def __init__(self, infos: Sequence[EmbeddingInfo], tokenizers: Sequence,
                 vectors: Callable[[EmbeddingInfo], tuple[torch.Tensor, ...]]):
        self.infos = list(infos)
        self.vocabularies = []
        for index, tokenizer in enumerate(tokenizers):
            ids = tokenizer([e.name for e in self.infos], add_special_tokens=False).input_ids if self.infos else []
            self.vocabularies.append(Vocabulary(
                (TokenEmbedding(e, tuple(t), index) for e, t in zip(self.infos, ids) if t), vectors))

    def vocabulary(self, index: int) -> Vocabulary:
        return self.vocabularies[index]


def encoder_widths(text_encoders: Sequence[torch.nn.Module]) -> tuple[int, ...]:
    """Each text encoder's token-embedding width: what an embedding's vectors must match."""
    return tuple(int(e.get_input_embeddings().embedding_dim) for e in text_encoders)


class EmbeddingLoader:
    """The Engine's embeddings: the listing (shared with the studio's API) and the vectors read so far."""

    def __init__(self, listing: Embeddings):
        self.listing = listing
        self.cache = VectorCache()

    def for_encoders(self, tokenizers: Sequence, text_encoders: Sequence[torch.nn.Module]) -> EmbeddingSet | None:
        """The usable embeddings for these components (None when there are none)."""
        usable = self.listing.usable(encoder_widths(text_encoders))
        return EmbeddingSet(usable, tokenizers, self.cache.get) if usable else None

    def ti_hashes(self, names: Iterable[str]) -> str | None:
        """The infotext's `TI hashes` value for the embeddings a job used (by name)."""
        names = list(dict.fromkeys(names))  # in the order the prompts used them
        if not names:
            return None
        listed = {e.name: e for e in self.listing.list()}
        return self.listing.ti_hashes(listed[n] for n in names if n in listed)
