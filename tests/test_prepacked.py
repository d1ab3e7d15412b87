"""Frozen bf16 weights reordered once for oneDNN (``mint_core.prepacked``): the same numbers as ``F.linear``.

Bit-for-bit comparisons: the reordered weight only saves oneDNN its per-call reorder, the kernel and
the blocking of the sums are the same. The comparisons need a CPU whose oneDNN runs bf16 natively
(AVX512-BF16 or AMX) and are skipped elsewhere, where MINT never installs the reordered path.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from mint_core import prepacked

native = pytest.mark.skipif(not prepacked.supported(), reason="oneDNN runs no native bf16 products on this CPU")


def _linear(out_features: int = 96, in_features: int = 64, bias: bool = False) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16)
    layer.requires_grad_(False)
    return layer


def test_nothing_is_installed_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr(prepacked, "supported", lambda: False)
    model = torch.nn.Sequential(_linear(), torch.nn.ReLU(), _linear(32, 96))
    assert prepacked.install(model) == 0
    assert all("forward" not in module.__dict__ for module in model.modules())


@native
@pytest.mark.parametrize("shape", [(60, 1, 64), (4, 37, 64), (1, 64), (0, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_the_reordered_product_is_f_linears_bit_for_bit(shape, bias):
    layer = _linear(bias=bias)
    x = torch.randn(*shape).to(torch.bfloat16)
    expected = F.linear(x, layer.weight, layer.bias)
    with prepacked.prepacked(layer) as count:
        assert count == 1
        got = layer(x)
        assert layer in prepacked._REORDERED  # the reordered path ran, not the fallback
    assert torch.equal(got, expected)
    assert "forward" not in layer.__dict__ and layer not in prepacked._REORDERED  # removed after the block


@native
def test_under_autocast_the_input_is_cast_and_its_gradient_is_f_linears():
    layer = _linear(bias=True)
    x = torch.randn(5, 7, 64)
    mine, plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.linspace(0.5, 2.0, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.linear(plain, layer.weight, layer.bias)
        with prepacked.prepacked(layer):
            got = layer(mine)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(got, expected)
    (expected.float() * weights).sum().backward()
    (got.float() * weights).sum().backward()
    assert torch.equal(mine.grad, plain.grad)


@native
def test_products_reading_one_activation_share_its_cast_and_keep_their_gradients(monkeypatch):
    # q, k and v (and LoRA branches) read the same normed states: one bf16 copy serves them all, and
    # each reader's gradient still goes back to fp32 on its own before they are summed, as with autocast.
    frozen, trainable = _linear(), _linear(32)
    trainable.float().requires_grad_(True)
    model = torch.nn.ModuleList([frozen, trainable])
    x = torch.randn(5, 7, 64)
    reused = []
    real = prepacked._autocast_input

    def counting(tensor, dtype):
        held = prepacked._LAST_CAST[0] if prepacked._LAST_CAST else None
        reused.append(held is not None and held[0]() is tensor)
        return real(tensor, dtype)

    monkeypatch.setattr(prepacked, "_autocast_input", counting)

    def run(install: bool):
        mine = x.clone().requires_grad_()
        trainable.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), \
                (prepacked.prepacked(model) if install else contextlib.nullcontext()):
            # A non-leaf input, like a layer's normed states: autocast caches the casts of leaves only.
            states = mine * 1.5
            out = frozen(states).float().sum(-1) * 0.3 + trainable(states).float().sum(-1) * 0.7
        out.sum().backward()
        return out.detach(), mine.grad, trainable.weight.grad

    plain, shared = run(False), run(True)
    assert reused == [False, True]  # the second product read the first one's copy
    assert not prepacked._LAST_CAST  # freed with the block
    assert all(torch.equal(a, b) for a, b in zip(plain, shared))


@native
def test_a_trainable_or_changed_weight_is_never_read_from_a_stale_copy():
    layer = _linear()
    x = torch.randn(3, 64).to(torch.bfloat16)
    with prepacked.prepacked(layer):
        layer(x)
        with torch.no_grad():
            layer.weight.mul_(2)  # in place: the version counter moves, the copy is rebuilt
        assert torch.equal(layer(x), F.linear(x, layer.weight))
        layer.weight.requires_grad_(True)  # trainable: the plain product, with the weight's gradient
        layer(x).sum().backward()
        assert layer.weight.grad is not None


@native
def test_a_weight_viewing_another_tensor_is_not_copied():
    # FSDP's parameters are views into flat buffers that come and go: no copy may pin them.
    layer = _linear()
    flat = layer.weight.detach().reshape(-1).clone()
    del layer.weight  # what FSDP does: a plain tensor view in the parameter's place during forward
    layer.weight = flat.view(96, 64)
    x = torch.randn(3, 64).to(torch.bfloat16)
    with prepacked.prepacked(layer):
        assert torch.equal(layer(x), F.linear(x, layer.weight))
        assert layer not in prepacked._REORDERED


@native
def test_nested_blocks_keep_the_outer_installation():
    layer = _linear()
    with prepacked.prepacked(layer) as outer:
        with prepacked.prepacked(layer) as inner:
            assert (outer, inner) == (1, 0)
        assert "forward" in layer.__dict__
    assert "forward" not in layer.__dict__


@pytest.fixture(scope="module")
def bf16_student(tmp_path_factory):
    from mint_core.context import RunContext
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_llama.testing import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    ctx = RunContext(run_dir=tmp_path_factory.mktemp("run"))
    return LlamaTextStudent(LlamaTextConfig(model=str(model_dir), inference_dtype="bfloat16")).load(ctx=ctx)


@native
def test_bf16_answers_and_scores_are_the_same_with_the_reordered_weights(bf16_student, monkeypatch):
    import mint_llama.student as student_module
    from mint_core.types import Prompt

    prompts = [Prompt(text=f"Patient {i}: short stature, seizures and {'ataxia ' * i}") for i in range(5)]
    candidates = ["Most likely diseases:\n1. Alpha\n", "Most likely diseases:\n1. Beta syndrome\n"]

    def outputs():
        answers = bf16_student.generate(prompts=prompts, max_new_tokens=12, batch_size=4)
        scores = bf16_student.score(prompts=prompts, candidates=candidates, batch_size=4)
        return answers, scores

    calls = []
    real = prepacked._reordered
    monkeypatch.setattr(prepacked, "_reordered", lambda module, weight: calls.append(1) or real(module, weight))
    with_reordered = outputs()
    assert calls and not prepacked._REORDERED  # the reordered path ran; the copies were freed after each call
    monkeypatch.setattr(student_module, "prepacked", lambda model: contextlib.nullcontext(0))
    assert outputs() == with_reordered


@native
def test_lora_training_gradients_are_the_same_with_the_reordered_weights(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mint_engine.compute import freeze_in
    from mint_llama.testing import build_tiny_llama

    model = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / "tiny", seed=0))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    freeze_in(model, torch.bfloat16)
    ids = torch.randint(3, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    plain_loss, plain_grads = loss_and_grads()
    with prepacked.prepacked(model) as count:
        assert count > 0
        loss, grads = loss_and_grads()
        assert prepacked._REORDERED  # the frozen products ran on reordered weights
    assert torch.equal(loss, plain_loss)
    assert len(grads) == len(plain_grads) and all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


@native
def test_the_vocabulary_jacobian_is_the_same_on_the_reordered_transpose(monkeypatch):
    from mint_engine import vocab

    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(1001, 64, generator=generator) * 0.3).to(torch.bfloat16)
    states = torch.randn(70, 64, generator=generator).to(torch.bfloat16)
    targets = torch.randint(0, 1001, (70,), generator=generator)

    def run():
        mine = states.clone().requires_grad_()
        out = vocab.token_log_probs(mine, weight, targets)
        (out * torch.linspace(0.5, 2.0, len(out))).sum().backward()
        return out, mine.grad

    assert vocab._reordered_transpose(weight) is not None
    reordered = run()
    monkeypatch.setattr(vocab, "_reordered_transpose", lambda weight: None)
    plain = run()
    assert torch.equal(reordered[0], plain[0]) and torch.equal(reordered[1], plain[1])
