"""Data-parallel scaling on this CPU: throughput at np=2 vs np=1 (same per-rank batch), and achieved
training FLOP/s per rank vs a one-thread matmul measured in the same run.

Goals (issue 1/4): np2/np1 >= 1.8 at the same per-rank batch and the same per-rank resources (one core per
rank, as one GPU per rank on a cluster); achieved GFLOP/s per rank / one-thread matmul GFLOP/s >= 0.70.
For context it also runs np=1 with both cores (TensorFlow 2.15's oneDNN Conv3D does use two threads here,
so against that the second rank adds little: the machine has only two cores to give).
Usage: python bench/bench_scaling.py [--crop 64] [--filters 32] [--batch 1] [--steps 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_gflops_one_thread, tmpdir, train_record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    args = ["--synthetic", "--benchmark", "--nondeterministic", "--crop", *[str(a.crop)] * 3,
            "--base-filters", str(a.filters), "--depth", str(a.depth), "--batch-size", str(a.batch),
            "--synthetic-samples", str(max(4, a.batch)), "--warmup", str(a.warmup), "--bench-steps", str(a.steps)]
    one_core = [*args, "--threads", "1"]
    out = tmpdir("bench-scaling-")
    matmul = matmul_gflops_one_thread()
    rec1 = train_record(1, one_core, out / "np1")
    rec2 = train_record(2, one_core, out / "np2")
    rec_all = train_record(1, args, out / "np1-all-cores")
    t1, t2, t_all = rec1["timing"], rec2["timing"], rec_all["timing"]
    print(f"model: crop {a.crop}^3, base filters {a.filters}, depth {a.depth}, "
          f"{rec1['model']['train_gflops_per_sample']:.2f} GFLOP per training sample; per-rank batch {a.batch}")
    print(f"one-thread matmul (TensorFlow, 2048^2 float32): {matmul:.1f} GFLOP/s")
    for name, t in (("np=1, 1 thread", t1), ("np=2, 1 thread/rank", t2), (f"np=1, {t_all['threads_per_rank']} threads", t_all)):
        print(f"{name}: throughput {t['throughput_samples_s']:.3f} samples/s, step {t['step_time_mean_s'] * 1e3:.0f} ms "
              f"(p90 {t['step_time_p90_s'] * 1e3:.0f} ms), input wait {100 * t['input_wait_share']:.1f}%, "
              f"{t['achieved_gflops_per_rank']:.1f} GFLOP/s per rank, peak host mem {t['peak_host_mem_mb']:.0f} MB")
    speedup = t2["throughput_samples_s"] / t1["throughput_samples_s"]
    eff = min(t1["achieved_gflops_per_rank"], t2["achieved_gflops_per_rank"]) / matmul
    print(f"speedup np2/np1 at one core per rank: {speedup:.2f}x (goal >= 1.8)")
    print(f"np=2 vs np=1 using every core: {t2['throughput_samples_s'] / t_all['throughput_samples_s']:.2f}x")
    print(f"achieved training FLOP/s per rank / one-thread matmul: {eff:.2f} (goal >= 0.70; "
          f"np=1 {t1['achieved_gflops_per_rank'] / matmul:.2f}, np=2 {t2['achieved_gflops_per_rank'] / matmul:.2f})")


if __name__ == "__main__":
    main()
