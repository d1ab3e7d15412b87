"""Run directory artifacts, determinism and resume after a killed stage (torch-free components)."""

import json

import pytest

import core_plugins
from mint_core import io
from mint_core.config import parse_overrides, resolve
from mint_core.pipeline import Run
from mint_core.testing import invoke, isolated_registry


@pytest.fixture
def registry():
    with isolated_registry(core_plugins, name="core") as reg:
        yield reg


def make_run(registry, run_dir, *overrides):
    config = resolve(registry, flags={"teacher": "overlap"}, overrides=parse_overrides(list(overrides)))
    run = Run(registry=registry, config=config, run_dir=run_dir)
    run.save_config()
    return run


def test_full_run_writes_every_artifact(registry, tmp_path):
    result = invoke(["run", "--teacher", "overlap", "--run-dir", str(tmp_path / "r"), "seed=3"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "r"
    for name in ("config.yaml", "env.json", "cases.jsonl", "labels.json", "rankings.jsonl", "preferences.jsonl",
                 "metrics.json", "report.md", "stages.json", "logs/mint.log", "students/counting/table.json",
                 "predictions/base.jsonl", "predictions/counting.jsonl"):
        assert (run_dir / name).exists(), name
    metrics = io.read_json(run_dir / "metrics.json")
    assert set(metrics) == {"teacher", "base", "counting"}
    # The teacher's top-1 is recomputed here from the saved cases and rankings (test split only).
    rankings = {row["case_id"]: row["label_ids"] for row in io.read_jsonl(run_dir / "rankings.jsonl")}
    test = [row for row in io.read_jsonl(run_dir / "cases.jsonl") if row["split"] == "test"]
    hits = [rankings[row["id"]][0] in row["label_ids"] for row in test]
    assert test and metrics["teacher"]["top1"] == pytest.approx(sum(hits) / len(hits))
    assert metrics["teacher"]["n"] == len(test)
    env = io.read_json(run_dir / "env.json")
    assert {"torch", "transformers", "trl", "peft"} <= set(env["packages"]) and env["plugins"]
    assert "| counting |" in (run_dir / "report.md").read_text()


def test_same_seed_same_rankings_and_preferences(registry, tmp_path):
    for name in ("a", "b"):
        run = make_run(registry, tmp_path / name, "task.noise=0.5")
        run.teach()
        run.prefs()
    for artifact in ("cases.jsonl", "rankings.jsonl", "preferences.jsonl"):
        assert (tmp_path / "a" / artifact).read_text() == (tmp_path / "b" / artifact).read_text()
    other = make_run(registry, tmp_path / "c", "task.noise=0.5", "seed=1")
    other.teach()
    assert (tmp_path / "c" / "cases.jsonl").read_text() != (tmp_path / "a" / "cases.jsonl").read_text()


def test_killed_train_resumes_without_redoing_finished_stages(registry, tmp_path):
    core_plugins.KeywordTeacher.fits = 0
    run = make_run(registry, tmp_path / "r", "optimizer.crash_after=2")
    with pytest.raises(KeyboardInterrupt):
        run.teach(); run.prefs(); run.train()
    state = io.read_json(tmp_path / "r" / "stages.json")
    assert "teach" in state and "prefs:topbottom" in state and "train:counting" not in state
    assert not (tmp_path / "r" / "students" / "counting" / "table.json").exists()  # nothing half-written

    rankings_before = (tmp_path / "r" / "rankings.jsonl").stat().st_mtime_ns
    resumed = make_run(registry, tmp_path / "r")  # the fixed config
    resumed.teach(); resumed.prefs(); resumed.train()
    assert core_plugins.KeywordTeacher.fits == 1  # teach was not redone
    assert (tmp_path / "r" / "rankings.jsonl").stat().st_mtime_ns == rankings_before
    assert json.loads((tmp_path / "r" / "students" / "counting" / "table.json").read_text())

    changed = make_run(registry, tmp_path / "r", "task.noise=0.9")  # a changed option re-runs its stage
    changed.teach()
    assert core_plugins.KeywordTeacher.fits == 2


def test_stage_without_previous_artifacts_says_what_to_run(registry, tmp_path):
    result = invoke(["prefs", "--teacher", "overlap", "--run-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "mint teach --run-dir" in result.output


def test_changed_training_config_discards_stale_checkpoints(registry, tmp_path):
    run = make_run(registry, tmp_path / "r")
    run.teach(); run.prefs(); run.train()
    stale = tmp_path / "r" / "students" / "counting" / "checkpoints" / "checkpoint-3"
    stale.mkdir(parents=True)
    again = make_run(registry, tmp_path / "r")  # same config: the checkpoints are kept for resuming
    again.train()
    assert stale.exists()
    changed = make_run(registry, tmp_path / "r", "optimizer.crash_after=-2")
    changed.train()
    assert not stale.exists()
    assert (tmp_path / "r" / "students" / "counting" / "table.json").exists()


def test_a_different_task_in_the_same_directory_is_named(registry, tmp_path, caplog):
    make_run(registry, tmp_path / "r")
    make_run(registry, tmp_path / "r")  # the same task again: a continued run, nothing to say
    assert "held a run of another task" not in caplog.text
    make_run(registry, tmp_path / "r", "task.noise=0.5")
    assert "held a run of another task (task.noise changed)" in caplog.text and "--run-dir" in caplog.text
