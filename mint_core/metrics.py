"""What a student's answers score: generation and ranking metrics, teacher metrics, intervals, paired comparisons.

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

This module imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from mint_core.answers import parse_answer
from mint_core.matching import NameMatcher, unique_entries
from mint_core.registry import MintError
from mint_core.types import Case, LabelSpace, Ranking, TaskData

if TYPE_CHECKING:
    from mint_core.context import RunContext


def default_ks(n_labels: int, n_answers: int) -> list[int]:
    """``[1, 3, 10]`` for large label spaces and lists of 10+, else ``[1, 3, 5]``."""
    return [1, 3, 10] if n_labels > 10 and n_answers >= 10 else [1, 3, 5]


def resolve_ks(ks: Sequence[int] | None, n_labels: int, n_answers: int, *, cap: bool) -> list[int]:
    chosen = sorted({int(k) for k in (ks or default_ks(n_labels, n_answers))})
    if cap:
        chosen = [k for k in chosen if k <= max(1, n_answers)] or [1]
    return chosen


def _as_ranking_map(rankings: Mapping[str, Ranking] | Iterable[Ranking] | None) -> dict[str, Ranking]:
    if rankings is None:
        return {}
    if isinstance(rankings, Mapping):
        return dict(rankings)
    return {ranking.case_id: ranking for ranking in rankings}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def generation_metrics(*, answers: Sequence[str], cases: Sequence[Case], labels: LabelSpace,
                       rankings: Mapping[str, Ranking] | Iterable[Ranking] | None, n_answers: int,
                       ks: Sequence[int] | None = None, threshold: float = 0.8, teacher_k: int | None = None,
                       teacher_q: int | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and per-case predictions for answers already written (one per case, same order).

    See the module docstring for every metric. Never raises on a malformed answer.
    """
    if len(answers) != len(cases):
        raise ValueError(f"{len(answers)} answers for {len(cases)} cases")
    ks = resolve_ks(ks, len(labels), n_answers, cap=True)
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
        names, ids = unique_entries(parsed.names, [matcher.match(name) for name in parsed.names])
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
    return bootstrap_intervals(metrics, predictions), predictions


# -- intervals ---------------------------------------------------------------------------------
#: Keys that are counts or timings, not shares: no interval.
NOT_SHARES = {"n", "n_teacher", "n_generation", "seconds"}


def bootstrap_intervals(metrics: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
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
    return bootstrap_intervals(metrics, out), out


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
    return bootstrap_intervals(metrics, [{"outcomes": {f"top{k}": hits[k][i] for k in ks}} for i in range(n)])


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


def wilson_intervals(metrics: dict[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """``top{k}_ci``: the Wilson score interval of each ``top{k}`` accuracy over ``metrics["n"]`` cases."""
    from scipy.stats import binomtest

    n = int(metrics.get("n") or 0)
    out = dict(metrics)
    for key, value in metrics.items():
        if key.startswith("top") and isinstance(value, float) and n:
            interval = binomtest(round(value * n), n).proportion_ci(confidence_level=confidence, method="wilson")
            out[f"{key}_ci"] = [round(float(interval.low), 4), round(float(interval.high), 4)]
    return out

def teacher_report(*, teacher: Any, data: TaskData, rankings: Sequence[Ranking], ks: Sequence[int],
                   ctx: RunContext) -> dict[str, Any]:
    """Teacher top-k on test with 95% Wilson intervals; ``train_oof``: the same on the training cases
    ranked out of fold (cross-fitting); ``variants``: the teacher's ablation and baselines on test."""
    test = data.split("test")
    by_id = {r.case_id: r for r in rankings}

    def scored(ranked: Any, cases: Sequence[Case]) -> dict[str, Any]:
        return wilson_intervals(teacher_metrics(rankings=ranked, cases=cases, ks=ks, intervals=False))

    metrics = scored(by_id, test)
    oof = [c for c in data.split("train") if by_id[c.id].fold is not None]
    if oof:
        metrics["train_oof"] = scored(by_id, oof)
    variants = teacher.variant_rankings(data=data, cases=test, ctx=ctx)
    if variants:
        metrics["variants"] = {"teacher": {k: v for k, v in metrics.items() if k not in ("train_oof",)}}
        for name, ranked in variants.items():
            metrics["variants"][name] = scored(ranked, test)
    return metrics



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
