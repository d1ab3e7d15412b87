"""mint predict, constrained decoding and eval.constrained, on a real tiny run (tests/tiny_run.py)."""

from __future__ import annotations

import json
import random

import pytest

from mint_core import io
from mint_core.answers import parse_answer
from mint_core.components import AnswerConstraint
from mint_core.types import LabelSpace
from tiny_run import PACKETS, tiny_run, write_phenopackets

NOTES = [
    "A 7-year-old boy with short stature, intellectual disability, hypotonia and seizures.",
    "A 34-year-old woman presents with tall stature, arachnodactyly, lens dislocation and aortic dilatation.",
]


def invoke(args, input=None):
    from click.testing import CliRunner

    from mint_core.cli import cli

    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def labels(run_dir) -> LabelSpace:
    return LabelSpace.from_list(io.read_json(run_dir / "labels.json"))


def _predict_json(run_dir, *args) -> list[dict]:
    result = invoke(["predict", "--run-dir", str(run_dir), "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _check_ranking(row: dict, labels: LabelSpace, top: int) -> None:
    ranking = row["ranking"]
    assert len(ranking) == min(top, len(labels))
    assert len({r["label_id"] for r in ranking}) == len(ranking) and all(r["label_id"] in labels for r in ranking)
    assert all(labels[r["label_id"]].name == r["name"] for r in ranking)
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)  # best first
    if not row["calibrated"]:
        assert all(s < 0 for s in scores)  # raw log-likelihoods


def test_predict_on_a_notes_file_ranks_the_label_space(run_dir, labels, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text(NOTES[0] + "\n\n" + NOTES[1] + "\n")
    rows = _predict_json(run_dir, "--top", str(len(labels)), str(notes))
    assert [r["case_id"] for r in rows] == ["line-1", "line-3"]  # blank lines skipped, numbers kept
    for row in rows:
        _check_ranking(row, labels, len(labels))
        assert isinstance(row["answer"], str)
        assert len(row["names"]) == len(row["matched_ids"])
        assert row["hallucinated"] == [n for n, i in zip(row["names"], row["matched_ids"]) if i is None]
    # The people's view: a table naming each case and the top label.
    table = invoke(["predict", "--run-dir", str(run_dir), "--top", "2", str(notes)])
    assert table.exit_code == 0, table.output
    assert "line-1" in table.stdout and rows[0]["ranking"][0]["name"].split()[0] in table.stdout


def test_predict_reads_stdin_and_jsonl(run_dir, labels, tmp_path):
    result = invoke(["predict", "--run-dir", str(run_dir), "--json", "--top", "2", "-"], input=NOTES[0] + "\n")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    _check_ranking(row, labels, 2)
    jsonl = tmp_path / "cases.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": f"p{i}", "text": t}) for i, t in enumerate(NOTES)))
    assert [r["case_id"] for r in _predict_json(run_dir, "--no-rank", str(jsonl))] == ["p0", "p1"]


def test_predict_on_a_phenopacket_folder_writes_the_notes_as_the_task_does(run_dir, labels, tmp_path):
    folder = write_phenopackets(tmp_path / "packets")
    rows = _predict_json(run_dir, "--top", "3", str(folder))
    assert sorted(r["case_id"] for r in rows) == sorted(PACKETS)
    for row in rows:
        _check_ranking(row, labels, 3)
    by_id = {r["case_id"]: r for r in rows}
    assert by_id["new_patient"]["true_label_ids"] == [] and by_id["PMID_1_patient_A"]["true_label_ids"] == ["OMIM:154700"]

    # The same packets loaded as a task source give the same notes (same writer, same seed).
    from mint_core.context import RunContext
    from mint_rare_disease.config import RareDiseaseConfig
    from mint_rare_disease.task import RareDiseaseTask

    task = RareDiseaseTask(RareDiseaseConfig(source="phenopackets", path=str(folder), min_cases_per_disease=2))
    ctx = RunContext(run_dir=tmp_path / "task-run", seed=0)
    loaded = {c.id: c.text for c in task.load(ctx=ctx).cases}
    read = {c.id: c.text for c in task.read_cases(path=folder, ctx=ctx)}
    assert set(loaded) == {"PMID_1_patient_A", "PMID_1_patient_B"}  # load skips the undiagnosed packet
    assert all(read[i] == loaded[i] for i in loaded) and "seizure" in read["PMID_1_patient_A"].lower()
    # One file works too.
    one = _predict_json(run_dir, "--no-rank", str(folder / "FBN1" / "phenopackets" / "new_patient.json"))
    assert [r["case_id"] for r in one] == ["new_patient"]


def test_constrained_answers_contain_only_label_names(run_dir, labels, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(NOTES + ["Clinical notes: microcephaly; cleft palate; hearing loss."]))
    free = _predict_json(run_dir, "--no-rank", str(notes))
    rows = _predict_json(run_dir, "--constrained", "--no-rank", str(notes))
    assert not any(r["well_formed"] for r in free)  # the tiny random student cannot write the format freely
    names = {label.name for label in labels}
    for row in rows:
        assert row["constrained"] and row["well_formed"], row["answer"]
        parsed = parse_answer(row["answer"], noun="diseases")
        assert parsed.well_formed and parsed.names and set(parsed.names) <= names
        assert len(set(parsed.names)) == len(parsed.names) <= 3  # distinct, at most builder.k
        assert row["hallucinated"] == [] and None not in row["matched_ids"]


