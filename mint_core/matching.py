"""Matching the names a student writes to the label space: exact, synonym, then fuzzy.

Evaluation and ``mint predict`` both read a student's list through :class:`NameMatcher`, and count
each listed label once (:func:`unique_entries`), so a hallucinated name is the same thing in both.
"""

from __future__ import annotations

from typing import Sequence

from rapidfuzz import fuzz, process

from mint_core.types import LabelSpace, normalize_name


class NameMatcher:
    """Matches free-text names to a label space; build once, use for many answers."""

    def __init__(self, labels: LabelSpace, threshold: float = 0.8):
        self.labels = labels
        self.threshold = threshold
        self._index = labels.names_index()  # normalized name/synonym -> Label (names win)
        self._choices = list(self._index)

    def match(self, name: str) -> str | None:
        """Label id for ``name``: exact name, then synonym, then best fuzzy ratio >= threshold; else None."""
        key = normalize_name(name)
        if not key:
            return None
        label = self.labels.by_name(name)
        if label is not None:
            return label.id
        best = process.extractOne(key, self._choices, scorer=fuzz.ratio, score_cutoff=self.threshold * 100)
        return self._index[best[0]].id if best is not None else None


def match_names(names: Sequence[str], labels: LabelSpace, threshold: float = 0.8) -> list[str | None]:
    """Each name's label id, or ``None`` for a hallucinated name.

    Exact match on the normalized name (lower case, no accents or punctuation), then on a
    normalized synonym, then the best fuzzy match with ``rapidfuzz.fuzz.ratio / 100 >= threshold``
    over all normalized names and synonyms.
    """
    matcher = NameMatcher(labels, threshold)
    return [matcher.match(name) for name in names]


def unique_entries(names: Sequence[str], matched: Sequence[str | None]) -> tuple[list[str], list[str | None]]:
    """Deduplicated (name, id) entries: a repeated spelling or an already listed label counts once."""
    seen_names: set[str] = set()
    seen_ids: set[str] = set()
    out_names: list[str] = []
    out_ids: list[str | None] = []
    for name, label_id in zip(names, matched):
        key = normalize_name(name)
        if key in seen_names or (label_id is not None and label_id in seen_ids):
            continue
        seen_names.add(key)
        if label_id is not None:
            seen_ids.add(label_id)
        out_names.append(name)
        out_ids.append(label_id)
    return out_names, out_ids
