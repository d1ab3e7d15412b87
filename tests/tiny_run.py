"""One real, tiny finished run shared by test_predict.py and test_export.py.

rare-disease (hpo-sim, 4 diseases) -> gestalt teacher (image branch, 2 epochs) -> topk pairs ->
ORPO for 2 steps on a tiny random Llama (mint_llama.testing) -> evaluation on 4 test cases.
Built once per test session (about 30 s of CPU), the folder reused by every test that needs it.
"""

from __future__ import annotations

import json
from pathlib import Path

from mint_core.testing import invoke

_RUNS: dict[str, Path] = {}

# Two packets of one disease (as a phenopacket-store folder would hold) and one without a diagnosis.
PACKETS = {
    "PMID_1_patient_A": {"features": [("HP:0001250", "Seizure"), ("HP:0004322", "Short stature"),
                                      ("HP:0001263", "Global developmental delay")],
                         "excluded": [("HP:0000365", "Hearing impairment")], "sex": "MALE", "age": "P7Y",
                         "disease": ("OMIM:154700", "Marfan syndrome")},
    "PMID_1_patient_B": {"features": [("HP:0001166", "Arachnodactyly"), ("HP:0001083", "Ectopia lentis")],
                         "excluded": [], "sex": "FEMALE", "age": "P34Y", "disease": ("OMIM:154700", "Marfan syndrome")},
    "new_patient": {"features": [("HP:0001252", "Hypotonia"), ("HP:0000252", "Microcephaly")],
                    "excluded": [], "sex": None, "age": None, "disease": None},
}


def write_phenopackets(folder: Path) -> Path:
    """Phenopacket v2 JSON files in ``folder`` (GENE/phenopackets/ layout), from :data:`PACKETS`."""
    target = folder / "FBN1" / "phenopackets"
    target.mkdir(parents=True, exist_ok=True)
    for packet_id, p in PACKETS.items():
        subject = {"id": packet_id}
        if p["sex"]:
            subject["sex"] = p["sex"]
        if p["age"]:
            subject["timeAtLastEncounter"] = {"age": {"iso8601duration": p["age"]}}
        features = [{"type": {"id": t, "label": name}} for t, name in p["features"]]
        features += [{"type": {"id": t, "label": name}, "excluded": True} for t, name in p["excluded"]]
        data = {"id": packet_id, "subject": subject, "phenotypicFeatures": features, "metaData": {}}
        if p["disease"]:
            data["interpretations"] = [{"id": "i1", "progressStatus": "SOLVED", "diagnosis": {
                "disease": {"id": p["disease"][0], "label": p["disease"][1]}}}]
        (target / f"{packet_id}.json").write_text(json.dumps(data))
    return folder


def tiny_run(tmp_path_factory) -> Path:
    """The finished run directory (built on first use in this session)."""
    if "run" in _RUNS:
        return _RUNS["run"]
    from mint_llama.testing import build_tiny_llama

    base = tmp_path_factory.mktemp("tiny-run")
    model = build_tiny_llama(base / "model", seed=0)
    run_dir = base / "run"
    result = invoke(["run", "--run-dir", str(run_dir), "--student", "llama-text", f"student.model={model}",
                     "student.lora_r=4", "student.lora_alpha=8", "student.device=cpu", "student.lora_dropout=0.0",
                     "task.n_diseases=4", "task.cases_per_disease=5", "teacher.modalities=image", "teacher.epochs=2",
                     "builder.k=3", "builder.q=3", "optimizer.max_steps=2", "optimizer.learning_rate=0.01",
                     "eval.max_cases=4", "eval.max_new_tokens=48", "eval.mode=both"])
    assert result.exit_code == 0, result.output
    _RUNS["run"] = run_dir
    return run_dir
