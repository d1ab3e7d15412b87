"""Log-probabilities of chosen tokens through the vocabulary projection, without the ``[tokens, vocab]`` logits.

Training reads one log-probability per scored token: ``log softmax(h W^T)[y]``. Computing it from
the model's logits keeps a ``[tokens, vocab]`` tensor alive for backward (49,152 columns for
SmolLM2) and runs several passes over it: the fp32 copy, ``logsumexp``'s max, subtract and exp,
then in backward the softmax again, its product with the incoming gradient, the index scatter's
zero fill. On two CPU cores those passes cost more than the projection's matrix product
(profile in benchmarks/README.md).

:func:`token_log_probs` computes the same value a chunk of tokens at a time, and since the
projection ``W`` is frozen (the student's LoRA never adapts ``lm_head``), the gradient with
respect to ``h`` is known in the forward pass already: ``d log p(y) / dh = W[y] - softmax(h W^T) W``.
That vector (``[tokens, hidden]``, small) is kept for backward, the logits are not: each chunk's
logits live only inside the loop. The matrix products are the ones the plain path runs (``h W^T``
forward, ``softmax W`` backward), in the dtype autocast gives them.
"""

from __future__ import annotations

from typing import Any

import torch

from mint_core import prepacked

#: Tokens per chunk when the products run in bf16/fp16 (``CHUNK_FP32`` in fp32): ~50 MB of fp32
#: logits for a 49k vocabulary at 256. The size only sets the products' shapes: each row's softmax is
#: its own, so values and gradients are bit-identical at the demo's shapes (bf16 and fp32), though
#: the BLAS may pick another kernel for another row count (1e-7, tested). Forward and backward,
#: alternating (benchmarks/README.md): 1,067 tokens on an AVX512-BF16 host (2026-12-06), bf16 0.521 s
#: at 128, 0.469 at 256, 0.493 at 512; fp32 1.154 / 1.085 / 1.021. 1,482 tokens (a demo step's) in
#: fp32 on an AVX2 host (2026-12-08, medians of 7): 1.535 at 256, 1.443 at 512, 1.473 at 1,024.
CHUNK = 256
CHUNK_FP32 = 512


def chunk_rows(dtype: torch.dtype) -> int:
    """Tokens per chunk for products in ``dtype``."""
    return CHUNK_FP32 if dtype == torch.float32 else CHUNK


class _TokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        chunk = chunk_rows(hidden.dtype)
        n, size = hidden.shape[0], min(chunk, hidden.shape[0])
        out = hidden.new_empty(n, dtype=torch.float32)
        jacobian = hidden.new_empty(hidden.shape, dtype=torch.float32) if need_grad else None
        # One set of chunk buffers, reused: a fresh 50 MB tensor per chunk costs its page faults,
        # which on two cores took longer than the arithmetic.
        raw = hidden.new_empty(size, weight.shape[0])
        logits = raw if raw.dtype == torch.float32 else hidden.new_empty(size, weight.shape[0], dtype=torch.float32)
        weight_t = weight.t()
        # softmax @ W on the transposed weight reordered once (bit-identical; mint_core.prepacked).
        packed_t = _reordered_transpose(weight) if need_grad else None
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            rows = stop - start
            z, z_raw, target = logits[:rows], raw[:rows], targets[start:stop]
            torch.mm(hidden[start:stop], weight_t, out=z_raw)
            if z is not z_raw:
                z.copy_(z_raw)
            top = z.amax(dim=1, keepdim=True)
            picked = z.gather(1, target[:, None]).squeeze(1)
            total = z.sub_(top).exp_().sum(dim=1)  # z now holds exp(logit - max)
            lse = top.squeeze(1) + total.log()
            out[start:stop] = picked - lse
            if need_grad:
                probs = z.div_(total[:, None])  # the softmax
                if z_raw is not z:
                    probs = z_raw.copy_(probs)
                mixed = torch.mm(probs, weight) if packed_t is None else prepacked.linear(probs, packed_t)
                jacobian[start:stop] = weight[target].float() - mixed.float()
        if need_grad:
            ctx.save_for_backward(jacobian)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (jacobian,) = ctx.saved_tensors
        return grad[:, None].to(jacobian.dtype) * jacobian, None, None


def token_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """``log softmax(hidden @ weight.T)[targets]`` per row of ``hidden`` ``[N, H]`` (float32, ``[N]``).

    ``weight`` (``[V, H]``) must not need a gradient. ``dtype``: the products' dtype, the one the
    model's own ``lm_head`` runs in under mixed precision (the Trainer's autocast wraps only the
    model's forward, so the caller says it); default: the active autocast dtype, else the weight's.
    The log-softmax is taken in float32.
    """
    if weight.requires_grad:
        raise ValueError("token_log_probs takes a frozen vocabulary projection (lm_head is adapted here)")
    device = hidden.device.type
    if dtype is None and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    if dtype is not None and dtype != weight.dtype:
        hidden, weight = hidden.to(dtype), _cast(weight, dtype)
    with torch.autocast(device, enabled=False):
        return _TokenLogProbs.apply(hidden, weight, targets)


_CASTS: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}


def _cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight.to(dtype)``, kept while the weight is unchanged: it is frozen, and a copy of a 49k x 576
    projection each step costs a pass over 170 MB."""
    key = (weight.data_ptr(), weight._version, dtype)
    if key not in _CASTS:
        _CASTS.clear()
        _CASTS[key] = weight.detach().to(dtype)
    return _CASTS[key]


#: The vocabulary weight's transpose, reordered (:func:`mint_core.prepacked.kept`); one weight at a time.
_TRANSPOSE: list[prepacked.Held] = []


def _reordered_transpose(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight.T`` reordered for oneDNN (kept while the weight is unchanged) where bf16 products on the
    CPU take it, else None.

    The jacobian's ``softmax @ W`` (``[256, 49,152] x [49,152, 576]``) ran 51.5 -> 44.0 ms on the
    transposed weight reordered once, with the same result (benchmarks/README.md, seventh session).
    """
    if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not prepacked.supported():
        return None
    _TRANSPOSE[:] = [prepacked.kept(_TRANSPOSE[0] if _TRANSPOSE else None, weight, transpose=True)]
    return _TRANSPOSE[0][2]


def fused_projection(model: Any) -> torch.Tensor | None:
    """The weight of ``model``'s vocabulary projection when :func:`token_log_probs` computes exactly what
    its ``lm_head`` does (a frozen, bias-free ``nn.Linear``, no logit scaling or capping), else ``None``.

    ``model`` may be wrapped (DDP); a sharded weight (FSDP, DeepSpeed ZeRO-3) returns ``None`` and the
    logits path runs: only the wrapper's forward may gather such a weight.
    """
    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "get_output_embeddings"):
        inner = inner.module
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    config = getattr(inner, "config", None)
    config = getattr(config, "text_config", None) or config
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    if any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    weight = head.weight
    if type(weight) is not torch.nn.Parameter or weight.dim() != 2 or weight.shape[0] != getattr(config, "vocab_size", -1):
        return None
    return weight
