"""Frozen bf16 matrix weights reordered once for oneDNN on CPU: the same products, bit for bit, in less time.

For a bf16 product ``x @ W.T`` on CPU, PyTorch hands oneDNN the weight in its plain layout and oneDNN
reorders it into its blocked (VNNI) layout inside every call. At the row counts MINT runs (60 rows
a decoding step, ~1,600 a training batch) that reorder is a visible share of the product: a 576 x
576 weight at 60 rows took 0.24 ms plain and 0.14 ms reordered once (benchmarks/README.md, seventh
session). A frozen weight never changes, so it is reordered once
(``torch.ops.mkldnn._reorder_linear_weight``, what inductor does for CPU models it freezes) and
every later product runs ``torch.ops.mkldnn._linear_pointwise`` on the reordered copy. The kernel
and the blocking of the sums are the same, so results equal ``F.linear``'s bit for bit (tested
at the shapes MINT runs).

Only weights that take no gradient qualify (frozen ones, or any under ``no_grad``/``inference_mode``:
a weight that trains changes every step), only bf16 on a CPU whose oneDNN runs bf16 natively
(AVX512-BF16 or AMX: elsewhere MINT stays fp32 anyway). A reordered copy is rebuilt when its weight
is replaced (``model.to``) or changed by an in-place op (its version counter moves); a change through
``.data`` (peft's merge) is invisible, so the copies live only inside a :func:`prepacked` block (the
student's inference) or a trainer's run. They cost one copy of the weights' memory (SmolLM2-135M:
270 MB in bf16).

The reordered op has no autograd formula: where the input needs a gradient (layers above trainable
ones), :class:`_PackedLinear` runs the forward on the reordered weight and the backward as
``F.linear``'s own (``grad @ W`` on the plain weight), so gradients are unchanged too.

Under bf16 autocast each product casts its fp32 input on its own, and q, k, v and their LoRA
branches read the same normed states. The installed products (trainable LoRA ones too) share one
bf16 copy of such an input (:class:`_SharedCast`), with the same numbers forward and backward.
"""

from __future__ import annotations

import contextlib
import functools
import types
import weakref
from typing import Any, Iterator

import torch
import torch.nn.functional as F

#: (a weight, its version, it or its transpose reordered): what :func:`kept` returns.
Held = tuple[torch.Tensor, int, torch.Tensor]

