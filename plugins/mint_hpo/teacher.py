"""The ``hpo`` teacher (see :mod:`mint_hpo`): fitted in milliseconds, so cross-fitting is free."""

from __future__ import annotations

from typing import Sequence

from mint_core.components import Teacher
from mint_core.crossfit import FOLDS_FILE, assign_folds, cross_fit, fold_members
from mint_core.io import write_json
from mint_core.registry import MintError
from mint_core.types import Case, Ranking, TaskData
from mint_hpo.phenotype import case_terms
from mint_hpo.scoring import NaiveBayes, phrank

METHODS = ("nb", "phrank")


def ranking_from_scores(case_id: str, label_ids: Sequence[str], scores: Sequence[float]) -> Ranking:
    """Best first; ties keep label-space order, so rankings are reproducible."""
    order = sorted(range(len(label_ids)), key=lambda j: -scores[j])
    return Ranking(case_id=case_id, label_ids=[label_ids[j] for j in order],
                   scores=[round(float(scores[j]), 6) for j in order])


class HpoTeacher(Teacher):
    def __init__(self, config):
        if config.method not in METHODS:
            raise MintError(f"teacher.method={config.method!r} must be one of {', '.join(METHODS)}")
        if config.crossfit == 1 or config.crossfit < 0:
            raise MintError(f"teacher.crossfit={config.crossfit}: use 0 (off) or at least 2 folds")
        self.config = config
        self.model: NaiveBayes | None = None
        self.folds: dict[str, int] = {}
        self.fold_models: dict[int, NaiveBayes] = {}

    def _fit_on(self, data: TaskData, cases: Sequence[Case]) -> NaiveBayes | None:
        if self.config.method != "nb":
            return None
        model = NaiveBayes(data.labels.ids, alpha=self.config.alpha, prior=self.config.prior)
        return model.fit([(c.label_id, case_terms(c)[0]) for c in cases if c.label_id in data.labels])

    def fit(self, *, data: TaskData, ctx) -> None:
        fit_on = data.split("train") + data.split("val")
        self.model = self._fit_on(data, fit_on)
        train = data.split("train")
        if self.config.crossfit and self.config.method == "nb" and len(train) >= self.config.crossfit:
            self.folds = assign_folds(train, self.config.crossfit, seed=ctx.seed)
            val = data.split("val")
            self.fold_models = {fold: self._fit_on(data, [c for c in train if self.folds[c.id] != fold] + val)
                                for fold in sorted(set(self.folds.values()))}
            members = fold_members(train, self.folds)
            write_json(ctx.path("teacher", FOLDS_FILE), {
                "folds": self.folds, "trained_on": {f: ids + sorted(c.id for c in val) for f, ids in members.items()}})

    def score(self, model: NaiveBayes | None, data: TaskData, case: Case) -> list[float]:
        observed, excluded = case_terms(case)
        if model is None:
            return [phrank(observed, excluded, d) for d in data.labels.ids]
        return model.log_scores(observed, excluded)

    def rank(self, *, data: TaskData, cases: Sequence[Case], ctx) -> list[Ranking]:
        if self.model is None and self.config.method == "nb":
            self.fit(data=data, ctx=ctx)
        ids = data.labels.ids
        held = [c for c in cases if c.id in self.folds]
        out = {c.id: ranking_from_scores(c.id, ids, self.score(self.model, data, c)) for c in cases if c.id not in self.folds}
        if held:
            oof = cross_fit(held, self.folds, lambda fold, _fit_on, held_out: [
                ranking_from_scores(c.id, ids, self.score(self.fold_models[fold], data, c)) for c in held_out])
            out.update({r.case_id: r for r in oof})
        return [out[c.id] for c in cases]
