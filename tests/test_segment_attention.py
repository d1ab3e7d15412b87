"""MINT's segment attention: eager's numbers on packed rows without the block between the answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mint_core.decoder import build_pair_mask, mask_kind_for
from mint_engine import segment_attention
from mint_engine.packing import SEG_CHOSEN, SEG_REJECTED, layout_costs

torch.set_num_threads(1)


class _Module(nn.Module):
    """What an attention function reads from its layer: the query heads per KV head, training mode."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.eval()


def _packed_rows(prompts: list[int], chosen: list[int], rejected: list[int]):
    """segment ids of packed rows (prompts left-padded, answers right-padded) and their block bounds."""
    p, c, r = max(prompts), max(chosen), max(rejected)
    seg = torch.full((len(prompts), p + c + r), -1, dtype=torch.int8)
    for i, (pi, ci, ri) in enumerate(zip(prompts, chosen, rejected)):
        seg[i, p - pi:p] = 0
        seg[i, p:p + ci] = SEG_CHOSEN
        seg[i, p + c:p + c + ri] = SEG_REJECTED
    return seg, (p, p + c, p + c + r)


def _inputs(seg: torch.Tensor, heads: int = 4, kv_heads: int = 2, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, length = seg.shape
    q = torch.randn(b, heads, length, dim, generator=gen, requires_grad=True)
    k = torch.randn(b, kv_heads, length, dim, generator=gen, requires_grad=True)
    v = torch.randn(b, kv_heads, length, dim, generator=gen, requires_grad=True)
    return q, k, v, build_pair_mask(seg, kind="additive", dtype=torch.float32)


def _eager(module, q, k, v, mask):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return eager_attention_forward(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5)[0]


def _grads(out: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a loss that weighs every output
    return list(torch.autograd.grad((out * weights).sum(), tensors))


@pytest.mark.parametrize("lengths", [
    ([5, 9, 7], [6, 3, 8], [4, 10, 2]),  # padding in every block
    ([6, 6], [5, 5], [0, 0]),            # no second answer (an empty block)
    ([3], [12], [1]),                    # one row, a one-token rejected answer
])
def test_matches_eager_values_and_gradients(lengths):
    seg, bounds = _packed_rows(*lengths)
    q, k, v, mask = _inputs(seg)
    module = _Module(groups=2)
    want = _eager(module, q, k, v, mask)
    got, _ = segment_attention.segment_attention(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5,
                                                 segment_bounds=bounds)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for g_got, g_want in zip(_grads(got, q, k, v), _grads(want, q, k, v)):
        torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=1e-6)


def test_without_bounds_it_is_eager_bit_for_bit():
    seg, _ = _packed_rows([5, 9], [6, 3], [4, 10])
    q, k, v, mask = _inputs(seg)
    module = _Module(groups=2)
    got, _ = segment_attention.segment_attention(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5)
    assert torch.equal(got, _eager(module, q, k, v, mask))


def test_the_bounds_are_what_it_computes_with():
    """Wrong bounds give other numbers: the kernel really skips by them (the test above is not vacuous)."""
    seg, (p, c, length) = _packed_rows([5, 9], [6, 3], [4, 10])
    q, k, v, mask = _inputs(seg)
    module = _Module(groups=2)
    right, _ = segment_attention.segment_attention(module, q, k, v, mask, scaling=0.3, segment_bounds=(p, c, length))
    wrong, _ = segment_attention.segment_attention(module, q, k, v, mask, scaling=0.3, segment_bounds=(p, c - 2, length))
    assert not torch.allclose(right, wrong, atol=1e-3)


def test_choose_attention_picks_it_on_cpu_for_llama_only(tmp_path):
    from types import SimpleNamespace

    from mint_engine.compute import choose_attention

    class Model:
        def __init__(self, model_type: str, text_config=None):
            self.config = SimpleNamespace(model_type=model_type, _attn_implementation="sdpa", text_config=text_config)

        def set_attn_implementation(self, name: str) -> None:
            self.config._attn_implementation = name

    cpu = torch.device("cpu")
    llama = Model("llama")
    assert choose_attention(llama, "auto", device=cpu) == segment_attention.NAME
    assert mask_kind_for(llama) == "additive"
    assert choose_attention(Model("llama"), "auto", device=cpu, compiled=True) == "eager"
    assert choose_attention(Model("mllama", text_config=object()), "auto", device=cpu) == "eager"
    assert choose_attention(Model("llama"), "auto", device=torch.device("meta")) == "sdpa"  # not a CPU: its own
    with pytest.raises(ValueError, match="attention=segments is not possible with optimizer.compile=true"):
        choose_attention(Model("llama"), "segments", device=cpu, compiled=True)
    with pytest.raises(ValueError, match="'qwen2' model"):
        choose_attention(Model("qwen2"), "segments", device=cpu)


def test_padded_rows_cost_less_with_it():
    features = [{"prompt_ids": [1] * 100, "chosen_ids": [2] * 150, "rejected_ids": [3] * 150},
                {"prompt_ids": [1] * 90, "chosen_ids": [2] * 120, "rejected_ids": [3] * 170}]
    dense = layout_costs(features, packed=True, attention_weight=0.01)
    blocks = layout_costs(features, packed=True, attention_weight=0.01, segments=True)
    p, c, r = 100, 150, 170
    assert blocks["padded"] == pytest.approx(2 * (p + c + r) + 0.01 * 2 * ((p + c) ** 2 + r * (p + r)))
    assert blocks["padded"] < dense["padded"] and blocks["padding_free"] == dense["padding_free"]


def test_the_kernel_is_seen_through_a_ddp_wrapper():
    """forward_pairs passes the block bounds only when it sees the kernel; under torchrun it gets the
    DDP-wrapped model, whose config lives on ``.module``."""
    from types import SimpleNamespace

    from mint_core.decoder import attention_implementation

    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation=segment_attention.NAME))
    wrapper = SimpleNamespace(module=SimpleNamespace(module=model))
    assert attention_implementation(wrapper) == attention_implementation(model) == segment_attention.NAME
    assert attention_implementation(SimpleNamespace()) == ""
    assert mask_kind_for(wrapper) == "additive"
