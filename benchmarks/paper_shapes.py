"""The paper's text student, sized before anyone rents a GPU: Llama-3.2-3B-Instruct shapes, random weights.

Builds the model from its configuration alone (Llama-3.2-3B-Instruct's ``LlamaConfig``: hidden
3072, 28 layers, 24 heads / 8 KV heads, MLP 8192, vocabulary 128,256, tied embeddings; no
download), LoRA r = 256, alpha = 128 on every linear layer, bf16 weights where the machine has
native bf16, and times one ORPO pair of the paper's shape (a ~700-token prompt, two answers of
10 names, ~130 tokens each) through MINT's packed trainer and TRL's ``ORPOTrainer`` in the same
run (``benchmarks/orpo_step.py``: per-step seconds, and per side the step's peak memory on top
of the loaded model, in a child process of its own).

On a CPU the full 28 layers take minutes per step, so ``--layers`` builds the same model cut to
fewer decoder layers (same widths, same vocabulary); with two depths (``--layers 2,4``) every
figure is also extrapolated linearly to 28 layers (time and activation memory grow by the same
amount per layer; the embeddings and the vocabulary projection are paid once). The per-GPU
memory estimates for 1, 2 and 4 processes are analytic, from the parameter counts:

- weights: 2 bytes per parameter in bf16, ~0.56 with 4-bit NF4 (double quantization; the
  embeddings and the head stay bf16);
- LoRA: 4 bytes fp32 for the parameter, its gradient and AdamW's two moments (16 bytes each);
- activations: the measured step peak over the loaded model (per pair, batch 1) minus the LoRA
  gradients it allocates;
- DDP keeps a full replica per process (per-GPU memory does not fall with more GPUs, the batch
  per GPU stays); FSDP (``--use_fsdp``) shards weights, LoRA state and gradients over processes.

    python benchmarks/paper_shapes.py --json                    # --layers 2,4 on CPU; full depth on a GPU
    python benchmarks/paper_shapes.py --layers 28 --json        # the whole model (GPU, or a patient CPU)

The last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficiency import linear_params, lora_params  # noqa: E402  (one formula for a layer's weights)
from orpo_step import main as orpo_step, report  # noqa: E402  (the same timed step, both trainers)

LLAMA_32_3B = dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                   num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                   rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
LORA_R, LORA_ALPHA = 256, 128
GIB = 2 ** 30


def build_model(directory: Path, layers: int, dtype: str) -> Path:
    """A random-weight Llama-3.2-3B-shaped model (cut to ``layers``) with a ChatML tokenizer, saved like a download."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mint_llama.testing import build_tiny_llama

    build_tiny_llama(directory)  # the tokenizer files; the tiny model's weights are overwritten below
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = LlamaConfig(**{**LLAMA_32_3B, "num_hidden_layers": layers}, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         initializer_range=0.02, dtype=dtype)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def counts(layers: int = 28) -> dict[str, int]:
    c = LLAMA_32_3B
    shape = {"h": c["hidden_size"], "i": c["intermediate_size"], "kv": c["num_key_value_heads"] * c["head_dim"],
             "q": c["num_attention_heads"] * c["head_dim"]}
    h, per_layer, lora = shape["h"], linear_params(shape), lora_params(shape, LORA_R)
    return {"embedding": c["vocab_size"] * h, "layer_linear": per_layer, "layers": layers,
            "lora_per_layer": lora, "lora": lora * layers, "weights": c["vocab_size"] * h + per_layer * layers}


def estimates(activation_gib: float) -> dict[str, dict[str, float]]:
    """Per-GPU peak memory (GiB) for 1, 2, 4 processes, DDP and FSDP, bf16 and 4-bit weights."""
    n = counts()
    lora_state = n["lora"] * 16 / GIB  # fp32 parameter + gradient + AdamW moments
    out = {}
    for weights_name, weight_bytes in (("bf16", 2 * n["weights"]),
                                       ("4bit", 0.5625 * n["layer_linear"] * n["layers"] + 2 * n["embedding"])):
        weights = weight_bytes / GIB
        for procs in (1, 2, 4):
            ddp = weights + lora_state + (n["lora"] * 4 / GIB if procs > 1 else 0.0) + activation_gib  # + buckets
            fsdp = weights / procs + lora_state / procs + activation_gib
            out[f"{weights_name}_{procs}proc"] = {"ddp": round(ddp, 1), "fsdp": round(fsdp, 1)}
    return out


def run_depth(layers: int, args: argparse.Namespace, dtype: str) -> dict:
    directory = build_model(Path(tempfile.mkdtemp(prefix=f"llama32-3b-{layers}l-")), layers, dtype)
    argv = ["--model", str(directory), "--steps", str(args.steps), "--warmup", "1", "--batch-size", "1",
            "--prompt-tokens", str(args.prompt_tokens), "--answer-tokens", args.answer_tokens,
            "--lora-r", str(LORA_R), "--lora-alpha", str(LORA_ALPHA), "--dtype", dtype, "--answer-only-nll"]
    if dtype == "bfloat16":
        argv.append("--bf16")
    return orpo_step(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default=None, help="decoder layers, or two depths 'a,b' to extrapolate to 28 "
                                                        "(default: 28 on a GPU, 2,4 on a CPU)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per side (after one warm-up)")
    parser.add_argument("--prompt-tokens", type=int, default=700)
    parser.add_argument("--answer-tokens", default="120-140")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from mint_core.hardware import native_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if native_bf16(device) else "float32"
    depths = [int(x) for x in (args.layers or ("28" if device == "cuda" else "2,4")).split(",")]
    runs = {depth: run_depth(depth, args, dtype) for depth in depths}
    keys = ("mint_step_s", "trl_step_s", "mint_peak_mem_mb", "trl_peak_mem_mb")
    result = {"benchmark": "paper_shapes", "model": "Llama-3.2-3B-Instruct shapes, random weights",
              "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "targets": "all-linear"}, "weights_dtype": dtype,
              "device": next(iter(runs.values()))["device"], "prompt_tokens": args.prompt_tokens,
              "answer_tokens": args.answer_tokens, "parameters": counts(),
              "measured": {str(d): {k: r[k] for k in (*keys, "mean_prompt_tokens", "mean_answer_tokens", "ratio")}
                           for d, r in runs.items()}}
    if 28 in runs:
        full = {k: runs[28][k] for k in keys}
    elif len(depths) == 2:
        (a, ra), (b, rb) = sorted(runs.items())
        full = {k: None if ra[k] is None or rb[k] is None else round(rb[k] + (rb[k] - ra[k]) / (b - a) * (28 - b), 3)
                for k in keys}
    else:
        full = None
    result["full_depth_28_layers"] = full
    if full is not None:
        result["full_depth_28_layers"]["source"] = "measured" if 28 in runs else f"extrapolated from {depths}"
        result["full_depth_28_layers"]["ratio"] = round(full["mint_step_s"] / full["trl_step_s"], 3)
        grads_gib = counts()["lora"] * 4 / GIB
        for side in ("mint", "trl"):
            mem = full[f"{side}_peak_mem_mb"]
            # The step's peak over the loaded model (AdamW's moments exist from the warm-up step on)
            # holds the activations and the LoRA gradients: the gradients are counted apart.
            if mem is not None:
                result[f"estimated_per_gpu_gib_{side}"] = estimates(max(mem / 1024 - grads_gib, 0.0))
    report(result, as_json=args.json)


if __name__ == "__main__":
    main()
