"""The notes branch's phenotype features: what the notes say, as the HPO sees it.

Per case: an information-content weighted multi-hot over the HPO terms its notes mention and
their ancestors (so "Focal seizure" also lights "Seizure", and a rare finding outweighs a common
one), L2-normalised; then, per disease of the label space, the share of the case's information
content its hpo3 annotations explain (Phrank similarity / the case's own), which lets a disease
with no training case still be recognised. Built on :mod:`mint_hpo`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mint_core.types import Case
from mint_hpo.phenotype import case_terms, closure_of, ic, ic_vector
from mint_hpo.scoring import phrank


def vocabulary(cases: Sequence[Case]) -> dict[str, int]:
    """Term id -> feature index over the closure of the cases' terms (sorted, so stable)."""
    terms = closure_of(t for case in cases for t in case_terms(case)[0])
    return {term_id: i for i, term_id in enumerate(sorted(terms))}


def phenotype_features(cases: Sequence[Case], vocab: dict[str, int], label_ids: Sequence[str]) -> torch.Tensor:
    """``[len(cases), len(vocab) + len(label_ids)]`` float features (see the module docstring)."""
    rows = []
    for case in cases:
        observed, excluded = case_terms(case)
        own = sum(ic(t) for t in closure_of(observed)) or 1.0
        rows.append(ic_vector(observed, vocab) + [phrank(observed, excluded, d) / own for d in label_ids])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(cases), len(vocab) + len(label_ids))
