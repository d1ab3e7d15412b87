"""Two processes (``torchrun --nproc_per_node 2``, gloo on CPU) against one, on a tiny real Llama.

- Training: two processes at batch b train what one process trains at batch 2b (data in file order,
  fp32): the same loss at every step (to 1e-5) and the same adapter (to 1e-4), for MINT's packed
  ORPO, DPO, KTO and SFT (with the frozen-bottom cache) and TRL's DPOTrainer; ``metrics.jsonl`` has
  each step once.
- ``mint run`` end to end: the run directory matches a one-process run's file for file wherever the
  content is deterministic (the differences are named below).
- ``mint eval`` on two processes gives the same ``metrics.json`` and predictions as one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mint_core import io
from mint_core.testing import invoke

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TINY = ["task.n_diseases=4", "task.cases_per_disease=4", "teacher.modalities=image", "teacher.epochs=1",
        "builder.k=2", "builder.q=2", "optimizer.max_steps=4", "optimizer.save_steps=2", "optimizer.shuffle=false",
        "optimizer.bf16=false", "eval.max_cases=4", "eval.max_new_tokens=16", "eval.batch_size=1"]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def alone(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> list[str]:
    from mint_llama.testing import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return ["--student", "llama-text", f"student.model={model_dir}", "student.lora_r=4", "student.device=cpu"]


def _losses(path: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in io.read_jsonl(path) if "loss" in row]


def _assert_same_adapter(one: Path, two: Path) -> None:
    first, second = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        gap = (first[key] - second[key]).abs().max().item()
        # 1e-4: AdamW's m / sqrt(v) turns fp32 summation-order noise in near-zero gradient entries into
        # visible weight differences (1.69e-5 after 4 steps on an AVX2 host; under 1e-5 on AVX-512). A rank
        # that trained on other data or skipped the all-reduce moves entries by ~lr = 1e-3 a step.
        assert gap <= 1e-4, f"{one.parent.name}: {key} differs by {gap:.2e} between one and two processes"


def test_two_processes_train_what_one_process_trains(student, tmp_path):
    run_dir = tmp_path / "run"
    taught = invoke(["teach", "--run-dir", str(run_dir), *student, *TINY, "student.lora_layers=1"])
    assert taught.exit_code == 0, taught.output
    from mint_core.predict import open_run

    run = open_run(run_dir)
    for builder in ("topk", "kto", "sft"):
        run.prefs(builder)
    driver = str(HERE / "multiprocess_driver.py")
    alone(driver, str(run_dir), str(tmp_path / "one"), "4", cwd=tmp_path)
    log = torchrun(driver, str(run_dir), str(tmp_path / "two"), "2", cwd=tmp_path)
    assert "frozen-bottom cache" in log.stdout + log.stderr  # LoRA on the top layer: the cache ran
    from multiprocess_driver import METHODS

    for method in METHODS:
        one, two = tmp_path / "one" / method, tmp_path / "two" / method
        steps_one, steps_two = _losses(one / "metrics.jsonl"), _losses(two / "metrics.jsonl")
        assert [s for s, _ in steps_two] == [1, 2, 3, 4], method  # each step once: process 0 alone logs
        for (step, loss_one), (_, loss_two) in zip(steps_one, steps_two):
            assert loss_two == pytest.approx(loss_one, abs=1e-5), (method, step)
        _assert_same_adapter(one / "adapter", two / "adapter")


#: Files of a `mint run` whose content cannot match between runs, and why.
DIFFERENT = {
    "config.yaml": "the per-process batch size (4 on one process, 2 on each of two)",
    "stages.json": "the training fingerprint holds the batch size; evaluation's holds result.json's time",
    "logs/mint.log": "timestamps",
    "metrics.json": "seconds",
    "teacher/gestalt.json": "train_seconds",
    "students/orpo/result.json": "seconds, and the summed floats below",
    "students/orpo/train_summary.json": "train_runtime, samples per second",
    "students/orpo/metrics.jsonl": "train_runtime and the last digits of fp32 sums in another order",
    "students/orpo/fingerprint.json": "the batch size",
    "students/orpo/training_curve.png": "the last digits of the curve",
    "students/orpo/adapter/adapter_model.safetensors": "the same adapter to 1e-4, not bit for bit",
    "students/orpo/adapter/adapter_config.json": "peft writes target_modules from a set (order by hash seed)",
    "predictions/orpo.jsonl": "label scores of that adapter (same answers, same outcomes)",
    "predictions/orpo.calibration.json": "the same",
}


def test_a_command_that_fails_under_a_launcher_fails_with_its_message(tmp_path):
    """Under torchrun the CLI ends through ``distributed.exit_process``: the error still reaches the
    terminal (streams flushed before ``os._exit``) and the status still says it failed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mint_core.cli", "run", "--run-dir", str(tmp_path / "run"), "--teacher", "pathclp"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Did you mean 'pathclip'?" in done.stdout + done.stderr
    assert "exitcode  : 2" in done.stdout + done.stderr  # torchrun's report: the CLI's own status


