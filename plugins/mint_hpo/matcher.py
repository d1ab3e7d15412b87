"""Finding HPO terms in free-text notes by their names.

hpo3 ships each term's name but no synonyms (0 of its 19,903 terms carry one: measured on
hpo3 1.x), so the index holds the names of phenotype terms plus their plural, matched
case-insensitively on word boundaries, longest first. A sentence or clause opened by "no",
"without", "absence of" or "negative for" lists excluded findings ("No seizures or ataxia.").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from mint_rare_disease import hpo

_WORD = re.compile(r"[a-z0-9]+(?:[-/'][a-z0-9]+)*")
_CLAUSE = re.compile(r"[.;:\n]+|,\s*(?=(?:no|without)\b)")
_NEGATION = ("no", "without", "absence of", "absent", "negative for", "denies")
MAX_WORDS = 12


def words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def _plural(name_words: tuple[str, ...]) -> tuple[str, ...]:
    last = name_words[-1]
    plural = last[:-1] + "ies" if last.endswith("y") and len(last) > 2 and last[-2] not in "aeiou" else last + "s"
    return name_words[:-1] + (plural,)


@dataclass
class Match:
    observed: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


class HpoMatcher:
    """``match(text)`` -> the HPO ids the text names, observed and excluded, in order of appearance."""

    def __init__(self, names: dict[str, str] | None = None):
        """``names``: HPO id -> name; by default every phenotype term of hpo3."""
        if names is None:
            names = {str(t.id): str(t.name) for t in hpo.ontology() if hpo.is_phenotype(str(t.id))}
        self.index: dict[tuple[str, ...], str] = {}
        for term_id, name in sorted(names.items()):
            key = words(name)
            if key and len(key) <= MAX_WORDS:
                self.index.setdefault(key, term_id)
                self.index.setdefault(_plural(key), term_id)

    def _terms(self, tokens: tuple[str, ...]) -> list[str]:
        found, i = [], 0
        while i < len(tokens):
            for n in range(min(MAX_WORDS, len(tokens) - i), 0, -1):
                term_id = self.index.get(tokens[i:i + n])
                if term_id is not None:
                    found.append(term_id)
                    i += n
                    break
            else:
                i += 1
        return found

    def match(self, text: str) -> Match:
        result = Match()
        for clause in _CLAUSE.split(text):
            tokens = words(clause)
            negated = next((len(words(n)) for n in _NEGATION if tokens[:len(words(n))] == words(n)), 0)
            target = result.excluded if negated else result.observed
            for term_id in self._terms(tokens[negated:]):
                if term_id not in target:
                    target.append(term_id)
        return result


@functools.lru_cache(maxsize=1)
def default_matcher() -> HpoMatcher:
    return HpoMatcher()
