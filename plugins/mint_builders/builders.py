"""The ``topk``, ``kto`` and ``sft`` preference builders.

Rank conventions: every rank in ``PreferenceExample.meta`` is the teacher's 0-based rank over
the whole label space. The true label is the case's first label (``Case.label_id``).

``truth_first`` (default on) makes the chosen answer the true label, then the teacher's best
other labels to fill k. Off, the chosen answer keeps the teacher's order, and
``force_true_label`` (default on) guarantees the true label is in it: when the teacher ranks it
below k, it replaces the teacher's k-th entry (so the chosen answer is the teacher's top k-1,
then the true label). With either, the true label is never listed in a rejected answer. Teaching the student to prefer a list without the diagnosis, or to
reject a list containing it, would distil the teacher's mistakes along with its knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mint_core.answers import format_answer
from mint_core.components import PreferenceBuilder, Task
from mint_core.registry import MintError
from mint_core.types import Case, LabelSpace, PreferenceExample, Prompt, Ranking, TaskData

DEFAULT_N_ANSWERS = 10


def resolve_k(task: Task, k: int | None, n_labels: int) -> int:
    """The list length: ``k`` or the task's ``default_n_answers``, at most ``n_labels - 1``.

    One label is kept out of the chosen list so a rejected answer always exists.
    """
    if n_labels < 2:
        raise MintError(f"A preference builder needs at least 2 labels; the label space has {n_labels}")
    value = k if k is not None else getattr(type(task), "default_n_answers", DEFAULT_N_ANSWERS)
    if value < 1:
        raise MintError(f"builder.k must be at least 1, got {value}")
    return min(int(value), n_labels - 1)


def full_order(ranking: Ranking, labels: LabelSpace) -> list[str]:
    """The ranking's label ids, validated, with labels it omits appended in label-space order."""
    unknown = [label_id for label_id in ranking.label_ids if label_id not in labels]
    if unknown:
        raise MintError(f"Ranking of case {ranking.case_id!r} has {len(unknown)} label id(s) outside the "
                        f"label space: {unknown[:5]}")
    seen: set[str] = set()
    order = [i for i in ranking.label_ids if not (i in seen or seen.add(i))]
    return order + [label_id for label_id in labels.ids if label_id not in seen]


@dataclass
class Selection:
    """Which teacher ranks go into the chosen (good) and rejected (bad) answers."""

    chosen_ranks: list[int]
    rejected_ranks: list[int]
    true_label_rank: int
    forced: bool


def select(order: Sequence[str], true_id: str, *, k: int, q: int, negatives: str,
           force_true_label: bool, truth_first: bool = False) -> Selection:
    """Pick the chosen and rejected ranks from a full ranking ``order`` (label ids, best first)."""
    n = len(order)
    true_rank = order.index(true_id)
    chosen = list(range(min(k, n - 1)))
    forced = False
    if truth_first:
        chosen = [true_rank] + [rank for rank in range(n) if rank != true_rank][:len(chosen) - 1]
        forced = true_rank >= len(chosen)
    elif force_true_label and true_rank >= len(chosen):
        chosen = chosen[:-1] + [true_rank]
        forced = True
    excluded = set(chosen) | ({true_rank} if force_true_label or truth_first else set())
    candidates = [rank for rank in range(n) if rank not in excluded]
    q = max(1, min(q, len(candidates)))
    if negatives == "bottom":
        rejected = candidates[-q:]
    elif negatives == "hard":
        rejected = candidates[:q]
    else:
        raise MintError(f"builder.negatives must be 'bottom' or 'hard', got {negatives!r}")
    return Selection(chosen, rejected, true_rank, forced)


class _Base(PreferenceBuilder):
    name = "base"

    def __init__(self, config: Any):
        self.config = config

    def _cases(self, data: TaskData, rankings: dict[str, Ranking]) -> list[Case]:
        train = data.split("train")
        missing = [case.id for case in train if case.id not in rankings]
        if missing:
            raise MintError(f"No teacher ranking for {len(missing)} training case(s), e.g. {missing[:5]}: "
                            f"rerun the teacher stage (delete rankings.jsonl) or check the teacher's output")
        for case in train:
            if case.label_id not in data.labels:
                raise MintError(f"Case {case.id!r} has true label {case.label_id!r} outside the label space")
        return train

    def _answer(self, task: Task, data: TaskData, ids: Sequence[str]) -> str:
        return format_answer([data.labels[i].name for i in ids], noun=task.label_noun)

    def build(self, *, task: Task, data: TaskData, rankings: dict[str, Ranking], ctx) -> list[PreferenceExample]:
        cases = self._cases(data, rankings)
        examples: list[PreferenceExample] = []
        for case in cases:
            examples += self._build_case(task, data, case, full_order(rankings[case.id], data.labels))
        ctx.log(f"builder {self.name}: {len(examples)} example(s) from {len(cases)} training case(s)")
        return examples

    def _build_case(self, task: Task, data: TaskData, case: Case, order: list[str]) -> list[PreferenceExample]:
        raise NotImplementedError


