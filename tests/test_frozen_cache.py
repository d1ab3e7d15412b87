"""LoRA on the top layers (student.lora_layers) and the frozen-bottom cache: same loss and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_orpo import _ctx, _lora_grads, _student, make_examples

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from mint_llama.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny3") / "model", num_layers=3)


@pytest.fixture(scope="module")
def top_loaded(tiny_dir, tmp_path_factory):
    """A tiny 3-layer student with LoRA on its top layer only (B perturbed) and encoded pairs."""
    from trl.trainer.utils import disable_dropout_in_model

    from mint_engine.encoding import encode_pairs

    torch.manual_seed(0)
    sm = _student(tiny_dir, lora_layers=1).load(ctx=_ctx(tmp_path_factory.mktemp("run")), trainable=True)
    disable_dropout_in_model(sm.model)
    with torch.no_grad():
        for name, p in sm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return sm, encode_pairs(sm, make_examples(), max_length=1024, max_prompt_length=768)


def test_lora_layers_places_the_adapter_on_top(top_loaded):
    from mint_engine.frozen_cache import frozen_depth

    sm, _ = top_loaded
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in sm.model.named_parameters() if p.requires_grad}
    assert adapted == {"2"}
    assert frozen_depth(sm.model) == 2


def test_lora_layers_rejects_negative():
    from mint_core.registry import MintError
    from mint_llama.student import lora_layer_indices

    assert lora_layer_indices(0, 30) is None and lora_layer_indices(40, 30) is None
    assert lora_layer_indices(8, 30) == list(range(22, 30))
    with pytest.raises(MintError, match="student.lora_layers"):
        lora_layer_indices(-1, 30)


def _stats_and_grads(model, batch, kind, cache, objective):
    from mint_engine.dpo import dpo_loss, reference_weights
    from mint_engine.orpo import orpo_loss
    from mint_engine.packing import forward_pairs

    model.zero_grad()
    stats = forward_pairs(model, batch, mask_kind=kind, frozen_cache=cache)
    if objective == "orpo":
        loss, _ = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], beta=0.1)
    else:
        with torch.no_grad(), reference_weights(model):
            ref = forward_pairs(model, batch, mask_kind=kind, frozen_cache=cache)
        loss, _ = dpo_loss(stats["chosen_logps_sum"], stats["rejected_logps_sum"], ref["chosen_logps_sum"],
                           ref["rejected_logps_sum"], beta=0.1)
    loss.backward()
    return stats, loss.detach(), _lora_grads(model)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("objective,nll_on_prompt", [("orpo", True), ("orpo", False), ("dpo", False)])
def test_cached_matches_uncached(top_loaded, attn, padding_free, objective, nll_on_prompt):
    from mint_engine.frozen_cache import FrozenBottomCache
    from mint_core.decoder import mask_kind_for
    from mint_engine.packing import collate_packed

    sm, features = top_loaded
    model = sm.model
    model.base_model.model.config._attn_implementation = attn
    try:
        kind = mask_kind_for(model)
        # Built in batches of 2 over ALL pairs; the training batch below mixes pairs of different cache batches.
        cache = FrozenBottomCache.build(model, features, depth=2, mask_kind=kind, pad_id=sm.pad_token_id, batch_size=2)
        order = [3, 0, 5, 1]
        batch = collate_packed([features[i] for i in order], pad_id=sm.pad_token_id, nll_on_prompt=nll_on_prompt,
                               padding_free=padding_free)
        batch["feature_index"] = torch.tensor(order)
        s_ref, l_ref, g_ref = _stats_and_grads(model, batch, kind, None, objective)
        s_c, l_c, g_c = _stats_and_grads(model, batch, kind, cache, objective)
        assert g_ref and any(g.abs().max() > 1e-6 for g in g_ref.values())
        for key in ("chosen_logps", "rejected_logps", "nll", "chosen_logps_sum", "rejected_logps_sum"):
            torch.testing.assert_close(s_c[key], s_ref[key], atol=1e-5, rtol=1e-6)  # sums reach ~100: fp32 ulp
        assert abs(l_c.item() - l_ref.item()) < 1e-5
        assert g_c.keys() == g_ref.keys()
        for name in g_ref:
            torch.testing.assert_close(g_c[name], g_ref[name], atol=1e-5, rtol=1e-4)
        # A wrong pairing of cached states and tokens is refused, not silently used.
        def tokens(i):
            return sum(len(features[i][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))

        batch["feature_index"] = torch.tensor([3, 0, 5, next(j for j in range(len(features)) if tokens(j) != tokens(1))])
        with pytest.raises(ValueError, match="frozen-bottom cache"):
            _stats_and_grads(model, batch, kind, cache, objective)
    finally:
        model.base_model.model.config._attn_implementation = "sdpa"
        model.zero_grad()


def test_cache_plan(top_loaded, tiny_dir, tmp_path):
    from mint_engine.frozen_cache import cache_plan

    sm, features = top_loaded
    assert cache_plan(sm.model, "auto", packed=True, features=features, disable_dropout=True)[0] == 2
    assert cache_plan(sm.model, "false", packed=True, features=features, disable_dropout=True)[0] == 0
    assert cache_plan(sm.model, "auto", packed=False, features=features, disable_dropout=True)[0] == 0
    with pytest.raises(ValueError, match="cache_frozen=true is not possible"):
        cache_plan(sm.model, "true", packed=True, features=features, disable_dropout=False)
    full = _student(tiny_dir).load(ctx=_ctx(tmp_path), trainable=True)  # LoRA everywhere: nothing frozen
    depth, reason = cache_plan(full.model, "auto", packed=True, features=features, disable_dropout=True)
    assert depth == 0 and "lora_layers" in reason
    with pytest.raises(ValueError, match="cache_frozen="):
        cache_plan(sm.model, "maybe", packed=True, features=features, disable_dropout=True)


@pytest.mark.parametrize("optimizer", ["orpo", "dpo", "kto", "sft"])
def test_training_with_cache_matches_without(tiny_dir, tmp_path, optimizer):
    """Two optimizer steps through the real trainer: the same losses and adapter, cache on or off."""
    from safetensors.torch import load_file

    from mint_orpo import OrpoConfig
    from mint_engine.orpo import OrpoOptimizer
    from mint_trl import DpoConfig, KtoConfig, SftConfig
    from mint_trl.optimizer import OPTIMIZERS

    results = {}
    for cache in ("false", "true"):
        # fp32 (bf16=auto autocasts on AVX512-BF16/AMX CPUs): this is an fp32 parity test.
        common = dict(max_steps=2, batch_size=3, learning_rate=1e-2, save_steps=100, cache_frozen=cache, bf16="false")
        configs = {"dpo": DpoConfig, "kto": KtoConfig, "sft": SftConfig}
        opt = (OrpoOptimizer(OrpoConfig(**common)) if optimizer == "orpo"
               else OPTIMIZERS[optimizer](configs[optimizer](**common, impl="mint")))
        out = tmp_path / cache
        result = opt.train(student=_student(tiny_dir, lora_layers=1), examples=make_examples(), output_dir=out,
                           ctx=_ctx(tmp_path / f"run-{cache}"))
        results[cache] = (result.metrics["final_loss"], load_file(str(out / "adapter" / "adapter_model.safetensors")))
    (loss_off, w_off), (loss_on, w_on) = results["false"], results["true"]
    assert abs(loss_on - loss_off) < 1e-5
    assert w_on.keys() == w_off.keys() and all(".layers.2." in k for k in w_on)
    for key in w_off:
        torch.testing.assert_close(w_on[key], w_off[key], atol=1e-5, rtol=1e-4)


def test_bf16_auto_reads_cpu_flags(tmp_path, monkeypatch):
    from mint_engine import options as common

    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile avx512f\n\nprocessor\t: 1\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert common.cpu_bf16_flags(amx) == ["amx_bf16"]
    assert common.cpu_bf16_flags(avx2) == [] and common.cpu_bf16_flags(tmp_path / "missing") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for path, expected in ((amx, True), (avx2, False)):
        real = common.cpu_bf16_flags
        monkeypatch.setattr(common, "cpu_bf16_flags", lambda p=path, real=real: real(p))
        assert common.use_bf16("auto") is expected
    assert common.use_bf16("false") is False and common.use_bf16("true") is True
    with pytest.raises(ValueError, match="optimizer.bf16"):
        common.use_bf16("sometimes")


# -- vision students: the language model's layers below the first cross-attention layer are cached ----
@pytest.fixture(scope="module")
def vision_loaded(tmp_path_factory):
    """A 3-text-layer Mllama built from a tiny Llama (cross-attention after text layer 1, so at index 2),
    trainable as the default student trains (vision side in full, LoRA above), every trainable weight
    perturbed so each one gets a gradient, and encoded image pairs."""
    from trl.trainer.utils import disable_dropout_in_model

    from mint_core.types import PreferenceExample, Prompt
    from mint_llama.testing import build_tiny_llama
    from mint_llama_vision import LlamaVisionConfig
    from mint_llama_vision.from_text import ensure_from_text
    from mint_llama_vision.student import LlamaVisionStudent
    from mint_llama_vision.testing import write_tiny_pngs
    from mint_engine.encoding import encode_pairs

    root = tmp_path_factory.mktemp("vision-cache")
    built = ensure_from_text(build_tiny_llama(root / "tiny-llama", num_layers=3), cache_root=root / "cache",
                             cross_after=(1,), log=lambda _: None)
    images = write_tiny_pngs(root, n=4, size=64)
    tissues = ["breast", "colon", "kidney", "liver", "lung"]
    rows = [PreferenceExample(case_id=f"v{i}", prompt=Prompt(text="Choose from: breast, colon, kidney, liver, lung.",
                                                            image=image),
                              chosen="Most likely tissue types:\n" + "\n".join(f"{j + 1}. {t}" for j, t in
                                                                              enumerate(tissues[i:i + 1 + i % 2])),
                              rejected=f"Most likely tissue types:\n1. {tissues[4 - i]}")
            for i, image in enumerate(images)]
    student = LlamaVisionStudent(LlamaVisionConfig(model=str(built), device="cpu", lora_r=4, lora_dropout=0.0))
    torch.manual_seed(0)
    sm = student.load(ctx=_ctx(root), trainable=True)
    disable_dropout_in_model(sm.model)
    with torch.no_grad():
        for p in sm.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return sm, encode_pairs(sm, rows, max_length=1024, max_prompt_length=768)


def test_vision_student_caches_the_layers_below_cross_attention(vision_loaded):
    from mint_core.decoder import decoder_of, decoder_slice
    from mint_engine.frozen_cache import _shared_prompt_rows, cache_plan, frozen_depth

    sm, features = vision_loaded
    decoder = decoder_of(sm.model)
    assert decoder is sm.model.get_base_model().model.language_model
    assert decoder.cross_attention_layers == [2] and frozen_depth(sm.model) == 2
    assert cache_plan(sm.model, "auto", packed=True, features=features, disable_dropout=True)[0] == 2
    # Every tile has the same prompt tokens: one shared-prompt row for the four pairs (two if rows are short).
    rows = _shared_prompt_rows(features, row_tokens=1024)
    assert len(rows) == 1 and [index for index, *_ in rows[0]["pairs"]] == [0, 1, 2, 3]
    assert len(_shared_prompt_rows(features, row_tokens=len(rows[0]["ids"]) - 1)) == 2
    with decoder_slice(decoder, 2, None):
        assert len(decoder.layers) == 2 and decoder.cross_attention_layers == [0]
    assert len(decoder.layers) == 4 and decoder.cross_attention_layers == [2]


@pytest.mark.parametrize("objective,nll_on_prompt", [("orpo", False), ("orpo", True), ("dpo", False)])
def test_vision_cached_matches_uncached(vision_loaded, objective, nll_on_prompt):
    """Same statistics, loss and gradients (vision tower, projector and cross-attention included)."""
    from mint_engine.frozen_cache import FrozenBottomCache
    from mint_core.decoder import mask_kind_for
    from mint_engine.packing import collate_packed

    sm, features = vision_loaded
    model = sm.model
    kind = mask_kind_for(model)
    cache = FrozenBottomCache.build(model, features, depth=2, mask_kind=kind, pad_id=sm.pad_token_id, batch_size=3)
    order = [2, 0, 3]
    batch = collate_packed([features[i] for i in order], pad_id=sm.pad_token_id, nll_on_prompt=nll_on_prompt)
    batch["feature_index"] = torch.tensor(order)
    try:
        s_ref, l_ref, g_ref = _stats_and_grads(model, batch, kind, None, objective)
        s_c, l_c, g_c = _stats_and_grads(model, batch, kind, cache, objective)
    finally:
        model.zero_grad()
    assert any("vision_model" in n for n in g_ref) and any("cross_attn" in n for n in g_ref)
    assert all(g.abs().max() > 0 for n, g in g_ref.items() if "vision_model" in n and "patch_embedding" in n)
    for key in ("chosen_logps", "rejected_logps", "nll"):
        torch.testing.assert_close(s_c[key], s_ref[key], atol=1e-5, rtol=1e-6)
    assert abs(l_c.item() - l_ref.item()) < 1e-5
    assert g_c.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_c[name], g_ref[name], atol=1e-5, rtol=1e-4)


def test_compiled_layers_train_like_eager(tiny_dir, tmp_path):
    """optimizer.compile=true (inductor on the layers above the cache): the same losses and adapter as eager."""
    from safetensors.torch import load_file

    from mint_engine.orpo import OrpoOptimizer
    from mint_orpo import OrpoConfig

    results = {}
    for compiled in ("false", "true"):
        cfg = OrpoConfig(max_steps=2, batch_size=3, learning_rate=1e-2, save_steps=100, bf16="false", compile=compiled)
        out = tmp_path / compiled
        result = OrpoOptimizer(cfg).train(student=_student(tiny_dir, lora_layers=1), examples=make_examples(),
                                          output_dir=out, ctx=_ctx(tmp_path / f"run-{compiled}"))
        results[compiled] = (result.metrics["final_loss"], load_file(str(out / "adapter" / "adapter_model.safetensors")))
    (loss_eager, w_eager), (loss_compiled, w_compiled) = results["false"], results["true"]
    assert abs(loss_compiled - loss_eager) < 1e-5
    assert w_compiled.keys() == w_eager.keys()  # in-place compile: the adapter's names are unchanged
    for key in w_eager:
        torch.testing.assert_close(w_compiled[key], w_eager[key], atol=1e-5, rtol=1e-4)


def test_compile_option_is_checked():
    from mint_engine.compute import use_compile

    assert use_compile("true") and not use_compile("false")
    with pytest.raises(ValueError, match="optimizer.compile"):
        use_compile("auto")
