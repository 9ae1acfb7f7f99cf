"""Wall time of mmd2 (RBF, median heuristic included) on 20,000 x 20,000 samples of dimension 64.

Baseline, measured in the same run: plain float32 matmuls over exactly the block pairs mmd2 evaluates
(X-X and Y-Y blocks i<=j, all X-Y blocks: ~(n+m)^2/2 kernel entries, i.e. the upper half of the pooled
(40000x64) @ (64x40000) product), so the ratio is mmd2's overhead over the raw matmul work
(float64 blocks, bandwidth, the exp pass and the sums). Goal: mmd2 <= 30 s on this CPU.

    PYTHONPATH=. python bench/bench_mmd.py                 # default block size
    PYTHONPATH=. python bench/bench_mmd.py --tune --repeat 3   # block sizes 1024-8192, best of 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness.shift.mmd import median_heuristic, mmd2

GOAL_S = 30.0


def _pairs(n: int, size: int, same: bool, m: int = 0) -> list[tuple[slice, slice]]:
    a = [slice(s, min(s + size, n)) for s in range(0, n, size)]
    if same:
        return [(a[i], a[j]) for i in range(len(a)) for j in range(i, len(a))]
    b = [slice(s, min(s + size, m)) for s in range(0, m, size)]
    return [(p, q) for p in a for q in b]


def matmul_baseline(X: np.ndarray, Y: np.ndarray, size: int, dtype: type) -> float:
    """Seconds for the raw matmuls over the same block pairs as mmd2 (no kernel, no sums)."""
    Xc, Yc = X.astype(dtype), Y.astype(dtype)
    buf = np.empty(size * size, dtype=dtype)  # reused like mmd2's block buffer

    def mm(A: np.ndarray, B: np.ndarray) -> None:
        np.matmul(A, B.T, out=buf[: len(A) * len(B)].reshape(len(A), len(B)))

    t0 = time.perf_counter()
    for A in (Xc, Yc):
        for p, q in _pairs(len(A), size, True):
            mm(A[p], A[q])
    for p, q in _pairs(len(Xc), size, False, len(Yc)):
        mm(Xc[p], Yc[q])
    return time.perf_counter() - t0


def best_of(repeat: int, fn, *args) -> tuple[float, object]:
    """Minimum wall time over ``repeat`` runs (the machine is shared, so the minimum is the signal)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="samples per set (default 20000)")
    parser.add_argument("--dim", type=int, default=64, help="feature dimension (default 64)")
    parser.add_argument("--block-size", type=int, default=2048, help="block size to time (default 2048)")
    parser.add_argument("--tune", action="store_true", help="also time block sizes 1024, 2048, 4096 and 8192")
    parser.add_argument("--repeat", type=int, default=1, help="report the best of this many runs (default 1)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    Y = rng.normal(0.1, 1.0, size=(args.n, args.dim)).astype(np.float32)
    sizes = sorted({args.block_size, 1024, 2048, 4096, 8192}) if args.tune else [args.block_size]
    entries = args.n * (args.n + 1) + args.n * args.n  # ~ pairs evaluated (X-X, Y-Y halves + X-Y)

    print(f"mmd2 RBF, n = m = {args.n}, d = {args.dim}, ~{entries / 1e6:.0f}M kernel entries; goal <= {GOAL_S:.0f} s")
    t0 = time.perf_counter()
    sigma = median_heuristic(X, Y)
    t_sigma = time.perf_counter() - t0
    print(f"  median heuristic alone: {t_sigma:.2f} s (sigma = {sigma:.4f})")
    for size in sizes:
        base32 = min(matmul_baseline(X, Y, size, np.float32) for _ in range(args.repeat))
        base64 = min(matmul_baseline(X, Y, size, np.float64) for _ in range(args.repeat))
        t_mmd, value = best_of(args.repeat, lambda: mmd2(X, Y, kernel="rbf", sigma=None, block_size=size))
        verdict = "meets" if t_mmd <= GOAL_S else "MISSES"
        print(f"  block_size {size}: mmd2 {t_mmd:.2f} s (MMD^2 = {value:.6g}) {verdict} goal; "
              f"baseline float32 matmul {base32:.2f} s -> ratio {t_mmd / base32:.2f}x; "
              f"(float64 matmul {base64:.2f} s -> ratio {t_mmd / base64:.2f}x)")


if __name__ == "__main__":
    main()
