"""Evaluation of a student: what it answers (generation) and what it believes (ranking).

Generation mode
    The student writes its list for each test case (``task.prompt(case=, n_answers=)``, or the
    prompts given, e.g. retrieval-augmented ones). Each answer is parsed with
    :func:`mint_core.answers.parse_answer` (any ``Most likely ...:`` header), each listed name is
    matched to the label space (:func:`match_names`) and the list is scored against the true
    label and against the teacher's ranking.

Ranking mode
    Every label is scored by the student's log-likelihood of answering it
    (``format_answer([name]) + "\\n"`` through ``StudentModel.score``), so accuracy is measured
    without parsing and nothing can be hallucinated. Keys are prefixed ``rank_``.

Metric definitions (all shares in [0, 1], averaged over cases unless said otherwise):

- ``top{k}``: a true label is among the first ``k`` entries of the student's list. Entries are
  the parsed names in order; a name matching a label already listed is dropped (duplicates count
  once); a hallucinated name keeps its slot (the student wasted it).
- ``well_formed``: share of answers in the exact answer format (header + items 1, 2, 3, ...).
  Names are still extracted from malformed answers, so accuracy and format stay separate.
- ``hallucination_rate``: over all cases pooled, distinct listed names that match no label
  divided by all distinct listed names (0 when nothing was listed).
- ``teacher_topk_coverage``: share of the teacher's top-``teacher_k`` labels found anywhere in
  the student's list. ``teacher_bottomq_avoidance``: share of cases whose list contains none of
  the teacher's bottom-``teacher_q`` labels. ``teacher_top1_agreement``: the student's first
  entry is the teacher's top-1. Both ``teacher_k`` and ``teacher_q`` default to ``n_answers``
  (the builders' chosen/rejected list length). Only cases with a ranking count; the keys are
  absent when no case has one. ``n_teacher`` says how many cases they cover.
- ``n``: number of cases evaluated.

``ks`` (which top-k to report), when not given, follows :func:`default_ks`: ``[1, 3, 10]``
when the label space has more than 10 labels and the student lists at least 10 names, else
``[1, 3, 5]`` (top-10 of a 9-label space is meaningless); values above ``n_answers`` are dropped
in generation mode (a list of 5 cannot hit at rank 10).

This module imports no torch: the student object does the model work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

from rapidfuzz import fuzz, process

from mint_core.answers import format_answer, parse_answer
from mint_core.types import Case, LabelSpace, Prompt, Ranking, TaskData, normalize_name

if TYPE_CHECKING:
    from mint_core.components import StudentModel, Task
    from mint_core.context import RunContext

EvalMode = Literal["generation", "ranking", "both"]


@dataclass
class EvalConfig:
    """The run's ``eval`` section."""

    mode: str = field(default="generation", metadata={
        "help": "generation (parse the student's answer list), ranking (score every label by log-likelihood) "
                "or both."})
    max_new_tokens: int = field(default=160, metadata={
        "help": "Tokens the student may write per answer (about 10 names plus the header)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch; candidates per scoring batch."})
    max_cases: int | None = field(default=None, metadata={
        "help": "Evaluate only the first N test cases (None = all)."})
    fuzzy_threshold: float = field(default=0.8, metadata={
        "help": "Least rapidfuzz ratio (0-1) for a listed name to match a label it does not spell exactly."})
    ks: list[int] | None = field(default=None, metadata={
        "help": "Top-k accuracies to report, e.g. 1,3,10. None: [1,3,10], or [1,3,5] for small label spaces/lists."})
    constrained: bool = field(default=False, metadata={
        "help": "Also generate with decoding constrained to the label names (keys c_top1, c_well_formed, ...); "
                "needs a student that supports it (llama-text)."})

    def __post_init__(self) -> None:
        if self.mode not in ("generation", "ranking", "both"):
            raise ValueError(f"eval.mode={self.mode!r}: expected generation, ranking or both")
        if not 0.0 < float(self.fuzzy_threshold) <= 1.0:
            raise ValueError(f"eval.fuzzy_threshold={self.fuzzy_threshold!r}: expected a number in (0, 1]")
        if isinstance(self.ks, str):  # from the command line: "1,3,10"
            self.ks = [int(k) for k in self.ks.split(",") if k.strip()]
        if self.ks is not None and (not self.ks or min(int(k) for k in self.ks) < 1):
            raise ValueError(f"eval.ks={self.ks!r}: expected positive integers such as 1,3,10")


