"""The chunked vocabulary log-probabilities (``mint_engine.vocab``) against the plain log-softmax."""

from __future__ import annotations

import pytest
import torch

from mint_engine import vocab


def _inputs(n: int, hidden: int = 24, size: int = 301):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(size, hidden, generator=generator) * 0.3
    states = torch.randn(n, hidden, generator=generator)
    targets = torch.randint(0, size, (n,), generator=generator)
    return states, weight, targets


def _chunks_of(monkeypatch, rows: int) -> None:
    monkeypatch.setattr(vocab, "CHUNK", rows)
    monkeypatch.setattr(vocab, "CHUNK_FP32", rows)


def test_chunks_give_the_plain_log_softmax_and_its_gradient(monkeypatch):
    _chunks_of(monkeypatch, 16)
    states, weight, targets = _inputs(16 * 3 + 5)  # three full chunks and a short last one
    mine = states.clone().requires_grad_()
    out = vocab.token_log_probs(mine, weight, targets)
    (out * torch.linspace(0.5, 2.0, len(out))).sum().backward()
    plain = states.clone().requires_grad_()
    ref = torch.log_softmax(plain @ weight.t(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    (ref * torch.linspace(0.5, 2.0, len(ref))).sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.grad, plain.grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_chunk_size_does_not_change_the_values(monkeypatch, dtype):
    states, weight, targets = _inputs(70)
    results = []
    for chunk in (8, 32, 256):
        _chunks_of(monkeypatch, chunk)
        mine = states.clone().requires_grad_()
        out = vocab.token_log_probs(mine, weight, targets, dtype)
        out.sum().backward()
        results.append((out, mine.grad))
    # Each row's softmax is taken over its own logits; only the BLAS kernel picked for a chunk's row
    # count may round a product differently (1.2e-7 seen in the gradient at these tiny shapes).
    for out, grad in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=1e-6)


def test_an_adapted_projection_is_refused():
    states, weight, targets = _inputs(4)
    with pytest.raises(ValueError, match="frozen vocabulary projection"):
        vocab.token_log_probs(states, weight.requires_grad_(), targets)
