"""What the stop check costs. The ranks agree on a stop signal through one small mean over ranks: after every step
when a time budget asks anyway (the flag rides along), else about once a second of steps.

Trains the same run (np ranks, one core each) three ways per engine, in interleaved rounds:
  none    `--stop-signals none`: no check at all;
  signals the default stop signals: a check about once a second;
  every   the default stop signals and a budget that never ends the run: one mean after every step.
Per run, outside = (epoch wall time - time inside the timed steps) / steps: the check lives there, with the bar and
the batch hand-over. Printed: outside(every) - outside(none), the cost of one check, and outside(signals) -
outside(none), what a run pays per step; medians over rounds with their min-max, beside the step time for scale.
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
    modes = {"none": ["--stop-signals", "none"], "signals": [], "every": ["--budget-s", "1e9"]}
    outside: dict[tuple[str, str], list[float]] = {}
    step: dict[str, list[float]] = {}
    for r in range(a.rounds):
        for engine in engines:
            for mode, extra in modes.items():
                record = train_record(a.np, [*args, *extra], out / f"{engine}-{mode}-{r}", engine)
                (epoch,) = record["history"]
                outside.setdefault((engine, mode), []).append((epoch["wall_s"] - epoch["train_s"]) / a.steps)
                step.setdefault(engine, []).append(epoch["train_s"] / a.steps)
                print(f"round {r + 1} {engine:8s} {mode:8s}: outside the step {1e3 * outside[(engine, mode)][-1]:.2f} "
                      f"ms/step, step {1e3 * step[engine][-1]:.1f} ms", flush=True)
    print(f"\nnp={a.np}, crop {a.crop}^3, base {a.filters}, depth {a.depth}, one core per rank, {a.steps} steps, "
          f"{a.rounds} interleaved rounds")
    for engine in engines:
        s = statistics.median(step[engine])
        for mode, what in (("every", "one check (after every step)"), ("signals", "stop signals, per step")):
            cost = [w - n for w, n in zip(outside[(engine, mode)], outside[(engine, "none")])]
            print(f"{engine:8s} {what:30s}: {1e3 * statistics.median(cost):+.2f} ms (min {1e3 * min(cost):+.2f}, "
                  f"max {1e3 * max(cost):+.2f}) = {100 * statistics.median(cost) / s:+.1f}% of a {1e3 * s:.1f} ms step")


if __name__ == "__main__":
    main()
