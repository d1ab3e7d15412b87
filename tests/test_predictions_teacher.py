"""The predictions teacher: every accepted file format, and its errors."""

from __future__ import annotations

import json

import pytest

from mint_core.context import RunContext
from mint_core.io import read_json
from mint_core.registry import MintError
from mint_core.types import Case, Label, LabelSpace, TaskData
from mint_predictions import PredictionsConfig
from mint_predictions.teacher import PredictionsTeacher

LABELS = LabelSpace([Label("OMIM:1", "Marfan syndrome", synonyms=("MFS",)),
                     Label("OMIM:2", "Loeys-Dietz syndrome"),
                     Label("OMIM:3", "Ehlers-Danlos syndrome"),
                     Label("OMIM:4", "Stickler syndrome")])
DATA = TaskData(labels=LABELS, cases=[Case("p1", ("OMIM:1",), "train"), Case("p2", ("OMIM:2",), "test")])


def _teach(tmp_path, filename: str, content: str, **options):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    ctx = RunContext(run_dir=tmp_path / "run")
    teacher = PredictionsTeacher(PredictionsConfig(path=str(path), **options))
    teacher.fit(data=DATA, ctx=ctx)
    return teacher, teacher.rank(data=DATA, cases=DATA.cases, ctx=ctx), ctx


def test_jsonl_ranked_labels_by_id_or_name_missing_ones_appended(tmp_path):
    lines = [{"case_id": "p1", "labels": ["Loeys-Dietz syndrome", "OMIM:1"]},
             {"case_id": "p2", "labels": ["mfs", "OMIM:4", "OMIM:3", "OMIM:2"]}]
    teacher, (r1, r2), ctx = _teach(tmp_path, "preds.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert teacher.format == "jsonl-labels"
    assert r1.label_ids == ["OMIM:2", "OMIM:1", "OMIM:3", "OMIM:4"] and r1.scores is None
    assert r2.label_ids == ["OMIM:1", "OMIM:4", "OMIM:3", "OMIM:2"]
    provenance = read_json(ctx.path("teacher", "predictions.json"))
    assert provenance["n_cases"] == 2 and len(provenance["sha256"]) == 64


def test_jsonl_scores(tmp_path):
    lines = [{"case_id": "p1", "scores": {"OMIM:1": 0.1, "OMIM:2": 0.6, "OMIM:3": 0.2, "Stickler syndrome": 0.1}},
             {"case_id": "p2", "scores": {"OMIM:3": 2.0}}]
    _, (r1, r2), _ = _teach(tmp_path, "preds.jsonl", "\n".join(json.dumps(x) for x in lines))
    assert r1.label_ids == ["OMIM:2", "OMIM:3", "OMIM:1", "OMIM:4"]  # tie 0.1: label-space order
    assert r1.scores == [0.6, 0.2, 0.1, 0.1]
    assert r2.label_ids == ["OMIM:3", "OMIM:1", "OMIM:2", "OMIM:4"] and r2.scores is None


def test_csv_long_ranked(tmp_path):
    text = "case_id,rank,label\np1,2,OMIM:3\np1,1,Stickler syndrome\np2,1,OMIM:2\n"
    teacher, (r1, r2), _ = _teach(tmp_path, "preds.csv", text)
    assert teacher.format == "csv-rank"
    assert r1.label_ids == ["OMIM:4", "OMIM:3", "OMIM:1", "OMIM:2"]
    assert r2.label_ids[0] == "OMIM:2"


def test_csv_long_scores_lower_is_better(tmp_path):
    text = "case_id,label,score\np1,OMIM:1,0.9\np1,OMIM:2,0.1\np2,OMIM:4,0.5\np2,OMIM:3,0.7\n"
    teacher, (r1, r2), _ = _teach(tmp_path, "preds.csv", text, higher_is_better=False)
    assert teacher.format == "csv-score"
    assert r1.label_ids[:2] == ["OMIM:2", "OMIM:1"] and r2.label_ids[:2] == ["OMIM:4", "OMIM:3"]


def test_wide_tsv_scores(tmp_path):
    text = "case_id\tMarfan syndrome\tOMIM:2\tOMIM:3\tOMIM:4\np1\t0.7\t0.1\t0.15\t0.05\np2\t0.1\t0.2\t0.3\t0.4\n"
    teacher, (r1, r2), _ = _teach(tmp_path, "preds.tsv", text)
    assert teacher.format == "csv-wide"
    assert r1.label_ids == ["OMIM:1", "OMIM:3", "OMIM:2", "OMIM:4"] and r1.scores == [0.7, 0.15, 0.1, 0.05]
    assert r2.label_ids == ["OMIM:4", "OMIM:3", "OMIM:2", "OMIM:1"]


def test_unknown_labels_and_cases_are_named(tmp_path):
    bad_labels = "case_id,rank,label\np1,1,Nonexistent disease\np1,2,OMIM:99\np2,1,OMIM:1\n"
    with pytest.raises(MintError, match=r"preds.csv: 2 label\(s\).*'Nonexistent disease', 'OMIM:99'"):
        _teach(tmp_path, "preds.csv", bad_labels)
    bad_cases = "\n".join(json.dumps({"case_id": f"x{i}", "labels": ["OMIM:1"]}) for i in range(7))
    with pytest.raises(MintError, match=r"preds.jsonl: 7 case id\(s\) not in the task: 'x0', .*'x4', \.\.\."):
        _teach(tmp_path, "preds.jsonl", bad_cases)


def test_missing_cases(tmp_path):
    only_p1 = json.dumps({"case_id": "p1", "labels": ["OMIM:2"]})
    with pytest.raises(MintError, match=r"no prediction for 1 case\(s\): 'p2'.*allow_missing"):
        _teach(tmp_path, "preds.jsonl", only_p1)
    _, (r1, r2), _ = _teach(tmp_path, "preds.jsonl", only_p1, allow_missing=True)
    assert r1.label_ids[0] == "OMIM:2" and r2.label_ids == LABELS.ids


def test_malformed_files(tmp_path):
    with pytest.raises(MintError, match="teacher.path=FILE"):
        PredictionsTeacher(PredictionsConfig()).fit(data=DATA, ctx=RunContext(run_dir=tmp_path))
    with pytest.raises(MintError, match="not found"):
        _teach_missing = PredictionsTeacher(PredictionsConfig(path=str(tmp_path / "nope.csv")))
        _teach_missing.fit(data=DATA, ctx=RunContext(run_dir=tmp_path))
    with pytest.raises(MintError, match=r"preds.csv:2: score 'high' is not a number"):
        _teach(tmp_path, "preds.csv", "case_id,label,score\np1,OMIM:1,high\n")
    with pytest.raises(MintError, match="must start with 'case_id'"):
        _teach(tmp_path, "preds.csv", "id,label,score\np1,OMIM:1,1\n")
    with pytest.raises(MintError, match=r"preds.jsonl:2: case 'p1' appears twice"):
        _teach(tmp_path, "preds.jsonl", '{"case_id": "p1", "labels": []}\n{"case_id": "p1", "labels": []}\n')
    with pytest.raises(MintError, match="neither 'labels'"):
        _teach(tmp_path, "preds.jsonl", '{"case_id": "p1", "ranking": []}\n')
    with pytest.raises(MintError, match=r"\.jsonl, \.ndjson, \.csv or \.tsv"):
        _teach(tmp_path, "preds.txt", "p1 OMIM:1\n")
