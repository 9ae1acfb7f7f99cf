"""Training FLOP/s per rank in float32 and with --amp (bfloat16 on CPUs), each against a one-thread matmul of
the same precision measured in the same run (np=1, one thread, the demo-size model).

Seen on this machine's Xeon (AMX) with TF 2.15: matmul 183 GFLOP/s fp32, 690 bf16; --amp training only 1.56x
faster than fp32 (issue 2/4). Usage: python bench/bench_precision.py [--crop 48] [--filters 16] [--steps 6]
"""

from __future__ import annotations

import argparse
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
    a = p.parse_args()
    args = ["--synthetic", "--benchmark", "--nondeterministic", "--crop", *[str(a.crop)] * 3, "--base-filters",
            str(a.filters), "--depth", str(a.depth), "--batch-size", str(a.batch), "--synthetic-samples",
            str(max(4, a.batch)), "--warmup", "2", "--bench-steps", str(a.steps), "--threads", "1"]
    out = tmpdir("bench-precision-")
    matmul = {"fp32": matmul_gflops_one_thread(dtype="float32"), "bf16": matmul_gflops_one_thread(dtype="bfloat16")}
    train = {"fp32": train_record(1, args, out / "fp32"), "bf16": train_record(1, [*args, "--amp"], out / "amp")}
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}; model crop {a.crop}^3, base {a.filters}, depth {a.depth}, batch {a.batch}, one thread")
    for name in ("fp32", "bf16"):
        t = train[name]["timing"]
        print(f"{name}: matmul {matmul[name]:.1f} GFLOP/s; training {t['achieved_gflops_per_rank']:.1f} GFLOP/s "
              f"({t['step_time_mean_s'] * 1e3:.0f} ms/step) = {t['achieved_gflops_per_rank'] / matmul[name]:.2f} of the matmul")
    speed = train["fp32"]["timing"]["step_time_mean_s"] / train["bf16"]["timing"]["step_time_mean_s"]
    print(f"--amp step speedup over fp32: {speed:.2f}x (bf16 matmul / fp32 matmul: {matmul['bf16'] / matmul['fp32']:.2f}x)")


if __name__ == "__main__":
    main()
