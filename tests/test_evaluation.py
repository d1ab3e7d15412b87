"""mint_core.evaluation: name matching, generation metrics on known answers, ranking on a tiny Llama."""

from __future__ import annotations

from dataclasses import fields
from typing import Sequence

import pytest

from mint_core.components import StudentModel, Task
from mint_core.context import RunContext
from mint_core.evaluation import (EvalConfig, calibration_reference, calibration_vector, evaluate, evaluate_generation,
                                  evaluate_ranking, ranking_candidates)
from mint_core.matching import match_names
from mint_core.metrics import default_ks, generation_metrics, paired_comparisons, ranking_from_scores, teacher_metrics
from mint_core.registry import MintError
from mint_core.types import Case, Label, LabelSpace, Prompt, Ranking, TaskData

LABELS = LabelSpace([
    Label("L1", "Marfan syndrome", synonyms=("MFS",)),
    Label("L2", "Loeys-Dietz syndrome"),
    Label("L3", "Noonan syndrome"),
    Label("L4", "Down syndrome", synonyms=("Trisomy 21",)),
    Label("L5", "Williams syndrome"),
    Label("L6", "Kabuki syndrome"),
])
CASES = [
    Case("c1", ("L1",), split="test", text="Tall, arachnodactyly, lens dislocation."),
    Case("c2", ("L3",), split="test", text="Short stature, pulmonary stenosis, webbed neck."),
    Case("c3", ("L4",), split="test", text="Hypotonia, flat face, single palmar crease."),
]
RANKINGS = {
    "c1": Ranking("c1", ["L1", "L2", "L3", "L4", "L5", "L6"]),
    "c2": Ranking("c2", ["L3", "L5", "L6", "L1", "L4", "L2"]),
    # c3 has no teacher ranking: teacher metrics cover 2 cases.
}
ANSWERS = [
    "Most likely diseases:\n1. Marfan syndrome\n2. Loeys Dietz syndrome\n3. Fakeitis",
    "1. Loeys-Dietz syndrome\n2. Noonan syndrom\n3. Noonan syndrome",  # no header; fuzzy; duplicate
    "I don't know.",  # malformed, no names
]


class FakeTask(Task):
    label_noun = "diseases"

    def load(self, *, ctx):  # pragma: no cover - not used
        return TaskData(labels=LABELS, cases=CASES)

    def prompt(self, *, case: Case, n_answers: int) -> Prompt:
        return Prompt(f"Notes: {case.text}\nList the {n_answers} most likely diseases.")


class ScriptedStudent(StudentModel):
    """Answers from a table keyed by prompt text: exercises evaluation without a model."""

    modality = "text"
    model = processor = None

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.generate_calls: list[int] = []

    def encode(self, *, prompt, completion=None):  # pragma: no cover - not used
        raise NotImplementedError

    def generate(self, *, prompts: Sequence[Prompt], max_new_tokens: int, batch_size: int) -> list[str]:
        self.generate_calls.append(len(prompts))
        return [self.answers[p.text] for p in prompts]

    def score(self, *, prompts, candidates, batch_size):  # pragma: no cover - not used
        raise NotImplementedError


def test_match_names_exact_synonym_fuzzy_hallucinated():
    names = ["marfan SYNDROME!", "Trisomy-21", "mfs", "Marfan syndrom", "Loeys Dietz syndrome", "Noonan",
             "Completely made-up disease", "", "Williams-Beuren"]
    assert match_names(names, LABELS) == ["L1", "L4", "L1", "L1", "L2", None, None, None, None]
    # The threshold is a real knob: "Noonan" (ratio ~0.57 to "noonan syndrome") matches when lowered.
    assert match_names(["Noonan"], LABELS, threshold=0.5) == ["L3"]


