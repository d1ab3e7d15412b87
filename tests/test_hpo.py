"""The ``hpo`` plugin: the notes' HPO terms (matched in free text), Phrank / naive Bayes ranking, cross-fitting."""

from __future__ import annotations

from pathlib import Path

from mint_core.context import RunContext
from mint_core.crossfit import FOLDS_FILE, assign_folds
from mint_core.io import read_json
from mint_core.testing import isolated_registry
from mint_core.types import Case, Label, LabelSpace, TaskData
import mint_hpo
from mint_hpo import HpoConfig
from mint_hpo.matcher import default_matcher
from mint_hpo.phenotype import case_terms
from mint_hpo.teacher import HpoTeacher
from mint_rare_disease import hpo
from mint_rare_disease.notes import write_notes

# Marfan syndrome and Ehlers-Danlos (classic): hpo3 annotates both.
MARFAN, EDS = "OMIM:154700", "OMIM:130000"


def test_the_matcher_finds_the_terms_of_a_written_note():
    observed = ["HP:0001250", "HP:0001263", "HP:0001252", "HP:0000098"]  # seizure, GDD, hypotonia, tall stature
    excluded = ["HP:0001638", "HP:0001251"]  # cardiomyopathy, ataxia
    text = write_notes(observed=[hpo.term_name(t) for t in observed], excluded=[hpo.term_name(t) for t in excluded],
                       sex="FEMALE", age_years=7)
    found = default_matcher().match(text)
    assert found.observed == observed and found.excluded == excluded
    # Plurals and free wording around the names.
    found = default_matcher().match("Recurrent seizures since infancy; without scoliosis")
    assert found.observed == ["HP:0001250"] and found.excluded == ["HP:0002650"]


def _case(case_id: str, label: str, terms: list[str], split: str) -> Case:
    return Case(id=case_id, label_ids=(label,), split=split, text="",
                meta={"notes_hpo_ids": terms, "notes_excluded_hpo_ids": []})


def _data() -> TaskData:
    labels = LabelSpace([Label(MARFAN, "Marfan syndrome"), Label(EDS, "Ehlers-Danlos syndrome")])
    marfan = hpo.disease_terms(MARFAN)
    eds = hpo.disease_terms(EDS)
    cases = []
    for i in range(6):
        cases.append(_case(f"m{i}", MARFAN, marfan[i::6][:4], "train" if i < 5 else "test"))
        cases.append(_case(f"e{i}", EDS, eds[i::6][:4], "train" if i < 5 else "test"))
    return TaskData(labels=labels, cases=cases)


def test_zero_shot_phrank_ranks_by_the_annotations(tmp_path: Path):
    data = _data()
    teacher = HpoTeacher(HpoConfig(method="phrank", crossfit=0))
    teacher.fit(data=data, ctx=RunContext(run_dir=tmp_path, seed=0))
    lens = ["HP:0001083", "HP:0001166", "HP:0001519"]  # ectopia lentis, arachnodactyly, tall stature
    top = teacher.rank(data=data, cases=[_case("x", MARFAN, lens, "test")], ctx=None)[0]
    assert top.label_ids[0] == MARFAN and top.fold is None


def test_naive_bayes_cross_fits_the_training_cases(tmp_path: Path):
    data = _data()
    ctx = RunContext(run_dir=tmp_path, seed=0)
    teacher = HpoTeacher(HpoConfig(crossfit=5))
    teacher.fit(data=data, ctx=ctx)
    rankings = {r.case_id: r for r in teacher.rank(data=data, cases=data.cases, ctx=ctx)}
    trained_on = read_json(ctx.path("teacher", FOLDS_FILE))["trained_on"]
    folds = assign_folds(data.split("train"), 5, seed=0)
    for case in data.split("train"):
        assert rankings[case.id].fold == folds[case.id]
        assert case.id not in trained_on[str(folds[case.id])]
    assert all(rankings[c.id].fold is None and rankings[c.id].label_ids[0] == c.label_id for c in data.split("test"))


def test_registered_as_a_teacher():
    with isolated_registry(mint_hpo, name="hpo") as registry:
        assert "teacher:hpo" in registry.plugins["hpo"].provides
        assert registry.get("teacher", "hpo").config is HpoConfig


def test_case_terms_fall_back_to_the_matcher():
    case = Case(id="c", label_ids=("L",), split="test", text="A boy with seizures. No ataxia.")
    assert case_terms(case) == (["HP:0001250"], ["HP:0001251"])
