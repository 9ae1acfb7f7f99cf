"""Seconds per full-size (240x240x155) synthetic case on ONE core, against the cost of writing it.

Pins itself to one CPU and one BLAS/OpenMP thread, loads the templates once (reported apart: a worker
pays it once per process), then times generate_case on 3 cases. Baseline, measured in the same run:
writing the same 5 NIfTI files (.nii.gz, nibabel) of each case, so the ratio says how much of a case's
time is generation and how much plain I/O. Goal: generation <= 10 s per case.

    PYTHONPATH=. python bench/bench_synth.py [--cases 3] [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

GOAL_S = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="cases to average over (default 3)")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (default 0)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    from harness.data.synth import case_files, case_seed, generate_case, save_case
    from harness.data.synth_anatomy import shape_atlas

    t0 = time.perf_counter()
    shape_atlas((240, 240, 155))
    setup = time.perf_counter() - t0

    gen, write = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for cid in range(1, args.cases + 1):
            t0 = time.perf_counter()
            case = generate_case(case_seed(0, cid))
            gen.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            save_case(case, Path(tmp) / f"case{cid}", case_files(2020, "train", cid, gzip=True))
            write.append(time.perf_counter() - t0)
    g, w = sum(gen) / len(gen), sum(write) / len(write)
    pinned = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    print(f"CPUs used: {pinned}; template load once per process: {setup:.2f} s")
    print(f"generate_case 240x240x155: {g:.2f} s/case (mean of {len(gen)}: "
          + ", ".join(f"{t:.2f}" for t in gen) + ")")
    print(f"baseline, write 5 .nii.gz with nibabel: {w:.2f} s/case")
    print(f"ratio generation / write: {g / w:.2f}x; generation + write: {g + w:.2f} s/case")
    print(f"goal: generation <= {GOAL_S:.0f} s/case on one core -> {'MET' if g <= GOAL_S else 'NOT MET'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
