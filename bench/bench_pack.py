"""Packed against unpacked sweep wall time, on this machine's ranks.

Each round runs the same sweep twice into fresh results folders, in turn (which one goes first alternates, so a slow
phase of the shared machine hits both): `sweep run` (one launch per point) and `sweep run --pack T` (one MPI job of
T ranks, points side by side in waves). Prints both wall times per round, the median and min-max of each, and the
median of the per-round ratios unpacked / packed (> 1: packing saves time), with the share of the unpacked wall time
that is start-up (from the records: time to the first step). The sweep: np 1 and 2, three seeds, the tiny model of
the tests, N training steps per point (--steps, --crop, --base-filters: longer points make start-up a smaller share,
so packing saves less).
Usage: python bench/bench_pack.py [--rounds 3] [--pack 2] [--steps 20] [--crop 16] [--base-filters 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env, tmpdir  # noqa: E402


def spec(steps: int, crop: int, base_filters: int) -> dict:
    return {
        "name": "benchpack",
        "axes": {"np": [1, 2], "seed": [0, 1, 2]},
        "fixed": {
            "model": {"base_filters": base_filters, "depth": 2, "modalities": ["t1", "t2"]},
            "data": {"synthetic": True, "crop": [crop] * 3, "synthetic_samples": 4, "val_cases": 1},
            "train": {"batch_size": 1, "epochs": 1, "steps_per_epoch": steps, "threads": 1},
        },
        "timeout_s": 900,
    }


def sweep(spec_path: Path, results: Path, *extra: str) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "harness", "sweep", "run", str(spec_path), "--out", str(results), *extra]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(cmd)}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/record.json"))]
    return seconds, records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pack", type=int, default=2, help="ranks of the packed job")
    p.add_argument("--steps", type=int, default=20, help="training steps per point")
    p.add_argument("--crop", type=int, default=16, help="crop edge (16: the tests' tiny model)")
    p.add_argument("--base-filters", type=int, default=4)
    a = p.parse_args()
    out = tmpdir("bench-pack-")
    spec_path = out / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec(a.steps, a.crop, a.base_filters)))
    times: dict[str, list[float]] = {"unpacked": [], "packed": []}
    startup_share: list[float] = []
    for r in range(a.rounds):
        order = ["unpacked", "packed"] if r % 2 == 0 else ["packed", "unpacked"]
        for mode in order:
            extra = ("--pack", str(a.pack)) if mode == "packed" else ()
            seconds, records = sweep(spec_path, out / f"{mode}-r{r}", *extra)
            times[mode].append(seconds)
            if mode == "unpacked":
                startup_share.append(sum(rec["phases"]["to_first_step_s"] for rec in records) / seconds)
        print(f"round {r + 1}: unpacked {times['unpacked'][-1]:.1f} s, packed {times['packed'][-1]:.1f} s "
              f"(ratio {times['unpacked'][-1] / times['packed'][-1]:.2f})", flush=True)
    ratios = [u / p for u, p in zip(times["unpacked"], times["packed"])]
    for mode, values in times.items():
        print(f"{mode:>9}: median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f}) "
              f"over {len(values)} rounds")
    print(f"6 points (np 1 and 2, 3 seeds, {a.steps} steps each at {a.crop}^3, base {a.base_filters}) on {a.pack} ranks: unpacked / packed = "
          f"{statistics.median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)}); start-up is "
          f"{statistics.median(startup_share):.0%} of the unpacked sweep's wall time")


if __name__ == "__main__":
    main()
