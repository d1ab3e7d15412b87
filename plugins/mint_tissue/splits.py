"""Seeded train/val/test splits, stratified by class."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from mint_core.types import Case


def split_counts(n: int, *, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts for a class of ``n`` cases.

    Every class keeps at least one training case; a class with three or more cases gets at
    least one test and (when ``val_fraction`` > 0) one validation case, so tiny real samples
    (3 tiles a class) still land in all three splits.
    """
    if n <= 1:
        return n, 0, 0
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if test_fraction > 0:
        n_test = max(1, n_test)
    if val_fraction > 0 and n >= 3:
        n_val = max(1, n_val)
    while n_test + n_val > n - 1:  # leave a training case
        if n_val > 0 and n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def assign_splits(cases: list[Case], *, seed: int, test_fraction: float, val_fraction: float) -> None:
    """Set ``case.split`` in place: per class, shuffled by ``seed``, cut by :func:`split_counts`."""
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(f"task.test_fraction ({test_fraction}) and task.val_fraction ({val_fraction}) "
                         "must be in [0, 1) and sum to less than 1")
    by_class: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_class[case.label_id].append(case)
    for index, label_id in enumerate(sorted(by_class)):
        group = sorted(by_class[label_id], key=lambda c: c.id)
        order = np.random.default_rng([seed & 0xFFFFFFFF, index, 7]).permutation(len(group))
        n_train, n_val, _ = split_counts(len(group), test_fraction=test_fraction, val_fraction=val_fraction)
        for rank, i in enumerate(order):
            group[i].split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
