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

    A raw log-likelihood mostly measures the label's *name* (short, frequent names win for every
    case), so ``rank_*`` keys are **calibrated** (``eval.calibration``): ``mean`` subtracts each
    label's mean score over the validation prompts (domain-conditional PMI), ``content-free``
    its score under the task's :meth:`~mint_core.components.Task.content_free_prompt`, ``none``
    nothing. ``rank_raw_*`` keep the plain sum. Each prediction keeps every label's raw score
    (``label_scores``, in label-space order) and the :func:`calibration_reference` is saved beside
    it, so :func:`ranking_from_scores` recomputes any calibration from a run directory.
    ``rank_top1_max_label_share`` is the share of cases whose first label is the single most
    frequent first label: a student that ranks by name alone scores near 1.

    Why ``mean`` is the default (measured: hpo-sim, 20 diseases, base SmolLM2-135M-Instruct, all 60
    test cases, 20 validation prompts; one run's saved scores recalibrated three ways, 95% intervals):

    =============  ==================  ==================  ====================
    calibration    rank top-1          rank top-10         first-label share
    =============  ==================  ==================  ====================
    none (raw)     0.083 [0.017,0.167] 0.517 [0.383,0.650] 0.867 [0.783,0.950]
    content-free   0.100 [0.033,0.183] 0.600 [0.483,0.733] 0.500 [0.383,0.617]
    mean           0.117 [0.050,0.200] 0.683 [0.567,0.800] 0.217 [0.167,0.333]
    =============  ==================  ==================  ====================

    Paired, mean minus raw: top-1 +0.033 [-0.050, +0.133] (McNemar p 0.73), top-10 +0.167
    [-0.017, +0.350] (p 0.12). Content-free (notes "N/A") still leaves one name first for half
    the cases; the mean over real prompts removes the name prior where the student's ranking
    varies from case to case.

Intervals
    Every share ``key`` comes with ``key_ci = [lo, hi]``, a 95% percentile-bootstrap interval over
    cases (:mod:`mint_core.stats`; 2,000 resamples, seed 0). Each prediction's ``outcomes`` holds
    the per-case values behind the means, so students can be compared case by case
    (:func:`mint_core.stats.paired_difference`).

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
from mint_core.registry import MintError
from mint_core.types import Case, LabelSpace, Prompt, Ranking, TaskData, normalize_name

if TYPE_CHECKING:
    from mint_core.components import StudentModel, Task
    from mint_core.context import RunContext

EvalMode = Literal["generation", "ranking", "both"]
CALIBRATIONS = ("mean", "content-free", "none")


@dataclass
class EvalConfig:
    """The run's ``eval`` section."""

    mode: str = field(default="generation", metadata={
        "help": "generation (parse the student's answer list), ranking (score every label by log-likelihood) "
                "or both."})
    max_new_tokens: int = field(default=160, metadata={
        "help": "Tokens the student may write per answer (about 10 names plus the header).", "min": 1})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch; candidates per scoring batch.", "min": 1})
    max_cases: int | None = field(default=None, metadata={
        "help": "Evaluate only the first N test cases (None or 0 = all).", "min": 0})
    fuzzy_threshold: float = field(default=0.8, metadata={
        "help": "Least rapidfuzz ratio (0-1) for a listed name to match a label it does not spell exactly.",
        "gt": 0, "max": 1})
    ks: list[int] | None = field(default=None, metadata={
        "help": "Top-k accuracies to report, e.g. 1,3,10. None: [1,3,10], or [1,3,5] for small label spaces/lists."})
    max_generation_cases: int | None = field(default=None, metadata={
        "help": "Generation mode evaluates at most N of the cases (spread over labels; None = all). Ranking "
                "mode always takes every case max_cases leaves: it is cheap."})
    calibration: str = field(default="mean", metadata={
        "help": "Ranking calibration: mean (subtract each label's mean score over validation prompts), "
                "content-free (its score under the task's no-findings prompt) or none (raw log-likelihood)."})
    calibration_cases: int = field(default=100, metadata={
        "help": "Validation prompts scored for the mean calibration (the train split when there is no val)."})
    constrained: bool = field(default=False, metadata={
        "help": "Also generate with decoding constrained to the label names (keys c_top1, c_well_formed, ...); "
                "needs a student that supports it (llama-text)."})

    def __post_init__(self) -> None:
        if self.mode not in ("generation", "ranking", "both"):
            raise ValueError(f"eval.mode={self.mode!r}: expected generation, ranking or both")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"eval.calibration={self.calibration!r}: expected one of {', '.join(CALIBRATIONS)}")
        if int(self.calibration_cases) < 1:
            raise ValueError(f"eval.calibration_cases={self.calibration_cases!r}: expected a positive integer")
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
        outcomes = {f"top{k}": hits[k][-1] for k in ks}
        outcomes["well_formed"] = well_formed[-1]
        prediction = {"case_id": case.id, "true_label_ids": list(case.label_ids), "answer": answer,
                      "names": names, "matched_ids": ids, "well_formed": parsed.well_formed,
                      "problem": parsed.problem, "hits": {f"top{k}": bool(hits[k][-1]) for k in ks},
                      "n_names": len(names), "n_hallucinated": sum(label_id is None for label_id in ids),
                      "outcomes": outcomes}
        ranking = ranking_map.get(case.id)
        if ranking is not None and ranking.label_ids:
            top = ranking.label_ids[:teacher_k]
            bottom = ranking.label_ids[-teacher_q:]
            coverage.append(len(listed & set(top)) / len(top))
            avoidance.append(float(not listed & set(bottom)))
            agreement.append(float(bool(ids) and ids[0] == ranking.label_ids[0]))
            outcomes.update(teacher_topk_coverage=coverage[-1], teacher_bottomq_avoidance=avoidance[-1],
                            teacher_top1_agreement=agreement[-1])
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
    return with_intervals(metrics, predictions), predictions