def test_malformed_answers_count_as_not_well_formed_never_crash():
    garbage = ["", "   ", "\x00\x01 weird", "Most likely diseases:", "Most likely diseases:\n2. Noonan syndrome",
               "1) Marfan syndrome\nblah", None]
    cases = [Case(f"g{i}", ("L1",), split="test") for i in range(len(garbage))]
    metrics, predictions = generation_metrics(answers=garbage, cases=cases, labels=LABELS, rankings=None,
                                              n_answers=3)
    assert metrics["well_formed"] == 0.0
    assert [p["well_formed"] for p in predictions] == [False] * len(garbage)
    assert predictions[5]["matched_ids"] == ["L1"] and predictions[5]["hits"]["top1"] is True
    assert metrics["top1"] == pytest.approx(1 / len(garbage))
    assert "teacher_topk_coverage" not in metrics and metrics["n"] == len(garbage)


def test_generation_metrics_on_hand_written_answers():
    metrics, predictions = generation_metrics(answers=ANSWERS, cases=CASES, labels=LABELS, rankings=RANKINGS,
                                              n_answers=3)
    # ks: small label space -> [1, 3, 5], capped at n_answers=3.
    shares = {"top1", "top3", "well_formed", "hallucination_rate", "teacher_topk_coverage",
              "teacher_bottomq_avoidance", "teacher_top1_agreement"}
    assert set(metrics) == shares | {f"{k}_ci" for k in shares} | {"n_teacher", "n"}
    assert all(metrics[f"{k}_ci"][0] <= metrics[k] <= metrics[f"{k}_ci"][1] for k in shares)
    assert metrics["top1"] == pytest.approx(1 / 3)          # c1 only
    assert metrics["top3"] == pytest.approx(2 / 3)          # c1, and c2 via the fuzzy "Noonan syndrom"
    assert metrics["well_formed"] == pytest.approx(1 / 3)   # c2 lacks the header, c3 is prose
    assert metrics["hallucination_rate"] == pytest.approx(1 / 5)  # "Fakeitis" of 5 distinct names
    # c1: top-3 {L1,L2,L3}, listed {L1,L2} -> 2/3; c2: top-3 {L3,L5,L6}, listed {L2,L3} -> 1/3.
    assert metrics["teacher_topk_coverage"] == pytest.approx(0.5)
    # c1 lists none of {L4,L5,L6}; c2 lists L2, in its bottom-3 {L1,L4,L2}.
    assert metrics["teacher_bottomq_avoidance"] == pytest.approx(0.5)
    assert metrics["teacher_top1_agreement"] == pytest.approx(0.5)
    assert metrics["n_teacher"] == 2 and metrics["n"] == 3
    c2 = predictions[1]
    assert c2["names"] == ["Loeys-Dietz syndrome", "Noonan syndrom"]  # the duplicate counts once
    assert c2["matched_ids"] == ["L2", "L3"] and c2["well_formed"] is False
    assert c2["teacher_topk"] == ["L3", "L5", "L6"] and c2["true_label_ids"] == ["L3"]
    assert predictions[0]["matched_ids"] == ["L1", "L2", None]
    assert "teacher_topk" not in predictions[2]


def test_default_ks_rule():
    assert default_ks(n_labels=9, n_answers=10) == [1, 3, 5]
    assert default_ks(n_labels=500, n_answers=5) == [1, 3, 5]
    assert default_ks(n_labels=500, n_answers=10) == [1, 3, 10]
    metrics, _ = generation_metrics(answers=ANSWERS, cases=CASES, labels=LABELS, rankings=None, n_answers=5)
    assert {"top1", "top3", "top5"} <= set(metrics)


