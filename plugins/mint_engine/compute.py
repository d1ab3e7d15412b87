"""How the student computes while it trains: the attention kernel and the dtype of its frozen weights.

Both are choices measured on MINT's own shapes (the demo's packed rows, two CPU cores with
AVX512-BF16; profile and figures in benchmarks/README.md):

- **Attention.** For a packed row ``[prompt, chosen, rejected]`` of ~400 tokens the 4D mask is
  arbitrary, so sdpa on CPU takes its masked flash kernel, which ran the top 8 layers' attention at
  ~90 GFLOP/s; transformers' eager attention (two batched matrix products and a softmax) ran the
  same rows 1.63 -> 1.45 s a step. ``attention=auto`` therefore trains with eager's arithmetic on
  CPU, as MINT's segment kernel (:mod:`mint_engine.segment_attention`: eager per row block, the
  block between the two answers skipped; a further 1.654 -> 1.532 s) for Llama students and as
  transformers' eager for others, and keeps the model's own kernel elsewhere (on GPUs sdpa and
  flash-attention are the fast ones).
- **Frozen weights under bf16 autocast.** Autocast casts every fp32 weight to bf16 at every matrix
  product; the frozen ones never change, so :func:`freeze_in` stores them in bf16 once. The
  products are bit for bit what autocast computed (the same rounding of the same weights). On CPU
  the trainer also reorders them once for oneDNN (:mod:`mint_core.prepacked`; again bit for bit).
- **Compiling the layers a step runs** (``compile``, off by default). Inductor fuses the
  elementwise work around the matrix products (norms, rotary, SiLU, residual adds, autocast's
  casts): the demo's step 3-9% shorter on two hosts, but the first step pays the compilation,
  55-82 s on a fresh machine (10-17 s once inductor's on-disk cache holds the kernels). It pays from a few
  hundred steps on; the demo's 160 do not repay it, so it stays an option (table in
  benchmarks/README.md).
"""

from __future__ import annotations

from typing import Any

import torch

from mint_core.decoder import attention_implementation
from mint_engine import segment_attention

ATTENTION = ("auto", "segments", "sdpa", "eager", "flash_attention_2", "flex_attention")


def choose_attention(model: Any, option: str, *, device: torch.device, compiled: bool = False) -> str:
    """Set the training attention kernel for the ``attention`` option; returns the one in use.

    ``segments`` is MINT's eager attention over packed rows' blocks (:mod:`mint_engine.segment_attention`);
    ``auto`` picks it on CPU for the architectures it reproduces, unless the layers are ``compiled``
    (its per-batch block bounds would be new constants to the compiler every batch), and eager there
    otherwise.
    """
    text = str(option).strip().lower()
    if text not in ATTENTION:
        raise ValueError(f"optimizer.attention={option!r}: use one of {', '.join(ATTENTION)}")
    config = getattr(model, "config", None)
    current = attention_implementation(model)
    fits = segment_attention.supports(model) and not compiled
    if text == "segments" and not fits:
        problem = "optimizer.compile=true" if compiled else f"a '{getattr(config, 'model_type', '?')}' model"
        raise ValueError(f"optimizer.attention=segments is not possible with {problem}; use attention=auto or eager")
    if text == "auto":
        wanted = ("segments" if fits else "eager") if device.type == "cpu" and current == "sdpa" else current
    else:
        wanted = text
    if wanted == "segments":
        wanted = segment_attention.register()
    if wanted and wanted != current:
        set_attention(model, wanted)
    return str(getattr(config, "_attn_implementation", wanted))


def set_attention(model: Any, implementation: str) -> None:
    """Switch ``model`` (or the model inside its peft wrapper) to the attention ``implementation``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.set_attn_implementation(implementation)


def freeze_in(model: Any, dtype: torch.dtype) -> int:
    """Store the frozen ``nn.Linear`` weights inside the decoder layers in ``dtype`` (what autocast casts
    them to anyway); embeddings, norms and trainable weights stay as they are. Returns how many."""
    count = 0
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or ".layers." not in f".{name}":
            continue
        weight = module.weight
        if not weight.requires_grad and weight.is_floating_point() and weight.dtype != dtype:
            module.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias = torch.nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
            count += 1
    return count


def compile_layers(model: Any, *, start: int) -> int:
    """Compile decoder layers ``start..`` in place (``nn.Module.compile``: state-dict keys unchanged,
    so checkpoints, adapters and resuming read the same names). Returns how many.

    ``dynamic=True``: packed rows change length every batch; one graph serves them all instead of a
    recompilation per new length.
    """
    from mint_core.decoder import decoder_of

    decoder = decoder_of(model)
    if decoder is None:
        raise ValueError("optimizer.compile=true: the student has no decoder layer list to compile")
    layers = list(decoder.layers)[start:]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def use_compile(option: str | bool) -> bool:
    """``compile`` option -> whether to compile; ``true`` / ``false`` only (no auto: see the module doc)."""
    text = str(option).strip().lower()
    if text not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
        raise ValueError(f"optimizer.compile={option!r}: use true or false")
    return text in {"true", "1", "yes", "on"}
