"""Training FLOP/s per rank in float32 and with --amp (bfloat16 on CPUs), each against a one-thread matmul of
the same precision measured in the same run (np=1, one thread, the demo-size model).

Seen on an Intel Xeon with AMX and TF 2.15: matmul 183 GFLOP/s fp32, 690 bf16; --amp training only 1.56x faster
than fp32 (issue 2/4). On an AVX2-only AMD EPYC with TF 2.18 bf16 is emulated: the bf16 matmul is no faster than
fp32 and --amp training is 5x slower (the trainer warns). Rounds interleave fp32 and bf16 (matmul and training) so a slow phase of the shared
machine hits both; each figure is the median over rounds with its min-max.
Usage: python bench/bench_precision.py [--crop 48] [--filters 16] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_gflops_one_thread, tmpdir, train_record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    args = ["--synthetic", "--benchmark", "--nondeterministic", "--crop", *[str(a.crop)] * 3, "--base-filters",
            str(a.filters), "--depth", str(a.depth), "--batch-size", str(a.batch), "--synthetic-samples",
            str(max(4, a.batch)), "--warmup", "2", "--bench-steps", str(a.steps), "--threads", "1"]
    out = tmpdir("bench-precision-")
    flags = {"fp32": [], "bf16": ["--amp"]}
    matmul: dict[str, list[float]] = {"fp32": [], "bf16": []}
    train: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for r in range(a.rounds):
        for name in ("fp32", "bf16"):
            matmul[name].append(matmul_gflops_one_thread(dtype="float32" if name == "fp32" else "bfloat16"))
            train[name].append(train_record(1, [*args, *flags[name]], out / f"{name}-r{r}")["timing"])
            t = train[name][-1]
            print(f"round {r + 1}: {name}: matmul {matmul[name][-1]:.1f} GFLOP/s, training "
                  f"{t['achieved_gflops_per_rank']:.1f} GFLOP/s ({t['step_time_mean_s'] * 1e3:.0f} ms/step)", flush=True)
    import tensorflow as tf

    def spread(values: list[float], fmt: str = ".1f") -> str:
        return f"{statistics.median(values):{fmt}} (min {min(values):{fmt}}, max {max(values):{fmt}})"

    print(f"TensorFlow {tf.__version__}; model crop {a.crop}^3, base {a.filters}, depth {a.depth}, batch {a.batch}, "
          f"one thread, {a.steps} timed steps, {a.rounds} interleaved rounds")
    for name in ("fp32", "bf16"):
        gflops = [t["achieved_gflops_per_rank"] for t in train[name]]
        share = [g / m for g, m in zip(gflops, matmul[name])]
        print(f"{name}: matmul {spread(matmul[name])} GFLOP/s; training {spread(gflops)} GFLOP/s per rank = "
              f"{spread(share, '.2f')} of the matmul")
    speed = [f["step_time_mean_s"] / b["step_time_mean_s"] for f, b in zip(train["fp32"], train["bf16"])]
    mm = [b / f for f, b in zip(matmul["fp32"], matmul["bf16"])]
    print(f"--amp step speedup over fp32: {spread(speed, '.2f')}x; bf16 / fp32 matmul: {spread(mm, '.2f')}x")


if __name__ == "__main__":
    main()
