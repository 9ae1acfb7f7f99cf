"""Step time with the encoder frozen vs all trainable (same model, data and batch; one process).

Frozen layers need no weight gradients, and nothing below the first trainable layer needs input gradients,
so freezing the whole encoder (enc1..encD and the bottleneck) should cut the step time. Goal <= 0.85.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import tmpdir, train_record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    a = p.parse_args()
    base = ["--synthetic", "--benchmark", "--nondeterministic", "--crop", *[str(a.crop)] * 3, "--base-filters",
            str(a.filters), "--depth", str(a.depth), "--batch-size", "1", "--synthetic-samples", "4",
            "--warmup", "3", "--bench-steps", str(a.steps), "--threads", "1"]
    out = tmpdir("bench-freeze-")
    rows = []
    for k in (0, (a.depth + 1) // 2, a.depth + 1):
        rec = train_record(1, [*base, "--freeze-depth", str(k)], out / f"k{k}")
        rows.append((k, rec["timing"]["step_time_mean_s"], rec["model"]["params_trainable"], rec["model"]["train_gflops_per_sample"]))
    t0, p0, f0 = rows[0][1], rows[0][2], rows[0][3]
    print(f"model: crop {a.crop}^3, base filters {a.filters}, depth {a.depth} (whole encoder = freeze depth {a.depth + 1})")
    print(f"{'freeze depth':>12} {'step ms':>9} {'rel. step':>10} {'trainable':>10} {'rel. FLOPs':>11}")
    for k, t, params, flops in rows:
        print(f"{k:>12} {t * 1e3:>9.1f} {t / t0:>10.2f} {params / p0:>10.2f} {flops / f0:>11.2f}")
    print(f"whole encoder frozen / all trainable step time: {rows[-1][1] / t0:.2f} (goal <= 0.85)")


if __name__ == "__main__":
    main()
