"""Reading precomputed rankings.

Accepted formats (detected from the extension, then the JSON keys or the CSV header):

JSONL (``.jsonl``, ``.ndjson``), one object per case::

    {"case_id": "P1", "labels": ["OMIM:154700", "Loeys-Dietz syndrome", ...]}   # ranked, best first
    {"case_id": "P2", "scores": {"OMIM:154700": 0.91, "OMIM:609192": 0.05}}     # a score per label

CSV (``.csv``) or TSV (``.tsv``) with a header row, ``case_id`` first:

- ``case_id,rank,label``: long ranked format, one row per (case, label); lower rank is better.
- ``case_id,label,score``: long scored format, one row per (case, label).
- ``case_id,<label1>,<label2>,...``: wide scored format, one row per case, a column per label.

Labels are label ids or names (or synonyms), resolved through ``LabelSpace.by_name``. Scores
rank highest first unless ``higher_is_better`` is false; ties keep label-space order.
A case may list only some labels: the missing ones are appended after the listed ones, in
label-space order, so every ranking covers the whole label space (its ``scores`` are then
``None``, as the missing labels have none).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from mint_core.registry import MintError
from mint_core.types import LabelSpace, Ranking

FORMATS = ("jsonl-labels", "jsonl-scores", "csv-rank", "csv-score", "csv-wide")


@dataclass
class Entry:
    """One listed label of one case, as written in the file."""

    label: str
    score: float | None  # None in ranked formats
    order: float  # sort key, lower first
    where: str  # "file:line" for error messages


def _float(value, where: str, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MintError(f"{where}: {what} {value!r} is not a number") from None
    if math.isnan(number):
        raise MintError(f"{where}: {what} is NaN")
    if math.isinf(number):  # written back as Infinity, which strict JSON readers reject
        raise MintError(f"{where}: {what} is {value!r}, not a finite number: clip it to the largest finite score")
    return number


def _read_jsonl(path: Path, sign: float) -> tuple[str, dict[str, list[Entry]]]:
    entries: dict[str, list[Entry]] = {}
    kinds: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MintError(f"{where}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise MintError(f"{where}: JSON nested too deeply to read") from None
            if not isinstance(row, dict) or "case_id" not in row:
                raise MintError(f"{where}: each line needs a 'case_id' and 'labels' (ranked list) or 'scores' (object)")
            case_id = str(row["case_id"])
            if case_id in entries:
                raise MintError(f"{where}: case {case_id!r} appears twice")
            if isinstance(row.get("labels"), list):
                kinds.add("jsonl-labels")
                entries[case_id] = [Entry(str(label), None, i, where) for i, label in enumerate(row["labels"])]
            elif isinstance(row.get("scores"), dict):
                kinds.add("jsonl-scores")
                entries[case_id] = [Entry(str(label), s := _float(score, where, f"score of {label!r}"), -sign * s, where)
                                    for label, score in row["scores"].items()]
            else:
                raise MintError(f"{where}: case {case_id!r} has neither 'labels' (a list) nor 'scores' (an object)")
    return "+".join(sorted(kinds)) or "jsonl-labels", entries


def _read_csv(path: Path, sign: float) -> tuple[str, dict[str, list[Entry]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise MintError(f"{path}: empty file")
    header = [cell.strip() for cell in rows[0]]
    lower = [cell.lower() for cell in header]
    if not lower or lower[0] != "case_id":
        raise MintError(f"{path}: the header must start with 'case_id' (got {header[:4]}); formats: "
                        "case_id,rank,label | case_id,label,score | case_id,<label1>,<label2>,...")
    entries: dict[str, list[Entry]] = {}
    if sorted(lower) in (sorted(["case_id", "rank", "label"]), sorted(["case_id", "label", "score"])):
        fmt = "csv-rank" if "rank" in lower else "csv-score"
        col = {name: lower.index(name) for name in lower}
        for number, row in enumerate(rows[1:], 2):
            where = f"{path}:{number}"
            if len(row) != len(header):
                raise MintError(f"{where}: {len(row)} column(s), the header has {len(header)}")
            case_id, label = row[col["case_id"]].strip(), row[col["label"]].strip()
            if fmt == "csv-rank":
                entry = Entry(label, None, _float(row[col["rank"]], where, "rank"), where)
            else:
                score = _float(row[col["score"]], where, "score")
                entry = Entry(label, score, -sign * score, where)
            entries.setdefault(case_id, []).append(entry)
        return fmt, entries
    labels = header[1:]
    for number, row in enumerate(rows[1:], 2):
        where = f"{path}:{number}"
        if len(row) != len(header):
            raise MintError(f"{where}: {len(row)} column(s), the header has {len(header)}")
        case_id = row[0].strip()
        if case_id in entries:
            raise MintError(f"{where}: case {case_id!r} appears twice")
        entries[case_id] = [Entry(label, s := _float(cell, where, f"score of {label!r}"), -sign * s, where)
                            for label, cell in zip(labels, row[1:]) if cell.strip()]
    return "csv-wide", entries


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(item) for item in items[:n])
    return f"{shown}{', ...' if len(items) > n else ''}"


def read_rankings(path: str | Path, labels: LabelSpace, case_ids: set[str], *,
                  higher_is_better: bool = True) -> tuple[str, dict[str, Ranking]]:
    """Parse ``path`` into one full :class:`Ranking` per listed case; returns ``(format, rankings)``.

    Raises :class:`MintError` naming the file for unknown case ids, unknown labels or malformed rows.
    """
    path = Path(path)
    if not path.is_file():
        raise MintError(f"teacher.path: predictions file {str(path)!r} not found")
    sign = 1.0 if higher_is_better else -1.0
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        raise MintError(f"teacher.path: {str(path)!r} must end in .jsonl, .ndjson, .csv or .tsv")
    try:
        fmt, entries = (_read_jsonl if suffix in (".jsonl", ".ndjson") else _read_csv)(path, sign)
    except UnicodeDecodeError as exc:
        raise MintError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise MintError(f"{path}: not a readable CSV/TSV file ({exc})") from None

    unknown_cases = [case_id for case_id in entries if case_id not in case_ids]
    if unknown_cases:
        raise MintError(f"{path}: {len(unknown_cases)} case id(s) not in the task: {_preview(unknown_cases)}. "
                        "Check that the predictions belong to this task and its case ids")
    unknown_labels: list[str] = []
    rankings: dict[str, Ranking] = {}
    for case_id, items in entries.items():
        resolved: list[tuple[float, int, str, float | None]] = []
        for position, entry in enumerate(items):
            if entry.label in labels:
                label_id = entry.label
            else:
                match = labels.by_name(entry.label)
                if match is None:
                    if entry.label not in unknown_labels:
                        unknown_labels.append(entry.label)
                    continue
                label_id = match.id
            # Ties fall back to label-space order, then to the file's order.
            resolved.append((entry.order, labels.index(label_id), label_id, entry.score))
        resolved.sort(key=lambda item: (item[0], item[1]))
        seen: dict[str, float | None] = {}
        for _, _, label_id, score in resolved:
            seen.setdefault(label_id, score)  # a label listed twice keeps its best placement
        listed = list(seen)
        order = listed + [label_id for label_id in labels.ids if label_id not in seen]
        complete = len(listed) == len(labels) and all(score is not None for score in seen.values())
        rankings[case_id] = Ranking(case_id=case_id, label_ids=order,
                                    scores=[float(seen[i]) for i in order] if complete else None)
    if unknown_labels:
        raise MintError(f"{path}: {len(unknown_labels)} label(s) match no label id, name or synonym of the task: "
                        f"{_preview(unknown_labels)}. Use the ids or names in the run's labels.json")
    return fmt, rankings
