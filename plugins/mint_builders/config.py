"""Options of the preference builders (``builder.k=5``, ...). Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field

_K_HELP = "Answers per list; default: the task's default_n_answers (10), clipped to the label space."
_TRUTH_FIRST_HELP = ("Chosen list = the true label first, then the teacher's best others (true), or the teacher's "
                     "own order (false; with force_true_label the truth replaces its k-th entry when ranked lower). "
                     "Default true: on real held-out phenopackets (teacher top-1 0.82) the teacher's order cost "
                     "ORPO 13 points of top-1 (docs/results.md).")
_FORCE_HELP = ("Make sure the true label is in the chosen answer (it replaces the teacher's k-th entry) "
               "and never in the rejected one.")


@dataclass
class TopKConfig:
    k: int | None = field(default=None, metadata={"help": _K_HELP, "min": 1})
    q: int | None = field(default=None, metadata={"help": "Labels in the rejected answer; default: same as k.", "min": 1})
    negatives: str = field(default="bottom", metadata={
        "help": "Rejected answer: 'bottom' (the teacher's q lowest ranked) or 'hard' (the q ranked just below k)."})
    truth_first: bool = field(default=True, metadata={"help": _TRUTH_FIRST_HELP})
    force_true_label: bool = field(default=True, metadata={"help": _FORCE_HELP})


@dataclass
class KTOConfig(TopKConfig):
    """Same options as ``topk``: the desirable answer is its chosen, the undesirable its rejected."""


@dataclass
class SFTConfig:
    k: int | None = field(default=None, metadata={"help": _K_HELP, "min": 1})
    truth_first: bool = field(default=True, metadata={"help": _TRUTH_FIRST_HELP})
    force_true_label: bool = field(default=True, metadata={"help": _FORCE_HELP})


@dataclass
class OnPolicyConfig(TopKConfig):
    """``topk``'s options (the chosen list, and the fallback rejected answer) plus the generation's."""

    adapter: str = field(default="", metadata={
        "help": "LoRA adapter folder the student generates with (e.g. runs/x/students/sft/adapter); empty = the "
                "base student."})
    max_new_tokens: int = field(default=160, metadata={"help": "Token limit of the student's answers.", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch.", "min": 1})
