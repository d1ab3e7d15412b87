"""Eager attention that skips the blocks of a packed row its mask throws away.

A packed row is ``[prompt | answer_1 | answer_2]`` (:mod:`mint_engine.packing`): each answer
attends to the prompt and to itself, never to the other answer. transformers' eager attention
computes the scores of the whole ``L x L`` square and lets the mask zero what is not allowed; on
the demo's batches (prompts ~105 tokens, answers ~135 each) 35% of that square lies where no query
may look: between the two answers, and from the prompt to the second answer. This kernel computes,
per row block,

- the prompt and the first answer: the ``[P + C]^2`` square, exactly as eager does on it;
- every later answer: its queries against the prompt's keys and its own, and nothing else.

Each block runs eager's operations (scaled product, additive mask, softmax in float32, product with
the values); the columns a block leaves out are ones eager's softmax gives exactly zero weight, so
the two agree to the rounding of the softmax's sum and the products' lengths (tested against
eager in fp32, values and gradients). Without ``segment_bounds`` (generation, padding-free rows,
any other caller) it is eager attention over the whole row.

Over the demo's 40 batches the kernel scores 17.1 M (query, key) pairs per layer and head where
eager scores 26.5 M (the causal pairs needed: 8.2 M; the rest are the blocks' upper triangles and
padding). The demo's training step, bf16 autocast, 2-core AVX512-BF16 host, the same 6 batches
alternating with eager in one process, 8 rounds: 1.654 -> 1.532 s median, faster in every round;
one layer's attention forward and backward alone 38-45 -> 22-30 ms (benchmarks/README.md,
2026-12-07).

It is registered with transformers under :data:`NAME` and chosen by ``optimizer.attention=auto``
on CPU for Llama-architecture students (:func:`mint_engine.compute.choose_attention`); other
architectures may add sliding windows, soft-capping or sinks to their eager attention, which this
kernel does not reproduce, so they keep their own.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mint_core.decoder import register_mask_kind

#: The name transformers knows this kernel by (``config._attn_implementation``).
NAME = "mint_segments"

#: Architectures whose eager attention is exactly :func:`_attend` over repeated KV heads.
ARCHITECTURES = frozenset({"llama"})


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
            scaling: float, dropout: float, training: bool) -> torch.Tensor:
    """Eager attention's arithmetic on one block (transformers' ``eager_attention_forward``)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is not None:
        weights = weights + mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=training)
    return torch.matmul(weights, value)


def segment_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                      segment_bounds: Sequence[int] | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; ``segment_bounds`` = ``(P, P + C, P + C + R, ...)``:
    the column where the prompt block ends, then where each answer block ends (the row's length last)."""
    from transformers.models.llama.modeling_llama import repeat_kv  # here: packing imports NAME at start-up

    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    training = module.training
    length = query.shape[2]
    bounds = [int(b) for b in segment_bounds] if segment_bounds is not None and attention_mask is not None else []
    if len(bounds) < 3 or bounds[-1] != length or key.shape[2] != length:
        out = _attend(query, key, value, attention_mask, scaling, dropout, training)
        return out.transpose(1, 2).contiguous(), None
    prompt, first = bounds[0], bounds[1]
    mask = attention_mask
    blocks = [_attend(query[:, :, :first], key[:, :, :first], value[:, :, :first], mask[:, :, :first, :first],
                      scaling, dropout, training)]
    for start, stop in zip(bounds[1:-1], bounds[2:]):
        if stop == start:
            continue
        keys = torch.cat((key[:, :, :prompt], key[:, :, start:stop]), dim=2)
        values = torch.cat((value[:, :, :prompt], value[:, :, start:stop]), dim=2)
        block_mask = torch.cat((mask[:, :, start:stop, :prompt], mask[:, :, start:stop, start:stop]), dim=3)
        blocks.append(_attend(query[:, :, start:stop], keys, values, block_mask, scaling, dropout, training))
    return torch.cat(blocks, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make :data:`NAME` known to transformers (attention and mask functions); idempotent. Returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, segment_attention)
    # The model builds its own mask when none is given (a trainer callback generating mid-run).
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    register_mask_kind(NAME, "additive")
    return NAME


def supports(model: Any) -> bool:
    """Whether ``model``'s eager attention is the arithmetic this kernel reproduces."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in ARCHITECTURES and getattr(config, "text_config", None) is None
