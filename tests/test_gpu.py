"""Checks that need a CUDA GPU (skipped elsewhere; `benchmarks/gpu_check.sh` runs them on a lent device)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _student(tmp_path, **options):
    from mint_core.context import RunContext
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_llama.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    return LlamaTextStudent(LlamaTextConfig(model=str(model), lora_r=4, lora_alpha=8, **options)), \
        RunContext(run_dir=tmp_path / "run")


def test_orpo_trains_in_bf16_on_the_gpu(tmp_path):
    import json
    import math

    from mint_core.answers import format_answer
    from mint_core.types import PreferenceExample, Prompt
    from mint_engine.orpo import OrpoOptimizer
    from mint_orpo import OrpoConfig

    names = ["Marfan syndrome", "Noonan syndrome", "Rett syndrome", "Angelman syndrome"]
    examples = [PreferenceExample(case_id=f"c{i}", prompt=Prompt(text=f"Findings {i}: seizures."), kind="pair",
                                  chosen=format_answer(names[:2], noun="diseases"),
                                  rejected=format_answer(names[2:], noun="diseases")) for i in range(4)]
    student, ctx = _student(tmp_path)
    out = tmp_path / "orpo"
    OrpoOptimizer(OrpoConfig(max_steps=3, batch_size=2, bf16="auto", save_steps=2)).train(
        student=student, examples=examples, output_dir=out, ctx=ctx)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in rows)


def test_student_defaults_to_bf16_on_a_bf16_gpu(tmp_path):
    student, ctx = _student(tmp_path)
    model = student.load(ctx=ctx, trainable=True)
    assert model.device.type == "cuda"
    assert next(model.model.parameters()).dtype in (torch.bfloat16, torch.float32)  # LoRA fp32, base bf16
    answers = model.generate(prompts=[__import__("mint_core.types", fromlist=["Prompt"]).Prompt(text="Hi")],
                             max_new_tokens=4, batch_size=1)
    assert len(answers) == 1


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_4bit_loading_puts_the_model_on_this_process_gpu(tmp_path):
    student, ctx = _student(tmp_path, load_in_4bit=True)
    model = student.load(ctx=ctx, trainable=True)
    assert model.device.index == torch.cuda.current_device()
