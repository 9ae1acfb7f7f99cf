"""`bratsbench prepare`: decode BraTS NIfTI cases once into the preprocessed store that training reads."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="build or update the preprocessed case store from BraTS NIfTI data",
        description=(
            "Find BraTS cases under --data (2020, 2021 or the Kaggle layout), check each one, z-score each modality "
            "inside the brain, crop to the brain and centre it in --roi, and write .npy arrays to --out. "
            "A re-run redoes only new or changed cases; bad cases are skipped and listed in the manifest."
        ),
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="folder holding the BraTS cases (any known layout)")
    parser.add_argument("--out", required=True, metavar="STORE", help="store folder to create or update")
    parser.add_argument(
        "--roi", nargs=3, type=int, default=[128, 128, 128], metavar=("X", "Y", "Z"),
        help="stored volume size after centring the brain bounding box (default 128 128 128)",
    )
    parser.add_argument(
        "--spacing", type=float, default=None, metavar="MM",
        help="resample to this isotropic spacing in mm before cropping (e.g. 2 for CPU runs; default: keep 1 mm)",
    )
    parser.add_argument(
        "--modalities", nargs="+", default=None, metavar="MOD",
        help="modalities to store, e.g. 'flair t1ce' or 'flair,t1ce' (default: flair t1 t1ce t2)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad case instead of skipping it")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, metavar="W",
        help="parallel worker processes (default: number of CPUs)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the store holds the cases (prepared now or unchanged), 1 when every case was skipped."""
    from harness.data.store import MANIFEST, prepare_store
    from harness.errors import UserError, print_error
    from harness.modalities import MODALITIES, parse_modalities
    from harness.outdir import ensure_output_dir

    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: need at least 1")
    modalities = parse_modalities(",".join(args.modalities)) if args.modalities else MODALITIES
    ensure_output_dir(args.out)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    report = prepare_store(
        args.data, args.out, roi=args.roi, spacing=args.spacing, modalities=modalities,
        strict=args.strict, workers=args.workers,
    )
    print(
        f"store {args.out}: {len(report.prepared)} prepared, {len(report.reused)} unchanged, "
        f"{len(report.skipped)} skipped, {len(report.removed)} removed"
    )
    sys.stdout.flush()  # the summary before the reasons, when both streams go to one terminal or file
    for case_id in sorted(report.skipped):  # workers finish in any order; the reasons read by case
        for reason in report.skipped[case_id]:
            print(f"  skipped: {reason}", file=sys.stderr)
    if report.skipped and not (report.prepared or report.reused):
        # nothing to train on: a script must not go on as if the store were ready
        print_error(f"no case could be prepared: all {len(report.skipped)} skipped (reasons above "
                    f"and under \"skipped\" in {Path(args.out) / MANIFEST})")
        return 1
    return 0  # CSV warnings were already logged by prepare_store
