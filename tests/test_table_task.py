"""Own data without a plugin: the ``table`` task on a CSV of notes and labels, the ``predictions`` teacher joined by id."""

from __future__ import annotations

import csv
import json

import pytest

from mint_core.context import RunContext
from mint_core.registry import MintError
from mint_core.testing import invoke

NOTES = {
    "Marfan syndrome": ["tall stature, arachnodactyly, lens dislocation", "aortic root dilatation, long fingers",
                        "ectopia lentis, scoliosis, joint hypermobility", "arachnodactyly and pectus excavatum"],
    "Noonan syndrome": ["short stature, pulmonary valve stenosis, webbed neck", "hypertelorism, ptosis, short stature",
                        "webbed neck, low-set ears", "pulmonic stenosis and cryptorchidism"],
    "Rett syndrome": ["loss of hand skills, stereotypic hand movements", "regression after 18 months, hand wringing",
                      "acquired microcephaly, breathing irregularities", "hand stereotypies and seizures"],
}


def write_cohort(folder):
    rows = [{"patient": f"P{i}{j}", "notes": note, "diagnosis": disease}
            for i, (disease, notes) in enumerate(NOTES.items()) for j, note in enumerate(notes)]
    path = folder / "cohort.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient", "notes", "diagnosis"])
        writer.writeheader()
        writer.writerows(rows)
    # The lab's own model: its rankings by patient id, right for every case but one.
    diseases = list(NOTES)
    with (folder / "rankings.jsonl").open("w") as handle:
        for row in rows:
            ranked = [row["diagnosis"]] + [d for d in diseases if d != row["diagnosis"]]
            if row["patient"] == "P00":
                ranked = ranked[1:] + ranked[:1]
            handle.write(json.dumps({"case_id": row["patient"], "labels": ranked}) + "\n")
    return path


def test_table_task_reads_a_csv_with_a_seeded_stratified_split(tmp_path):
    from mint_table import TableConfig
    from mint_table.task import TableTask

    path = write_cohort(tmp_path)
    config = TableConfig(path=str(path), text_column="notes", label_column="diagnosis", id_column="patient")
    data = TableTask(config).load(ctx=RunContext(run_dir=tmp_path / "run"))
    assert data.labels.ids == sorted(NOTES) and len(data.cases) == 12
    assert {c.split for c in data.cases if c.label_id == "Rett syndrome"} >= {"train", "test"}
    again = TableTask(config).load(ctx=RunContext(run_dir=tmp_path / "run2"))
    assert [c.split for c in again.cases] == [c.split for c in data.cases]  # same seed, same split
    prompt = TableTask(config).prompt(case=data.cases[0], n_answers=2)
    assert "tall stature" in prompt.text and "Most likely diagnoses:" in prompt.text
    with pytest.raises(MintError, match="task.label_column='dx'.*no such column"):
        TableTask(TableConfig(path=str(path), text_column="notes", label_column="dx")).load(ctx=RunContext(run_dir=tmp_path))
    with pytest.raises(MintError, match="no such file"):
        TableTask(TableConfig(path=str(tmp_path / "missing.csv"))).load(ctx=RunContext(run_dir=tmp_path))


def test_a_run_on_a_csv_of_notes_and_labels_with_no_plugin_written(tmp_path):
    from mint_llama.testing import build_tiny_llama

    path = write_cohort(tmp_path)
    model = build_tiny_llama(tmp_path / "model", seed=0)
    run_dir = tmp_path / "run"
    result = invoke(["run", "--run-dir", str(run_dir), "--task", "table", "--teacher", "predictions",
                     f"task.path={path}", "task.text_column=notes", "task.label_column=diagnosis",
                     "task.id_column=patient", f"teacher.path={tmp_path / 'rankings.jsonl'}",
                     "--student", "llama-text", f"student.model={model}", "student.lora_r=4", "student.lora_alpha=8",
                     "student.device=cpu", "builder.k=2", "builder.q=1", "optimizer.max_steps=2",
                     "eval.max_new_tokens=24", "eval.mode=both"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"teacher", "base", "orpo"}
    assert metrics["teacher"]["top1"] >= 0.5  # the rankings file is right for every case but one
    pairs = [json.loads(line) for line in (run_dir / "preferences.jsonl").read_text().splitlines()]
    assert pairs and all(p["meta"]["chosen_ids"][0] == p["meta"]["true_label_id"] for p in pairs)
