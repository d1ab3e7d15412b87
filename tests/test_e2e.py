"""The real pipeline end to end through the command line: a tiny real Llama, the real gestalt teacher,
real ORPO, `mint run` then `mint eval`, each stage re-run from the saved config.yaml, and `mint compare`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mint_core import io
from mint_core.testing import invoke

pytestmark = pytest.mark.slow

TINY = ["task.n_diseases=3", "task.cases_per_disease=4", "teacher.modalities=image", "teacher.epochs=1",
        "builder.k=2", "builder.q=2", "optimizer.max_steps=5", "optimizer.save_steps=2", "optimizer.batch_size=2",
        "eval.max_cases=4", "eval.max_new_tokens=16"]


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> list[str]:
    from mint_llama.testing import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return ["--student", "llama-text", f"student.model={model_dir}", "student.lora_r=4", "student.device=cpu"]


def _scores(path: Path) -> dict[str, dict[str, float]]:
    """predictions/<role>.jsonl -> case -> label -> the student's raw log-likelihood of answering it
    (``label_scores``, in labels.json's order; ``scores`` are calibrated, which would subtract the shift)."""
    ids = [label["id"] for label in io.read_json(path.parent.parent / "labels.json")]
    return {row["case_id"]: dict(zip(ids, row["label_scores"])) for row in io.read_jsonl(path)}


def _without_seconds(metrics: dict) -> dict:
    return {role: {k: v for k, v in values.items() if k != "seconds"} for role, values in metrics.items()}


def test_mint_run_then_eval_and_every_stage_reproduced_from_config_yaml(tiny_student, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke(["run", "--run-dir", str(run_dir), *tiny_student, *TINY])
    assert result.exit_code == 0, result.output
    metrics = io.read_json(run_dir / "metrics.json")
    assert set(metrics) == {"teacher", "base", "orpo"}

    # ORPO raised the log-probability of the answers the teacher prefers, on every test case: the
    # trained role is the adapter, not the base student again.
    base, orpo = _scores(run_dir / "predictions" / "base.jsonl"), _scores(run_dir / "predictions" / "orpo.jsonl")
    preferred = {row["case_id"]: row["teacher_topk"] for row in io.read_jsonl(run_dir / "predictions" / "orpo.jsonl")}
    assert set(base) == set(orpo) and len(base) == 3
    for case, labels in preferred.items():
        for label in labels:
            assert orpo[case][label] > base[case][label] + 0.5, (case, label, base[case][label], orpo[case][label])

    # `mint eval` on the finished run: nothing to redo, the same table.
    again = invoke(["eval", "--run-dir", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert "already done" in again.output and _without_seconds(io.read_json(run_dir / "metrics.json")) == \
        _without_seconds(metrics)

    # Every stage re-run from the run directory's saved config.yaml alone (no flags) reproduces it.
    saved = tmp_path / "saved"
    shutil.copytree(run_dir, saved)
    for child in run_dir.iterdir():
        if child.name not in {"config.yaml", "logs"}:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for stage in ("teach", "prefs", "train", "eval"):
        result = invoke([stage, "--run-dir", str(run_dir)])
        assert result.exit_code == 0, (stage, result.output)
    for name in ("cases.jsonl", "labels.json", "split.json", "rankings.jsonl", "preferences.jsonl",
                 "teacher/gestalt.safetensors", "students/orpo/adapter/adapter_model.safetensors",
                 "students/orpo/metrics.jsonl", "predictions/base.jsonl", "predictions/orpo.jsonl"):
        if name.endswith("metrics.jsonl"):
            strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("train_")} for r in rows]  # noqa: E731
            assert strip(io.read_jsonl(run_dir / name)) == strip(io.read_jsonl(saved / name)), name
        else:
            assert (run_dir / name).read_bytes() == (saved / name).read_bytes(), f"{name} not reproduced"
    assert _without_seconds(io.read_json(run_dir / "metrics.json")) == _without_seconds(metrics)


def test_mint_compare_fills_its_table(tiny_student, tmp_path):
    run_dir = tmp_path / "compare"
    result = invoke(["compare", "--run-dir", str(run_dir), *tiny_student, *TINY])
    assert result.exit_code == 0, result.output
    comparison = io.read_json(run_dir / "comparison.json")
    table = comparison["metrics"]
    # The paper's grid first; other installed optimizers (the example simpo, when installed) after it.
    assert list(table)[:7] == ["teacher", "base", "rag", "sft", "dpo", "kto", "orpo"]
    # Every student is paired with base on the same cases (and with sft, when it ran).
    paired = {(row["role"], row["reference"]) for row in comparison["deltas"]}
    assert {(role, "base") for role in ("rag", "sft", "dpo", "kto", "orpo")} <= paired and ("orpo", "sft") in paired
    # The claim's differences: the run's optimizer (ORPO) minus every other method.
    assert {("orpo", other) for other in ("rag", "dpo", "kto")} <= paired
    assert not {(role, "dpo") for role in ("rag", "kto")} & paired
    for role in ("base", "rag", "sft", "dpo", "kto", "orpo"):
        for key in ("top1", "rank_top1", "well_formed"):
            assert isinstance(table[role].get(key), float), (role, key)
    text = (run_dir / "comparison.md").read_text()
    first_table = text[text.index("\n| "):].split("\n\n")[0]  # the metrics table; the deltas follow
    lines = [line.strip("|").split("|") for line in first_table.splitlines() if line.startswith("| ")]
    header, cells = [c.strip() for c in lines[0]], {row[0].strip(): [c.strip() for c in row[1:]] for row in lines[1:]}
    assert list(cells) == list(table)
    filled = {role: {h for h, c in zip(header[1:], row) if c != "—"} for role, row in cells.items()}
    # Every method fills the same columns (the students' generation metrics stop at top-k = builder.k).
    assert {"top1", "rank_top1", "rank_top3", "well_formed", "teacher_topk_coverage"} <= filled["base"]
    assert all(filled[role] == filled["base"] for role in table if role != "teacher")
    assert (run_dir / "comparison.png").stat().st_size > 1000
    # DPO started from the SFT adapter (the paper's recipe), so each trained role is its own model.
    summary = json.loads((run_dir / "students" / "dpo" / "train_summary.json").read_text())
    assert Path(summary["init_adapter"]) == run_dir / "students" / "sft" / "adapter"
    predictions = {role: _scores(run_dir / "predictions" / f"{role}.jsonl") for role in ("base", "sft", "dpo", "orpo")}
    for role in ("sft", "dpo", "orpo"):
        assert predictions[role] != predictions["base"], role
