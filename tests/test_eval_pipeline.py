"""Evaluation through the pipeline: saved scores, intervals, paired deltas, old run dirs, compare --seeds."""

from __future__ import annotations

import pytest

import core_plugins
from mint_core import io
from mint_core.config import parse_overrides, resolve
from mint_core.pipeline import Run
from mint_core.predict import evaluated_roles
from mint_core.report import metrics_tables
from mint_core.registry import MintError
from mint_core.testing import invoke, isolated_registry


@pytest.fixture
def registry():
    with isolated_registry(core_plugins, name="core") as reg:
        yield reg


def make_run(registry, run_dir, *overrides):
    config = resolve(registry, flags={"teacher": "overlap"},
                     overrides=parse_overrides(["eval.mode=both", "task.cases_per_label=6", *overrides]))
    run = Run(registry=registry, config=config, run_dir=run_dir)
    run.save_config()
    return run


def test_eval_saves_scores_intervals_and_deltas(registry, tmp_path):
    run = make_run(registry, tmp_path / "r")
    run.teach()
    run.train()
    metrics = run.evaluate(["base", "counting"])
    for role in ("teacher", "base", "counting"):
        shares = [k for k, v in metrics[role].items()
                  if isinstance(v, float) and k not in ("seconds",) and not k.startswith("n")]
        assert shares and all(f"{k}_ci" in metrics[role] for k in shares), role
    base = metrics["base"]
    assert {"rank_top1", "rank_raw_top1", "rank_top1_max_label_share", "top1", "well_formed"} <= set(base)
    rows = run.load_predictions("base")
    assert len(rows) == base["n"] and all(len(r["label_scores"]) == 3 for r in rows)
    reference = io.read_json(run.prediction_paths("base")[1])
    assert reference["method"] == "mean" and len(reference["vector"]) == 3
    assert reference["reference_case_ids"]  # no val split in this task: the train cases calibrate
    deltas = io.read_json(tmp_path / "r" / "deltas.json")
    assert {(d["role"], d["reference"]) for d in deltas} == {("counting", "base")}
    assert {d["metric"] for d in deltas} >= {"top1", "rank_top1"}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Paired differences" in report and "| counting | base |" in report
    # Roles with saved predictions, in report order; a predictions file metrics.json does not name is not one.
    io.write_jsonl(tmp_path / "r" / "predictions" / "stray.jsonl", rows)
    assert evaluated_roles(run) == ["base", "counting"]
    run.prediction_paths("counting")[0].unlink()
    assert evaluated_roles(run) == ["base"]


def test_old_run_dir_without_saved_scores_is_reevaluated(registry, tmp_path):
    run = make_run(registry, tmp_path / "r")
    run.teach()
    run.evaluate(["base"])
    pred_path, calibration_path = run.prediction_paths("base")
    # What an older MINT left: top-10 scores only, no outcomes, no calibration file.
    old = [{k: v for k, v in row.items() if k not in ("outcomes", "label_scores")} for row in io.read_jsonl(pred_path)]
    io.write_jsonl(pred_path, old)
    calibration_path.unlink()
    metrics = io.read_json(tmp_path / "r" / "metrics.json")
    io.write_json(tmp_path / "r" / "metrics.json",
                  {**metrics, "teacher": {k: v for k, v in metrics["teacher"].items() if not k.endswith("_ci")}})
    with pytest.raises(MintError, match="older MINT"):
        run.load_predictions("base")
    run.evaluate(["base"])  # the missing calibration file makes the stage stale: rescored
    assert all("label_scores" in row for row in run.load_predictions("base"))
    assert "top1_ci" in io.read_json(tmp_path / "r" / "metrics.json")["teacher"]
    # A role nobody asked to re-evaluate is skipped in the deltas, with the reason logged.
    io.write_jsonl(tmp_path / "r" / "predictions" / "ghost.jsonl", old)
    assert run.paired_deltas({"base": {}, "ghost": {}}) == []


def test_terminal_tables_fit_100_columns(registry, tmp_path):
    from rich.console import Console

    run = make_run(registry, tmp_path / "r")
    run.teach()
    run.train()
    metrics = run.evaluate(["base", "counting"])
    console = Console(width=100, record=True)
    for table in metrics_tables(metrics):
        console.print(table)
    text = console.export_text()
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "…" not in text  # no header or cell cut short
    for header in ("r-top1", "raw-top1", "formed", "halluc", "T-agree", "1st-lab"):
        assert header in text
    # The legend comes before the first table and names each interval's method.
    assert text.index("How to read") < text.index("r-top1")
    assert "Wilson" in text and "bootstrap" in text


