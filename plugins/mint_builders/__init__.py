"""Preference builders: turn a teacher's rankings into ORPO/DPO pairs, KTO examples or SFT targets.

- ``topk`` (pairs): chosen = the teacher's top-k, rejected = its bottom-q (or the hard negatives
  just below rank k).
- ``kto`` (unpaired): the same two answers as separate desirable / undesirable examples.
- ``sft`` (supervised): the same chosen list as ``topk``, as a supervised target.

All three share ``k``, ``truth_first`` and ``force_true_label`` (``mint compare`` hands the run's
values to every builder it uses), so every method of a grid is trained on the same target lists.

Every builder is deterministic (no sampling), so a resumed run rebuilds the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl

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


@hookimpl
def mint_register_builders(register):
    register("topk", _make_topk, config=TopKConfig,
             description="Pairs: chosen = teacher's top-k, rejected = its bottom-q or hard negatives")
    register("kto", _make_kto, config=KTOConfig,
             description="Unpaired KTO examples: top-k answer desirable, bottom-q/hard answer undesirable")
    register("sft", _make_sft, config=SFTConfig,
             description="SFT targets: topk's chosen list (by default the true label first, then the teacher's best)")


def _make_topk(config: TopKConfig):
    from mint_builders.builders import TopKBuilder
    return TopKBuilder(config)


def _make_kto(config: KTOConfig):
    from mint_builders.builders import KTOBuilder
    return KTOBuilder(config)


def _make_sft(config: SFTConfig):
    from mint_builders.builders import SFTBuilder
    return SFTBuilder(config)
