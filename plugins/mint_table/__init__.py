"""The ``table`` task: your own cohort from a CSV, TSV, JSONL or a Hugging Face dataset, no plugin to write.

Each row is a case: a text column (notes), an optional image column, a label column; the label
space is the set of labels found. Splits come from a column or are drawn per label with a seed.
Pair it with the ``predictions`` teacher (your model's rankings, joined on the id column) or any
teacher that reads text. See docs/guide.md, "Your own data".
"""

from __future__ import annotations

from mint_core.hookspecs import hookimpl
from mint_table.config import TableConfig

__all__ = ["TableConfig"]


@hookimpl
def mint_register_tasks(register) -> None:
    register("table", _make_table, config=TableConfig,
             description="Your own cases from a CSV/TSV/JSONL file or a HF dataset: text (+image) and a label column")


def _make_table(config: TableConfig):
    from mint_table.task import TableTask

    return TableTask(config)
