"""The face renderer, the notes writer and the phenopacket loader on every shape of real data.

Real phenopacket-store cases combine facial terms in ways a hand-written fixture never does (the
nose-tip radius of ``draw_face`` went negative for some combinations, and PIL refused the arc).
So these tests draw from the whole HPO: every facial term alone, random subsets of them with
random ages, sexes and term counts (hypothesis, derandomized so CI is reproducible), arbitrary
face parameters, and a generated phenopacket corpus with terms from the whole ontology.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.console import Console

from mint_core.context import RunContext
from mint_rare_disease import hpo
from mint_rare_disease.config import RareDiseaseConfig
from mint_rare_disease.faces import (IRIS, PARAM_LIMIT, PARAM_NAMES, SKIN, FaceParams, draw_face, face_params,
                                     render_face, term_effects)
from mint_rare_disease.notes import MAX_AGE_YEARS, subject_phrase, write_notes
from mint_rare_disease.phenopackets import parse_phenopacket
from mint_rare_disease.task import RareDiseaseTask

PROPERTY = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _all_terms() -> list[str]:
    return sorted(term.id for term in hpo.ontology())


ALL_TERMS = _all_terms()
FACIAL = [t for t in ALL_TERMS if hpo.is_facial(t)]
PHENOTYPES = [t for t in ALL_TERMS if hpo.is_phenotype(t)]


def _valid_face(image: Image.Image, size: int, *, eyes: bool = True) -> None:
    assert image.mode == "RGB" and image.size == (size, size)
    colors = {color for _, color in image.getcolors(maxcolors=size * size)}
    assert SKIN in colors  # a face was drawn, not only the background
    if eyes and size >= 64:
        assert IRIS in colors  # the eyes are open (extreme parameters may close them: ptosis, tiny fissures)


def test_the_ontology_has_the_facial_branches():
    assert len(FACIAL) > 1000 and len(PHENOTYPES) > 15000


def test_every_facial_term_alone_renders():
    for term_id in FACIAL:
        params = face_params([term_id], key=term_id)
        assert all(math.isfinite(v) and abs(v) <= PARAM_LIMIT for v in (getattr(params, n) for n in PARAM_NAMES))
        _valid_face(render_face([term_id], key=term_id, size=64), 64)


def test_the_reported_crash_combination_renders():
    """Facial terms that each shrink the nasal tip add up past -1/0.7: the old tip radius was negative."""
    shrinking = [t for t in FACIAL if term_effects(t).get("nose_tip", 0.0) < 0]
    params = face_params(shrinking, key="crash", jitter=0.0)
    assert params.nose_tip < -1 / 0.7  # the combination that made draw_face raise ValueError
    _valid_face(render_face(shrinking, key="crash"), 128)


@PROPERTY
@given(terms=st.lists(st.sampled_from(FACIAL), max_size=40, unique=True), key=st.text(max_size=30),
       size=st.sampled_from([32, 64, 128, 200]))
def test_random_facial_subsets_render(terms, key, size):
    image = render_face(terms, key=key, size=size)
    _valid_face(image, size)
    assert render_face(list(reversed(terms)), key=key, size=size).tobytes() == image.tobytes()  # order-free


@PROPERTY
@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                 st.sampled_from([-PARAM_LIMIT, PARAM_LIMIT, 0.0])),
                       min_size=len(PARAM_NAMES), max_size=len(PARAM_NAMES)),
       offset=st.tuples(st.floats(-3, 3), st.floats(-3, 3)))
def test_any_face_parameters_draw(values, offset):
    _valid_face(draw_face(FaceParams(**dict(zip(PARAM_NAMES, values))), size=64, offset=offset), 64, eyes=False)


@pytest.mark.parametrize("corner", [-PARAM_LIMIT, PARAM_LIMIT])
def test_every_parameter_at_its_limit_draws(corner):
    rng = random.Random(0)
    for _ in range(200):  # random corners of the parameter cube
        params = FaceParams(**{name: rng.choice([-corner, corner]) for name in PARAM_NAMES})
        _valid_face(draw_face(params, size=64), 64, eyes=False)


AGES = st.one_of(st.none(), st.floats(min_value=0, max_value=200), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(min_value=-10, max_value=10**30).map(float))
SEXES = st.sampled_from([None, "FEMALE", "MALE", "UNKNOWN_SEX", "OTHER_SEX", "female", ""])


@PROPERTY
@given(observed=st.lists(st.sampled_from(PHENOTYPES), max_size=25, unique=True),
       excluded=st.lists(st.sampled_from(PHENOTYPES), max_size=5, unique=True), sex=SEXES, age=AGES,
       template_seed=st.integers(0, 1000))
def test_notes_from_any_terms_ages_and_sexes(observed, excluded, sex, age, template_seed):
    notes = write_notes(observed=[hpo.term_name(t) for t in observed], excluded=[hpo.term_name(t) for t in excluded],
                        sex=sex, age_years=age, rng=random.Random(template_seed))
    assert notes[0].isupper() and notes.endswith(".")
    assert "HP:" not in notes and not re.search(r"\b(nan|inf)\b", notes)
    years = [int(x) for x in re.findall(r"(\d+)-year-old", notes)]
    assert all(y <= MAX_AGE_YEARS for y in years)
    subject = subject_phrase(sex, age)
    assert notes.lower().startswith(subject.lower()[:5])


DURATIONS = st.one_of(
    st.builds(lambda y, m, d: f"P{y}Y{m}M{d}D", st.integers(0, 120), st.integers(0, 11), st.integers(0, 30)),
    st.builds(lambda n, unit: f"P{n}{unit}", st.integers(0, 10**25), st.sampled_from("YMWD")),
    st.text(max_size=12))


@PROPERTY
@given(observed=st.lists(st.sampled_from(ALL_TERMS), min_size=1, max_size=30, unique=True), age=DURATIONS,
       sex=SEXES, labelled=st.booleans())
def test_phenopacket_with_any_terms_parses(observed, age, sex, labelled):
    data = {"id": "p", "subject": {"sex": sex, "timeAtLastEncounter": {"age": {"iso8601duration": age}}},
            "phenotypicFeatures": [{"type": {"id": t, "label": hpo.term_name(t) if labelled else ""}} for t in observed],
            "interpretations": [{"diagnosis": {"disease": {"id": "OMIM:154700", "label": "Marfan syndrome"}}}]}
    packet = parse_phenopacket(data)
    assert [t for t, _ in packet.observed] == observed
    assert packet.age_years is None or packet.age_years >= 0


def test_generated_corpus_from_the_whole_ontology_loads(tmp_path: Path):
    """60 phenopackets over 3 diseases, 1-25 terms each drawn from every HPO term (phenotypes,
    modes of inheritance, onset, frequency terms...), some facial, some unlabelled, some excluded."""
    rng = random.Random(13)
    diseases = [("OMIM:154700", "Marfan syndrome"), ("OMIM:130000", "Ehlers-Danlos syndrome"), ("OMIM:999999", "New")]
    root = tmp_path / "store"
    root.mkdir()
    for i in range(60):
        terms = rng.sample(ALL_TERMS, rng.randint(1, 20)) + rng.sample(FACIAL, rng.randint(0, 5))
        features = [{"type": {"id": t, "label": hpo.term_name(t) if rng.random() < 0.7 else ""},
                     "excluded": rng.random() < 0.1} for t in terms]
        features[0]["excluded"] = False  # at least one observed term
        subject = {"id": f"s{i}", "sex": rng.choice(["FEMALE", "MALE", "UNKNOWN_SEX"]),
                   "timeAtLastEncounter": {"age": {"iso8601duration": rng.choice(
                       ["P3Y", "P2M", "P10D", "P45Y6M", "P0D", "P200Y", "P1W", "P99999999999999999999Y"])}}}
        disease = diseases[i % 3]
        packet = {"id": f"case-{i}", "subject": subject, "phenotypicFeatures": features,
                  "interpretations": [{"diagnosis": {"disease": {"id": disease[0], "label": disease[1]}}}]}
        (root / f"case-{i}.json").write_text(json.dumps(packet), encoding="utf-8")
    buffer = io.StringIO()
    ctx = RunContext(run_dir=tmp_path / "run", console=Console(file=buffer, width=300))
    task = RareDiseaseTask(RareDiseaseConfig(source="phenopackets", path=str(root), min_cases_per_disease=2,
                                             image_size=64))
    data = task.load(ctx=ctx)
    assert len(data.cases) == 60 and len(data.labels) == 3
    for case in data.cases:
        assert case.text and "HP:" not in case.text and not re.search(r"\d{3,}-year-old", case.text)
        with Image.open(ctx.resolve(case.image)) as image:
            _valid_face(image.convert("RGB"), 64)
        assert task.prompt(case=case, n_answers=10).text
