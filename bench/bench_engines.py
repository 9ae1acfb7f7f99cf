"""Horovod vs TensorFlow's MultiWorkerMirroredStrategy on this CPU: the same model, data shard, step and
per-rank batch, one core per rank, np = 1 and 2 for each engine, interleaved rounds (engine, np) so a slow phase
of the shared machine hits every point.

Prints per point the median throughput over rounds with its min-max, each engine's np2/np1 (median of the
per-round ratios) and Horovod / MWMS at np=2 (median of the per-round ratios).
Goals (issue 2/4): each engine >= 1.7x at np=2; the slower engine within 10% of the faster.
Usage: python bench/bench_engines.py [--crop 48] [--filters 16] [--batch 2] [--steps 10] [--rounds 2]
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
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    engines = [e for e in ("horovod", "mwms") if unavailable(e) is None]
    args = ["--synthetic", "--benchmark", "--nondeterministic", "--loss", "ce", "--crop", *[str(a.crop)] * 3,
            "--base-filters", str(a.filters), "--depth", str(a.depth), "--batch-size", str(a.batch),
            "--synthetic-samples", str(max(4, a.batch)), "--warmup", str(a.warmup), "--bench-steps", str(a.steps),
            "--threads", "1"]
    out = tmpdir("bench-engines-")
    rate: dict[tuple[str, int], list[float]] = {}
    for r in range(a.rounds):
        for engine in engines:
            for np_ in (1, 2):
                rec = train_record(np_, args, out / f"{engine}-np{np_}-r{r}", backend=engine)
                assert rec["engine"]["name"] == engine and rec["world_size"] == np_
                rate.setdefault((engine, np_), []).append(rec["timing"]["throughput_samples_s"])
                print(f"round {r + 1}: {engine} np={np_}: {rate[(engine, np_)][-1]:.3f} samples/s", flush=True)
    print(f"model: crop {a.crop}^3, base filters {a.filters}, depth {a.depth}; per-rank batch {a.batch}, one core "
          f"per rank, {a.steps} timed steps, {a.rounds} interleaved rounds")
    for (engine, np_), values in rate.items():
        print(f"{engine:8s} np={np_}: median {statistics.median(values):.3f} samples/s "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    for engine in engines:
        ratios = [b / a_ for a_, b in zip(rate[(engine, 1)], rate[(engine, 2)])]
        print(f"{engine} np2/np1: {statistics.median(ratios):.2f}x (rounds {', '.join(f'{x:.2f}' for x in ratios)}; goal >= 1.7)")
    if len(engines) == 2:
        ratios = [h / m for h, m in zip(rate[("horovod", 2)], rate[("mwms", 2)])]
        print(f"Horovod / MWMS throughput at np=2: {statistics.median(ratios):.2f} "
              f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}; goal: the slower within 10% of the faster)")
    else:
        print(f"only {engines[0]} is installed here: no Horovod / MWMS ratio")


if __name__ == "__main__":
    main()