# -- intervals ---------------------------------------------------------------------------------
#: Keys that are counts or timings, not shares: no interval.
NOT_SHARES = {"n", "n_teacher", "n_generation", "seconds"}


def with_intervals(metrics: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``metrics`` with ``key_ci`` after every share, bootstrapped over the predictions' per-case values.

    Means use each prediction's ``outcomes[key]`` (cases without the key, e.g. without a teacher
    ranking, do not count); ``hallucination_rate`` resamples cases for the pooled ratio;
    ``*_max_label_share`` resamples which label each case ranked first.
    """
    from mint_core.stats import bootstrap_interval, largest_class_interval, ratio_interval

    out: dict[str, Any] = {}
    for key, value in metrics.items():
        out[key] = value
        if key in NOT_SHARES or key.endswith("_ci") or not isinstance(value, (int, float)):
            continue
        if key == "hallucination_rate":
            rows = [p for p in predictions if "n_names" in p]
            out[f"{key}_ci"] = ratio_interval([p["n_hallucinated"] for p in rows], [p["n_names"] for p in rows])
        elif key.endswith("_max_label_share"):
            first_key = key.replace("_top1_max_label_share", "_first")
            firsts = [p[first_key] for p in predictions if first_key in p]
            codes = {label: i for i, label in enumerate(sorted(set(firsts)))}
            out[f"{key}_ci"] = largest_class_interval([codes[f] for f in firsts])
        else:
            values = [p["outcomes"][key] for p in predictions if key in p.get("outcomes", {})]
            if values:
                out[f"{key}_ci"] = bootstrap_interval(values)
    return out


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


def _score_prompts(student_model: StudentModel, prompts: Sequence[Prompt], candidates: list[str], batch_size: int,
                   ctx: RunContext | None, description: str) -> list[list[float]]:
    # Chunks of prompts, as for generation: the scorer batches the candidates of a prompt, and a
    # student may share work between prompts of one call (the vision student: tiles of one text).
    return _in_chunks(list(prompts), batch_size * 4, lambda chunk: student_model.score(
        prompts=chunk, candidates=candidates, batch_size=batch_size), ctx, description)


def calibration_reference(*, method: str, student_model: StudentModel, task: Task, data: TaskData, n_answers: int,
                          batch_size: int = 8, max_cases: int = 100, cases: Sequence[Case] | None = None,
                          prompts: Sequence[Prompt] | None = None,
                          ctx: RunContext | None = None) -> dict[str, Any]:
    """What the ``method`` calibration subtracts from each label's raw score, and the raw scores behind it.

    Returns ``{"method", "label_ids", "vector", "reference_case_ids", "reference_scores",
    "content_free_scores"}``. ``mean`` and ``content-free`` both compute every input they can (the
    validation prompts' scores — ``cases``, default up to ``max_cases`` of the val split, else the
    train split — and the content-free prompt's when the task builds one), so a run directory can be
    recalibrated either way later. ``none`` scores nothing: its vector is zeros. ``prompts``, when
    given, are the reference cases' prompts (e.g. retrieval-augmented ones).
    """
    if method not in CALIBRATIONS:
        raise MintError(f"eval.calibration={method!r}: expected one of {', '.join(CALIBRATIONS)}")
    labels = data.labels
    reference: dict[str, Any] = {"method": method, "label_ids": list(labels.ids), "vector": [0.0] * len(labels),
                                 "reference_case_ids": [], "reference_scores": [], "content_free_scores": None}
    if method == "none":
        return reference
    candidates = ranking_candidates(task, labels)
    content_free = task.content_free_prompt(n_answers=n_answers, labels=labels)
    if content_free is not None:
        reference["content_free_scores"] = _score_prompts(student_model, [content_free], candidates, batch_size,
                                                          None, "")[0]
    elif method == "content-free":
        raise MintError(f"eval.calibration=content-free: task {type(task).__name__} builds no content-free prompt "
                        "(Task.content_free_prompt returns None); use eval.calibration=mean or none.")
    if cases is None:
        cases = spread_cases(data.split("val") or data.split("train"), max_cases)
    cases = list(cases)
    if cases:
        prompt_list = _prompts_for(task, cases, n_answers, prompts)
        reference["reference_case_ids"] = [case.id for case in cases]
        reference["reference_scores"] = _score_prompts(student_model, prompt_list, candidates, batch_size, ctx,
                                                       "evaluate: calibrate")
    elif method == "mean":
        raise MintError("eval.calibration=mean needs validation (or train) cases to score; the task has none: "
                        "use eval.calibration=content-free or none.")
    reference["vector"] = calibration_vector(reference, method)
    return reference


def calibration_vector(reference: Mapping[str, Any], method: str) -> list[float]:
    """Per-label offsets for ``method`` from a saved :func:`calibration_reference` (any method it holds)."""
    n_labels = len(reference["label_ids"])
    if method == "none":
        return [0.0] * n_labels
    if method == "content-free":
        if reference.get("content_free_scores") is None:
            raise MintError("no content-free scores were saved for this evaluation: re-run it with "
                            "eval.calibration=content-free.")
        return [float(v) for v in reference["content_free_scores"]]
    if method == "mean":
        rows = reference.get("reference_scores") or []
        if not rows:
            raise MintError("no reference (validation) scores were saved for this evaluation: re-run it with "
                            "eval.calibration=mean.")
        return [sum(row[i] for row in rows) / len(rows) for i in range(n_labels)]
    raise MintError(f"calibration {method!r}: expected one of {', '.join(CALIBRATIONS)}")


def spread_cases(cases: Sequence[Case], limit: int | None) -> list[Case]:
    """Up to ``limit`` cases spread evenly over the label-sorted list (keeps the class mix; deterministic)."""
    cases = sorted(cases, key=lambda c: (c.label_id, c.id))
    if not limit or limit >= len(cases):
        return list(cases)
    step = len(cases) / limit
    return [cases[int(i * step)] for i in range(limit)]


def _rank_outcomes(row: Sequence[float], ids: Sequence[str], truth: set[str], ks: Sequence[int],
                   prefix: str) -> tuple[dict[str, float], list[int], int | None]:
    order = sorted(range(len(ids)), key=lambda i: (-row[i], i))
    ranked = [ids[i] for i in order]
    best = min((ranked.index(t) for t in truth if t in ranked), default=len(ranked))
    outcomes = {f"{prefix}top{k}": float(best < k) for k in ks}
    outcomes[f"{prefix}mrr"] = 1.0 / (best + 1) if best < len(ranked) else 0.0
    return outcomes, order, (best + 1 if best < len(ranked) else None)


def ranking_from_scores(*, predictions: Sequence[Mapping[str, Any]], label_ids: Sequence[str],
                        vector: Sequence[float] | None, ks: Sequence[int], n_answers: int,
                        ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Ranking metrics and predictions from raw per-label scores (each prediction's ``label_scores``).

    ``vector`` is the calibration offset per label (``None``: no calibration; then only the raw
    keys differ in name). Recomputes a saved run's ranking under any calibration.
    """
    ids = list(label_ids)
    offsets = [0.0] * len(ids) if vector is None else [float(v) for v in vector]
    if len(offsets) != len(ids):
        raise MintError(f"calibration vector has {len(offsets)} entries for {len(ids)} labels")
    out: list[dict[str, Any]] = []
    for prediction in predictions:
        if "label_scores" not in prediction:
            raise MintError(f"prediction for case {prediction.get('case_id')!r} has no label_scores (an evaluation "
                            "by an older MINT): re-run 'mint eval' on this run directory to rescore it.")
        raw = [float(v) for v in prediction["label_scores"]]
        calibrated = [r - o for r, o in zip(raw, offsets)]
        truth = set(prediction["true_label_ids"])
        outcomes, order, true_rank = _rank_outcomes(calibrated, ids, truth, ks, "rank_")
        raw_outcomes, raw_order, _ = _rank_outcomes(raw, ids, truth, ks, "rank_raw_")
        top = order[:max(n_answers, max(ks))]
        out.append({"case_id": prediction["case_id"], "true_label_ids": list(prediction["true_label_ids"]),
                    "ranked_ids": [ids[i] for i in top], "scores": [calibrated[i] for i in top],
                    "true_rank": true_rank, "rank_first": ids[order[0]], "rank_raw_first": ids[raw_order[0]],
                    "label_scores": raw, "outcomes": {**outcomes, **raw_outcomes}})
    keys = [f"top{k}" for k in ks] + ["mrr"]
    metrics: dict[str, float] = {}
    for prefix in ("rank_", "rank_raw_"):
        metrics.update({f"{prefix}{key}": _mean([p["outcomes"][f"{prefix}{key}"] for p in out]) for key in keys})
        firsts = [p[f"{prefix}first"] for p in out]
        metrics[f"{prefix}top1_max_label_share"] = max(firsts.count(f) for f in set(firsts)) / len(firsts) \
            if firsts else 0.0
    metrics["n"] = len(out)
    return with_intervals(metrics, out), out


def evaluate_ranking(*, student_model: StudentModel, task: Task, data: TaskData, cases: Sequence[Case],
                     n_answers: int, ks: Sequence[int] | None = None, batch_size: int = 8,
                     prompts: Sequence[Prompt] | None = None, ctx: RunContext | None = None,
                     calibration: Sequence[float] | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Rank every label by the student's log-likelihood of answering it, minus ``calibration`` (per label).

    Keys ``rank_top{k}``, ``rank_mrr``, ``rank_top1_max_label_share`` (calibrated), the same with
    ``rank_raw_`` (plain sums), their ``_ci``, and ``n``. See :func:`ranking_from_scores`.
    """
    cases = list(cases)
    labels = data.labels
    ks = _resolve_ks(ks, len(labels), n_answers, cap=False)
    prompt_list = _prompts_for(task, cases, n_answers, prompts)
    scores = _score_prompts(student_model, prompt_list, ranking_candidates(task, labels), batch_size, ctx,
                            "evaluate: rank labels")
    raw = [{"case_id": case.id, "true_label_ids": list(case.label_ids), "label_scores": row}
           for case, row in zip(cases, scores)]
    return ranking_from_scores(predictions=raw, label_ids=labels.ids, vector=calibration, ks=ks, n_answers=n_answers)


def teacher_metrics(*, rankings: Mapping[str, Ranking] | Iterable[Ranking], cases: Sequence[Case],
                    ks: Sequence[int] = (1, 10), intervals: bool = True) -> dict[str, Any]:
    """The teacher's own top-k accuracy on ``cases`` (those with a ranking): ``top{k}``, ``top{k}_ci``, ``n``."""
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
    if not intervals:
        return metrics
    n = metrics["n"]
    return with_intervals(metrics, [{"outcomes": {f"top{k}": hits[k][i] for k in ks}} for i in range(n)])


def merge_predictions(*parts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per case from each mode's predictions (first part's case order); ``outcomes`` are united."""
    by_case: dict[str, dict[str, Any]] = {}
    for part in parts:
        for row in part:
            merged = by_case.setdefault(row["case_id"], {})
            outcomes = {**merged.get("outcomes", {}), **row.get("outcomes", {})}
            merged.update(row)
            merged["outcomes"] = outcomes
    return list(by_case.values())


def evaluate(*, config: EvalConfig, student_model: StudentModel, task: Task, data: TaskData,
             rankings: Mapping[str, Ranking] | Iterable[Ranking] | None, n_answers: int,
             cases: Sequence[Case] | None = None, prompts: Sequence[Prompt] | None = None,
             ctx: RunContext | None = None, ks: Sequence[int] | None = None, teacher_q: int | None = None,
             reference: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``config.mode`` on the test cases; merged metrics (with intervals) and predictions.

    Ranking takes the first ``config.max_cases`` cases (all by default); generation at most
    ``config.max_generation_cases`` of those, spread over the labels. ``prompts``, when given,
    are one per case of ``cases``. ``reference`` is a :func:`calibration_reference` already
    computed (the pipeline saves it); else it is computed here from ``config.calibration``.
    """
    cases = list(cases if cases is not None else data.split("test"))
    prompts = None if prompts is None else list(prompts)
    if config.max_cases is not None:
        cases = cases[:config.max_cases]
        prompts = None if prompts is None else prompts[:config.max_cases]
    ks = ks or config.ks
    metrics: dict[str, Any] = {}
    parts: list[list[dict[str, Any]]] = []
    if config.mode in ("generation", "both"):
        chosen = spread_cases(cases, config.max_generation_cases) if config.max_generation_cases else cases
        prompt_of = dict(zip((c.id for c in cases), prompts)) if prompts is not None else None
        gen_metrics, gen_predictions = evaluate_generation(
            student_model=student_model, task=task, data=data, cases=chosen, rankings=rankings, n_answers=n_answers,
            ks=ks, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
            prompts=None if prompt_of is None else [prompt_of[c.id] for c in chosen],
            threshold=config.fuzzy_threshold, ctx=ctx, teacher_k=n_answers, teacher_q=teacher_q)
        gen_metrics["n_generation"] = gen_metrics.pop("n")
        metrics.update(gen_metrics)
        parts.append(gen_predictions)
    if config.mode in ("ranking", "both"):
        if reference is None:
            reference = calibration_reference(method=config.calibration, student_model=student_model, task=task,
                                              data=data, n_answers=n_answers, batch_size=config.batch_size,
                                              max_cases=config.calibration_cases, ctx=ctx)
        rank_metrics, rank_predictions = evaluate_ranking(
            student_model=student_model, task=task, data=data, cases=cases, n_answers=n_answers, ks=ks,
            batch_size=config.batch_size, prompts=prompts, ctx=ctx, calibration=reference["vector"])
        metrics.update(rank_metrics)
        parts.append(rank_predictions)
    metrics["n"] = len(cases)
    order = {case.id: i for i, case in enumerate(cases)}
    return metrics, sorted(merge_predictions(*parts), key=lambda row: order[row["case_id"]])


# -- paired comparisons -----------------------------------------------------------------------
#: Students every other one is compared with, when they were evaluated.
REFERENCE_ROLES = ("base", "sft")


def comparison_keys(predictions: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The hit keys compared between students: top-1 and the largest top-k, in each mode present."""
    present = {key for rows in predictions.values() for row in rows for key in row.get("outcomes", {})}
    keys: list[str] = []
    for prefix in ("top", "rank_top"):
        ks = sorted(int(k[len(prefix):]) for k in present if k.startswith(prefix) and k[len(prefix):].isdigit())
        keys += [f"{prefix}{k}" for k in sorted({ks[0], ks[-1]})] if ks else []
    return keys


def paired_comparisons(predictions: Mapping[str, Sequence[Mapping[str, Any]]], *,
                       references: Sequence[str] = REFERENCE_ROLES,
                       keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Each role against each reference role on the cases both evaluated (paired by case id).

    One row per (role, reference, metric): ``delta`` (role minus reference), its paired-bootstrap
    ``ci`` and McNemar's exact ``p_mcnemar`` (:func:`mint_core.stats.paired_difference`), ``n`` cases.
    """
    from mint_core.stats import paired_difference

    keys = list(keys or comparison_keys(predictions))
    rows: list[dict[str, Any]] = []
    for reference in [r for r in references if r in predictions]:
        ref_rows = {row["case_id"]: row.get("outcomes", {}) for row in predictions[reference]}
        for role, role_rows in predictions.items():
            if role == reference or role in references[:references.index(reference)]:
                continue
            for key in keys:
                pairs = [(ref_rows[row["case_id"]][key], row["outcomes"][key]) for row in role_rows
                         if key in row.get("outcomes", {}) and key in ref_rows.get(row["case_id"], {})]
                if pairs:
                    first, second = zip(*pairs)
                    rows.append({"role": role, "reference": reference, "metric": key,
                                 **paired_difference(first, second)})
    return rows


__all__ = [
    "CALIBRATIONS", "EvalConfig", "NameMatcher", "calibration_reference", "calibration_vector", "default_ks",
    "evaluate", "evaluate_generation", "evaluate_ranking", "generation_metrics", "match_names", "merge_predictions",
    "paired_comparisons", "ranking_candidates", "ranking_from_scores", "spread_cases", "teacher_metrics",
    "with_intervals",
]
