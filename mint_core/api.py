"""The Python API: use a run's aligned student from code, as ``mint predict`` / ``mint export`` do.

    from mint_core.api import load_student

    student = load_student("runs/rare-disease-gestalt-orpo", role="orpo")
    for p in student.predict(["A 7-year-old boy with short stature, seizures and hypotonia."], top=5):
        print(p.names, p.hallucinated, [(r.name, round(r.score, 2)) for r in p.ranking])
    student.predict(student.read("patients/"), constrained=True)   # a phenopacket folder

    export("runs/...", role="orpo", out_dir="export/orpo-merged", merged=True)
    export_preferences("runs/...", out_dir="export/prefs")
"""

from __future__ import annotations

from pathlib import Path

from mint_core.export import export_model as export
from mint_core.export import export_preferences
from mint_core.predict import Prediction, Predictor, RankedLabel


def load_student(run_dir: str | Path, role: str = "orpo") -> Predictor:
    """The student of ``run_dir`` (``role``: an optimizer that trained there, or ``base``) ready to predict.

    ``.predict(cases, constrained=False, top=10)`` takes note texts or :class:`~mint_core.types.Case`
    objects and returns one :class:`Prediction` per case; ``.read(path)`` reads cases from a text,
    JSONL or task-format file or folder (see :mod:`mint_core.predict`).
    """
    return Predictor(run_dir, role=role)


__all__ = ["Prediction", "Predictor", "RankedLabel", "export", "export_preferences", "load_student"]
