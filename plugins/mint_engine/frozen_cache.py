"""The frozen-bottom cache: the hidden states of the decoder layers below the adapter, computed once.

With LoRA on the top N decoder layers only (``student.lora_layers``), the embeddings and the layers
below the lowest adapted one never change during training, so their output for a training pair is
the same in every epoch. :class:`FrozenBottomCache` runs that frozen bottom once per pair (no
gradients) and keeps the hidden state entering the first adapted layer for every token of
``[prompt, chosen, rejected]``; each training step then runs only the top layers, the final norm
and the vocabulary projection, through the model's own ``forward`` (``inputs_embeds`` = the cached
states, the decoder's layer list cut to its top for the call, see :func:`decoder_slice`).

Why this is exact: in the packed layout (:mod:`mint_engine.packing`) a token attends only to tokens
of its own pair, so its hidden state at any layer does not depend on which other pairs share the
batch or on padding. The cache stores each pair's tokens in packed order; a batch's states are
put back where ``segment_ids`` marks real tokens (row-major order is pair by pair, prompt, chosen,
rejected, for the padded and the padding-free packed layout alike). Padding gets zeros: padding
queries attend only to themselves and no real token attends to them.

Vision students (Mllama): the language model's layers below its first cross-attention layer never
see the image (Mllama skips a cross-attention layer's input only where it is; below it, a token's
state is a function of the text alone), so the cache covers them too and each step runs the vision
tower, the projector, the cross-attention layer and the layers above it. The cached depth never
reaches the first cross-attention layer, whatever is frozen.

Cost: ``tokens x hidden_size x 4`` bytes of memory (fp32), e.g. 160 pairs x ~370 tokens x 576
(SmolLM2-135M) = ~136 MB; kept in memory, rebuilt when a run resumes. Under several processes each
builds the states of its own pairs only (:mod:`mint_engine.sharding`): 1/N of that per process.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from mint_core.decoder import (attention_implementation, cross_attention_layers, decoder_of, decoder_slice,
                               mask_kind_for)
from mint_engine.compute import choose_attention, set_attention
from mint_engine.packing import SEG_PAD, SEG_PROMPT, build_pair_mask


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
    # Layers from the first cross-attention layer on depend on the image: never cached.
    image_free = min(cross_attention_layers(decoder) or [len(decoder.layers)])
    for index, layer in enumerate(list(decoder.layers)[:image_free]):
        if not _is_frozen(layer):
            return index
    return image_free


class FrozenBottomCache:
    """Per training pair, the hidden states ``[tokens, hidden]`` entering decoder layer ``depth``.

    ``states`` maps a feature's index to its states. A batch may hold a feature that was not built
    (a process meeting another's feature at the end of an uneven epoch): :meth:`forward` computes its
    states then, from ``features`` (the same run of the frozen bottom), and keeps them.
    """

    def __init__(self, depth: int, states: dict[int, torch.Tensor], *, features: Sequence[dict[str, Any]] = (),
                 mask_kind: str = "bool", pad_id: int = 0, autocast: torch.dtype | None = None) -> None:
        self.depth = int(depth)
        self.states = dict(states)
        self.features, self.mask_kind, self.pad_id = list(features), mask_kind, int(pad_id)
        #: The mixed-precision dtype training runs the layers in: the bottom runs in it too, so the
        #: cached states are the ones the model would compute in that step.
        self.autocast = autocast

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states.values())

    @classmethod
    def build(cls, model: Any, features: Sequence[dict[str, Any]], *, depth: int, mask_kind: str,
              pad_id: int = 0, batch_size: int = 8, row_tokens: int = 1024,
              indices: Sequence[int] | None = None, autocast: torch.dtype | None = None) -> FrozenBottomCache:
        """Run the frozen bottom (embeddings + ``layers[:depth]``) once over the pair features ``indices``
        (default: all of them).

        Pairs with the same prompt tokens share one run of that prompt: a row holds the prompt once
        and then the answers of several pairs, each attending to the prompt and to itself only (the
        packed layout's rule, one segment per answer; up to ``row_tokens`` tokens a row). In the
        tissue task every tile has the same prompt text, so this runs ~40% of the tokens a row per
        pair would; a prompt's bottom states cannot depend on the answers after it.
        """
        cache = cls(depth, {}, features=features, mask_kind=mask_kind, pad_id=pad_id, autocast=autocast)
        cache.fill(model, range(len(features)) if indices is None else indices, batch_size=batch_size,
                   row_tokens=row_tokens)
        return cache

    def fill(self, model: Any, indices: Sequence[int] | range, *, batch_size: int = 8, row_tokens: int = 1024) -> None:
        """Compute and keep the states of the features ``indices`` (see :meth:`build`)."""
        decoder = decoder_of(_unwrapped(model))
        if decoder is None or self.depth <= 0:
            raise ValueError("the frozen-bottom cache needs a decoder whose bottom layers carry no adapter")
        device = decoder.embed_tokens.weight.device
        rows = _shared_prompt_rows(self.features, row_tokens=row_tokens, indices=indices)
        mixed = torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)
        with torch.no_grad(), mixed, decoder_slice(decoder, 0, self.depth, final_norm=False), \
                _forward_only_attention(_unwrapped(model), self.mask_kind) as mask_kind:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                length = max(len(row["ids"]) for row in chunk)
                ids = torch.full((len(chunk), length), self.pad_id, dtype=torch.long)
                seg = torch.full((len(chunk), length), SEG_PAD, dtype=torch.long)
                pos = torch.zeros((len(chunk), length), dtype=torch.long)
                for r, row in enumerate(chunk):
                    n = len(row["ids"])
                    ids[r, :n], seg[r, :n], pos[r, :n] = (torch.tensor(row[k]) for k in ("ids", "seg", "pos"))
                mask = build_pair_mask(seg.to(device), kind=mask_kind,
                                       dtype=torch.float32 if self.autocast else decoder.embed_tokens.weight.dtype)
                hidden = decoder(input_ids=ids.to(device), attention_mask=mask, position_ids=pos.to(device),
                                 use_cache=False).last_hidden_state.float()
                for r, row in enumerate(chunk):
                    prompt = hidden[r, :row["prompt_len"]]
                    for index, (c0, c1), (r0, r1) in row["pairs"]:
                        self.states[index] = torch.cat([prompt, hidden[r, c0:c1], hidden[r, r0:r1]]).clone()

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
        """``model(**kwargs)`` with the bottom replaced by the cache: ``input_ids`` become ``inputs_embeds``.

        ``model`` may be wrapped (DDP): the call goes through the wrapper, the layers are cut inside it.
        """
        missing = [int(i) for i in feature_index.tolist() if int(i) not in self.states]
        if missing:
            self.fill(model, missing)
        kwargs = {k: v for k, v in kwargs.items() if k != "input_ids"}
        kwargs["inputs_embeds"] = self.batch_states(segment_ids, feature_index, dtype)
        with decoder_slice(decoder_of(_unwrapped(model)), self.depth, None):
            return model(**kwargs)


@contextmanager
def _forward_only_attention(model: Any, mask_kind: str) -> Iterator[str]:
    """sdpa instead of eager for the no-grad bottom; yields the mask kind to build.

    MINT trains with eager attention on CPU because sdpa's masked CPU kernel is slower *with its
    backward*; without gradients it is the faster one (the demo's cache: 56-58 s eager, 44-46 s sdpa).
    Both compute the same attention: states agree to fp32 rounding (tests/test_frozen_cache.py), and
    under bf16 autocast they differ by bf16 rounding, as any change of kernel or batch shape does.
    """
    if mask_kind_for(model) != "additive":  # not eager (or MINT's segment kernel): keep the model's own
        yield mask_kind
        return
    device = decoder_of(model).embed_tokens.weight.device
    training_kernel = attention_implementation(model)
    choose_attention(model, "sdpa", device=device)
    try:
        yield mask_kind_for(model)
    finally:
        set_attention(model, training_kernel)


def _unwrapped(model: Any) -> Any:
    """The model inside a DDP / DeepSpeed wrapper (``.module``), else ``model``."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):
        model = model.module
    return model


def _shared_prompt_rows(features: Sequence[dict[str, Any]], *, row_tokens: int,
                       indices: Sequence[int] | range | None = None) -> list[dict[str, Any]]:
    """Rows ``[prompt, chosen_1, rejected_1, chosen_2, ...]`` for pairs sharing a prompt.

    Segment 0 is the prompt and every answer has its own segment (so :func:`build_pair_mask` lets it
    see the prompt and itself); positions restart after the prompt for each answer, as in a pair's
    own packed row. ``pairs`` holds (feature index, chosen span, rejected span) per pair.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index in range(len(features)) if indices is None else indices:
        groups.setdefault(tuple(features[index]["prompt_ids"]), []).append(index)
    rows: list[dict[str, Any]] = []
    for prompt, members in groups.items():
        row: dict[str, Any] | None = None
        for index in members:
            answers = [list(features[index]["chosen_ids"]), list(features[index]["rejected_ids"])]
            if row is None or (row["pairs"] and len(row["ids"]) + sum(map(len, answers)) > row_tokens):
                row = {"ids": list(prompt), "seg": [SEG_PROMPT] * len(prompt), "pos": list(range(len(prompt))),
                       "prompt_len": len(prompt), "pairs": []}
                rows.append(row)
            spans = []
            for answer in answers:
                begin, segment = len(row["ids"]), len(row["pairs"]) * 2 + len(spans) + 1
                row["ids"] += answer
                row["seg"] += [segment] * len(answer)
                row["pos"] += range(len(prompt), len(prompt) + len(answer))
                spans.append((begin, len(row["ids"])))
            row["pairs"].append((index, *spans))
    return rows


def cache_plan(model: Any, option: str, *, packed: bool, features: Sequence[dict[str, Any]],
               disable_dropout: bool) -> tuple[int, str]:
    """(frozen depth to cache, 0 = no cache; reason) for the ``cache_frozen`` option: auto, true, false.

    ``auto`` caches whenever it is exact: packed pairs, at least one frozen bottom layer (below the first
    cross-attention layer for a vision student), dropout off.
    """
    text = str(option).strip().lower()
    if text not in {"auto", "true", "false"}:
        raise ValueError(f"optimizer.cache_frozen={option!r}: use auto, true or false")
    if text == "false":
        return 0, "off"
    depth = frozen_depth(model)
    problem = ("the layout is not the packed one" if not packed else
               "image inputs to a model without cross-attention layers" if any(f.get("extras") for f in features)
               and not cross_attention_layers(decoder_of(model)) else
               "dropout is on (optimizer.disable_dropout=false)" if not disable_dropout else
               "no frozen bottom layer (set student.lora_layers to adapt only the top layers)" if depth == 0 else
               None)
    if problem:
        if text == "true":
            raise ValueError(f"optimizer.cache_frozen=true is not possible: {problem}; use cache_frozen=auto")
        return 0, problem
    return depth, f"{depth} frozen bottom layers"


def build_for_training(model: Any, features: Sequence[dict[str, Any]], *, depth: int, mask_kind: str,
                       pad_id: int, log: Any = None, indices: Sequence[int] | None = None,
                       autocast: torch.dtype | None = None) -> FrozenBottomCache:
    """:meth:`FrozenBottomCache.build` over ``indices`` (this process's features), logging its size and time."""
    began = time.perf_counter()
    cache = FrozenBottomCache.build(model, features, depth=depth, mask_kind=mask_kind, pad_id=pad_id, indices=indices,
                                    autocast=autocast)
    if log is not None:
        tokens = sum(s.shape[0] for s in cache.states.values())
        share = "" if indices is None else f" (this process's {len(cache.states)} of {len(features)})"
        log(f"frozen-bottom cache: layers 0-{depth - 1} of {len(decoder_of(model).layers)} for {len(cache.states)} "
            f"pairs{share}, {tokens} tokens, {cache.nbytes / 2**20:.1f} MiB, built in {time.perf_counter() - began:.1f} s")
    return cache
