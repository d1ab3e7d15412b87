"""Clinical notes in plain words, written from HPO term names, sex and age.

"A 7-year-old girl presenting with seizures, global developmental delay and hypotonia. No cardiomyopathy."

Notes stay short on purpose: the student is a small LLM trained on CPU, so a prompt of about
40-120 tokens is the budget; callers cap the number of findings.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

_TEMPLATES = (
    "{subject} presenting with {findings}.",
    "{subject} with {findings}.",
    "{subject}. Examination showed {findings}.",
    "{subject} referred for {findings}.",
    "{subject}. Clinical findings: {findings}.",
)
#: Oldest age a note states: beyond it an age is a data error ("P99999999999999999999Y"), not a patient.
MAX_AGE_YEARS = 130
_ISO_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
                           r"(?:T.*)?$")


def parse_iso_age(text: str) -> float | None:
    """Years from an ISO 8601 duration ("P6Y", "P2Y2M", "P5M", "P3W", "P10D"); ``None`` if unreadable.

    The value is not capped (callers decide what an implausible age means: see :data:`MAX_AGE_YEARS`);
    a duration too long for a float is ``inf``."""
    match = _ISO_DURATION.match(text.strip().upper()) if text else None
    if not match or not any(match.groups()):
        return None
    years, months, weeks, days = (float(g) if g else 0.0 for g in match.groups())
    return years + months / 12 + weeks * 7 / 365.25 + days / 365.25


def phrase_term(name: str) -> str:
    """'Global developmental delay' -> 'global developmental delay', 'Aplasia/Hypoplasia of the nails'
    -> 'aplasia/hypoplasia of the nails'; acronyms ('EEG abnormality', 'IgA deficiency') keep their capitals."""
    first, _, rest = name.partition(" ")
    parts = re.split(r"([/-])", first)
    words = parts[::2]
    # Lower-case only plain capitalised words: "T-cell", "EEG", "IgA" keep their capitals.
    if all(not w or w.islower() or (len(w) > 1 and w[0].isupper() and w[1:].islower()) for w in words):
        first = first.lower()
    return f"{first} {rest}".strip()


def join_words(items: Sequence[str], conjunction: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _article(phrase: str) -> str:
    # "an 8-year-old", "an 11-month-old", "an infant"; "a 1-year-old"
    starts_vowel = phrase[:1].lower() in "aeiou" or re.match(r"^(8|11|18|8\d)\b|^(8|11|18|8\d)-", phrase)
    return "An" if starts_vowel else "A"


def subject_phrase(sex: str | None, age_years: float | None) -> str:
    """'A 7-year-old girl', 'An 8-month-old boy', 'A 34-year-old woman', 'A female patient'."""
    sex = (sex or "").upper()
    female, male = sex == "FEMALE", sex == "MALE"
    if age_years is not None and not 0 <= age_years <= MAX_AGE_YEARS:
        age_years = None  # a data error: say nothing rather than something absurd
    if age_years is None:
        noun = "female patient" if female else "male patient" if male else "patient"
        return f"{_article(noun)} {noun}"
    if age_years < 1 / 12:
        noun = "newborn girl" if female else "newborn boy" if male else "newborn"
        return f"A {noun}"
    if age_years < 2:
        months = max(1, int(round(age_years * 12)))
        age = f"{months}-month-old"
        noun = "girl" if female else "boy" if male else "infant"
    else:
        years = int(age_years)
        age = f"{years}-year-old"
        if years < 18:
            noun = "girl" if female else "boy" if male else "child"
        else:
            noun = "woman" if female else "man" if male else "patient"
    return f"{_article(age)} {age} {noun}"


def write_notes(*, observed: Sequence[str], excluded: Sequence[str] = (), sex: str | None = None,
                age_years: float | None = None, rng: random.Random | None = None) -> str:
    """Notes from observed and excluded finding names (already chosen, in the order to write them).

    ``rng`` picks the sentence template; without it the first template is used.
    """
    subject = subject_phrase(sex, age_years)
    findings = [phrase_term(name) for name in observed]
    template = rng.choice(_TEMPLATES) if rng is not None else _TEMPLATES[0]
    if findings:
        text = template.format(subject=subject, findings=join_words(findings))
        text = text[0].upper() + text[1:]
    else:
        text = f"{subject} with no reported abnormal findings."
    if excluded:
        negated = [phrase_term(name) for name in excluded]
        text += f" No {join_words(negated, 'or')}."
    return text
