"""Where a transfer-study run's wall time goes at the demo's configuration, and what running two runs side by side
(one core each) saves against one after the other (both cores each).

Each round runs the same two independent runs (pre-training FLAIR+T1CE and scratch T1+T2, both on the demo's
budget of training seconds) twice: one after the other with all cores each, then side by side with one core
each. Prints every run's phases from its record (time to first step, training steps, validation, the rest; the
share in training steps: goal >= 70%) and each round's wall time for the two ways, with the median over rounds.
Usage: python bench/bench_phases.py [--cases 10] [--budget-s 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import tmpdir  # noqa: E402


def main() -> None:
    import harness  # noqa: F401  (sets the Keras choice before TensorFlow is imported)
    from harness.commands import demo
    from harness.data.split import split_store
    from harness.data.store import open_store, prepare_store
    from harness.data.synth import write_dataset
    from harness.transfer.study import StudyOptions, run_study

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=demo.BUDGET_S)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    root = tmpdir("bench-phases-")
    write_dataset(root / "raw", cases=a.cases, seed=0, shape=(96, 96, 64))
    prepare_store(root / "raw", root / "store", roi=(64, 64, 48), spacing=2.5)
    split = root / "split.json"
    split_store(open_store(root / "store"), seed=0, val=0.2, test=0.2, stratify="grade").save(split)
    walls: dict[str, list[float]] = {"one after the other, all cores each": [], "side by side, one core each": []}
    shares: list[float] = []
    firsts: list[float] = []
    for r in range(a.rounds):
        for way, (parallel, threads) in zip(walls, [(1, None), (2, 1)]):
            base = demo.study_config(root / "store", split, root / "study", a.budget_s, threads)
            out = root / f"r{r}-{'side' if parallel > 1 else 'serial'}"
            t = time.perf_counter()
            # a folder of its own per round and way: nothing is reused
            study = run_study(base, StudyOptions(seeds=1, depths=[], head_only=False, pretrain_budget_s=a.budget_s,
                                                 parallel=parallel), out, report=lambda line: None)
            walls[way].append(time.perf_counter() - t)
            assert not study.failed, study.failed
            for rec in study.records:
                ph = rec["phases"]
                shares.append(ph["train_share"])
                firsts.append(ph["to_first_step_s"])
                print(f"round {r + 1}, {way}: {rec['name']:12s} wall {ph['wall_s']:5.1f} s = first step "
                      f"{ph['to_first_step_s']:4.1f} + steps {ph['steps_s']:5.1f} ({ph['steps']} steps) + validation "
                      f"{ph['validation_s']:4.1f} + rest {ph['checkpoint_s'] + ph['other_s']:4.1f}: "
                      f"{ph['train_share']:.0%} in training steps", flush=True)
            print(f"round {r + 1}, {way}: both runs in {walls[way][-1]:.0f} s", flush=True)
    print(f"\nbudget {a.budget_s:g} s of training per run, {a.rounds} rounds")
    print(f"share of a run's wall time in training steps: median {statistics.median(shares):.0%} "
          f"(min {min(shares):.0%}, max {max(shares):.0%}; goal >= 70%); time to first step median "
          f"{statistics.median(firsts):.1f} s (min {min(firsts):.1f}, max {max(firsts):.1f})")
    for way, values in walls.items():
        print(f"two runs {way}: median {statistics.median(values):.0f} s (min {min(values):.0f}, max {max(values):.0f})")
    ratios = [s / p_ for s, p_ in zip(*walls.values())]
    print(f"one after the other / side by side: {statistics.median(ratios):.2f}x (rounds "
          f"{', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
