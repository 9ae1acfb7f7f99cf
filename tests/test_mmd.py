"""MMD estimator: blocked sums equal the plain O(n^2) formula; the permutation test is calibrated and has power."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from harness.errors import UserError
from harness.shift import mmd as mmd_mod
from harness.shift import median_heuristic, mmd2, permutation_test


def _direct_mmd2(X: np.ndarray, Y: np.ndarray, kernel: str, sigma: float | None, unbiased: bool) -> float:
    """Textbook MMD^2 from full kernel matrices, written independently of the module."""

    def k(A: np.ndarray, B: np.ndarray) -> np.ndarray:
        if kernel == "linear":
            return A @ B.T
        sq = ((A[:, None, :] - B[None, :, :]) ** 2).sum(axis=-1)
        return np.exp(-sq / (2.0 * sigma**2))

    n, m = len(X), len(Y)
    Kxx, Kyy, Kxy = k(X, X), k(Y, Y), k(X, Y)
    if unbiased:
        return ((Kxx.sum() - np.trace(Kxx)) / (n * (n - 1)) + (Kyy.sum() - np.trace(Kyy)) / (m * (m - 1))
                - 2.0 * Kxy.mean())
    return Kxx.mean() + Kyy.mean() - 2.0 * Kxy.mean()


@pytest.fixture(scope="module")
def shifted_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    X = rng.normal(2.0, 1.0, size=(137, 4))  # off-origin, to exercise centring
    Y = rng.normal(2.4, 1.3, size=(91, 4))
    return X, Y


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("block_size", [1, 7, 50, 4096])
def test_rbf_blocked_equals_direct(shifted_pair, unbiased, block_size):
    X, Y = shifted_pair
    for sigma in (0.6, 2.5):
        got = mmd2(X, Y, kernel="rbf", sigma=sigma, unbiased=unbiased, block_size=block_size)
        want = _direct_mmd2(X, Y, "rbf", sigma, unbiased)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-13)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("block_size", [1, 7, 50, 4096])
def test_linear_closed_form_and_blocked_equal_direct(shifted_pair, unbiased, block_size):
    X, Y = shifted_pair
    want = _direct_mmd2(X, Y, "linear", None, unbiased)
    blocked = mmd_mod._mmd2_blocked(X, Y, kernel="linear", sigma=None, unbiased=unbiased, block_size=block_size)
    closed = mmd2(X, Y, kernel="linear", unbiased=unbiased, block_size=block_size)
    assert blocked == pytest.approx(want, rel=1e-9, abs=1e-13)
    assert closed == pytest.approx(blocked, rel=1e-9, abs=1e-13)
    if not unbiased:
        assert closed == pytest.approx(float(np.sum((X.mean(0) - Y.mean(0)) ** 2)), rel=1e-12)


def test_rbf_default_sigma_is_median_heuristic_and_float32_input_ok(shifted_pair):
    X, Y = shifted_pair
    sigma = float(np.median(pdist(np.vstack([X, Y]))))
    assert mmd2(X, Y) == pytest.approx(_direct_mmd2(X, Y, "rbf", sigma, True), rel=1e-9)
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    want32 = _direct_mmd2(X32.astype(np.float64), Y32.astype(np.float64), "rbf", 1.0, False)
    assert mmd2(X32, Y32, sigma=1.0, unbiased=False, block_size=33) == pytest.approx(want32, rel=1e-9)


def test_far_from_origin_data_keep_full_precision(shifted_pair):
    # Uncentred, ||x||^2 + ||y||^2 - 2x.y would lose ~8 digits at an offset of 1e4 with sigma=1.
    X, Y = shifted_pair[0] + 1e4, shifted_pair[1] + 1e4
    for unbiased in (True, False):
        got = mmd2(X, Y, sigma=1.0, unbiased=unbiased, block_size=50)
        assert got == pytest.approx(_direct_mmd2(X, Y, "rbf", 1.0, unbiased), rel=1e-9)
        got = mmd2(X, Y, kernel="linear", unbiased=unbiased)
        assert got == pytest.approx(_direct_mmd2(*shifted_pair, "linear", None, unbiased), rel=1e-9)


def test_symmetry_and_biased_self_distance_is_zero(shifted_pair):
    X, Y = shifted_pair
    assert mmd2(X, Y, sigma=1.0) == pytest.approx(mmd2(Y, X, sigma=1.0), rel=1e-12)
    assert abs(mmd2(X, X, sigma=1.0, unbiased=False, block_size=13)) < 1e-12
    assert abs(mmd2(X, X, kernel="linear", unbiased=False)) < 1e-12


def test_median_heuristic_matches_pdist_definition_with_duplicates():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(5, 3))
    # 40 copies of 5 points: most pairs are identical, so dropping zeros would change the median.
    X = np.repeat(base, 8, axis=0)[:24]
    Y = np.repeat(base, 8, axis=0)[24:]
    pooled = np.vstack([X, Y])
    d = pdist(pooled)
    assert np.median(d) != np.median(d[d > 0])
    assert median_heuristic(X, Y) == pytest.approx(float(np.median(d)), rel=1e-12)

    X2, Y2 = rng.normal(size=(70, 6)), rng.normal(1.0, 2.0, size=(50, 6))
    assert median_heuristic(X2, Y2) == pytest.approx(float(np.median(pdist(np.vstack([X2, Y2])))), rel=1e-12)


def test_median_heuristic_subsample_is_deterministic_and_close():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(400, 5)), rng.normal(0.5, 1.0, size=(300, 5))
    full = float(np.median(pdist(np.vstack([X, Y]))))
    a = median_heuristic(X, Y, max_samples=300, seed=1)
    assert a == median_heuristic(X, Y, max_samples=300, seed=1)
    assert a != median_heuristic(X, Y, max_samples=300, seed=2)
    assert a == pytest.approx(full, rel=0.05)
    assert a != pytest.approx(full, rel=1e-12)  # it really subsampled


def test_median_heuristic_all_identical_raises():
    X = np.ones((5, 2))
    with pytest.raises(UserError, match="sigma=0"):
        median_heuristic(X, X.copy())


def test_unbiased_is_centred_under_null_while_biased_is_positive():
    unb, bia = [], []
    for t in range(200):
        rng = np.random.default_rng(1000 + t)
        X, Y = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
        unb.append(mmd2(X, Y, sigma=1.5))
        bia.append(mmd2(X, Y, sigma=1.5, unbiased=False))
    unb, bia = np.array(unb), np.array(bia)
    se = unb.std(ddof=1) / np.sqrt(len(unb))
    assert abs(unb.mean()) < 3.0 * se
    assert (unb < 0).sum() > 20
    assert (bia > 0).all()
    assert bia.mean() > unb.mean() + 10.0 * se


def test_permutation_test_calibrated_under_null():
    rejections = 0
    for t in range(100):
        rng = np.random.default_rng(t)
        X, Y = rng.normal(size=(50, 5)), rng.normal(size=(50, 5))
        res = permutation_test(X, Y, n_permutations=200, seed=10_000 + t)
        assert 0.0 < res.p_value <= 1.0
        rejections += res.p_value <= 0.05
    assert 1 <= rejections <= 12


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_permutation_test_detects_mean_shift(kernel):
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(100, 5)), rng.normal(0.5, 1.0, size=(100, 5))
    res = permutation_test(X, Y, kernel=kernel, n_permutations=200, seed=1)
    assert res.p_value < 0.01
    assert res.mmd2 > 0 and res.mmd2 > res.null.max()
    assert res.p_value == (1 + np.count_nonzero(res.null >= res.mmd2)) / 201
    assert (res.n, res.m, res.n_permutations, res.kernel, res.unbiased) == (100, 100, 200, kernel, True)
    assert res.null.shape == (200,)
    assert res.mmd2 == pytest.approx(mmd2(X, Y, kernel=kernel, sigma=res.sigma), rel=1e-9)
    if kernel == "rbf":
        assert res.sigma == pytest.approx(median_heuristic(X, Y), rel=1e-12)
    else:
        assert res.sigma is None


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_cached_and_blocked_permutation_paths_agree(monkeypatch, kernel, unbiased):
    rng = np.random.default_rng(11)
    X, Y = rng.normal(size=(23, 3)), rng.normal(0.2, 1.0, size=(17, 3))
    cached = permutation_test(X, Y, kernel=kernel, n_permutations=15, seed=5, unbiased=unbiased)
    monkeypatch.setattr(mmd_mod, "CACHE_MAX_POOLED", 0)
    blocked = permutation_test(X, Y, kernel=kernel, n_permutations=15, seed=5, unbiased=unbiased, block_size=6)
    np.testing.assert_allclose(blocked.null, cached.null, rtol=1e-9, atol=1e-13)
    assert blocked.mmd2 == pytest.approx(cached.mmd2, rel=1e-9)
    assert blocked.p_value == cached.p_value
    assert len(np.unique(cached.null)) > 5  # permutations really differ


def test_permutation_test_is_seeded():
    rng = np.random.default_rng(12)
    X, Y = rng.normal(size=(20, 2)), rng.normal(size=(25, 2))
    a = permutation_test(X, Y, n_permutations=30, seed=3)
    b = permutation_test(X, Y, n_permutations=30, seed=3)
    c = permutation_test(X, Y, n_permutations=30, seed=4)
    np.testing.assert_array_equal(a.null, b.null)
    assert not np.array_equal(a.null, c.null)


_GOOD = np.random.default_rng(0).normal(size=(10, 3))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mmd2(_GOOD, np.zeros((10, 4))), "features"),
        (lambda: mmd2(_GOOD[:1], _GOOD), "need at least 2"),
        (lambda: mmd2(_GOOD, _GOOD[:1]), "need at least 2"),
        (lambda: mmd2(np.where(np.eye(10, 3) > 0, np.nan, _GOOD), _GOOD), "NaN or infinite"),
        (lambda: mmd2(_GOOD, np.full((4, 3), np.inf)), "NaN or infinite"),
        (lambda: mmd2(_GOOD, _GOOD, kernel="poly"), "unknown kernel"),
        (lambda: mmd2(_GOOD, _GOOD, sigma=0.0), "sigma"),
        (lambda: mmd2(_GOOD, _GOOD, sigma=-1.0), "sigma"),
        (lambda: mmd2(_GOOD, _GOOD, sigma=float("nan")), "sigma"),
        (lambda: mmd2(_GOOD, _GOOD, kernel="linear", sigma=1.0), "only the rbf"),
        (lambda: mmd2(_GOOD, _GOOD, block_size=0), "block_size"),
        (lambda: mmd2(_GOOD, _GOOD, block_size=-5), "block_size"),
        (lambda: mmd2(_GOOD, _GOOD, block_size=2.5), "block_size"),
        (lambda: mmd2(np.zeros((3, 2, 2)), _GOOD), "shape"),
        (lambda: mmd2(np.array([["a", "b"], ["c", "d"]]), _GOOD), "dtype"),
        (lambda: permutation_test(_GOOD, _GOOD, n_permutations=0), "n_permutations"),
        (lambda: permutation_test(_GOOD, _GOOD, sigma=-2.0), "sigma"),
        (lambda: permutation_test(_GOOD, _GOOD, kernel="cosine"), "unknown kernel"),
        (lambda: permutation_test(_GOOD, np.zeros((5, 2))), "features"),
        (lambda: median_heuristic(_GOOD, _GOOD, max_samples=1), "max_samples"),
        (lambda: median_heuristic(_GOOD[:1], _GOOD), "need at least 2"),
    ],
)
def test_bad_input_raises_one_line_user_error(call, match):
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_bootstrap_ci_equals_resampling_the_samples_by_hand(kernel):
    from harness.shift.mmd import bootstrap_ci, median_heuristic, mmd2

    rng = np.random.default_rng(0)
    X, Y = rng.normal(0, 1, (40, 3)), rng.normal(0.4, 1, (30, 3))
    sigma = median_heuristic(X, Y) if kernel == "rbf" else None
    low, high = bootstrap_ci(X, Y, kernel=kernel, sigma=sigma, n_boot=120, seed=7)
    draw = np.random.default_rng(7)

    mu = np.concatenate([X, Y]).mean(0)  # the linear kernel works on pooled-mean-centred data, as mmd2 does

    def k(a, b):
        return (a - mu) @ (b - mu).T if kernel == "linear" else np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma**2))

    stats = []
    for _ in range(120):  # the same draws: X indices, then Y indices, per resample
        ix, iy = draw.integers(0, 40, size=40), draw.integers(0, 30, size=30)
        distinct_x, distinct_y = ix[:, None] != ix[None], iy[:, None] != iy[None]  # a point never meets itself
        kxx, kyy = k(X[ix], X[ix]), k(Y[iy], Y[iy])
        stats.append(kxx[distinct_x].mean() + kyy[distinct_y].mean() - 2 * k(X[ix], Y[iy]).mean())
    assert (low, high) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])), rel=1e-9, abs=1e-12)
    observed = mmd2(X, Y, kernel=kernel, sigma=sigma)
    assert low < observed < high


def test_bootstrap_ci_covers_zero_for_two_samples_of_one_distribution():
    """The case the demo's control got wrong (CI above zero with p 0.71) while a point drawn twice met itself."""
    from harness.shift.mmd import bootstrap_ci

    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        low, high = bootstrap_ci(rng.normal(0, 1, (60, 3)), rng.normal(0, 1, (60, 3)), n_boot=200, seed=seed)
        covered += low <= 0 <= high
    assert covered >= 17  # ~95% nominal; with self-pairs counted it was far fewer


def test_bootstrap_ci_separates_shifted_from_identical_samples():
    from harness.shift.mmd import bootstrap_ci

    rng = np.random.default_rng(1)
    same = bootstrap_ci(rng.normal(0, 1, (80, 2)), rng.normal(0, 1, (80, 2)), n_boot=200)
    shifted = bootstrap_ci(rng.normal(0, 1, (80, 2)), rng.normal(1.5, 1, (80, 2)), n_boot=200)
    assert shifted[0] > same[1]  # a real shift: the two intervals do not overlap
    with pytest.raises(UserError, match="n_boot"):
        bootstrap_ci(rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), n_boot=0)
