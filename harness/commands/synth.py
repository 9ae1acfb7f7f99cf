"""`bratsbench synth`: write realistic synthetic BraTS cases offline (no data set can be downloaded here)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate realistic synthetic BraTS cases in the official folder layout",
        description=(
            "Make BraTS-layout cases from the ICBM152 templates bundled in nilearn (no download): warped "
            "anatomy, a glioma with NCR/ED/ET labels, four MRI contrasts with bias, blur and Rician noise. "
            "Each case depends only on (--seed, case id), whatever --workers is. An existing --out is "
            "refused unless it only holds earlier synth output; cases of the same ids are then overwritten."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new, empty, or earlier synth output)")
    parser.add_argument("--cases", required=True, type=int, metavar="N", help="number of training cases")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the data set (default 0)")
    parser.add_argument("--year", type=int, default=2020, choices=(2020, 2021),
                        help="folder layout: 2020 (MICCAI_BraTS2020_TrainingData + CSVs) or 2021 (default 2020)")
    parser.add_argument("--validation", type=int, default=0, metavar="M",
                        help="also write M unlabelled cases to MICCAI_BraTS2020_ValidationData (2020 only)")
    parser.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=True,
                        help="write .nii.gz (default) or, with --no-gzip, .nii like the Kaggle mirror")
    parser.add_argument("--shape", nargs=3, type=int, default=None, metavar=("X", "Y", "Z"),
                        help="grid size (default 240 240 155); smaller grids keep the 240x240x155 mm field of view")
    parser.add_argument("--first-id", type=int, default=1, metavar="K",
                        help="number of the first training case (default 1; e.g. 354 to include case 355's quirk)")
    parser.add_argument("--workers", type=int, default=None, metavar="W",
                        help="parallel worker processes (default: number of CPUs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.data.synth import write_dataset

    train = write_dataset(args.out, cases=args.cases, seed=args.seed, year=args.year, validation=args.validation,
                          gzip=args.gzip, shape=tuple(args.shape) if args.shape else None,
                          first_id=args.first_id, workers=args.workers)
    extra = f" and {args.validation} validation cases" if args.validation else ""
    print(f"wrote {args.cases} training cases to {train}{extra}")
    return 0