def test_evaluate_generation_uses_given_prompts_and_batches():
    task = FakeTask()
    data = TaskData(labels=LABELS, cases=CASES)
    rag_prompts = [Prompt(f"[retrieved] {case.id}") for case in CASES]
    student = ScriptedStudent({p.text: a for p, a in zip(rag_prompts, ANSWERS)})
    metrics, predictions = evaluate_generation(student_model=student, task=task, data=data, cases=CASES,
                                               rankings=list(RANKINGS.values()), n_answers=3, batch_size=1,
                                               prompts=rag_prompts)
    assert metrics["top3"] == pytest.approx(2 / 3) and metrics["teacher_top1_agreement"] == pytest.approx(0.5)
    assert [p["case_id"] for p in predictions] == ["c1", "c2", "c3"]
    assert sum(student.generate_calls) == 3


def test_teacher_metrics():
    metrics = teacher_metrics(rankings=RANKINGS, cases=CASES, ks=[1, 3])
    # c1: true L1 at rank 0; c2: true L3 at rank 0; c3 has no ranking.
    assert metrics == {"top1": 1.0, "top1_ci": [1.0, 1.0], "top3": 1.0, "top3_ci": [1.0, 1.0], "n": 2}
    shifted = {"c1": Ranking("c1", ["L2", "L3", "L1"]), "c2": Ranking("c2", ["L1", "L2", "L4"])}
    assert teacher_metrics(rankings=shifted, cases=CASES, ks=[1, 3], intervals=False) == \
        {"top1": 0.0, "top3": 0.5, "n": 2}
    assert teacher_metrics(rankings=shifted, cases=CASES, ks=[1, 3])["top3_ci"] == [0.0, 1.0]


def test_eval_config_fields_and_validation():
    config = EvalConfig()
    assert (config.mode, config.batch_size, config.max_cases, config.fuzzy_threshold, config.ks) == \
        ("generation", 8, None, 0.8, None)
    assert all(f.metadata.get("help") for f in fields(EvalConfig))
    assert EvalConfig(ks="1,3,10").ks == [1, 3, 10]
    with pytest.raises(ValueError, match="eval.mode"):
        EvalConfig(mode="beam")


# -- ranking on a real (tiny) model --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    import torch

    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_llama.testing import build_tiny_llama

    torch.manual_seed(0)
    model_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    ctx = RunContext(run_dir=tmp_path_factory.mktemp("run"))
    return LlamaTextStudent(LlamaTextConfig(model=str(model_dir), inference_dtype="float32")).load(ctx=ctx)


def test_ranking_mode_on_tiny_llama(tiny_student):
    task = FakeTask()
    data = TaskData(labels=LABELS, cases=CASES)
    metrics, predictions = evaluate_ranking(student_model=tiny_student, task=task, data=data, cases=CASES,
                                            n_answers=3, batch_size=4)
    keys = {f"{prefix}{key}" for prefix in ("rank_", "rank_raw_")
            for key in ("top1", "top3", "top5", "mrr", "top1_max_label_share")}
    assert set(metrics) == keys | {f"{k}_ci" for k in keys} | {"n"}
    # No calibration: the calibrated keys equal the raw ones.
    assert all(metrics[k] == metrics[k.replace("rank_", "rank_raw_", 1)] for k in keys if "raw" not in k)
    # Recompute the ranking independently with the naive scorer: same order, same metrics.
    prompts = [task.prompt(case=case, n_answers=3) for case in CASES]
    naive = tiny_student.score_naive(prompts=prompts, candidates=ranking_candidates(task, LABELS), batch_size=6)
    expected_hits = []
    for case, row, prediction in zip(CASES, naive, predictions):
        order = [LABELS.ids[i] for i in sorted(range(len(row)), key=lambda i: -row[i])]
        assert prediction["ranked_ids"] == order[:5]
        assert prediction["true_rank"] == order.index(case.label_id) + 1
        assert prediction["scores"][0] == pytest.approx(max(row), abs=1e-4)
        expected_hits.append(order.index(case.label_id))
    assert metrics["rank_top1"] == pytest.approx(sum(r < 1 for r in expected_hits) / 3)
    assert metrics["rank_top3"] == pytest.approx(sum(r < 3 for r in expected_hits) / 3)
    assert metrics["rank_mrr"] == pytest.approx(sum(1 / (r + 1) for r in expected_hits) / 3)
    assert metrics["rank_top1"] <= metrics["rank_top3"] <= metrics["rank_top5"]
    # With every label in the top-k, every case hits.
    full, _ = evaluate_ranking(student_model=tiny_student, task=task, data=data, cases=CASES, n_answers=3,
                               ks=[len(LABELS)], batch_size=6)
    assert full[f"rank_top{len(LABELS)}"] == 1.0


