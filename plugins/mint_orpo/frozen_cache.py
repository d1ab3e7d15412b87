"""The frozen-bottom cache: the hidden states of the decoder layers below the adapter, computed once.

With LoRA on the top N decoder layers only (``student.lora_layers``), the embeddings and the layers
below the lowest adapted one never change during training, so their output for a training pair is
the same in every epoch. :class:`FrozenBottomCache` runs that frozen bottom once per pair (no
gradients) and keeps the hidden state entering the first adapted layer for every token of
``[prompt, chosen, rejected]``; each training step then runs only the top layers, the final norm
and the vocabulary projection, through the model's own ``forward`` (``inputs_embeds`` = the cached
states, the decoder's layer list cut to its top for the call, see :func:`decoder_slice`).

Why this is exact: in the packed layout (:mod:`mint_orpo.packing`) a token attends only to tokens
of its own pair, so its hidden state at any layer does not depend on which other pairs share the
batch or on padding. The cache stores each pair's tokens in packed order; a batch's states are
put back where ``segment_ids`` marks real tokens (row-major order is pair by pair, prompt, chosen,
rejected, for the padded and the padding-free packed layout alike). Padding gets zeros: padding
queries attend only to themselves and no real token attends to them.

Cost: ``tokens x hidden_size x 4`` bytes of memory (fp32), e.g. 160 pairs x ~370 tokens x 576
(SmolLM2-135M) = ~136 MB; kept in memory, rebuilt when a run resumes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from mint_orpo.packing import build_pair_mask, collate_packed


def decoder_of(model: Any) -> Any | None:
    """The decoder stack (a module with ``layers``, ``norm`` and ``embed_tokens``) inside a causal LM, or ``None``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "model", None)
    if all(hasattr(decoder, name) for name in ("layers", "norm", "embed_tokens")):
        return decoder
    return None


def _is_frozen(module: nn.Module) -> bool:
    """No trainable parameter and no adapter module (an inactive adapter could still be switched on)."""
    if any(p.requires_grad for p in module.parameters()):
        return False
    return not any(hasattr(m, "lora_A") for m in module.modules())


def frozen_depth(model: Any) -> int:
    """How many bottom decoder layers (embeddings frozen too) have no adapter and no trainable weight."""
    decoder = decoder_of(model)
    if decoder is None or not _is_frozen(decoder.embed_tokens):
        return 0
    for index, layer in enumerate(decoder.layers):
        if not _is_frozen(layer):
            return index
    return len(decoder.layers)


@contextlib.contextmanager
def decoder_slice(decoder: Any, start: int, stop: int | None, *, final_norm: bool = True) -> Iterator[None]:
    """Within the block the decoder runs only ``layers[start:stop]`` (and its final norm if ``final_norm``)."""
    layers, norm = decoder.layers, decoder.norm
    decoder.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        decoder.norm = nn.Identity()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = layers, norm


class FrozenBottomCache:
    """Per training pair, the hidden states ``[tokens, hidden]`` entering decoder layer ``depth``."""

    def __init__(self, depth: int, states: Sequence[torch.Tensor]) -> None:
        self.depth = int(depth)
        self.states = list(states)

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)

    @classmethod
    def build(cls, model: Any, features: Sequence[dict[str, Any]], *, depth: int, mask_kind: str,
              pad_id: int = 0, batch_size: int = 8) -> FrozenBottomCache:
        """Run the frozen bottom (embeddings + ``layers[:depth]``) once over every pair feature."""
        decoder = decoder_of(model)
        if decoder is None or depth <= 0:
            raise ValueError("the frozen-bottom cache needs a decoder whose bottom layers carry no adapter")
        device = decoder.embed_tokens.weight.device
        states: list[torch.Tensor] = []
        with torch.no_grad(), decoder_slice(decoder, 0, depth, final_norm=False):
            for start in range(0, len(features), batch_size):
                batch = collate_packed(features[start:start + batch_size], pad_id=pad_id, nll_on_prompt=False)
                seg = batch["segment_ids"].to(device)
                mask = build_pair_mask(seg, kind=mask_kind, dtype=decoder.embed_tokens.weight.dtype)
                hidden = decoder(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                                 position_ids=batch["position_ids"].to(device), use_cache=False).last_hidden_state
                states += [hidden[row][seg[row] >= 0].float().clone() for row in range(hidden.shape[0])]
        return cls(depth, states)

    def batch_states(self, segment_ids: torch.Tensor, feature_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The cached states laid out like a packed batch (``segment_ids`` ``[rows, L]``), zeros at padding."""
        real = segment_ids >= 0
        values = torch.cat([self.states[int(i)] for i in feature_index.tolist()]).to(segment_ids.device, dtype)
        if values.shape[0] != int(real.sum()):
            raise ValueError("frozen-bottom cache: the batch's tokens do not match the cached pairs "
                             "(features changed after the cache was built?)")
        hidden = values.new_zeros((*segment_ids.shape, values.shape[-1]))
        hidden[real] = values
        return hidden

    def forward(self, model: Any, kwargs: dict[str, Any], *, segment_ids: torch.Tensor,
                feature_index: torch.Tensor, dtype: torch.dtype) -> Any:
        """``model(**kwargs)`` with the bottom replaced by the cache: ``input_ids`` become ``inputs_embeds``."""
        kwargs = {k: v for k, v in kwargs.items() if k != "input_ids"}
        kwargs["inputs_embeds"] = self.batch_states(segment_ids, feature_index, dtype)
        with decoder_slice(decoder_of(model), self.depth, None):
            return model(**kwargs)


def cache_plan(model: Any, option: str, *, packed: bool, features: Sequence[dict[str, Any]],
               disable_dropout: bool) -> tuple[int, str]:
    """(frozen depth to cache, 0 = no cache; reason) for the ``cache_frozen`` option: auto, true, false.

    ``auto`` caches whenever it is exact: packed text pairs, at least one frozen bottom layer, dropout off.
    """
    text = str(option).strip().lower()
    if text not in {"auto", "true", "false"}:
        raise ValueError(f"optimizer.cache_frozen={option!r}: use auto, true or false")
    if text == "false":
        return 0, "off"
    depth = frozen_depth(model)
    problem = ("the layout is not the packed one" if not packed else
               "image inputs" if any(f.get("extras") for f in features) else
               "dropout is on (optimizer.disable_dropout=false)" if not disable_dropout else
               "no frozen bottom layer (set student.lora_layers to adapt only the top layers)" if depth == 0 else
               None)
    if problem:
        if text == "true":
            raise ValueError(f"optimizer.cache_frozen=true is not possible: {problem}; use cache_frozen=auto")
        return 0, problem
    return depth, f"{depth} frozen bottom layers"


def build_for_training(model: Any, features: Sequence[dict[str, Any]], *, depth: int, mask_kind: str,
                       pad_id: int, log: Any = None) -> FrozenBottomCache:
    """:meth:`FrozenBottomCache.build`, logging its size and time (what the cache costs)."""
    began = time.perf_counter()
    cache = FrozenBottomCache.build(model, features, depth=depth, mask_kind=mask_kind, pad_id=pad_id)
    if log is not None:
        tokens = sum(s.shape[0] for s in cache.states)
        log(f"frozen-bottom cache: layers 0-{depth - 1} of {len(decoder_of(model).layers)} for {len(features)} pairs, "
            f"{tokens} tokens, {cache.nbytes / 2**20:.1f} MiB, built in {time.perf_counter() - began:.1f} s")
    return cache
