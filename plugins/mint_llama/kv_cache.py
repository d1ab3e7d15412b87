"""A KV cache for greedy generation that writes new keys/values in place instead of concatenating.

transformers' ``DynamicCache`` grows each layer with ``torch.cat`` at every decoding step, so step
``t`` copies the whole cache of ``t`` positions again. ``ReservedCache`` reserves each layer's room
for the prompt plus ``max_new_tokens`` once and hands attention a view of the filled part. The
stored values and the attention inputs are the same numbers as ``DynamicCache``'s, so greedy
answers are identical (tested in ``tests/test_llama_text.py``). Unlike ``StaticCache`` it attends
only over the positions filled so far (a static cache attends over its full length from the first
step, which was slower here).

Measured on the demo's 60 answers (batch 64, alternating runs, benchmarks/README.md): ORPO student,
fp32, 2-core AVX2 CPU 71.6 / 79.4 s -> 62.2-66.2 s (4 runs). On AVX512-BF16 hosts no difference
beyond the run-to-run spread, fp32 (DynamicCache 59.0 / 65.7 s, reserved 60.8 / 62.2) nor bf16; nor
for the base student's longer answers on AVX2. Kept for the AVX2 gain; it costs nothing elsewhere.

:func:`prefill_by_length` fills such a cache with a batch's prompts a few at a time, sorted by
length, instead of in one padded forward: the demo's answers unchanged, its prefill a third shorter.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer reserved up front (grown by doubling if short)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = max(1, int(capacity))
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._keys is None or self._length + new > self._keys.shape[-2] or self.keys.shape[-2] != self._length:
            self._reserve(max(self.capacity, 2 * (self._length + new)), key_states, value_states)
        end = self._length + new
        self._keys[..., self._length:end, :].copy_(key_states)
        self._values[..., self._length:end, :].copy_(value_states)
        self._length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def _reserve(self, size: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # Also reached when something outside ``update`` replaced ``self.keys`` (crop, batch selection):
        # start again from what the layer holds now.
        held_k = self.keys if self.keys is not None and self.keys.numel() else None
        held_v = self.values if held_k is not None else None
        self._length = 0 if held_k is None else held_k.shape[-2]
        size = max(size, self._length + key_states.shape[-2])
        self._keys = key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1]))
        self._values = value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1]))
        if held_k is not None:
            self._keys[..., :self._length, :].copy_(held_k)
            self._values[..., :self._length, :].copy_(held_v)


class ReservedCache(DynamicCache):
    """A ``DynamicCache`` of :class:`ReservedLayer` s with room for ``capacity`` positions each."""

    def __init__(self, capacity: int):
        Cache.__init__(self, layer_class_to_replicate=lambda: ReservedLayer(capacity))


#: Prompts a prefill forward holds at most (rows sorted by length first). One forward over the demo's
#: 60 prompts (left-padded to 132 positions) took 17.8 s on a 2-core AVX2 host in fp32; the same
#: prompts by length in groups of 30 / 15 / 8 took 13.0 / 12.1 / 12.9 s (medians of 3, alternating,
#: benchmarks/README.md, 2026-12-08). Less padding (7,920 -> 6,720 positions) is a sixth of the
#: gain; the rest is the smaller forward (its allocations among it). Measured on CPU only.
PREFILL_ROWS = 16


def prefill_by_length(model: Any, rows: Sequence[Sequence[int]], *, pad_id: int, capacity: int,
                      rows_per_group: int | None = None) -> ReservedCache:
    """A cache holding each prompt's keys and values but its last token's, laid out as one left-padded batch.

    ``generate`` given this cache and the whole left-padded batch runs only the last column (every
    row's last prompt token) and decodes on. The prompts are prefilled by length, ``rows_per_group``
    at a time (:data:`PREFILL_ROWS`), each group left-padded to its own longest prompt, and their
    states copied into place: row ``r``'s tokens at the batch's positions ``width - len(r)`` on,
    zeros before them (masked, as padding is). A row's states depend on the other rows of its
    forward only through the kernels' blocking and the padding, so they differ from one padded
    forward's by rounding at most: the demo's 120 greedy answers were identical (fp32, AVX2 host,
    benchmarks/README.md), and the tiny model's are (tests/test_llama_text.py).
    """
    size = max(1, int(rows_per_group or PREFILL_ROWS))
    width = max(len(row) for row in rows)
    cache = ReservedCache(capacity=capacity)
    heads = [list(row[:-1]) for row in rows]
    if width < 2:  # nothing before any row's last token
        return cache
    groups = -(-len(rows) // size)
    size = -(-len(rows) // groups)  # even groups: 60 rows at 16 -> 4 of 15
    order = sorted(range(len(rows)), key=lambda i: len(heads[i]))
    filled: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(order), size):
        members = [i for i in order[start:start + size] if heads[i]]
        if not members:
            continue
        ids, mask = left_pad([heads[i] for i in members], pad_id=pad_id, device=model.device)
        positions = left_pad_positions(mask)
        group = DynamicCache()
        model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=group, use_cache=True,
              logits_to_keep=1)
        for layer, held in enumerate(group.layers):
            if len(filled) <= layer:
                shape = (len(rows), held.keys.shape[1], width - 1)
                filled.append((held.keys.new_zeros(*shape, held.keys.shape[-1]),
                               held.values.new_zeros(*shape, held.values.shape[-1])))
            keys, values = filled[layer]
            for j, i in enumerate(members):
                n = len(heads[i])
                keys[i, :, width - 1 - n:] = held.keys[j, :, -n:]
                values[i, :, width - 1 - n:] = held.values[j, :, -n:]
    for layer, (keys, values) in enumerate(filled):
        cache.update(keys, values, layer)
    return cache


def left_pad(rows: Sequence[Sequence[int]], *, pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one ``[len(rows), longest]`` batch padded on the left, and its attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row))
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def left_pad_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch as ``generate`` numbers them: each row's tokens 0..n-1, padding 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
