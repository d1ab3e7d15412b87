"""Seeded, label-stratified train/val/test splits, shared by the tasks (cases grouped by label, or by publication)."""

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


SPLIT_BY = ("case", "publication", "gene")


def grouped_split(cases_by_label: Mapping[str, Sequence[str]], groups: Mapping[str, str | None], *,
                  test_fraction: float, val_fraction: float, seed: str) -> tuple[dict[str, str], dict[str, str]]:
    """Like :func:`stratified_split`, but whole groups (publications, genes) go to one split.

    Phenopacket-store cases come in cohorts: one publication annotates its patients alike, so a
    test case whose publication also sits in train is half seen. A disease with cases from two or
    more groups is split by group: test groups are drawn until they hold ``test_fraction`` of its
    cases (at least one group), then validation groups (when three or more groups are left), the
    rest train. A group met again under another disease keeps its split. A disease with one group
    (or cases without one) falls back to the case split. Returns (case id -> split, disease -> how).
    """
    splits: dict[str, str] = {}
    how: dict[str, str] = {}
    group_split: dict[str, str] = {}
    for label in sorted(cases_by_label):
        ids = sorted(cases_by_label[label])
        label_groups = sorted({groups.get(i) for i in ids if groups.get(i)})
        if len(label_groups) < 2 or any(not groups.get(i) for i in ids):
            splits.update(stratified_split({label: ids}, test_fraction=test_fraction, val_fraction=val_fraction,
                                           seed=seed))
            how[label] = "case"
            continue
        how[label] = "group"
        size = Counter(groups[i] for i in ids)
        random.Random(f"group-split:{seed}:{label}").shuffle(label_groups)
        fresh = [g for g in label_groups if g not in group_split]
        n_test, n_val = max(1, _round(len(ids) * test_fraction)), _round(len(ids) * val_fraction)
        in_test = sum(size[g] for g in label_groups if group_split.get(g) == "test")
        in_val = sum(size[g] for g in label_groups if group_split.get(g) == "val")
        has_train = any(group_split.get(g) == "train" for g in label_groups)
        for g in fresh:
            left = len(fresh) - fresh.index(g)  # this group and the fresh ones after it
            # A big cohort may overshoot the test share; skip it once some test cases are in.
            fits = in_test == 0 or in_test + size[g] <= 1.5 * n_test
            if in_test < n_test and fits and (left > 1 or has_train):
                group_split[g], in_test = "test", in_test + size[g]
            elif val_fraction > 0 and in_val < max(1, n_val) and left >= 3:
                group_split[g], in_val = "val", in_val + size[g]
            else:
                group_split[g], has_train = "train", True
        for i in ids:
            splits[i] = group_split[groups[i]]
    return splits, how
