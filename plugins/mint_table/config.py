"""Options of the ``table`` task (``task.path=cohort.csv task.label_column=diagnosis``). Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TableConfig:
    path: str = field(default="", metadata={
        "help": "Your cases: a .csv/.tsv/.jsonl/.json file (relative to where you run mint), or hf:<dataset id>[:split] "
                "for a Hugging Face dataset (needs the datasets package and the hub)."})
    text_column: str = field(default="text", metadata={"help": "Column the student reads (notes, a report)."})
    label_column: str = field(default="label", metadata={
        "help": "Column with each case's true label (a name, or an id with label_names_file)."})
    id_column: str = field(default="id", metadata={
        "help": "Column with case ids (a predictions teacher joins its rankings on them); missing: row-<n>."})
    image_column: str = field(default="", metadata={
        "help": "Column with image paths (relative to the file) for image students; empty: text only."})
    split_column: str = field(default="", metadata={
        "help": "Column holding train/val/test per case; empty: a seeded split stratified by label."})
    test_fraction: float = field(default=0.25, metadata={"help": "Share of each label's cases held out for test.",
                                                         "gt": 0, "max": 0.9})
    val_fraction: float = field(default=0.1, metadata={"help": "Share held out for validation.", "min": 0, "max": 0.5})
    min_cases_per_label: int = field(default=2, metadata={
        "help": "Labels with fewer cases are dropped (counted in task.json).", "min": 1})
    noun: str = field(default="diagnoses", metadata={"help": "Plural noun of the labels in prompts and reports."})
    question: str = field(default="Which diagnoses best explain this case?", metadata={
        "help": "The question asked after the case text."})
    system: str = field(default="You are a careful clinician.", metadata={"help": "System message ('' for none)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split (independent of the run seed).", "min": 0})
