"""Intervals and paired tests for evaluation figures.

Every share MINT reports is a statistic over test cases, so its uncertainty comes from which
cases happened to be in the test split. :func:`bootstrap_interval` resamples cases (percentile
bootstrap, numpy-vectorised, fixed seed); :func:`paired_difference` resamples the *same* cases
for two students so their difference is judged on shared cases, and adds McNemar's exact test
(``scipy.stats.binomtest`` on the discordant pairs, which is what the exact McNemar test is).

Why the percentile bootstrap: it stays defined on degenerate samples (all hits or none, frequent
on small splits) where BCa divides by zero, and its coverage on Bernoulli means of 60+ cases is
close to nominal (``tests/test_stats.py`` measures it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

#: Resamples per interval: the percentile's Monte-Carlo error is then about 0.5 points at n=60.
N_RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


def _resampled_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _percentiles(samples: np.ndarray, level: float) -> list[float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return [round(float(lo), 6), round(float(hi), 6)]


def bootstrap_interval(values: Sequence[float], *, statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                       n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = SEED) -> list[float]:
    """Percentile-bootstrap interval ``[lo, hi]`` over cases for the mean of ``values`` (one per case).

    ``statistic`` maps a ``(n_resamples, n)`` array of resampled values to one number per row
    (default: the row mean). An empty sample gives ``[nan, nan]``.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return [float("nan"), float("nan")]
    resampled = data[_resampled_indices(data.size, n_resamples, seed)]
    stats = resampled.mean(axis=1) if statistic is None else statistic(resampled)
    return _percentiles(stats, level)


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float], *, n_resamples: int = N_RESAMPLES,
                   level: float = LEVEL, seed: int = SEED) -> list[float]:
    """Interval for a pooled ratio ``sum(num) / sum(den)`` (e.g. hallucinated / listed names), resampling cases.

    A resample whose denominators sum to 0 counts as ratio 0, as the metric itself does.
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.size == 0:
        return [float("nan"), float("nan")]
    idx = _resampled_indices(num.size, n_resamples, seed)
    top, bottom = num[idx].sum(axis=1), den[idx].sum(axis=1)
    ratios = np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)
    return _percentiles(ratios, level)


def largest_class_interval(classes: Sequence[int], *, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
                           seed: int = SEED) -> list[float]:
    """Interval for the share of the most frequent class (e.g. the label ranked first most often)."""
    codes = np.asarray(classes, dtype=int)
    if codes.size == 0:
        return [float("nan"), float("nan")]
    idx = _resampled_indices(codes.size, n_resamples, seed)
    counts = np.zeros((n_resamples, int(codes.max()) + 1))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), codes.size), codes[idx].ravel()), 1.0)
    return _percentiles(counts.max(axis=1) / codes.size, level)


def paired_difference(first: Sequence[float], second: Sequence[float], *, n_resamples: int = N_RESAMPLES,
                      level: float = LEVEL, seed: int = SEED) -> dict[str, float | list[float] | int | None]:
    """``second - first`` on the same cases: mean difference, paired-bootstrap interval, McNemar exact p.

    ``first`` and ``second`` are per-case outcomes in the same case order. The p-value is given
    when both are 0/1 hits (McNemar's exact test: a two-sided binomial test of the discordant
    pairs against 1/2, ``scipy.stats.binomtest``), else ``None``. ``p_sign`` is the exact sign test
    over cases (cases where ``second`` is higher against those where it is lower): on 0/1 hits it
    is McNemar's p, and it stays valid on outcomes averaged over training seeds, where the cases
    are still the independent units (the seeds share them, so their hits may not be pooled as if
    they were separate cases).
    """
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    diff = b - a
    out: dict[str, float | list[float] | int | None] = {
        "delta": round(float(diff.mean()), 6) if diff.size else float("nan"),
        "ci": bootstrap_interval(diff, n_resamples=n_resamples, level=level, seed=seed), "n": int(diff.size)}
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    out["p_mcnemar"] = mcnemar_exact(a, b)["p"] if binary and diff.size else None
    out["p_sign"] = sign_test(diff)
    return out


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test that positive and negative per-case differences are equally likely
    (zeros dropped; 1.0 when every difference is 0)."""
    diff = np.asarray(differences, dtype=float)
    return _fair_coin_p(int((diff > 0).sum()), int((diff < 0).sum()))


def _fair_coin_p(heads: int, tails: int) -> float:
    """Two-sided exact binomial p of ``heads`` against 1/2 (``scipy.stats.binomtest``); 1.0 with no toss."""
    from scipy.stats import binomtest

    n = heads + tails
    return 1.0 if n == 0 else float(binomtest(heads, n, 0.5, alternative="two-sided").pvalue)


def mcnemar_exact(first: Sequence[float], second: Sequence[float]) -> dict[str, float | int]:
    """McNemar's exact test on paired 0/1 outcomes: discordant counts and the two-sided p-value.

    ``b``: cases only ``first`` got right; ``c``: only ``second``. Under the null each discordant
    case is a fair coin, so p is ``binomtest(c, b + c, 0.5)`` (1.0 when there is no discordant case).
    """
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    only_first, only_second = int((a & ~b).sum()), int((~a & b).sum())
    return {"b": only_first, "c": only_second, "p": _fair_coin_p(only_second, only_first)}


__all__ = ["N_RESAMPLES", "bootstrap_interval", "largest_class_interval", "mcnemar_exact", "paired_difference",
           "ratio_interval", "sign_test"]
