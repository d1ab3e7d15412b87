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

Metrics and their intervals: :mod:`mint_core.metrics`. This module imports no torch: the student
object does the model work.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

from mint_core import distributed
from mint_core.answers import format_answer
from mint_core.components import AnswerConstraint
from mint_core.metrics import generation_metrics, merge_predictions, ranking_from_scores, resolve_ks
from mint_core.registry import MintError
from mint_core.types import Case, LabelSpace, Prompt, Ranking, TaskData

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


def _prompts_for(task: Task, cases: Sequence[Case], n_answers: int, prompts: Sequence[Prompt] | None) -> list[Prompt]:
    if prompts is None:
        return [task.prompt(case=case, n_answers=n_answers) for case in cases]
    if len(prompts) != len(cases):
        raise ValueError(f"{len(prompts)} prompts for {len(cases)} cases")
    return list(prompts)


def _in_chunks(items: list[Any], batch_size: int, run, ctx: RunContext | None, description: str) -> list[Any]:
    """``run(chunk)`` over ``items`` a few batches at a time, with a progress bar when a run context is given.

    Under several processes each chunk is split between them by whole batches and gathered back in
    order (:func:`mint_core.distributed.map_sharded`): every batch is the one a single process forms.
    """
    size = max(1, batch_size) * 4 * distributed.world_size()
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    results: list[Any] = []
    if ctx is None:
        for chunk in chunks:
            results += distributed.map_sharded(chunk, batch_size, run)
        return results
    with ctx.progress() as progress:
        bar = progress.add_task(description, total=len(items))
        for chunk in chunks:
            results += distributed.map_sharded(chunk, batch_size, run)
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
    answers = _in_chunks(prompt_list, batch_size, lambda chunk: student_model.generate(
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
    return _in_chunks(list(prompts), batch_size, lambda chunk: student_model.score(
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
    ks = resolve_ks(ks, len(labels), n_answers, cap=False)
    prompt_list = _prompts_for(task, cases, n_answers, prompts)
    scores = _score_prompts(student_model, prompt_list, ranking_candidates(task, labels), batch_size, ctx,
                            "evaluate: rank labels")
    raw = [{"case_id": case.id, "true_label_ids": list(case.label_ids), "label_scores": row}
           for case, row in zip(cases, scores)]
    return ranking_from_scores(predictions=raw, label_ids=labels.ids, vector=calibration, ks=ks, n_answers=n_answers)


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
    # Ranking scores the prompts generation has just run: a student may keep their keys and values.
    reuse = getattr(student_model, "reusing_prompts", None)  # duck-typed students may lack it
    with reuse() if reuse is not None and config.mode == "both" else contextlib.nullcontext():
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


def constrained_evaluation(*, student_model: StudentModel, task: Task, data: TaskData, cases: Sequence[Case],
                           rankings: Any, n_answers: int, ks: Sequence[int], eval_cfg: EvalConfig,
                           prompts: Sequence[Prompt] | None, ctx: RunContext | None,
                           teacher_q: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generation metrics with decoding constrained to the label names, keys prefixed ``c_`` (``eval.constrained``)."""
    if not getattr(student_model, "supports_constrained", False):
        raise MintError(f"eval.constrained=true: the student {type(student_model).__name__} cannot constrain "
                        f"generation; set eval.constrained=false")
    constraint = AnswerConstraint(names=tuple(label.name for label in data.labels),
                                  noun=getattr(task, "label_noun", "labels"), max_items=n_answers)
    metrics, predictions = evaluate_generation(
        student_model=student_model, task=task, data=data, cases=cases, rankings=rankings, n_answers=n_answers, ks=ks,
        batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens, prompts=prompts,
        threshold=eval_cfg.fuzzy_threshold, ctx=ctx, teacher_k=n_answers, teacher_q=teacher_q,
        allowed_answers=constraint)
    keep = ("answer", "names", "matched_ids", "well_formed", "hits", "outcomes")
    return ({f"c_{k}": v for k, v in metrics.items() if k != "n"},
            [{"case_id": row["case_id"], **{f"c_{k}": row[k] for k in keep if k in row}} for row in predictions])
