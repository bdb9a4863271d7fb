"""The model folders as the Networks panel and the advisor see them: every LoRA, embedding and checkpoint with its
family, its thumbnail and, judged against the selected checkpoint, why it does not fit (`Networks`,
pipelines/params/networks.py). The studio gathers the listings (`Studio.networks`); this module only describes
them. No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from pipelines.discovery import FAMILIES, CheckpointInfo
from pipelines.folders import preview_of
from pipelines.networks.embeddings import EmbeddingInfo, compatible
from pipelines.networks.loras import LoraInfo, incompatibility
from pipelines.params.networks import NetworkItem, Networks


def _path(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def lora_item(info: LoraInfo, model: CheckpointInfo | None, context: int | None) -> NetworkItem:
    family = info.family_label if info.family != "unknown" else (
        f"{info.context_dim}-wide cross-attention" if info.context_dim else "unknown family")
    if info.error:
        problem: str | None = f"cannot be read: {info.error}"
    elif model is not None:
        problem = incompatibility(info, model.family, context)
    else:
        problem = None
    rel_stem = info.rel.rsplit(".", 1)[0]
    aliases = tuple(dict.fromkeys(a for a in (info.alias, info.rel, rel_stem) if a and a != info.name))
    detail = info.rel + (f" · {', '.join(info.formats)}" if info.formats else "")
    return NetworkItem(info.name, family, problem, _path(info.preview), aliases, detail)


def embedding_item(info: EmbeddingInfo, te_dims: tuple[int, ...] | None) -> NetworkItem:
    family = info.family or ("/".join(map(str, info.dims)) + "-wide text encoder" if info.dims else "unknown family")
    detail = f"{info.vectors} vector{'s' if info.vectors != 1 else ''}" if info.vectors else ""
    return NetworkItem(info.name, family, compatible(info, te_dims), _path(info.preview), (), detail)


def checkpoint_item(info: CheckpointInfo) -> NetworkItem:
    family = FAMILIES[info.family].label if info.family in FAMILIES else info.family
    preview = preview_of(info.path) if info.path is not None else None
    detail = "hub, downloads on first use" if info.source == "hub" else f"{info.native}px"
    problem = f"cannot be used: {info.error}" if info.error else None
    return NetworkItem(info.name, family, problem, _path(preview), (info.title,) if info.title != info.name else (),
                       detail)


def describe(model: CheckpointInfo | None, loras: Iterable[LoraInfo], context: int | None,
             embeddings: Iterable[EmbeddingInfo], te_dims: tuple[int, ...] | None,
             checkpoints: Sequence[CheckpointInfo], lora_folder: Path | str) -> Networks:
    """Everything listed, judged against `model` (its cross-attention width `context` and text-encoder widths
    `te_dims`); `model` None: nothing is judged."""
    return Networks(
        model=model.name if model is not None else "",
        loras=tuple(lora_item(i, model, context) for i in loras),
        embeddings=tuple(embedding_item(e, te_dims) for e in embeddings),
        checkpoints=tuple(checkpoint_item(c) for c in checkpoints),
        lora_folder=str(lora_folder),
    )
