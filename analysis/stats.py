"""Benchmark statistics: a median with a 95% bootstrap confidence interval, and paired ratios (speedup) with theirs.

A few repeats on a shared machine are not normal (one slow phase gives a long tail), so a point is its median and
its CI comes from resampling the repeats (scipy.stats.bootstrap, percentile method: BCa needs a jackknife that is
degenerate for three values). A speedup pairs the repeats of two points round by round (repeat r of np=2 with
repeat r of np=1, run next to each other) so a slow phase that hit both cancels in their ratio.
"""

from __future__ import annotations

import functools
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


# ---------------------------------------------------------------- two independent samples (bratsbench compare)

EXACT_PAIRS = 250_000  # above this many (median of B, median of A) outcomes the bootstrap is sampled instead


@functools.lru_cache(maxsize=128)
def _median_law(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact bootstrap law of the median of a resample of n values, by position in the sorted sample:
    arrays (i, j, p) such that the resample's median is (x[i] + x[j]) / 2 with probability p (i == j for odd n).

    A resample draws n positions uniformly with replacement, so how many draws fall below, at and above a position
    is multinomial. Odd n = 2m - 1: the median is the m-th smallest draw, at or below position k when at least m
    draws are. Even n = 2m: numpy's median averages the m-th and (m+1)-th smallest draws; for i < j that is
    exactly m draws at or below i (at least one at i), none between i and j and at least one at j."""
    if n % 2:
        m = (n + 1) // 2
        at_or_below = stats.binom.sf(m - 1, n, np.arange(1, n + 1) / n)
        p = np.diff(np.concatenate([[0.0], at_or_below]))
        return np.arange(n), np.arange(n), p
    m = n // 2
    i_s, j_s, p_s = [], [], []
    for i in range(n):
        below, at, above = i / n, 1 / n, (n - i - 1) / n
        same = sum(math.comb(n, a) * math.comb(n - a, c) * below**a * at**c * above ** (n - a - c)
                   for a in range(m) for c in range(m + 1 - a, n - a + 1))  # < m below, > m at or below
        i_s.append(i), j_s.append(i), p_s.append(same)
        lower = math.comb(n, m) * (((i + 1) / n) ** m - (i / n) ** m)
        for j in range(i + 1, n):
            i_s.append(i), j_s.append(j), p_s.append(lower * (((n - j) / n) ** (n - m) - ((n - j - 1) / n) ** (n - m)))
    return np.array(i_s), np.array(j_s), np.array(p_s)


def median_law(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(medians, probabilities): every median a bootstrap resample of `values` can have, with its probability."""
    return _law_of_sorted(np.sort(_checked(values, "median_law")))


def _law_of_sorted(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j, p = _median_law(int(x.size))
    return (x[i] + x[j]) / 2, p


def _sorted_median(x: np.ndarray) -> float:
    """np.median of an already sorted array, without numpy's per-call overhead (thousands of small samples)."""
    n = x.size
    return float((x[(n - 1) // 2] + x[n // 2]) / 2)


def _quantiles(values: np.ndarray, weights: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Quantiles of a discrete law (the smallest value whose cumulative probability reaches q)."""
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(weights[order])
    cdf /= cdf[-1]
    return [float(values[order][min(int(np.searchsorted(cdf, q - 1e-12)), values.size - 1)]) for q in qs]


def ratio_of_medians_ci(numerator: Sequence[float], denominator: Sequence[float], level: float = LEVEL,
                        resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """median(numerator) / median(denominator) of two independent samples (B and A of a comparison: two folders'
    repeats do not pair up) with a percentile-bootstrap CI, each sample resampled on its own.

    The bootstrap law of each median is computed exactly (`median_law`), so the CI is the one `resamples` draws
    estimate, without their Monte Carlo error and at a fraction of the cost; past EXACT_PAIRS outcomes it is
    sampled (scipy.stats.bootstrap, seeded). Fewer than two values on a side: no CI (NaN bounds)."""
    raw_num, raw_den = _checked(numerator, "ratio numerator"), _checked(denominator, "ratio denominator")
    num, den = np.sort(raw_num), np.sort(raw_den)
    med_num, med_den = _sorted_median(num), _sorted_median(den)
    if med_den == 0:
        raise ValueError(f"ratio_of_medians_ci: the denominator's median is zero: {den.tolist()}")
    value = med_num / med_den
    if num.size < 2 or den.size < 2:
        return value, math.nan, math.nan
    alpha = (1 - _level(level)) / 2
    (mn, pn), (md, pd_) = _law_of_sorted(num), _law_of_sorted(den)
    if mn.size * md.size <= EXACT_PAIRS:
        with np.errstate(divide="ignore"):
            ratios = np.divide.outer(mn, md).ravel()
        low, high = _quantiles(ratios, np.outer(pn, pd_).ravel(), (alpha, 1 - alpha))
        return value, low, high
    res = stats.bootstrap((raw_num, raw_den), lambda b, a, axis=-1: np.median(b, axis=axis) / np.median(a, axis=axis),
                          paired=False, vectorized=True, confidence_level=level, n_resamples=resamples,
                          method="percentile", random_state=np.random.default_rng(seed))
    return value, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value of two independent samples (scipy's default method: exact for small
    samples without ties). With 3 values a side it cannot go below 0.1: 2 of the 20 orderings are as extreme as
    'every x above every y'."""
    return mann_whitney_ps([(x, y)])[0]


def mann_whitney_ps(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> list[float]:
    """`mann_whitney_p` of many pairs at once: one scipy call per (sizes, ties or not) batch, which matters for
    thousands of points; each p is the one a call on its pair alone gives (scipy picks its method per batch)."""
    out = [math.nan] * len(pairs)
    batches: dict[tuple[int, int, bool], list[int]] = {}
    for k, (x, y) in enumerate(pairs):
        x, y = _checked(x, "mann_whitney x"), _checked(y, "mann_whitney y")
        both = np.sort(np.concatenate([x, y]))
        batches.setdefault((x.size, y.size, bool((np.diff(both) == 0).any())), []).append(k)
    for (nx, ny, _), ks in batches.items():
        xs = np.array([np.asarray(pairs[k][0], dtype=float) for k in ks]).reshape(len(ks), nx)
        ys = np.array([np.asarray(pairs[k][1], dtype=float) for k in ks]).reshape(len(ks), ny)
        ps = np.atleast_1d(stats.mannwhitneyu(xs, ys, alternative="two-sided", axis=-1).pvalue)
        for k, p in zip(ks, ps):
            out[k] = float(p)
    return out
