"""`bratsbench shift`: domain shift between the source and target modality pairs, measured by MMD."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shift",
        help="MMD^2 and permutation p-values between source and target modality pairs, with PCA/t-SNE plots",
        description="Sample intensity patches inside the brain mask of the same patients and positions, and (with "
        "--run) a pre-trained encoder's bottleneck features, then compare source vs target with the unbiased MMD^2 "
        "and a permutation test. A control row compares the source features of two disjoint patient halves.",
    )
    p.add_argument("--store", required=True, help="prepared store")
    p.add_argument("--split", required=True, help="split file (patients are taken from --subset)")
    p.add_argument("--subset", choices=("train", "val", "test"), default="train", help="split subset (default train)")
    p.add_argument("--source", default="flair,t1ce", help="source modality pair (default flair,t1ce)")
    p.add_argument("--target", default="t1,t2", help="target modality pair (default t1,t2)")
    p.add_argument("--patch", type=int, default=3, help="patch edge in voxels (odd, default 3)")
    p.add_argument("--per-case", type=int, default=200, help="patches per case (default 200)")
    p.add_argument("--max-samples", type=int, default=2000, help="samples per domain for the test (default 2000)")
    p.add_argument("--kernel", choices=("rbf", "linear"), default="rbf", help="kernel (default rbf, median heuristic)")
    p.add_argument("--permutations", type=int, default=200, help="permutations for the p-value (default 200)")
    p.add_argument("--biased", action="store_true", help="biased V-statistic instead of the unbiased U-statistic")
    p.add_argument("--run", default=None, help="pre-trained run (on the source pair) for learned bottleneck features")
    p.add_argument("--seed", type=int, default=0, help="sampling and permutation seed")
    p.add_argument("--out", required=True, help="output folder (shift.json, shift.md, shift.csv, PNGs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.shift.study import ShiftOptions, run_shift

    opts = ShiftOptions(**{f: getattr(args, f) for f in ShiftOptions.__dataclass_fields__})
    written = run_shift(opts, report=lambda line: print(line, flush=True))
    print("\n".join(map(str, written)))
    return 0