def test_answer_automaton_only_ever_spells_label_names():
    """Any path through the automaton (random allowed tokens) decodes to a well-formed list of distinct names."""
    from transformers import AutoTokenizer

    from mint_llama.constrained import AnswerAutomaton
    from mint_llama.testing import build_tiny_llama

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_llama(folder))
    names = ("Noonan syndrome", "Noonan syndrome 2", "Marfan syndrome", "Down syndrome", "Kabuki syndrome")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    automaton = AnswerAutomaton(AnswerConstraint(names=names, noun="diseases", max_items=3),
                                encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
                                stop_ids=[end])
    rng = random.Random(0)
    seen_lengths = set()
    for _ in range(200):
        tokens: list[int] = []
        while not tokens or tokens[-1] != end:
            tokens.append(rng.choice(automaton.allowed(tokens)))
            assert len(tokens) < 200
        text = tokenizer.decode(tokens[:-1])
        parsed = parse_answer(text, noun="diseases")
        assert parsed.well_formed, text
        assert set(parsed.names) <= set(names) and len(set(parsed.names)) == len(parsed.names) <= 3
        seen_lengths.add(len(parsed.names))
    assert seen_lengths == {1, 2, 3}  # it may stop after any name, and must stop after max_items
    assert automaton.allowed(automaton.header[:2]) == [automaton.header[2]]


def test_eval_constrained_reports_its_own_keys(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    result = invoke(["eval", "--run-dir", str(copy), "--roles", "orpo", "eval.constrained=true"])
    assert result.exit_code == 0, result.output
    metrics = io.read_json(copy / "metrics.json")["orpo"]
    assert metrics["c_well_formed"] == 1.0 and metrics["c_hallucination_rate"] == 0.0
    assert {"c_top1", "c_top3", "top1", "well_formed", "rank_top1"} <= set(metrics)
    assert metrics["well_formed"] == 0.0  # free generation of the random student is unchanged
    row = io.read_jsonl(copy / "predictions" / "orpo.jsonl")[0]
    assert row["c_well_formed"] and "answer" in row and row["c_answer"] != row["answer"]


def test_calibration_vector_is_subtracted_from_the_ranking(run_dir, labels, tmp_path):
    import shutil

    from mint_core.api import load_student

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "predictions" / "orpo.calibration.json").unlink(missing_ok=True)  # evaluation saved one: start raw
    raw = load_student(copy, role="orpo").predict(NOTES[:1], top=len(labels))[0]
    vector = {label.id: float(i * 40) for i, label in enumerate(labels)}  # large enough to reorder
    io.write_json(copy / "predictions" / "orpo.calibration.json", vector)
    student = load_student(copy, role="orpo")
    (calibrated,) = student.predict(NOTES[0], top=len(labels))
    assert calibrated.calibrated and not raw.calibrated
    raw_scores = {r.label_id: r.score for r in raw.ranking}
    for r in calibrated.ranking:
        assert r.score == pytest.approx(raw_scores[r.label_id] - vector[r.label_id], abs=1e-4)
    assert calibrated.ranking[0].label_id == labels.ids[0]


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "text": "short stature"}\n{"id": "b", "text": \n', ":2: not valid JSON"),
    ('{"id": "a", "txt": "short stature"}\n', ":1: unknown field(s) ['txt']"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', ":2: id 'a' is used twice"),
    ("\n\n", "no cases"),
])
def test_bad_input_names_the_line(run_dir, tmp_path, content, message):
    path = tmp_path / "cases.jsonl"
    path.write_text(content)
    result = invoke(["predict", "--run-dir", str(run_dir), str(path)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_bad_run_role_or_path_fail_clearly(run_dir, tmp_path):
    missing = invoke(["predict", "--run-dir", str(run_dir), str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    role = invoke(["predict", "--run-dir", str(run_dir), "--role", "dpo", "-"], input="x\n")
    assert role.exit_code == 2 and "No trained student 'dpo'" in role.output and "orpo" in role.output
    not_a_run = invoke(["predict", "--run-dir", str(tmp_path), "-"], input="x\n")
    assert not_a_run.exit_code == 2 and "not a MINT run directory" in not_a_run.output
    (tmp_path / "broken.json").write_text("{not json")
    packet = invoke(["predict", "--run-dir", str(run_dir), str(tmp_path / "broken.json")])
    assert packet.exit_code == 2 and "broken.json" in packet.output and "no usable phenopacket" in packet.output


def test_jsonl_images_resolve_beside_the_file_and_must_exist(tmp_path):
    from mint_core.predict import parse_lines
    from mint_core.registry import MintError

    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "a.png").write_bytes(b"\x89PNG")
    (case,) = parse_lines(['{"id": "t1", "image": "tiles/a.png"}'], origin="x.jsonl", base=tmp_path, modality="image")
    assert case.id == "t1" and case.image == str((tmp_path / "tiles" / "a.png").resolve()) and case.text is None
    with pytest.raises(MintError, match=r"x.jsonl:1: image .*b.png does not exist"):
        parse_lines(['{"image": "tiles/b.png"}'], origin="x.jsonl", base=tmp_path, modality="image")
    with pytest.raises(MintError, match=r"x.jsonl:2: this task's student reads images"):
        parse_lines(['{"image": "tiles/a.png"}', '{"text": "notes only"}'], origin="x.jsonl", base=tmp_path,
                    modality="image")
