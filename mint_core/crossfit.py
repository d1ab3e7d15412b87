"""Cross-fitting: rank each training case with a model that never saw it.

A teacher ranking the cases it was trained on puts the truth first almost always (160 of 160 on
the demo, against 0.78 on test), so preferences built from those rankings carry the label and
nothing the teacher learned. With ``n_folds`` folds, each training case is ranked by a model fitted
on the other folds (its :attr:`~mint_core.types.Ranking.fold` says which); val and test cases keep
the ranking of the model fitted on all training cases, which a teacher fits *first*, with the run
seed, so its rankings equal those of a run without cross-fitting.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Mapping, Sequence

from mint_core.registry import MintError
from mint_core.types import Case, Ranking

FOLDS_FILE = "folds.json"


def assign_folds(cases: Sequence[Case], n_folds: int, *, seed: int | str) -> dict[str, int]:
    """case id -> fold in ``range(n_folds)``, stratified by label and seeded.

    Each label's cases are shuffled and dealt round-robin, starting where the previous label
    stopped, so every fold holds about ``len(cases) / n_folds`` cases and a label's cases spread
    over as many folds as it has cases.
    """
    if n_folds < 2:
        raise MintError(f"teacher.crossfit={n_folds}: use 0 (off) or at least 2 folds")
    by_label: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        by_label[case.label_id].append(case.id)
    folds, position = {}, 0
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        random.Random(f"crossfit:{seed}:{label}").shuffle(ids)
        for case_id in ids:
            folds[case_id] = position % n_folds
            position += 1
    return folds


def cross_fit(cases: Sequence[Case], folds: Mapping[str, int],
              fit_and_rank: Callable[[int, list[Case], list[Case]], list[Ranking]]) -> list[Ranking]:
    """Out-of-fold rankings of ``cases``: ``fit_and_rank(fold, fit_on, held_out)`` fits a model on
    ``fit_on`` (every case outside ``fold``) and ranks ``held_out``; each ranking gets its fold id."""
    rankings: list[Ranking] = []
    for fold in sorted(set(folds.values())):
        held_out = [case for case in cases if folds[case.id] == fold]
        fit_on = [case for case in cases if folds[case.id] != fold]
        ranked = fit_and_rank(fold, fit_on, held_out)
        if sorted(r.case_id for r in ranked) != sorted(c.id for c in held_out):
            raise MintError(f"cross-fitting fold {fold}: the teacher did not rank exactly its held-out cases")
        for ranking in ranked:
            ranking.fold = fold
        rankings += ranked
    return rankings


def fold_members(cases: Sequence[Case], folds: Mapping[str, int]) -> dict[str, list[str]]:
    """fold -> ids of the training cases its model was fitted on (for ``folds.json``, and the check
    that no out-of-fold ranking comes from a model that saw its case)."""
    return {str(fold): sorted(c.id for c in cases if folds[c.id] != fold) for fold in sorted(set(folds.values()))}