def test_evaluate_both_modes_on_tiny_llama(tiny_student, tmp_path):
    task = FakeTask()
    data = TaskData(labels=LABELS, cases=CASES + [Case("t", ("L1",), split="train", text="x")])
    config = EvalConfig(mode="both", max_new_tokens=6, batch_size=2, max_cases=2)
    metrics, predictions = evaluate(config=config, student_model=tiny_student, task=task, data=data,
                                    rankings=RANKINGS, n_answers=3, ctx=RunContext(run_dir=tmp_path))
    assert metrics["n"] == 2 and [p["case_id"] for p in predictions] == ["c1", "c2"]
    assert {"top1", "well_formed", "hallucination_rate", "rank_top1", "rank_mrr"} <= set(metrics)
    # A random model writes no valid answer list.
    assert metrics["well_formed"] == 0.0
    assert all(isinstance(p["answer"], str) and "ranked_ids" in p for p in predictions)


# -- calibration -------------------------------------------------------------------------------
class NamePriorStudent(StudentModel):
    """Scores a candidate by the evidence in the prompt minus a bias growing with the answer's length.

    Like a real LM's raw log-likelihood, the bias alone decides the raw ranking (the shortest name
    wins every case); the evidence (+3 for the label the notes name) is what calibration must recover.
    """

    modality = "text"
    model = processor = None

    def encode(self, *, prompt, completion=None):  # pragma: no cover - not used
        raise NotImplementedError

    def generate(self, *, prompts, max_new_tokens, batch_size):  # pragma: no cover - not used
        raise NotImplementedError

    def score(self, *, prompts, candidates, batch_size):
        rows = []
        for prompt in prompts:
            named = [label.name for label in LABELS if label.id in prompt.text.split()]
            rows.append([3.0 * any(name in candidate for name in named) - 2.0 * len(candidate)
                         for candidate in candidates])
        return rows


class NotesTask(FakeTask):
    def content_free_prompt(self, *, n_answers, labels=None):
        return Prompt(f"Notes: N/A\nList the {n_answers} most likely diseases.")


def _notes_data(per_label: int = 3) -> TaskData:
    cases = [Case(f"{split}-{label.id}-{i}", (label.id,), split=split, text=f"findings of {label.id}")
             for split in ("val", "test") for label in LABELS for i in range(per_label)]
    return TaskData(labels=LABELS, cases=cases)


@pytest.mark.parametrize("method", ["mean", "content-free"])
def test_calibration_removes_a_per_label_length_bias(method):
    task, data, student = NotesTask(), _notes_data(), NamePriorStudent()
    reference = calibration_reference(method=method, student_model=student, task=task, data=data, n_answers=3)
    val_ids = [c.id for c in sorted(data.split("val"), key=lambda c: (c.label_id, c.id))]
    assert reference["reference_case_ids"] == val_ids
    assert reference["content_free_scores"] is not None  # both inputs saved, whichever method runs
    metrics, predictions = evaluate_ranking(student_model=student, task=task, data=data, cases=data.split("test"),
                                            n_answers=3, ks=[1, 3], calibration=reference["vector"])
    # Raw: the shortest name ("Down syndrome", 13 letters) is first for every case.
    shortest = min(LABELS, key=lambda label: len(label.name)).id
    assert {p["rank_raw_first"] for p in predictions} == {shortest}
    assert metrics["rank_raw_top1_max_label_share"] == 1.0
    assert metrics["rank_raw_top1"] == pytest.approx(1 / len(LABELS))
    # Calibrated: the named label wins every case, and no label is first for more than its share.
    assert metrics["rank_top1"] == 1.0 and metrics["rank_top1_ci"] == [1.0, 1.0]
    assert metrics["rank_top1_max_label_share"] == pytest.approx(1 / len(LABELS))
    assert all(p["true_rank"] == 1 for p in predictions)


