"""Benchmark statistics: a median with a 95% bootstrap confidence interval, and paired ratios (speedup) with theirs.

A few repeats on a shared machine are not normal (one slow phase gives a long tail), so a point is its median and
its CI comes from resampling the repeats (scipy.stats.bootstrap, percentile method: BCa needs a jackknife that is
degenerate for three values). A speedup pairs the repeats of two points round by round (repeat r of np=2 with
repeat r of np=1, run next to each other) so a slow phase that hit both cancels in their ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 9999
WIDE_CV = 0.10  # a point whose repeats spread more than this (sd / mean) is flagged as too noisy to read


@dataclass(frozen=True)
class Estimate:
    value: float  # the median (of the values, or of the per-pair ratios)
    low: float  # CI bounds; NaN with fewer than two values
    high: float
    n: int
    cv: float  # coefficient of variation of the values (sd with ddof=1 / mean); NaN for n < 2

    @property
    def wide(self) -> bool:
        """Too noisy to read: the repeats spread more than WIDE_CV."""
        return bool(self.cv > WIDE_CV)

    def as_dict(self, prefix: str) -> dict[str, float | int | bool]:
        return {prefix: self.value, f"{prefix}_ci_low": self.low, f"{prefix}_ci_high": self.high,
                f"{prefix}_n": self.n, f"{prefix}_cv": self.cv, f"{prefix}_wide": self.wide}


def _checked(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{what}: need a non-empty list of numbers, got {values!r}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: values must be finite, got {a.tolist()}")
    return a


def _level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} must be between 0 and 1")
    return level


def _cv(a: np.ndarray) -> float:
    if a.size < 2 or a.mean() == 0:
        return math.nan
    return float(a.std(ddof=1) / abs(a.mean()))


def _bootstrap(a: np.ndarray, statistic, level: float, resamples: int, seed: int) -> Estimate:
    value = float(statistic(a))
    if a.size < 2:
        return Estimate(value, math.nan, math.nan, 1, math.nan)
    if np.ptp(a) == 0:
        return Estimate(value, value, value, int(a.size), _cv(a))
    res = stats.bootstrap((a,), statistic, confidence_level=_level(level), n_resamples=resamples, method="percentile",
                          random_state=np.random.default_rng(seed), vectorized=True)
    return Estimate(value, float(res.confidence_interval.low), float(res.confidence_interval.high), int(a.size), _cv(a))


def median_ci(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """The median of `values` with a percentile-bootstrap CI (seeded: the same values give the same CI)."""
    return _bootstrap(_checked(values, "median_ci"), np.median, _level(level), resamples, seed)


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], level: float = LEVEL,
             resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Median of the per-pair ratios numerator[i] / denominator[i] with a bootstrap CI over the pairs (a speedup
    from paired repeats). The CV is that of the ratios."""
    num, den = _checked(numerator, "ratio_ci numerator"), _checked(denominator, "ratio_ci denominator")
    if num.size != den.size:
        raise ValueError(f"ratio_ci: {num.size} numerators but {den.size} denominators (repeats must pair up)")
    if (den == 0).any():
        raise ValueError(f"ratio_ci: a denominator is zero: {den.tolist()}")
    return median_ci(num / den, level, resamples, seed)


def mean_ci(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """The mean of `values` with a percentile-bootstrap CI (for per-seed results such as a time to target)."""
    return _bootstrap(_checked(values, "mean_ci"), np.mean, _level(level), resamples, seed)


def two_way_mean_ci(matrix: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Mean of a seeds x patients matrix (e.g. test Dice, or paired differences to scratch) with a CI from
    resampling seeds and patients independently (both are random: a new study would draw new ones of each).
    NaN entries (a case a seed did not score) are left out of each mean."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.size == 0 or np.isnan(m).all():
        raise ValueError(f"two_way_mean_ci: need a non-empty seeds x patients matrix, got shape {m.shape}")
    level = _level(level)
    value = float(np.nanmean(m))
    flat = m[~np.isnan(m)]
    cv = _cv(flat)
    if m.shape[0] * m.shape[1] < 2 or np.ptp(flat) == 0:
        return Estimate(value, value if flat.size > 1 else math.nan, value if flat.size > 1 else math.nan,
                        int(flat.size), cv)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, m.shape[0], size=(resamples, m.shape[0]))
    cols = rng.integers(0, m.shape[1], size=(resamples, m.shape[1]))
    means = np.array([np.nanmean(m[np.ix_(r, c)]) for r, c in zip(rows, cols)])
    alpha = (1 - level) / 2
    low, high = np.nanpercentile(means, [100 * alpha, 100 * (1 - alpha)])
    return Estimate(value, float(low), float(high), int(flat.size), cv)


def cohens_dz(differences: Sequence[float]) -> float:
    """Effect size of paired differences: mean / sd (ddof=1); NaN with fewer than two or no spread."""
    d = np.asarray([x for x in differences if not math.isnan(x)], dtype=float)
    if d.size < 2 or d.std(ddof=1) == 0:
        return math.nan
    return float(d.mean() / d.std(ddof=1))
