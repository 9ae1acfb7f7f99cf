"""`bratsbench split`: fix the patient-level train/val/test split of a store, by seed, in a JSON file."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split",
        help="write a seeded patient-level train/val/test split of a prepared store",
        description=(
            "Split the store's labelled cases by patient into train/val/test and write them as JSON "
            "(default STORE/split-seed{S}.json). The split ignores modalities, so source- and target-modality "
            "runs use the same file."
        ),
    )
    parser.add_argument("--store", required=True, metavar="STORE", help="store written by `bratsbench prepare`")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed that fixes the split (default 0)")
    parser.add_argument("--val", type=float, default=0.15, metavar="F", help="fraction of cases for validation (default 0.15)")
    parser.add_argument("--test", type=float, default=0.15, metavar="F", help="fraction of cases for test (default 0.15)")
    parser.add_argument(
        "--stratify", choices=("grade", "none"), default="none",
        help="spread each grade (HGG/LGG) proportionally over the subsets (default none)",
    )
    parser.add_argument("--out", default=None, metavar="FILE", help="output JSON file (default STORE/split-seed{S}.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from harness.data.split import default_split_path, split_store
    from harness.data.store import open_store
    from harness.outdir import ensure_output_dir

    store = open_store(args.store)
    path = Path(args.out) if args.out else default_split_path(store, args.seed)
    ensure_output_dir(path.parent, what="folder of --out" if args.out else "store")
    split = split_store(store, seed=args.seed, val=args.val, test=args.test, stratify=args.stratify)
    path = split.save(path)
    counts = []
    for subset in ("train", "val", "test"):
        ids = split.subset(subset)
        grades = Counter(store.entry(c).get("grade") or "?" for c in ids)
        detail = ", ".join(f"{g} {n}" for g, n in sorted(grades.items())) if split.stratify else ""
        counts.append(f"{subset} {len(ids)}" + (f" ({detail})" if detail else ""))
    print(f"split {path}: " + "; ".join(counts))
    return 0
