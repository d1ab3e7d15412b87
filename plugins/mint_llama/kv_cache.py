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
"""

from __future__ import annotations

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
