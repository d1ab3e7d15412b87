"""The answer format shared by preference builders (which write it) and evaluation (which parses it).

An answer is a header line, then a numbered list of label names, best first::

    Most likely diagnoses:
    1. Marfan syndrome
    2. Loeys-Dietz syndrome

Keeping one fixed, parseable format is what lets evaluation count well-formed answers and
hallucinated names instead of guessing at free text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEADER = "Most likely {noun}:"
_ITEM = re.compile(r"^\s*(\d+)[.)]\s+(.+?)\s*$")


def format_answer(names: list[str], *, noun: str) -> str:
    """The canonical answer listing ``names`` in order."""
    lines = [HEADER.format(noun=noun)]
    lines += [f"{i}. {name}" for i, name in enumerate(names, 1)]
    return "\n".join(lines)


@dataclass
class ParsedAnswer:
    names: list[str] = field(default_factory=list)
    well_formed: bool = False
    problem: str = ""


def parse_answer(text: str, *, noun: str | None = None) -> ParsedAnswer:
    """Parse a student's answer; never raises.

    Well-formed means: a first non-empty line that is the header (any noun when ``noun`` is
    None), then at least one numbered item, numbered 1, 2, 3... with nothing else in between.
    The names are extracted even from answers that are not well-formed (a numbered list with a
    missing header still counts for accuracy), so the two measures stay separate.
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    names: list[str] = []
    numbers: list[int] = []
    stray = 0
    for line in lines[1:] if lines and not _ITEM.match(lines[0]) else lines:
        match = _ITEM.match(line)
        if match:
            numbers.append(int(match.group(1)))
            names.append(match.group(2).strip().rstrip("."))
        else:
            stray += 1
    if not lines:
        return ParsedAnswer(names, False, "empty answer")
    header = lines[0].strip()
    expected = HEADER.format(noun=noun) if noun else None
    if _ITEM.match(header):
        problem = "missing header line"
    elif expected is not None and header.lower() != expected.lower():
        problem = f"header {header[:40]!r} is not {expected!r}"
    elif expected is None and not (header.lower().startswith("most likely") and header.endswith(":")):
        problem = f"header {header[:40]!r} is not 'Most likely ...:'"
    elif not names:
        problem = "no numbered items"
    elif numbers != list(range(1, len(numbers) + 1)):
        problem = "items are not numbered 1, 2, 3, ..."
    elif stray:
        problem = f"{stray} line(s) that are not numbered items"
    else:
        problem = ""
    return ParsedAnswer(names, problem == "", problem)