def default_ks(n_labels: int, n_answers: int) -> list[int]:
    """``[1, 3, 10]`` for large label spaces and lists of 10+, else ``[1, 3, 5]``."""
    return [1, 3, 10] if n_labels > 10 and n_answers >= 10 else [1, 3, 5]


def _resolve_ks(ks: Sequence[int] | None, n_labels: int, n_answers: int, *, cap: bool) -> list[int]:
    chosen = sorted({int(k) for k in (ks or default_ks(n_labels, n_answers))})
    if cap:
        chosen = [k for k in chosen if k <= max(1, n_answers)] or [1]
    return chosen


# -- matching ---------------------------------------------------------------------------------
class NameMatcher:
    """Matches free-text names to a label space; build once, use for many answers."""

    def __init__(self, labels: LabelSpace, threshold: float = 0.8):
        self.labels = labels
        self.threshold = threshold
        self._index = labels.names_index()  # normalized name/synonym -> Label (names win)
        self._choices = list(self._index)

    def match(self, name: str) -> str | None:
        """Label id for ``name``: exact name, then synonym, then best fuzzy ratio >= threshold; else None."""
        key = normalize_name(name)
        if not key:
            return None
        label = self.labels.by_name(name)
        if label is not None:
            return label.id
        best = process.extractOne(key, self._choices, scorer=fuzz.ratio, score_cutoff=self.threshold * 100)
        return self._index[best[0]].id if best is not None else None


def match_names(names: Sequence[str], labels: LabelSpace, threshold: float = 0.8) -> list[str | None]:
    """Each name's label id, or ``None`` for a hallucinated name.

    Exact match on the normalized name (lower case, no accents or punctuation), then on a
    normalized synonym, then the best fuzzy match with ``rapidfuzz.fuzz.ratio / 100 >= threshold``
    over all normalized names and synonyms.
    """
    matcher = NameMatcher(labels, threshold)
    return [matcher.match(name) for name in names]


# -- generation metrics -----------------------------------------------------------------------
def _as_ranking_map(rankings: Mapping[str, Ranking] | Iterable[Ranking] | None) -> dict[str, Ranking]:
    if rankings is None:
        return {}
    if isinstance(rankings, Mapping):
        return dict(rankings)
    return {ranking.case_id: ranking for ranking in rankings}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _entries(names: Sequence[str], matched: Sequence[str | None]) -> tuple[list[str], list[str | None]]:
    """Deduplicated (name, id) entries: a repeated spelling or an already listed label counts once."""
    seen_names: set[str] = set()
    seen_ids: set[str] = set()
    out_names: list[str] = []
    out_ids: list[str | None] = []
    for name, label_id in zip(names, matched):
        key = normalize_name(name)
        if key in seen_names or (label_id is not None and label_id in seen_ids):
            continue
        seen_names.add(key)
        if label_id is not None:
            seen_ids.add(label_id)
        out_names.append(name)
        out_ids.append(label_id)
    return out_names, out_ids


