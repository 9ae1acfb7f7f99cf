"""What the per-step stop check costs: every step, the ranks agree through one small mean (the stop flag, shared
with the time budget's) so that a signal on any rank stops all of them at the same step.

Trains the same run (np ranks, one core each) with the default stop signals and with `--stop-signals none` (no
check: without a budget nothing is asked of the other ranks), per engine, in interleaved rounds. Per run:
  outside = (epoch wall time - time inside the timed steps) / steps  -- the check lives here, with the bar and
            the batch hand-over;
the check's cost is outside(with) - outside(none), printed as a median over rounds with its min-max, beside the
step time for scale.
Usage: python bench/bench_stop_check.py [--np 2] [--crop 32] [--filters 8] [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import tmpdir, train_record  # noqa: E402


def main() -> None:
    from harness.engines import unavailable

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    engines = [e for e in ("horovod", "mwms") if unavailable(e) is None]
    args = ["--synthetic", "--crop", *[str(a.crop)] * 3, "--base-filters", str(a.filters), "--depth", str(a.depth),
            "--batch-size", "1", "--synthetic-samples", "4", "--val-cases", "1", "--epochs", "1",
            "--steps-per-epoch", str(a.steps), "--threads", "1", "--modalities", "t1,t2"]
    out = tmpdir("bench-stop-")
    outside: dict[tuple[str, str], list[float]] = {}
    step: dict[str, list[float]] = {}
    for r in range(a.rounds):
        for engine in engines:
            for check in ("USR1,TERM", "none"):
                record = train_record(a.np, [*args, "--stop-signals", check], out / f"{engine}-{check}-{r}", engine)
                (epoch,) = record["history"]
                outside.setdefault((engine, check), []).append((epoch["wall_s"] - epoch["train_s"]) / a.steps)
                step.setdefault(engine, []).append(epoch["train_s"] / a.steps)
                print(f"round {r + 1} {engine:8s} stop signals {check:9s}: outside the step "
                      f"{1e3 * outside[(engine, check)][-1]:.2f} ms/step, step {1e3 * step[engine][-1]:.1f} ms", flush=True)
    print(f"\nnp={a.np}, crop {a.crop}^3, base {a.filters}, depth {a.depth}, one core per rank, {a.steps} steps, "
          f"{a.rounds} interleaved rounds")
    for engine in engines:
        cost = [w - n for w, n in zip(outside[(engine, "USR1,TERM")], outside[(engine, "none")])]
        s = statistics.median(step[engine])
        print(f"{engine:8s} stop check: {1e3 * statistics.median(cost):+.2f} ms/step (min {1e3 * min(cost):+.2f}, "
              f"max {1e3 * max(cost):+.2f}) = {100 * statistics.median(cost) / s:.1f}% of a {1e3 * s:.1f} ms step")


if __name__ == "__main__":
    main()
