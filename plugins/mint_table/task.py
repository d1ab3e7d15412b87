"""Reading a cohort table into MINT's cases (see :mod:`mint_table`)."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mint_core.answers import HEADER
from mint_core.components import Task
from mint_core.registry import MintError
from mint_core.splits import filter_labels, stratified_split
from mint_core.types import Case, Label, LabelSpace, Prompt, TaskData
from mint_table.config import TableConfig

SPLITS = ("train", "val", "test")


def read_rows(path: str, *, base: Path) -> list[dict[str, Any]]:
    """Rows of a .csv/.tsv/.jsonl/.json file, or of ``hf:<id>[:split]`` (a ``datasets`` dataset)."""
    if path.startswith("hf:"):
        name, _, split = path[3:].partition(":")
        try:
            import datasets
        except ImportError:
            raise MintError("task.path=hf:...: install the datasets package (pip install datasets)") from None
        return [dict(row) for row in datasets.load_dataset(name, split=split or "train")]
    file = (base / path) if not Path(path).is_absolute() else Path(path)
    if not file.is_file():
        raise MintError(f"task.path={path!r}: no such file ({file}); give a .csv, .tsv, .jsonl or .json file")
    suffix = file.suffix.lower()
    text = file.read_text(encoding="utf-8-sig")
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise MintError(f"{file}: line {n} is not JSON ({err.msg})") from None
        return rows
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise MintError(f"{file}: expected a JSON list of objects, one per case")
        return data
    raise MintError(f"task.path={path!r}: unknown format {suffix!r}; use .csv, .tsv, .jsonl, .json or hf:<id>")


class TableTask(Task):
    """Cases from a table (see :mod:`mint_table`)."""

    def __init__(self, config: TableConfig):
        self.config = config
        self.label_noun = config.noun  # instance attribute: the noun is the user's
        self.student_modality = "image" if config.image_column else "text"

    def load(self, *, ctx) -> TaskData:
        cfg = self.config
        if not cfg.path:
            raise MintError("task=table needs task.path=<your .csv/.tsv/.jsonl file or hf:<dataset>>")
        rows = read_rows(cfg.path, base=Path.cwd())
        if not rows:
            raise MintError(f"task.path={cfg.path!r} holds no rows")
        columns = set().union(*(row.keys() for row in rows))
        for option, column in (("text_column", cfg.text_column), ("label_column", cfg.label_column),
                               ("image_column", cfg.image_column), ("split_column", cfg.split_column)):
            if column and column not in columns:
                raise MintError(f"task.{option}={column!r}: {cfg.path} has no such column (it has {sorted(columns)})")
        records, seen = [], set()
        for n, row in enumerate(rows, 1):
            case_id = str(row.get(cfg.id_column) or f"row-{n}")
            label = str(row.get(cfg.label_column) or "").strip()
            if case_id in seen:
                raise MintError(f"{cfg.path}: case id {case_id!r} ({cfg.id_column}) appears twice; ids must be unique")
            seen.add(case_id)
            if label:
                records.append((case_id, label, row))
        kept, dropped = filter_labels(Counter(label for _, label, _ in records), min_cases=cfg.min_cases_per_label,
                                      max_labels=0)
        if len(kept) < 2:
            raise MintError(f"{cfg.path}: {len(kept)} label(s) with >= {cfg.min_cases_per_label} cases; MINT needs 2+")
        records = [r for r in records if r[1] in set(kept)]
        splits = self._splits(records)
        base = Path(cfg.path).parent if not cfg.path.startswith("hf:") else Path.cwd()
        cases = [Case(id=case_id, label_ids=(label,), split=splits[case_id],
                      text=str(row.get(cfg.text_column) or "") or None,
                      image=str(base / row[cfg.image_column]) if cfg.image_column and row.get(cfg.image_column) else None)
                 for case_id, label, row in records]
        labels = LabelSpace(Label(id=label, name=label) for label in kept)
        info = {"source": cfg.path, "rows": len(rows), "labels": len(kept), "dropped_labels": dropped,
                "split_counts": dict(Counter(c.split for c in cases))}
        return TaskData(labels=labels, cases=cases, student_modality=self.student_modality, info=info)

    def _splits(self, records: list[tuple[str, str, dict[str, Any]]]) -> dict[str, str]:
        cfg = self.config
        if cfg.split_column:
            out = {}
            for case_id, _, row in records:
                split = str(row.get(cfg.split_column) or "").strip().lower()
                if split not in SPLITS:
                    raise MintError(f"case {case_id!r}: {cfg.split_column}={split!r}; use train, val or test")
                out[case_id] = split
            return out
        by_label: dict[str, list[str]] = defaultdict(list)
        for case_id, label, _ in records:
            by_label[label].append(case_id)
        return stratified_split(by_label, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                                seed=str(cfg.seed))

    def prompt(self, *, case: Case, n_answers: int) -> Prompt:
        if self.student_modality == "image":
            if not case.image:
                raise ValueError(f"case {case.id!r} has no image ({self.config.image_column})")
            return self._question(None, n_answers, image=case.image)
        if not case.text:
            raise ValueError(f"case {case.id!r} has no text ({self.config.text_column})")
        return self._question(case.text, n_answers)

    def content_free_prompt(self, *, n_answers: int, labels: LabelSpace | None = None) -> Prompt | None:
        return None if self.student_modality == "image" else self._question("N/A", n_answers)

    def _question(self, text: str | None, n_answers: int, image: str | None = None) -> Prompt:
        header = HEADER.format(noun=self.label_noun)
        wanted = f"the {n_answers} most likely {self.label_noun}"
        case = f"Case: {text}\n\n" if text is not None else ""
        return Prompt(text=f"{case}{self.config.question} Answer with the header '{header}' followed by a numbered "
                           f"list of {wanted}, one per line.", image=image, system=self.config.system or None)
