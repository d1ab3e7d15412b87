"""Decoder surgery shared by students and trainers: find a model's decoder stack, run a slice of
its layers, and the attention mask of segment-packed rows.

Two plugins need the same pieces: MINT's packed trainers (``mint_engine``: the frozen-bottom cache
runs the bottom layers once, training runs the top) and the vision student (``mint_llama_vision``:
tiles of one prompt text share the layers below the first cross-attention layer when scoring).
Plugins do not import each other, so the pieces live here. torch is imported only with this module.

Segment packing: a row holds a prompt (segment ``SEG_PROMPT`` = 0) and one or more answers after it
(segments 1, 2, ...); each answer attends to the prompt and to itself, causally; ``SEG_PAD`` (-1)
marks padding.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

SEG_PAD, SEG_PROMPT = -1, 0


def decoder_of(model: Any) -> Any | None:
    """The decoder stack (a module with ``layers``, ``norm`` and ``embed_tokens``) inside a causal LM
    (``model.model``) or a vision-language model (``model.model.language_model``, Mllama), or ``None``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    for decoder in (inner, getattr(inner, "language_model", None)):
        if all(hasattr(decoder, name) for name in ("layers", "norm", "embed_tokens")):
            return decoder
    return None


def cross_attention_layers(decoder: Any) -> list[int]:
    """Indices of an Mllama decoder's cross-attention layers, sorted ([] for a text-only decoder)."""
    return sorted(getattr(decoder, "cross_attention_layers", None) or [])


@contextlib.contextmanager
def decoder_slice(decoder: Any, start: int, stop: int | None, *, final_norm: bool = True) -> Iterator[None]:
    """Within the block the decoder runs only ``layers[start:stop]`` (and its final norm if ``final_norm``).

    Mllama's decoder finds its cross-attention layers by index (``cross_attention_layers``), so those
    indices are shifted to the slice for the block too.
    """
    layers, norm = decoder.layers, decoder.norm
    kept = range(len(layers))[start:stop]
    cross = getattr(decoder, "cross_attention_layers", None)
    decoder.layers = nn.ModuleList(list(layers)[start:stop])
    if cross is not None:
        decoder.cross_attention_layers = [i - kept.start for i in cross if i in kept]
    if not final_norm:
        decoder.norm = nn.Identity()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = layers, norm
        if cross is not None:
            decoder.cross_attention_layers = cross


def build_pair_mask(segment_ids: torch.Tensor, *, kind: str, dtype: torch.dtype = torch.float32,
                    pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The ``[B, 1, L, L]`` attention mask of the packed layout from ``segment_ids`` ``[B, L]``.

    ``kind="bool"`` (True = attend; for sdpa) or ``"additive"`` (0 / dtype min; for eager). A query
    sees a key when both are real tokens of the same pair (``pair_ids``, padding-free rows), the key
    is not later, and the key is in the prompt or in the query's own segment. Padding queries see
    themselves only, so no softmax row is empty (NaN).
    """
    seg = segment_ids.long()
    length = seg.shape[1]
    idx = torch.arange(length, device=seg.device)
    causal = idx[None, :] <= idx[:, None]  # [L(q), L(k)]
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = causal[None] & (q >= 0) & (k >= 0) & ((k == SEG_PROMPT) | (k == q))
    if pair_ids is not None:
        allowed = allowed & (pair_ids[:, :, None] == pair_ids[:, None, :])
    allowed = allowed | (torch.eye(length, dtype=torch.bool, device=seg.device)[None] & (q < 0))
    return mask_as(allowed[:, None], kind=kind, dtype=dtype)


def mask_as(allowed: torch.Tensor, *, kind: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A boolean attention mask (True = attend) in the form ``kind`` takes: as is for ``bool`` (sdpa),
    0 / ``dtype`` min for ``additive`` (eager)."""
    if kind == "bool":
        return allowed
    if kind == "additive":
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)
    raise ValueError(f"mask kind {kind!r}: use 'bool' or 'additive'")


#: The 4D mask form each attention implementation takes; plugins add their own kernels.
_MASK_KINDS: dict[str, str] = {"sdpa": "bool", "eager": "additive"}


def register_mask_kind(implementation: str, kind: str) -> None:
    """Declare that the attention ``implementation`` (a name registered with transformers) takes ``kind``
    masks (``bool`` or ``additive``), so packed layouts build them for it."""
    if kind not in {"bool", "additive"}:
        raise ValueError(f"mask kind {kind!r}: use 'bool' or 'additive'")
    _MASK_KINDS[implementation] = kind


def attention_implementation(model: Any) -> str:
    """The model's attention implementation (``config._attn_implementation``), "" if it has none;
    ``model`` may be wrapped (DDP, DeepSpeed: ``.module``)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")


def mask_kind_for(model: Any) -> str | None:
    """The 4D mask form this model's attention takes (``bool`` sdpa, ``additive`` eager), or ``None`` if none."""
    return _MASK_KINDS.get(attention_implementation(model))
