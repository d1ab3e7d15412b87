"""Pair-aware attention for the packed layout, registered with transformers as ``mint_pairs``.

With one dense 4D mask, sdpa computes every (query, key) score of a packed row
``[pad | prompt | chosen | rejected]`` and throws half of them away: the prompt's upper triangle,
chosen against rejected, the padding. This attention function computes only the blocks the mask
allows, per row and layer:

- the prompt against itself, causal (``is_causal=True``: the kernel skips the upper triangle);
- each answer block against ``[prompt, its own earlier tokens]`` (a small mask);
- left padding gets a zero output (no real token ever reads it).

That is the same attention as the dense mask for every real token (tests compare log-probs, loss
and gradients with the two-sequence computation), at about half the attention cost for MINT's
long-prompt, short-answer pairs. The model must be a text-only decoder whose attention modules
read ``config._attn_implementation`` at call time and pass the forward's keyword arguments down
(every transformers 5 Llama-style model does); calls without the ``mint_pairs`` keyword (the
two-sequence layout, padding-free rows, generation) go to transformers' own sdpa unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

NAME = "mint_pairs"


def pair_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           mint_pairs: tuple[Sequence[int], int, int, int] | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over packed rows; ``mint_pairs = (prompt_starts, p_max, c_max, r_max)`` describes the layout
    (see :func:`mint_orpo.packing.collate_packed`). ``query`` is ``[B, heads, L, D]``, keys/values may have
    fewer (grouped-query) heads. Returns ``([B, L, heads, D], None)`` like transformers' attention functions."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if mint_pairs is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    starts, p_max, c_max, r_max = mint_pairs
    if query.shape[2] != p_max + c_max + r_max:
        raise ValueError(f"mint_pairs layout {p_max}+{c_max}+{r_max} does not match {query.shape[2]} query positions")
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    dropout_p = dropout if module.training else 0.0
    rows = []
    for row, start in enumerate(starts):
        q, k, v = query[row:row + 1], key[row:row + 1], value[row:row + 1]
        k_prompt, v_prompt = k[:, :, start:p_max], v[:, :, start:p_max]
        parts = [q.new_zeros(1, q.shape[1], start, v.shape[3])] if start else []
        parts.append(F.scaled_dot_product_attention(q[:, :, start:p_max], k_prompt, v_prompt, is_causal=True,
                                                    dropout_p=dropout_p, scale=scaling))
        for first, size in ((p_max, c_max), (p_max + c_max, r_max)):
            if size == 0:
                continue
            own = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
            mask = torch.cat([torch.ones(size, p_max - start, dtype=torch.bool, device=q.device), own], dim=1)
            parts.append(F.scaled_dot_product_attention(
                q[:, :, first:first + size], torch.cat([k_prompt, k[:, :, first:first + size]], dim=2),
                torch.cat([v_prompt, v[:, :, first:first + size]], dim=2), attn_mask=mask, dropout_p=dropout_p,
                scale=scaling))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``mint_pairs`` a valid ``attn_implementation`` (idempotent); its masks are sdpa's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, pair_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def enable(model: Any) -> bool:
    """Switch a text model's sdpa attention to ``mint_pairs`` (same results for any call without the
    ``mint_pairs`` keyword); returns whether it did."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or hasattr(config, "text_config"):
        return False
    register()
    config._attn_implementation = NAME
    return getattr(config, "_attn_implementation", None) == NAME