def test_calibration_none_and_missing_inputs():
    task, data, student = FakeTask(), _notes_data(), NamePriorStudent()
    none = calibration_reference(method="none", student_model=student, task=task, data=data, n_answers=3)
    assert none["vector"] == [0.0] * len(LABELS) and none["reference_scores"] == []
    with pytest.raises(MintError, match="content-free prompt"):
        calibration_reference(method="content-free", student_model=student, task=task, data=data, n_answers=3)
    no_val = TaskData(labels=LABELS, cases=[c for c in data.cases if c.split == "test"])
    with pytest.raises(MintError, match="eval.calibration=mean needs"):
        calibration_reference(method="mean", student_model=student, task=task, data=no_val, n_answers=3)
    with pytest.raises(ValueError, match="eval.calibration"):
        EvalConfig(calibration="pmi")


def test_saved_scores_recompute_any_calibration():
    task, data, student = NotesTask(), _notes_data(), NamePriorStudent()
    reference = calibration_reference(method="mean", student_model=student, task=task, data=data, n_answers=3)
    metrics, predictions = evaluate_ranking(student_model=student, task=task, data=data, cases=data.split("test"),
                                            n_answers=3, ks=[1, 3], calibration=reference["vector"])
    # From the saved rows alone (as read back from predictions/<role>.jsonl), each calibration.
    for method, top1 in (("mean", 1.0), ("content-free", 1.0), ("none", 1 / len(LABELS))):
        again, _ = ranking_from_scores(predictions=predictions, label_ids=LABELS.ids, n_answers=3, ks=[1, 3],
                                       vector=calibration_vector(reference, method))
        assert again["rank_top1"] == pytest.approx(top1)
    assert ranking_from_scores(predictions=predictions, label_ids=LABELS.ids, n_answers=3, ks=[1, 3],
                               vector=reference["vector"])[0] == metrics
    old_rows = [{k: v for k, v in p.items() if k != "label_scores"} for p in predictions]
    with pytest.raises(MintError, match="older MINT"):
        ranking_from_scores(predictions=old_rows, label_ids=LABELS.ids, vector=None, ks=[1], n_answers=3)


def test_paired_comparisons_pair_cases_by_id():
    def rows(hits):
        return [{"case_id": f"c{i}", "outcomes": {"top1": float(h), "rank_top1": float(h)}} for i, h in enumerate(hits)]

    base = rows([0, 0, 1, 0, 1, 0])
    orpo = list(reversed(rows([1, 0, 1, 1, 1, 0])))  # another order: pairing is by case id
    deltas = paired_comparisons({"base": base, "orpo": orpo, "sft": rows([0, 0, 1, 0, 1, 1])})
    pairs = {(d["role"], d["reference"], d["metric"]) for d in deltas}
    assert ("orpo", "base", "top1") in pairs and ("orpo", "sft", "top1") in pairs
    assert ("base", "sft", "top1") not in pairs  # sft vs base is listed once, as sft minus base
    orpo_base = next(d for d in deltas if d["role"] == "orpo" and d["reference"] == "base" and d["metric"] == "top1")
    assert orpo_base["delta"] == pytest.approx(2 / 6) and orpo_base["n"] == 6
    assert orpo_base["p_mcnemar"] == pytest.approx(0.5)  # 2 discordant cases, both for orpo: 2 * 0.5**2
