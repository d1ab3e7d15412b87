"""The ``predictions`` teacher: serves rankings read from a file (see :mod:`mint_predictions.formats`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from mint_core.components import Teacher
from mint_core.io import write_json
from mint_core.registry import MintError
from mint_core.types import Case, Ranking, TaskData
from mint_predictions.formats import _preview, read_rankings


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PredictionsTeacher(Teacher):
    """No training: ``fit`` validates the file and records where the rankings came from."""

    def __init__(self, config):
        self.config = config
        self._rankings: dict[str, Ranking] | None = None
        self.format: str | None = None

    @property
    def path(self) -> Path:
        if not self.config.path:
            raise MintError("teacher=predictions needs teacher.path=FILE (a .jsonl, .csv or .tsv of rankings)")
        return Path(self.config.path).expanduser()

    def _load(self, data: TaskData) -> dict[str, Ranking]:
        if self._rankings is None:
            self.format, self._rankings = read_rankings(self.path, data.labels, {case.id for case in data.cases},
                                                        higher_is_better=self.config.higher_is_better)
        return self._rankings

    def fit(self, *, data: TaskData, ctx) -> None:
        rankings = self._load(data)
        write_json(ctx.path("teacher", "predictions.json"), {
            "source": str(self.path.resolve()), "sha256": _sha256(self.path), "format": self.format,
            "n_cases": len(rankings), "higher_is_better": self.config.higher_is_better,
        })
        ctx.log(f"teacher predictions: {len(rankings)} ranking(s) from {self.path} ({self.format})")

    def rank(self, *, data: TaskData, cases: Sequence[Case], ctx) -> list[Ranking]:
        rankings = self._load(data)
        missing = [case.id for case in cases if case.id not in rankings]
        if missing and not self.config.allow_missing:
            raise MintError(f"{self.path}: no prediction for {len(missing)} case(s): {_preview(missing)}. "
                            "Add them, or pass teacher.allow_missing=true to rank them in label-space order")
        if missing:
            ctx.log(f"[yellow]teacher predictions: {len(missing)} case(s) without a prediction get the "
                    f"label-space order[/yellow]")
        return [rankings.get(case.id) or Ranking(case_id=case.id, label_ids=data.labels.ids) for case in cases]
