"""Benchmark CIs: checked against scipy.stats.bootstrap and a hand-written percentile bootstrap on fixed data, for
coverage on simulated repeats, and for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.stats import WIDE_CV, median_ci, ratio_ci

FIXED = [10.2, 9.8, 11.5, 10.1, 12.9, 9.5, 10.7]  # throughputs of seven repeats, one slow-phase outlier


def test_median_ci_equals_scipy_bootstrap_on_fixed_data():
    est = median_ci(FIXED, seed=3)
    ref = stats.bootstrap((np.array(FIXED),), np.median, confidence_level=0.95, n_resamples=9999, method="percentile",
                          random_state=np.random.default_rng(3))
    assert est.value == pytest.approx(np.median(FIXED))
    assert (est.low, est.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert est.n == 7 and est.cv == pytest.approx(np.std(FIXED, ddof=1) / np.mean(FIXED))


def test_median_ci_agrees_with_a_hand_written_percentile_bootstrap():
    rng = np.random.default_rng(11)
    a = np.array(FIXED)
    medians = np.median(rng.choice(a, size=(100_000, a.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    est = median_ci(FIXED)
    # resampled medians take only the data's values: both bounds must land on the same (or a neighbouring) value
    assert est.low == pytest.approx(low, abs=0.31) and est.high == pytest.approx(high, abs=0.31)
    assert est.low <= est.value <= est.high


def test_ratio_ci_pairs_repeats_and_matches_scipy_paired():
    np2 = [17.1, 18.0, 12.2, 17.6]  # the third round was a slow phase for both
    np1 = [9.9, 10.1, 7.0, 9.8]
    est = ratio_ci(np2, np1, seed=5)
    ratios = np.array(np2) / np.array(np1)
    ref = stats.bootstrap((np.array(np2), np.array(np1)), lambda a, b, axis=-1: np.median(a / b, axis=axis), paired=True,
                          n_resamples=9999, method="percentile", random_state=np.random.default_rng(5), vectorized=True)
    assert est.value == pytest.approx(np.median(ratios))
    assert (est.low, est.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=0.02)
    # pairing cancels the slow phase: the ratios are tight although each point alone is not
    assert est.cv < 0.05 < median_ci(np2).cv


def test_coverage_of_the_median_ci_on_simulated_repeats():
    rng = np.random.default_rng(0)
    true_median, hits, trials = 10.0, 0, 300
    for i in range(trials):
        sample = rng.normal(true_median, 1.0, size=15)
        est = median_ci(sample, resamples=999, seed=i)
        hits += est.low <= true_median <= est.high
    assert 0.88 <= hits / trials <= 0.995


def test_one_value_has_no_ci_and_constant_values_a_point_ci():
    one = median_ci([4.0])
    assert one.value == 4.0 and math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.cv) and one.n == 1
    assert not one.wide
    same = median_ci([2.0, 2.0, 2.0])
    assert (same.low, same.value, same.high, same.cv) == (2.0, 2.0, 2.0, 0.0)


def test_wide_flag_marks_spread_above_the_threshold():
    assert median_ci([10.0, 10.5, 9.5]).wide is False
    assert median_ci([10.0, 15.0, 7.0]).wide is True and median_ci([10.0, 15.0, 7.0]).cv > WIDE_CV


def test_the_same_values_give_the_same_ci():
    assert median_ci(FIXED) == median_ci(list(FIXED))


@pytest.mark.parametrize("call, message", [
    (lambda: median_ci([]), "non-empty"),
    (lambda: median_ci([1.0, float("nan")]), "finite"),
    (lambda: median_ci([[1.0, 2.0]]), "non-empty list"),
    (lambda: median_ci([1.0, 2.0], level=1.5), "between 0 and 1"),
    (lambda: ratio_ci([1.0, 2.0], [1.0]), "pair up"),
    (lambda: ratio_ci([1.0], [0.0]), "zero"),
])
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mean_ci_equals_scipy_bootstrap():
    from analysis.stats import mean_ci

    est = mean_ci(FIXED, seed=2)
    ref = stats.bootstrap((np.array(FIXED),), np.mean, n_resamples=9999, method="percentile",
                          random_state=np.random.default_rng(2))
    assert est.value == pytest.approx(np.mean(FIXED))
    assert (est.low, est.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))


def test_two_way_ci_with_one_seed_is_the_bootstrap_over_patients():
    from analysis.stats import two_way_mean_ci

    dice = np.random.default_rng(4).beta(8, 2, size=40)
    est = two_way_mean_ci(dice[None, :])
    ref = stats.bootstrap((dice,), np.mean, n_resamples=9999, method="percentile", random_state=np.random.default_rng(9))
    assert est.value == pytest.approx(dice.mean())
    assert est.low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert est.high == pytest.approx(ref.confidence_interval.high, abs=0.004)


def test_two_way_ci_counts_the_spread_between_seeds():
    from analysis.stats import two_way_mean_ci

    rng = np.random.default_rng(1)
    patients = rng.normal(0.8, 0.05, size=30)
    matrix = np.stack([patients + shift for shift in (-0.06, 0.0, 0.06)])  # seeds that train differently
    two_way = two_way_mean_ci(matrix)
    pooled = median_ci(matrix.ravel())  # as if the 90 values were independent
    assert two_way.high - two_way.low > 1.5 * (pooled.high - pooled.low)
    matrix[1, 3] = np.nan  # a case one seed did not score
    assert two_way_mean_ci(matrix).value == pytest.approx(np.nanmean(matrix))


def test_two_way_ci_coverage_on_simulated_studies():
    from analysis.stats import two_way_mean_ci

    rng = np.random.default_rng(0)
    hits, trials = 0, 200
    for i in range(trials):
        seeds = rng.normal(0, 0.03, size=(5, 1))
        patients = rng.normal(0, 0.08, size=(1, 25))
        est = two_way_mean_ci(0.8 + seeds + patients + rng.normal(0, 0.02, size=(5, 25)), resamples=999, seed=i)
        hits += est.low <= 0.8 <= est.high
    assert 0.85 <= hits / trials <= 1.0


def test_cohens_dz_is_the_one_sample_t_over_root_n():
    from analysis.stats import cohens_dz

    d = [0.05, 0.02, 0.08, -0.01, 0.04, 0.06]
    assert cohens_dz(d) * math.sqrt(len(d)) == pytest.approx(stats.ttest_1samp(d, 0.0).statistic)
    assert math.isnan(cohens_dz([0.1])) and math.isnan(cohens_dz([0.1, 0.1]))


def test_two_way_bad_matrix_is_one_error():
    from analysis.stats import two_way_mean_ci

    with pytest.raises(ValueError, match="seeds x patients"):
        two_way_mean_ci(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="seeds x patients"):
        two_way_mean_ci(np.full((2, 2), np.nan))
