"""Scores of a case's phenotype against each disease: zero-shot similarity and naive Bayes.

- :func:`phrank`: Phrank-style similarity (Jagadeesh et al. 2019): the summed information content
  of the ancestors the case's terms share with the disease's hpo3 annotations, minus the same for
  excluded findings the disease is annotated with. Needs no training case.
- :class:`NaiveBayes`: Bernoulli naive Bayes over the closure features of training cases, with the
  disease's annotations as a prior pseudo-case, so a disease with few cases falls back to hpo3.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from mint_hpo.phenotype import closure, closure_of, disease_closure, ic


def phrank(observed: Sequence[str], excluded: Sequence[str], label_id: str, *, excluded_weight: float = 1.0) -> float:
    annotated = disease_closure(label_id)
    score = sum(ic(t) for t in closure_of(observed) & annotated)
    # An excluded finding counts against the disease only where it is annotated (the term itself or
    # a descendant, i.e. the term lies in the disease's closure).
    score -= excluded_weight * sum(ic(t) for t in set(excluded) if t in annotated)
    return score


class NaiveBayes:
    """``log P(d) + sum_f log P(f present | d)`` over the closure features ``f`` a case shows, and
    ``log P(f absent | d)`` for its excluded terms; ``P(f | d) = (n_df + prior * a_df + alpha) /
    (n_d + prior + 2 alpha)`` with ``a_df = 1`` when hpo3 annotates ``d`` with ``f``."""

    def __init__(self, label_ids: Sequence[str], *, alpha: float = 0.5, prior: float = 1.0):
        self.label_ids, self.alpha, self.prior = list(label_ids), alpha, prior
        self.counts: dict[str, Counter[str]] = {d: Counter() for d in self.label_ids}
        self.n: Counter[str] = Counter()

    def fit(self, examples: Sequence[tuple[str, Sequence[str]]]) -> "NaiveBayes":
        """``examples``: (label id, observed terms) of training cases."""
        for label_id, observed in examples:
            self.n[label_id] += 1
            self.counts[label_id].update(closure_of(observed))
        return self

    def _p(self, label_id: str, feature: str) -> float:
        annotated = float(feature in disease_closure(label_id))
        return ((self.counts[label_id][feature] + self.prior * annotated + self.alpha)
                / (self.n[label_id] + self.prior + 2 * self.alpha))

    def log_scores(self, observed: Sequence[str], excluded: Sequence[str]) -> list[float]:
        total = sum(self.n.values()) + len(self.label_ids)
        features = closure_of(observed)
        scores = []
        for d in self.label_ids:
            s = math.log((self.n[d] + 1) / total)
            s += sum(math.log(self._p(d, f)) for f in features)
            s += sum(math.log(1 - self._p(d, t)) for t in set(excluded) if closure(t))
            scores.append(s)
        return scores