class _RankedBase(_Base):
    """Shared by ``topk`` and ``kto``: both answers come from :func:`select`."""

    def _select(self, task: Task, data: TaskData, case: Case, order: list[str]):
        k = resolve_k(task, self.config.k, len(data.labels))
        q = k if self.config.q is None else int(self.config.q)
        if q < 1:
            raise MintError(f"builder.q must be at least 1, got {q}")
        sel = select(order, case.label_id, k=k, q=q, negatives=self.config.negatives,
                     force_true_label=self.config.force_true_label, truth_first=self.config.truth_first)
        chosen_ids = [order[r] for r in sel.chosen_ranks]
        rejected_ids = [order[r] for r in sel.rejected_ranks]
        meta = {
            "builder": self.name, "k": k, "q": len(rejected_ids), "negatives": self.config.negatives,
            "truth_first": self.config.truth_first,
            "chosen_ids": chosen_ids, "chosen_ranks": sel.chosen_ranks,
            "rejected_ids": rejected_ids, "rejected_ranks": sel.rejected_ranks,
            "true_label_id": case.label_id, "true_label_rank": sel.true_label_rank,
            "true_label_in_chosen": case.label_id in chosen_ids,
            "true_label_position": chosen_ids.index(case.label_id) if case.label_id in chosen_ids else None,
            "true_label_forced": sel.forced,
        }
        prompt: Prompt = task.prompt(case=case, n_answers=k)
        return prompt, self._answer(task, data, chosen_ids), self._answer(task, data, rejected_ids), meta


class TopKBuilder(_RankedBase):
    """Pairs for ORPO/DPO: the teacher's top-k preferred over its bottom-q (or hard negatives)."""

    kind = "pair"
    name = "topk"

    def _build_case(self, task, data, case, order):
        prompt, chosen, rejected, meta = self._select(task, data, case, order)
        return [PreferenceExample(case_id=case.id, prompt=prompt, kind="pair", chosen=chosen, rejected=rejected,
                                  meta=meta)]


class KTOBuilder(_RankedBase):
    """Unpaired KTO examples: the top-k answer as desirable, the rejected answer as undesirable."""

    kind = "unpaired"
    name = "kto"

    def _build_case(self, task, data, case, order):
        prompt, chosen, rejected, meta = self._select(task, data, case, order)
        return [PreferenceExample(case_id=case.id, prompt=prompt, kind="unpaired", completion=chosen, label=True,
                                  meta={**meta, "role": "desirable"}),
                PreferenceExample(case_id=case.id, prompt=prompt, kind="unpaired", completion=rejected, label=False,
                                  meta={**meta, "role": "undesirable"})]


class SFTBuilder(_Base):
    """SFT targets: ``topk``'s chosen list (same ``k``, ``truth_first``, ``force_true_label``)."""

    kind = "sft"
    name = "sft"

    def _build_case(self, task, data, case, order):
        k = resolve_k(task, self.config.k, len(data.labels))
        sel = select(order, case.label_id, k=k, q=1, negatives="bottom", force_true_label=self.config.force_true_label,
                     truth_first=self.config.truth_first)
        ids = [order[r] for r in sel.chosen_ranks]
        meta = {"builder": self.name, "k": k, "truth_first": self.config.truth_first, "completion_ids": ids,
                "completion_ranks": sel.chosen_ranks,
                "true_label_id": case.label_id, "true_label_rank": sel.true_label_rank,
                "true_label_in_chosen": case.label_id in ids,
                "true_label_position": ids.index(case.label_id) if case.label_id in ids else None,
                "true_label_forced": sel.forced}
        return [PreferenceExample(case_id=case.id, prompt=task.prompt(case=case, n_answers=k), kind="sft",
                                  completion=self._answer(task, data, ids), meta=meta)]
