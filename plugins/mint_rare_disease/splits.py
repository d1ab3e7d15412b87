"""Seeded, disease-stratified train/val/test splits."""

from __future__ import annotations

import random
from collections import Counter
from typing import Mapping, Sequence


def _round(x: float) -> int:
    return int(x + 0.5)  # half up: Python's round() is banker's rounding


def stratified_split(cases_by_label: Mapping[str, Sequence[str]], *, test_fraction: float, val_fraction: float,
                     seed: str) -> dict[str, str]:
    """case id -> "train" | "val" | "test", split within each label.

    Every label with at least 2 cases gets at least one test case and keeps at least one training
    case; validation cases (for teacher early stopping) come only from labels with 4+ cases, so
    small diseases are not starved of training data.
    """
    splits: dict[str, str] = {}
    for label in sorted(cases_by_label):
        ids = sorted(cases_by_label[label])
        random.Random(f"split:{seed}:{label}").shuffle(ids)
        n = len(ids)
        n_test = max(1, _round(n * test_fraction)) if n >= 2 else 0
        n_val = _round(n * val_fraction) if n >= 4 else 0
        if val_fraction > 0 and n >= 4:
            n_val = max(1, n_val)
        while n_test + n_val > n - 1 and n_val > 0:
            n_val -= 1
        while n_test + n_val > n - 1 and n_test > 1:
            n_test -= 1
        for i, case_id in enumerate(ids):
            splits[case_id] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def filter_labels(counts: Counter[str], *, min_cases: int, max_labels: int) -> tuple[list[str], list[str]]:
    """(kept, dropped) labels: fewer than ``min_cases`` cases are dropped; then at most ``max_labels``
    (0 = no limit) are kept, those with most cases first (ties by id, so the choice is stable)."""
    enough = [label for label in counts if counts[label] >= min_cases]
    dropped = sorted(label for label in counts if counts[label] < min_cases)
    ranked = sorted(enough, key=lambda label: (-counts[label], label))
    if max_labels > 0 and len(ranked) > max_labels:
        dropped += sorted(ranked[max_labels:])
        ranked = ranked[:max_labels]
    return sorted(ranked), dropped
