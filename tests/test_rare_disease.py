"""The rare-disease task: phenopacket reading (folder and zip), the HPO simulator, face rendering,
splits and prompts. Fixtures are written here; the HPO comes from the installed hpo3 package."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import mint_rare_disease
from mint_core.answers import format_answer, parse_answer
from mint_core.context import RunContext
from mint_core.registry import MintError
from mint_core.testing import isolated_registry
from mint_rare_disease.config import RareDiseaseConfig
from mint_rare_disease.faces import IRIS, render_face
from mint_rare_disease.hpo import disease_profile, is_facial
from mint_rare_disease.notes import parse_iso_age, subject_phrase
from mint_rare_disease.splits import filter_labels, grouped_split, stratified_split
from mint_rare_disease.task import RareDiseaseTask

SMALL_SIM = dict(n_diseases=5, cases_per_disease=4)


def _ctx(run_dir: Path, seed: int = 0) -> tuple[RunContext, io.StringIO]:
    buffer = io.StringIO()
    return RunContext(run_dir=run_dir, seed=seed, console=Console(file=buffer, width=300)), buffer


def _packet(pid: str, disease: tuple[str, str], *, observed: list[tuple[str, str]], excluded=(), sex="FEMALE",
            age="P7Y", extra_diseases=()) -> dict:
    features = [{"type": {"id": i, "label": label}} for i, label in observed]
    features += [{"type": {"id": i, "label": label}, "excluded": True} for i, label in excluded]
    interpretations = [{"id": f"{pid}-{k}", "progressStatus": "SOLVED",
                        "diagnosis": {"disease": {"id": d[0], "label": d[1]}}}
                       for k, d in enumerate([disease, *extra_diseases])]
    subject = {"id": pid, "sex": sex}
    if age:
        subject["timeAtLastEncounter"] = {"age": {"iso8601duration": age}}
    return {"id": pid, "subject": subject, "phenotypicFeatures": features, "interpretations": interpretations,
            "metaData": {"phenopacketSchemaVersion": "2.0"}}


MARFAN = ("OMIM:154700", "Marfan syndrome")
NEW = ("OMIM:999999", "Made-up syndrome")  # not in the HPO annotations: profiled from training cases


def _fixture_files() -> dict[str, bytes]:
    """GENE/phenopackets/*.json files: 6 good cases over 2 diseases, one malformed, one with two diagnoses."""
    files: dict[str, dict | bytes] = {}
    for i in range(3):
        files[f"FBN1/phenopackets/marfan_{i}.json"] = _packet(
            f"marfan_{i}", MARFAN if i != 2 else ("OMIM:154700", "MFS"),  # a different label -> a synonym
            observed=[("HP:0001166", "Arachnodactyly"), ("HP:0001083", "Ectopia lentis"),
                      ("HP:0000316", "Hypertelorism")],
            excluded=[("HP:0001250", "Seizure")], sex="FEMALE" if i else "MALE", age=f"P{7 + i}Y")
    for i in range(3):
        files[f"NEW1/phenopackets/new_{i}.json"] = _packet(
            f"new_{i}", NEW, observed=[("HP:0001263", "Global developmental delay"), ("HP:0001252", "Hypotonia"),
                                       ("HP:0000494", "Downslanted palpebral fissures")], age=None, sex="UNKNOWN_SEX")
    files["NEW1/phenopackets/broken.json"] = b'{"id": "broken", "subject": '
    files["FBN1/phenopackets/two_diagnoses.json"] = _packet(
        "two", MARFAN, observed=[("HP:0001166", "Arachnodactyly")], extra_diseases=[NEW])
    return {name: data if isinstance(data, bytes) else json.dumps(data).encode() for name, data in files.items()}


@pytest.fixture()
def packet_folder(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for name, data in _fixture_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture()
def packet_zip(tmp_path: Path) -> Path:
    path = tmp_path / "all_phenopackets.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in _fixture_files().items():
            archive.writestr(f"0.1.25/{name}", data)
    return path


def _load(config: RareDiseaseConfig, run_dir: Path, seed: int = 0):
    ctx, buffer = _ctx(run_dir, seed)
    task = RareDiseaseTask(config)
    return task, task.load(ctx=ctx), buffer.getvalue()


# -- plugin ------------------------------------------------------------------------------------
def test_registers_task_with_config():
    with isolated_registry(mint_rare_disease, name="rare_disease") as registry:
        spec = registry.get("task", "rare-disease")
        assert spec.config is RareDiseaseConfig
        task = spec.create()
    assert isinstance(task, RareDiseaseTask)
    assert (task.student_modality, task.label_noun, task.default_n_answers) == ("text", "diseases", 10)
    assert task.config.source == "hpo-sim"
    with pytest.raises(MintError, match="task.source"):
        RareDiseaseTask(RareDiseaseConfig(source="nope"))


# -- phenopackets --------------------------------------------------------------------------
def test_phenopacket_folder(packet_folder: Path, tmp_path: Path):
    config = RareDiseaseConfig(source="phenopackets", path=str(packet_folder), min_cases_per_disease=2)
    _, data, log = _load(config, tmp_path / "run")
    assert "skipped 2 files: 1 malformed, 1 without exactly one diagnosis" in log
    assert sorted(c.id for c in data.cases) == [f"marfan_{i}" for i in range(3)] + [f"new_{i}" for i in range(3)]
    assert data.labels.ids == ["OMIM:154700", "OMIM:999999"]
    marfan = data.labels["OMIM:154700"]
    assert marfan.name == "Marfan syndrome" and "MFS" in marfan.synonyms
    assert data.labels.by_name("MFS").id == "OMIM:154700"
    assert marfan.description == disease_profile("OMIM:154700", 10) and marfan.description
    # the unannotated disease is profiled from its training cases, in the labels the files use
    assert "Hypotonia" in data.labels["OMIM:999999"].description

    case = next(c for c in data.cases if c.id == "marfan_1")
    assert case.text.startswith("An 8-year-old girl")
    assert "arachnodactyly" in case.text and "ectopia lentis" in case.text
    assert "No seizure." in case.text
    assert "ypertelorism" not in case.text  # facial: shown by the face, not written
    assert case.meta["facial_hpo_ids"] == ["HP:0000316"]
    assert case.meta["hpo_ids"] == ["HP:0001166", "HP:0001083", "HP:0000316"]
    assert case.meta["excluded_hpo_ids"] == ["HP:0001250"]
    assert case.meta["source"] == "phenopackets"
    image = Image.open(tmp_path / "run" / case.image)
    assert image.size == (128, 128)
    unknown = next(c for c in data.cases if c.id == "new_0")
    assert unknown.text.startswith("A patient")  # no sex, no age
    for disease in data.labels.ids:
        assert any(c.split == "test" for c in data.cases if c.label_id == disease)


def test_phenopacket_zip_matches_folder(packet_folder: Path, packet_zip: Path, tmp_path: Path):
    folder = _load(RareDiseaseConfig(source="phenopackets", path=str(packet_folder), min_cases_per_disease=2),
                   tmp_path / "a")[1]
    zipped, log = _load(RareDiseaseConfig(source="phenopackets", path=str(packet_zip), min_cases_per_disease=2),
                        tmp_path / "b")[1:]
    assert "skipped 2 files: 1 malformed, 1 without exactly one diagnosis" in log
    strip = lambda c: {**c.to_dict(), "meta": {k: v for k, v in c.meta.items() if k != "source_file"}}  # noqa: E731
    assert [strip(c) for c in zipped.cases] == [strip(c) for c in folder.cases]
    assert zipped.labels.to_list() == folder.labels.to_list()


def test_phenopackets_options(packet_folder: Path, tmp_path: Path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(photos / "new_1.jpg")
    config = RareDiseaseConfig(source="phenopackets", path=str(packet_folder), min_cases_per_disease=2,
                               facial_terms_in_notes=True, excluded_in_notes=False, photos=str(photos))
    _, data, _ = _load(config, tmp_path / "run")
    by_id = {c.id: c for c in data.cases}
    assert "hypertelorism" in by_id["marfan_0"].text and "No " not in by_id["marfan_0"].text
    assert by_id["new_1"].image == str((photos / "new_1.jpg").resolve())
    assert by_id["new_1"].meta["image_source"] == "photo" and by_id["new_0"].meta["image_source"] == "rendered"
    # max_diseases keeps the largest diseases (ties by id); too few cases everywhere is an error
    _, data, log = _load(RareDiseaseConfig(source="phenopackets", path=str(packet_folder), max_diseases=1),
                         tmp_path / "run2")
    assert data.labels.ids == ["OMIM:154700"] and "dropped 1 diseases" in log
    with pytest.raises(MintError, match="no disease has"):
        _load(RareDiseaseConfig(source="phenopackets", path=str(packet_folder), min_cases_per_disease=4),
              tmp_path / "run3")


def test_phenopackets_missing_path_and_offline_download(tmp_path: Path, monkeypatch):
    with pytest.raises(MintError, match="does not exist"):
        _load(RareDiseaseConfig(source="phenopackets", path=str(tmp_path / "nowhere")), tmp_path / "run")
    monkeypatch.setenv("MINT_CACHE_DIR", str(tmp_path / "cache"))
    config = RareDiseaseConfig(source="phenopackets", download_url="http://127.0.0.1:9/all_phenopackets.zip")
    with pytest.raises(MintError, match="task.path="):
        _load(config, tmp_path / "run")
    assert not (tmp_path / "cache" / "phenopacket-store" / "all_phenopackets.zip").exists()


# -- simulator -----------------------------------------------------------------------------
def test_simulator_is_deterministic_and_seeded(tmp_path: Path):
    _, first, _ = _load(RareDiseaseConfig(**SMALL_SIM), tmp_path / "a", seed=0)
    _, again, _ = _load(RareDiseaseConfig(**SMALL_SIM), tmp_path / "b", seed=0)
    _, other, _ = _load(RareDiseaseConfig(**SMALL_SIM), tmp_path / "c", seed=1)
    assert [c.to_dict() for c in first.cases] == [c.to_dict() for c in again.cases]
    assert first.labels.to_list() == again.labels.to_list()
    for case in first.cases[:5]:  # faces too, byte for byte
        assert (tmp_path / "a" / case.image).read_bytes() == (tmp_path / "b" / case.image).read_bytes()
    assert [c.text for c in first.cases] != [c.text for c in other.cases]
    assert first.labels.ids != other.labels.ids

    assert len(first.labels) == 5 and len(first.cases) == 20
    assert Counter(c.label_id for c in first.cases) == {label: 4 for label in first.labels.ids}
    for case in first.cases:
        assert case.label_id.startswith("OMIM:") and case.meta["source"] == "hpo-sim"
        assert case.meta["facial_hpo_ids"] and all(is_facial(t) for t in case.meta["facial_hpo_ids"])
        assert not any(is_facial(t) for t in case.meta["notes_hpo_ids"])
        assert 10 < len(case.text.split()) < 90
        assert (tmp_path / "a" / case.image).is_file()
    for label in first.labels:
        assert label.description and label.name
    # the config seed changes the simulation as well as the run seed
    _, shifted, _ = _load(RareDiseaseConfig(**SMALL_SIM, seed=5), tmp_path / "d", seed=0)
    assert shifted.labels.ids != first.labels.ids


def test_simulator_explicit_diseases_and_options(tmp_path: Path):
    config = RareDiseaseConfig(diseases="OMIM:154700", cases_per_disease=3, min_terms=2, max_terms=2,
                               imprecision=0.0, noise_prob=0.0, max_excluded=0)
    _, data, _ = _load(config, tmp_path / "run")
    assert data.labels.ids == ["OMIM:154700"]
    assert data.labels["OMIM:154700"].name == "Marfan syndrome"
    from mint_rare_disease.hpo import disease_terms
    annotated = set(disease_terms("OMIM:154700"))
    for case in data.cases:
        assert len(case.meta["notes_hpo_ids"]) == 2 and set(case.meta["hpo_ids"]) <= annotated
        assert case.meta["excluded_hpo_ids"] == [] and " No " not in case.text
    with pytest.raises(MintError, match="task.diseases"):
        _load(RareDiseaseConfig(diseases="OMIM:999999"), tmp_path / "bad")


# -- faces ---------------------------------------------------------------------------------
def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _iris_distance(image: Image.Image) -> float:
    pixels = np.asarray(image).astype(int)
    mask = (np.abs(pixels - np.array(IRIS)).sum(axis=2) == 0)
    ys, xs = np.nonzero(mask)
    middle = image.width / 2
    return xs[xs > middle].mean() - xs[xs < middle].mean()


def test_face_renderer():
    base = ["HP:0000369", "HP:0000347"]  # low-set ears, micrognathia
    same_a = _png(render_face(base, key="case-1"))
    same_b = _png(render_face(list(reversed(base)), key="case-1"))
    assert same_a == same_b  # same inputs: identical bytes
    assert _png(render_face(base + ["HP:0000494"], key="case-1")) != same_a  # a facial term changes the face
    assert _png(render_face(base, key="case-2")) != same_a  # per-case jitter
    # an unmapped facial term still changes something (its mapped ancestors or its hashed perturbation)
    assert _png(render_face(base + ["HP:0011451"], key="case-1")) != same_a  # primary microcephaly
    assert _png(render_face(base + ["HP:0000175"], key="case-1")) != same_a  # cleft palate: hashed only

    hyper = [_iris_distance(render_face(["HP:0000316"], key=f"k{i}")) for i in range(3)]
    hypo = [_iris_distance(render_face(["HP:0000601"], key=f"k{i}")) for i in range(3)]
    assert min(hyper) - max(hypo) > 12  # pixels between the eyes' centres: a salient change
    size = render_face([], key="x", size=112).size
    assert size == (112, 112)


# -- splits and prompts ----------------------------------------------------------------------
def test_stratified_split():
    cases = {"A": [f"a{i}" for i in range(10)], "B": [f"b{i}" for i in range(5)], "C": ["c0", "c1"]}
    splits = stratified_split(cases, test_fraction=0.25, val_fraction=0.1, seed="0")
    per = {label: Counter(splits[i] for i in ids) for label, ids in cases.items()}
    assert per["A"] == {"train": 7, "test": 2, "val": 1} or per["A"] == {"train": 6, "test": 3, "val": 1}
    assert per["B"]["test"] == 1 and per["B"]["val"] == 1 and per["B"]["train"] == 3
    assert per["C"] == {"train": 1, "test": 1}  # too small for validation; still one test case
    assert splits == stratified_split(cases, test_fraction=0.25, val_fraction=0.1, seed="0")
    assert splits != stratified_split(cases, test_fraction=0.25, val_fraction=0.1, seed="1")
    kept, dropped = filter_labels(Counter({"A": 10, "B": 5, "C": 2, "D": 5}), min_cases=3, max_labels=2)
    assert kept == ["A", "B"] and dropped == ["C", "D"]


def test_prompt_format(tmp_path: Path):
    task, data, _ = _load(RareDiseaseConfig(**SMALL_SIM), tmp_path)
    case = data.cases[0]
    prompt = task.prompt(case=case, n_answers=10)
    assert prompt.text.startswith(f"Patient notes: {case.text}\n\n")
    assert "'Most likely diseases:'" in prompt.text and "the 10 most likely diseases" in prompt.text
    assert prompt.image is None and len(prompt.text.split()) < 130
    assert "the most likely disease," in task.prompt(case=case, n_answers=1).text
    # the answer format the prompt asks for is the one evaluation parses
    names = [label.name for label in data.labels][:3]
    parsed = parse_answer(format_answer(names, noun=task.label_noun), noun=task.label_noun)
    assert parsed.well_formed and parsed.names == names
    # splits on the real task: every disease has a test case
    for label in data.labels.ids:
        assert {c.split for c in data.cases if c.label_id == label} >= {"train", "test"}


def test_notes_and_profile_helpers():
    assert parse_iso_age("P2Y6M") == pytest.approx(2.5)
    assert parse_iso_age("P5M") == pytest.approx(5 / 12)
    assert parse_iso_age("nonsense") is None
    assert subject_phrase("FEMALE", 7) == "A 7-year-old girl"
    assert subject_phrase("MALE", 8) == "An 8-year-old boy"
    assert subject_phrase("MALE", 0.5) == "A 6-month-old boy"
    assert subject_phrase("FEMALE", 34) == "A 34-year-old woman"
    assert subject_phrase(None, None) == "A patient"
    profile = disease_profile("OMIM:154700", max_terms=5)
    assert len(profile.split(", ")) == 5
    assert disease_profile("OMIM:999999") == "" and disease_profile("ORPHA:558") == ""


def test_grouped_split_keeps_each_publication_on_one_side():
    cases = {"A": [f"a{i}" for i in range(12)], "B": [f"b{i}" for i in range(6)], "C": ["c0", "c1", "c2"]}
    groups = {f"a{i}": f"P{i % 4}" for i in range(12)}  # A: 4 publications of 3 cases
    groups.update({f"b{i}": ("P0" if i < 2 else f"Q{i % 2}") for i in range(6)})  # B shares P0 with A
    groups.update({"c0": "R", "c1": "R", "c2": "R"})  # C: one publication -> falls back to the case split
    splits, how = grouped_split(cases, groups, test_fraction=0.25, val_fraction=0.1, seed="0")
    assert how == {"A": "group", "B": "group", "C": "case"}
    sides: dict[str, set[str]] = {}
    for case_id, split in splits.items():
        if how[case_id[0].upper()] == "group":
            sides.setdefault(groups[case_id], set()).add(split)
    assert all(len(s) == 1 for s in sides.values()), sides  # P0 too, across diseases
    for label in ("A", "B"):
        assert {"train", "test"} <= {splits[i] for i in cases[label]}
    assert Counter(splits[i] for i in cases["C"]) == {"train": 2, "test": 1}
    assert (splits, how) == grouped_split(cases, groups, test_fraction=0.25, val_fraction=0.1, seed="0")


def test_phenopackets_split_by_publication(tmp_path: Path):
    root = tmp_path / "store"
    (root / "FBN1" / "phenopackets").mkdir(parents=True)
    for pmid in range(4):
        for j in range(3):
            packet = _packet(f"PMID_{pmid}_patient_{j}", MARFAN, observed=[("HP:0001166", "Arachnodactyly")])
            (root / "FBN1" / "phenopackets" / f"PMID_{pmid}_patient_{j}.json").write_text(json.dumps(packet))
    config = RareDiseaseConfig(source="phenopackets", path=str(root), val_fraction=0.0)
    _, data, log = _load(config, tmp_path / "run")
    assert "split by publication for 1 diseases" in log
    sides: dict[str, set[str]] = {}
    for case in data.cases:
        sides.setdefault(case.meta["publication"], set()).add(case.split)
        assert case.meta["gene"] == "FBN1"
    assert len(sides) == 4 and all(len(s) == 1 for s in sides.values())
    assert data.info["split_by"] == "publication"
    by_case = _load(RareDiseaseConfig(source="phenopackets", path=str(root), split_by="case", val_fraction=0.0),
                    tmp_path / "run2")[1]
    assert by_case.info["split_by"] == "case"
    with pytest.raises(MintError, match="task.split_by"):
        RareDiseaseTask(RareDiseaseConfig(split_by="author"))
