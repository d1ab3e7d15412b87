"""mint_core.stats: bootstrap coverage, paired differences and McNemar's exact test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mint_core.stats import (bootstrap_interval, largest_class_interval, mcnemar_exact, paired_difference,
                             ratio_interval)


def test_bootstrap_interval_covers_a_bernoulli_mean_near_the_nominal_rate():
    # 400 simulated test splits of 60 cases with a true accuracy of 0.3 (fixed seed): a 95%
    # interval should contain 0.3 about 95% of the time. The percentile bootstrap runs a little
    # narrow at n=60 (0.94 measured here); anything below 0.90 or above 0.98 would be a defect.
    rng = np.random.default_rng(123)
    true_p, n, trials = 0.3, 60, 400
    covered = 0
    for trial in range(trials):
        sample = (rng.random(n) < true_p).astype(float)
        lo, hi = bootstrap_interval(sample, n_resamples=1000, seed=trial)
        covered += lo <= true_p <= hi
    assert 0.90 <= covered / trials <= 0.98


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    values = [1, 0, 0, 1, 1, 0, 1, 1, 1, 0] * 6
    first, second = bootstrap_interval(values), bootstrap_interval(values)
    assert first == second  # fixed seed: same numbers
    assert first[0] < np.mean(values) < first[1]
    assert bootstrap_interval([1.0] * 20) == [1.0, 1.0]  # degenerate sample: a point, not NaN
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    # Wider with fewer cases: 16 cases span far more than 240 with the same share.
    narrow, wide = bootstrap_interval(values * 4), bootstrap_interval(values[:16])
    assert wide[1] - wide[0] > 1.5 * (narrow[1] - narrow[0])


def test_ratio_interval_resamples_cases_of_a_pooled_ratio():
    hallucinated, listed = [0, 1, 0, 2, 0, 0, 1, 0] * 8, [3, 3, 2, 4, 0, 5, 2, 3] * 8
    pooled = sum(hallucinated) / sum(listed)
    lo, hi = ratio_interval(hallucinated, listed)
    assert lo < pooled < hi and 0.0 <= lo and hi < 0.5
    assert ratio_interval([0, 0], [0, 0]) == [0.0, 0.0]  # nothing listed: rate 0, as the metric


def test_largest_class_interval():
    lo, hi = largest_class_interval([0] * 30 + [1] * 20 + [2] * 10)
    assert lo < 0.5 < hi and lo >= 1 / 3


def test_paired_delta_equals_difference_of_means():
    rng = np.random.default_rng(7)
    base = (rng.random(80) < 0.3).astype(float)
    student = (rng.random(80) < 0.5).astype(float)
    out = paired_difference(base, student)
    assert out["delta"] == pytest.approx(student.mean() - base.mean())
    assert out["ci"][0] <= out["delta"] <= out["ci"][1] and out["n"] == 80
    # Pairing matters: a student that adds one hit to a subset of cases has a tight interval
    # excluding 0, although its two unpaired intervals overlap.
    better = base.copy()
    better[np.flatnonzero(base == 0)[:12]] = 1.0
    paired = paired_difference(base, better)
    assert paired["ci"][0] > 0
    assert bootstrap_interval(better)[0] < bootstrap_interval(base)[1]
    assert paired["p_mcnemar"] == pytest.approx(2 * 0.5 ** 12)
    # Non-binary outcomes (reciprocal ranks) get no McNemar p.
    assert paired_difference([0.5, 1.0], [1.0, 0.25])["p_mcnemar"] is None
    # The sign test over cases is McNemar's p on 0/1 hits, and defined on seed averages: 9 cases
    # higher, 1 lower, 2 tied -> binomtest(9, 10) = 22 / 1024.
    assert paired["p_sign"] == pytest.approx(paired["p_mcnemar"])
    averaged = paired_difference([0.0] * 12, [1 / 3] * 9 + [-1 / 3] + [0.0] * 2)
    assert averaged["p_mcnemar"] is None and averaged["p_sign"] == pytest.approx(22 / 1024)
    with pytest.raises(ValueError, match="length"):
        paired_difference([1, 0], [1])


def test_mcnemar_matches_a_hand_computed_table():
    # 2x2 table: both right 10, only base right 2, only student right 9, both wrong 19.
    base = [1] * 10 + [1] * 2 + [0] * 9 + [0] * 19
    student = [1] * 10 + [0] * 2 + [1] * 9 + [0] * 19
    out = mcnemar_exact(base, student)
    assert (out["b"], out["c"]) == (2, 9)
    # Exact two-sided p = 2 * P(X <= 2), X ~ Binomial(11, 1/2) = 2 * (1 + 11 + 55) / 2048.
    assert out["p"] == pytest.approx(2 * 67 / 2048)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p"] == 1.0  # no discordant pair