def generation_metrics(*, answers: Sequence[str], cases: Sequence[Case], labels: LabelSpace,
                       rankings: Mapping[str, Ranking] | Iterable[Ranking] | None, n_answers: int,
                       ks: Sequence[int] | None = None, threshold: float = 0.8, teacher_k: int | None = None,
                       teacher_q: int | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and per-case predictions for answers already written (one per case, same order).

    See the module docstring for every metric. Never raises on a malformed answer.
    """
    if len(answers) != len(cases):
        raise ValueError(f"{len(answers)} answers for {len(cases)} cases")
    ks = _resolve_ks(ks, len(labels), n_answers, cap=True)
    ranking_map = _as_ranking_map(rankings)
    teacher_k = teacher_k or n_answers
    teacher_q = teacher_q or n_answers
    matcher = NameMatcher(labels, threshold)
    hits = {k: [] for k in ks}
    well_formed: list[float] = []
    n_names = n_hallucinated = 0
    coverage: list[float] = []
    avoidance: list[float] = []
    agreement: list[float] = []
    predictions: list[dict[str, Any]] = []
    for case, answer in zip(cases, answers):
        parsed = parse_answer(answer)
        names, ids = _entries(parsed.names, [matcher.match(name) for name in parsed.names])
        truth = set(case.label_ids)
        for k in ks:
            hits[k].append(float(any(label_id in truth for label_id in ids[:k])))
        well_formed.append(float(parsed.well_formed))
        n_names += len(names)
        n_hallucinated += sum(label_id is None for label_id in ids)
        listed = {label_id for label_id in ids if label_id is not None}
        prediction = {"case_id": case.id, "true_label_ids": list(case.label_ids), "answer": answer,
                      "names": names, "matched_ids": ids, "well_formed": parsed.well_formed,
                      "problem": parsed.problem, "hits": {f"top{k}": bool(hits[k][-1]) for k in ks}}
        ranking = ranking_map.get(case.id)
        if ranking is not None and ranking.label_ids:
            top = ranking.label_ids[:teacher_k]
            bottom = ranking.label_ids[-teacher_q:]
            coverage.append(len(listed & set(top)) / len(top))
            avoidance.append(float(not listed & set(bottom)))
            agreement.append(float(bool(ids) and ids[0] == ranking.label_ids[0]))
            prediction["teacher_topk"] = top
        predictions.append(prediction)
    metrics: dict[str, float] = {f"top{k}": _mean(hits[k]) for k in ks}
    metrics["well_formed"] = _mean(well_formed)
    metrics["hallucination_rate"] = n_hallucinated / n_names if n_names else 0.0
    if coverage:
        metrics["teacher_topk_coverage"] = _mean(coverage)
        metrics["teacher_bottomq_avoidance"] = _mean(avoidance)
        metrics["teacher_top1_agreement"] = _mean(agreement)
        metrics["n_teacher"] = len(coverage)
    metrics["n"] = len(cases)
    return metrics, predictions


def _prompts_for(task: Task, cases: Sequence[Case], n_answers: int, prompts: Sequence[Prompt] | None) -> list[Prompt]:
    if prompts is None:
        return [task.prompt(case=case, n_answers=n_answers) for case in cases]
    if len(prompts) != len(cases):
        raise ValueError(f"{len(prompts)} prompts for {len(cases)} cases")
    return list(prompts)


def _in_chunks(items: list[Any], size: int, run, ctx: RunContext | None, description: str) -> list[Any]:
    """``run(chunk)`` over ``items`` in chunks, with a progress bar when a run context is given."""
    size = max(1, size)
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    results: list[Any] = []
    if ctx is None:
        for chunk in chunks:
            results += run(chunk)
        return results
    with ctx.progress() as progress:
        bar = progress.add_task(description, total=len(items))
        for chunk in chunks:
            results += run(chunk)
            progress.advance(bar, len(chunk))
    return results


def evaluate_generation(*, student_model: StudentModel, task: Task, data: TaskData, cases: Sequence[Case],
                        rankings: Mapping[str, Ranking] | Iterable[Ranking] | None, n_answers: int,
                        ks: Sequence[int] | None = None, batch_size: int = 8, max_new_tokens: int = 160,
                        prompts: Sequence[Prompt] | None = None, threshold: float = 0.8,
                        teacher_k: int | None = None, teacher_q: int | None = None,
                        ctx: RunContext | None = None,
                        allowed_answers: Any = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The student writes its list for each case (``prompts`` or ``task.prompt``); see :func:`generation_metrics`.

    ``allowed_answers`` (an :class:`~mint_core.components.AnswerConstraint`) constrains decoding to the label names.
    """
    cases = list(cases)
    prompt_list = _prompts_for(task, cases, n_answers, prompts)
    extra = {} if allowed_answers is None else {"allowed_answers": allowed_answers}
    answers = _in_chunks(prompt_list, batch_size * 4, lambda chunk: student_model.generate(
        prompts=chunk, max_new_tokens=max_new_tokens, batch_size=batch_size, **extra), ctx,
        "evaluate: generate" + (" (constrained)" if extra else ""))
    return generation_metrics(answers=answers, cases=cases, labels=data.labels, rankings=rankings,
                              n_answers=n_answers, ks=ks, threshold=threshold, teacher_k=teacher_k, teacher_q=teacher_q)


def ranking_candidates(task: Task, labels: LabelSpace) -> list[str]:
    """One candidate answer per label: the answer format listing only that label, newline-closed.

    The closing newline makes a name that is a prefix of another ("Noonan syndrome" vs
    "Noonan syndrome 2") pay for ending where it does.
    """
    noun = getattr(task, "label_noun", "labels")
    return [format_answer([label.name], noun=noun) + "\n" for label in labels]


def evaluate_ranking(*, student_model: StudentModel, task: Task, data: TaskData, cases: Sequence[Case],
                     n_answers: int, ks: Sequence[int] | None = None, batch_size: int = 8,
                     prompts: Sequence[Prompt] | None = None,
                     ctx: RunContext | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Rank every label by the student's log-likelihood of answering it; ``rank_top{k}``, ``rank_mrr``, ``n``."""
    cases = list(cases)
    labels = data.labels
    ks = _resolve_ks(ks, len(labels), n_answers, cap=False)
    prompt_list = _prompts_for(task, cases, n_answers, prompts)
    candidates = ranking_candidates(task, labels)
    scores = _in_chunks(prompt_list, 1, lambda chunk: student_model.score(
        prompts=chunk, candidates=candidates, batch_size=batch_size), ctx, "evaluate: rank labels")
    hits = {k: [] for k in ks}
    reciprocal: list[float] = []
    predictions: list[dict[str, Any]] = []
    ids = labels.ids
    for case, row in zip(cases, scores):
        order = sorted(range(len(ids)), key=lambda i: -row[i])
        ranked = [ids[i] for i in order]
        truth = set(case.label_ids)
        best = min((ranked.index(t) for t in truth if t in labels), default=len(ranked))
        for k in ks:
            hits[k].append(float(best < k))
        reciprocal.append(1.0 / (best + 1) if best < len(ranked) else 0.0)
        top = order[:max(n_answers, max(ks))]
        predictions.append({"case_id": case.id, "true_label_ids": list(case.label_ids),
                            "ranked_ids": [ids[i] for i in top], "scores": [row[i] for i in top],
                            "true_rank": best + 1 if best < len(ranked) else None})
    metrics: dict[str, float] = {f"rank_top{k}": _mean(hits[k]) for k in ks}
    metrics["rank_mrr"] = _mean(reciprocal)
    metrics["n"] = len(cases)
    return metrics, predictions


def teacher_metrics(*, rankings: Mapping[str, Ranking] | Iterable[Ranking], cases: Sequence[Case],
                    ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """The teacher's own top-k accuracy on ``cases`` (those with a ranking): ``top{k}`` and ``n``."""
    ranking_map = _as_ranking_map(rankings)
    ks = sorted({int(k) for k in ks})
    hits = {k: [] for k in ks}
    for case in cases:
        ranking = ranking_map.get(case.id)
        if ranking is None:
            continue
        best = min(ranking.rank_of(label_id) for label_id in case.label_ids)
        for k in ks:
            hits[k].append(float(best < k))
    metrics: dict[str, float] = {f"top{k}": _mean(hits[k]) for k in ks}
    metrics["n"] = len(hits[ks[0]]) if ks else 0
    return metrics


def evaluate(*, config: EvalConfig, student_model: StudentModel, task: Task, data: TaskData,
             rankings: Mapping[str, Ranking] | Iterable[Ranking] | None, n_answers: int,
             cases: Sequence[Case] | None = None, prompts: Sequence[Prompt] | None = None,
             ctx: RunContext | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run ``config.mode`` on the test cases (first ``config.max_cases``); merged metrics and predictions.

    ``prompts``, when given, are one per case of ``cases`` (after ``max_cases``).
    """
    cases = list(cases if cases is not None else data.split("test"))
    if config.max_cases is not None:
        cases = cases[:config.max_cases]
        prompts = None if prompts is None else list(prompts)[:config.max_cases]
    metrics: dict[str, float] = {}
    by_case: dict[str, dict[str, Any]] = {case.id: {} for case in cases}
    if config.mode in ("generation", "both"):
        gen_metrics, gen_predictions = evaluate_generation(
            student_model=student_model, task=task, data=data, cases=cases, rankings=rankings, n_answers=n_answers,
            ks=config.ks, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, prompts=prompts,
            threshold=config.fuzzy_threshold, ctx=ctx)
        metrics.update(gen_metrics)
        for prediction in gen_predictions:
            by_case[prediction["case_id"]].update(prediction)
    if config.mode in ("ranking", "both"):
        rank_metrics, rank_predictions = evaluate_ranking(
            student_model=student_model, task=task, data=data, cases=cases, n_answers=n_answers, ks=config.ks,
            batch_size=config.batch_size, prompts=prompts, ctx=ctx)
        metrics.update(rank_metrics)
        for prediction in rank_predictions:
            by_case[prediction["case_id"]].update(prediction)
    return metrics, [by_case[case.id] for case in cases]


__all__ = [
    "EvalConfig", "NameMatcher", "default_ks", "evaluate", "evaluate_generation", "evaluate_ranking",
    "generation_metrics", "match_names", "ranking_candidates", "teacher_metrics",
]