def test_a_process_other_than_0_says_its_own_error(tmp_path):
    """Processes other than 0 print nothing but their error, named by process: under torchrun the
    first process to fail gets the others stopped, so process 0 may never print the shared error
    (CI, AVX2 host: the test above saw only torchrun's report), and an error of process 1 alone would
    vanish. Process 1 of a two-process run, alone: it fails before joining any group."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mint_core.cli", "run", "--run-dir", str(tmp_path / "run"), "--teacher", "pathclp"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Error (process 1): Unknown teacher 'pathclp'. Did you mean 'pathclip'?" in done.stderr
    assert not (tmp_path / "run").exists()  # the bad flag is found before anything is written


def test_mint_run_on_two_processes_writes_what_one_writes(student, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # Both with one thread a process: the teacher's figures depend on the thread count, not on MINT.
    alone("-m", "mint_core.cli", "run", "--run-dir", str(one), *student, *TINY, "optimizer.batch_size=4", cwd=tmp_path)
    log = torchrun("-m", "mint_core.cli", "run", "--run-dir", str(two), *student, *TINY, "optimizer.batch_size=2",
                   cwd=tmp_path)
    assert log.stdout.count("MINT results") == 1  # process 0 alone prints
    files = lambda root: {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()  # noqa: E731
                          and "checkpoints" not in p.parts}
    assert files(one) == files(two)
    for name in sorted(files(one)):
        if name not in DIFFERENT:
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert {k: v for k, v in io.read_json(one / "metrics.json")["orpo"].items() if k != "seconds"} == \
        {k: v for k, v in io.read_json(two / "metrics.json")["orpo"].items() if k != "seconds"}
    answers = lambda root: [(r["case_id"], r["answer"], r["outcomes"])  # noqa: E731
                            for r in io.read_jsonl(root / "predictions" / "orpo.jsonl")]
    assert answers(one) == answers(two)
    _assert_same_adapter(one / "students" / "orpo" / "adapter", two / "students" / "orpo" / "adapter")
    assert json.loads((two / "stages.json").read_text()).keys() == json.loads((one / "stages.json").read_text()).keys()

    # `mint eval` again on two processes, from the one-process run: the same predictions, byte for byte.
    again = tmp_path / "again"
    shutil.copytree(one, again)
    shutil.rmtree(again / "predictions")
    (again / "stages.json").write_text(json.dumps({k: v for k, v in io.read_json(one / "stages.json").items()
                                                   if not k.startswith("eval:")}))
    torchrun("-m", "mint_core.cli", "eval", "--run-dir", str(again), "--roles", "base,orpo", cwd=tmp_path)
    for role in ("base", "orpo"):
        for name in (f"predictions/{role}.jsonl", f"predictions/{role}.calibration.json"):
            assert (again / name).read_bytes() == (one / name).read_bytes(), name
    strip = lambda m: {r: {k: v for k, v in x.items() if k != "seconds"} for r, x in m.items()}  # noqa: E731
    assert strip(io.read_json(again / "metrics.json")) == strip(io.read_json(one / "metrics.json"))