#: module -> its :func:`kept` reordered weight. Weak keys: a module that goes away takes its copy along.
_REORDERED: weakref.WeakKeyDictionary[torch.nn.Module, Held] = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=1)
def supported() -> bool:
    """Whether this PyTorch build and CPU run oneDNN bf16 products on reordered weights."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
                    and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


def reorder(weight: torch.Tensor) -> torch.Tensor:
    """A ``[out, in]`` bf16 weight reordered for :func:`linear` (an opaque oneDNN tensor, a copy)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` for ``packed`` = :func:`reorder` ``(W)``; ``x`` in W's dtype, no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def kept(held: Held | None, weight: torch.Tensor, *, transpose: bool = False) -> Held:
    """(the weight, its version, it or its transpose reordered): ``held`` while it was made from this
    weight unchanged (same storage, same version), else a new one; a slot keeps one ``transpose``.
    Holding the weight keeps its address from being reused by another tensor while the copy is kept."""
    if held is None or held[0].data_ptr() != weight.data_ptr() or held[1] != weight._version:
        source = weight.detach().t().contiguous() if transpose else weight
        held = (weight.detach(), weight._version, reorder(source))
    return held


def _reordered(module: torch.nn.Module, weight: torch.Tensor) -> torch.Tensor:
    _REORDERED[module] = kept(_REORDERED.get(module), weight)
    return _REORDERED[module][2]


class _PackedLinear(torch.autograd.Function):
    """Forward on the reordered weight; backward as ``F.linear``'s (the input's gradient only: the weight is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return linear(x, packed, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (weight,) = ctx.saved_tensors
        return grad.matmul(weight), None, None, None


class _SharedCast(torch.autograd.Function):
    """An activation's bf16 copy, made once for every product that reads it (autocast makes one per product:
    q, k, v and their LoRA branches read the same normed states). Each reader gets its own node, so each
    reader's gradient is cast back to fp32 on its own and the readers' gradients are summed in fp32, as
    with autocast's casts of a layer's activations: the same numbers, forward and backward. (Autocast
    caches the cast of a leaf tensor that requires grad and sums its readers' gradients in bf16; no
    product in MINT's students reads such a leaf.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cast: torch.Tensor) -> torch.Tensor:
        ctx.dtype = x.dtype
        return cast.view_as(cast)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.to(ctx.dtype), None


#: The last activation cast under autocast: (a weak reference to it, its version, its bf16 copy).
_LAST_CAST: list[tuple[Any, int, torch.Tensor]] = []


def _autocast_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` as autocast would give it to a product, reusing the copy made for the previous product
    if that one read the same, unchanged tensor."""
    held = _LAST_CAST[0] if _LAST_CAST else None
    if held is None or held[0]() is not x or held[1] != x._version or held[2].dtype != dtype:
        held = (weakref.ref(x), x._version, x.detach().to(dtype))
        _LAST_CAST[:] = [held]
    if torch.is_grad_enabled() and x.requires_grad:
        return _SharedCast.apply(x, held[2])
    return held[2]


def _autocasts_to(dtype: torch.dtype) -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = self.weight, self.bias
    # A weight that takes a gradient here trains: the plain product (its input's cast still shared). Without
    # autograd (inference) any weight qualifies; if it has changed since (an optimizer step), its version says so.
    trains = torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad))
    # A weight that is a view into another tensor (FSDP's flat parameters) comes and goes with its
    # wrapper: a kept copy would pin the unsharded storage, so it takes the plain product.
    if trains or weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or weight._base is not None or (
            bias is not None and bias.dtype != weight.dtype):
        if x.dtype == torch.float32 and x.device.type == "cpu" and _autocasts_to(torch.bfloat16):
            x = _autocast_input(x, torch.bfloat16)
        return F.linear(x, weight, bias)
    if x.dtype != weight.dtype:
        # Under bf16 autocast F.linear casts its input to bf16; the reordered op is not autocast-aware.
        if not _autocasts_to(weight.dtype):
            return F.linear(x, weight, bias)
        x = _autocast_input(x, weight.dtype)
    packed = _reordered(self, weight)
    if torch.is_grad_enabled() and x.requires_grad:
        return _PackedLinear.apply(x, weight, packed, bias)
    return linear(x, packed, bias)


def install(model: torch.nn.Module) -> int:
    """Let every plain ``nn.Linear`` of ``model`` run its products on a reordered weight while that weight
    takes no gradient and is bf16 on the CPU; a no-op where :func:`supported` is false. Returns how many.

    The modules keep their type, parameters and state-dict keys; a weight that takes a gradient, fp32 or
    elsewhere at call time takes ``F.linear`` as before. A weight is reordered at its module's first
    bf16 call, and again if it is replaced or changed in place through autograd-visible ops. Changes
    made through ``.data`` are invisible to the version counter: call :func:`remove` before those
    (the :func:`prepacked` block does).
    """
    if not supported():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and "forward" not in module.__dict__:
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count


def remove(model: torch.nn.Module) -> int:
    """Undo :func:`install` and free the reordered copies (and the last shared cast). Returns how many modules."""
    count = 0
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if type(module) is torch.nn.Linear and getattr(forward, "__func__", None) is _forward:
            del module.forward
            _REORDERED.pop(module, None)
            count += 1
    _LAST_CAST.clear()
    return count


@contextlib.contextmanager
def prepacked(model: torch.nn.Module) -> Iterator[int]:
    """:func:`install` for the block (yields how many modules), :func:`remove` after it. Inside the block
    weights change only through autograd-visible ops (an optimizer step), never through ``.data``."""
    count = install(model)
    try:
        yield count
    finally:
        if count:
            remove(model)
