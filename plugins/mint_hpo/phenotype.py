"""A case's phenotype as the ontology sees it: its HPO terms, their ancestors and their specificity.

Terms come from the case's metadata (``notes_hpo_ids`` / ``notes_excluded_hpo_ids``, written by
the rare-disease task for the terms its notes mention) or, for free-text notes without them, from
:class:`mint_hpo.matcher.HpoMatcher`. Only what the notes say is used: the face is another branch.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

from mint_core.types import Case
from mint_rare_disease import hpo


@functools.lru_cache(maxsize=65536)
def closure(term_id: str) -> frozenset[str]:
    """The term and all its ancestors inside the phenotype branch (the root excluded: every term has it)."""
    if not hpo.is_phenotype(term_id):
        return frozenset()
    return frozenset({term_id, *(a for a in hpo.ancestors(term_id) if hpo.is_phenotype(a))})


def closure_of(terms: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for term_id in terms:
        out |= closure(term_id)
    return frozenset(out)


@functools.lru_cache(maxsize=65536)
def ic(term_id: str) -> float:
    """OMIM information content; the phenotype root scores 0."""
    return hpo.information_content(term_id)


@functools.lru_cache(maxsize=4096)
def disease_closure(label_id: str) -> frozenset[str]:
    """Closure of a disease's hpo3 annotations (empty when hpo3 does not annotate it)."""
    return closure_of(hpo.disease_terms(label_id))


def case_terms(case: Case, matcher=None) -> tuple[list[str], list[str]]:
    """``(observed, excluded)`` HPO ids of what the case's notes mention."""
    meta = case.meta or {}
    if "notes_hpo_ids" in meta:
        return list(meta["notes_hpo_ids"]), list(meta.get("notes_excluded_hpo_ids", []))
    if matcher is None:
        from mint_hpo.matcher import default_matcher

        matcher = default_matcher()
    found = matcher.match(case.text or "")
    return found.observed, found.excluded


def ic_vector(terms: Sequence[str], vocabulary: dict[str, int]) -> list[float]:
    """IC-weighted multi-hot over ``vocabulary`` of the terms' closure, L2-normalised (zeros when empty)."""
    vector = [0.0] * len(vocabulary)
    for term_id in closure_of(terms):
        index = vocabulary.get(term_id)
        if index is not None:
            vector[index] = ic(term_id)
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector] if norm > 0 else vector