def test_paired_differences_say_in_words_which_are_significant():
    from rich.console import Console

    from mint_core.report import deltas_table, markdown_deltas

    deltas = [{"role": "orpo", "reference": "sft", "metric": "top1", "delta": 0.1, "ci": [0.02, 0.18],
               "p_mcnemar": 0.01, "n": 200},
              {"role": "orpo", "reference": "sft", "metric": "rank_top1", "delta": -0.02, "ci": [-0.07, 0.03],
               "p_mcnemar": 0.5, "n": 200}]
    console = Console(width=100, record=True)
    console.print(deltas_table(deltas))
    text = console.export_text()
    assert "orpo vs sft: better on top1; no significant difference on r-top1." in " ".join(text.split())
    assert "| yes |" in markdown_deltas(deltas) and "| no |" in markdown_deltas(deltas)


def test_compare_with_seeds_shares_the_teacher_and_reports_spread(registry, tmp_path):
    run_dir = tmp_path / "c"
    result = invoke(["compare", "--teacher", "overlap", "--methods", "base,counting", "--seeds", "1",
                     "--run-dir", str(run_dir), "eval.mode=both", "task.cases_per_label=6"])
    assert result.exit_code == 0, result.output
    comparison = io.read_json(run_dir / "comparison.json")
    assert set(comparison["metrics"]) == {"teacher", "base", "counting"}
    assert comparison["deltas"] and comparison["seeds"]["seeds"] == [0, 1]  # the run's own seed 0 is included
    top1 = comparison["seeds"]["roles"]["counting"]["top1"]
    assert len(top1["values"]) == 2 and top1["sd"] >= 0.0 and len(top1["pooled_ci"]) == 2
    assert len(comparison["seeds"]["roles"]["base"]["top1"]["values"]) == 1  # base evaluated once
    seed_dir = run_dir / "seeds" / "seed-1"
    # Shared, not recomputed: same rankings; the seed's own student.
    assert (seed_dir / "rankings.jsonl").read_text() == (run_dir / "rankings.jsonl").read_text()
    assert (seed_dir / "students" / "counting" / "result.json").exists()
    assert not (seed_dir / "predictions" / "base.jsonl").exists()
    assert (run_dir / "comparison.png").stat().st_size > 0
    assert "Across seeds 0, 1" in (run_dir / "comparison.md").read_text()
    assert "Paired differences" in result.output and "Across seeds" in result.output
    bad = invoke(["compare", "--teacher", "overlap", "--seeds", "0,x", "--run-dir", str(run_dir)])
    assert bad.exit_code == 2 and "--seeds" in bad.output


def test_compare_trains_a_method_at_its_own_learning_rate(registry, tmp_path):
    run_dir = tmp_path / "lr"
    args = ["compare", "--teacher", "overlap", "--methods", "base,counting", "--run-dir", str(run_dir),
            "task.cases_per_label=6"]
    result = invoke([*args, "compare.learning_rates=counting=0.25"])
    assert result.exit_code == 0, result.output
    assert io.read_json(run_dir / "students" / "counting" / "result.json")["optimizer"]["learning_rate"] == 0.25
    assert "counting=0.25" in (run_dir / "config.yaml").read_text()  # the run records the rates it used
    for bad, message in (("counting=fast", "compare.learning_rates item 'counting=fast'"),
                         ("nope=1e-4", "'nope', which is not an installed optimizer")):
        failed = invoke([*args, f"compare.learning_rates={bad}"])
        assert failed.exit_code != 0 and message in failed.output and "Traceback" not in failed.output, failed.output


def test_built_in_tasks_build_a_content_free_prompt():
    from mint_core.types import Case
    from mint_rare_disease.task import RareDiseaseTask
    from mint_tissue.task import TissueTask

    rare = RareDiseaseTask()
    empty = rare.content_free_prompt(n_answers=5)
    real = rare.prompt(case=Case("c", ("d",), text="Tall stature; arachnodactyly."), n_answers=5)
    # The same question and system prompt; only the findings are gone.
    assert "Patient notes: N/A" in empty.text and "arachnodactyly" not in empty.text
    assert empty.text.split("\n\n", 1)[1] == real.text.split("\n\n", 1)[1] and empty.system == real.system
    from mint_core.types import Label, LabelSpace

    tissue = TissueTask()
    labels = LabelSpace([Label("ADI", "adipose"), Label("TUM", "tumour epithelium")])
    empty = tissue.content_free_prompt(n_answers=3, labels=labels)
    real = tissue.prompt(case=Case("t", ("ADI",), image="a.png", meta={"choices": ["adipose", "tumour epithelium"]}),
                         n_answers=3)
    # The candidates are listed as in a case's prompt; only the image is gone.
    assert empty.image is None and empty.text == real.text and "tumour epithelium" in empty.text
