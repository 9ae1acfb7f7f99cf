"""`bratsbench transfer`: does pre-training on one modality pair help on another? With controls and seeds."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transfer",
        help="pre-train on source modalities, fine-tune on target modalities per frozen depth, compare with scratch",
        description="(a) pre-train on --source on the split's train cases; (b) fine-tune on --target from those weights "
        "with the first k encoder levels frozen, for each k in --freeze-depths (and --head-only); (c) train --target "
        "from scratch with the same split, budget, optimiser and seed; evaluate every run on the test cases and write "
        "OUT/comparison.{md,csv} and OUT/learning-curves.png. Finished runs (the pre-training included) are reused.",
    )
    from harness.commands.train import add_run_arguments

    add_run_arguments(p)
    p.add_argument("--source", default="flair,t1ce", help="source modalities (default flair,t1ce)")
    p.add_argument("--target", default="t1,t2", help="target modalities (default t1,t2)")
    p.add_argument("--freeze-depths", default=None,
                   help="comma list of k (default: 0, half and the whole encoder, e.g. 0,2,4 at depth 3)")
    p.add_argument("--head-only", action="store_true", help="also fine-tune with everything but the head frozen")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1; default 1)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="pre-training epochs (default: --epochs)")
    p.add_argument("--unfreeze-after", type=int, default=None, help="unfreeze everything after N fine-tuning epochs")
    p.add_argument("--first-conv", choices=("copy", "average", "reinit"), default=None,
                   help="first convolution across modality sets (default: copy for equal channel counts, else average)")
    p.add_argument("--target-dice", type=float, default=None,
                   help="validation WT Dice to time against (default: scratch's final validation WT Dice)")
    p.add_argument("--np", type=int, default=1, help="ranks per run (horovodrun over Gloo when > 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.commands.train import config_from_args
    from harness.errors import UserError
    from harness.record import atomic_write_json
    from harness.transfer.compare import comparison, markdown, write_csv
    from harness.sweep.runner import read_record
    from harness.transfer.execute import execute
    from harness.transfer.plan import plan_study

    if args.out is None:
        raise UserError("--out is required (the study folder)")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds} must be at least 1")
    if args.np < 1:
        raise UserError(f"--np {args.np} must be at least 1")
    if args.unfreeze_after is not None and args.unfreeze_after < 1:
        raise UserError(f"--unfreeze-after {args.unfreeze_after} must be at least 1")
    for flag in ("modalities", "freeze_depth", "resume", "init_from", "benchmark"):
        if getattr(args, flag, None) not in (None, False):
            raise UserError(f"--{flag.replace('_', '-')} is set by transfer itself; use --source/--target/--freeze-depths")
    out = Path(args.out)
    base = config_from_args(args)
    if base.data.synthetic:
        raise UserError("transfer needs a prepared store and split (--store, --split), not --synthetic")
    try:
        depths = [int(k) for k in args.freeze_depths.split(",")] if args.freeze_depths else None
    except ValueError:
        raise UserError(f"--freeze-depths '{args.freeze_depths}' is not a comma list of integers") from None
    runs = plan_study(base, args.source, args.target, depths, list(range(args.seeds)),
                      pretrain_epochs=args.pretrain_epochs or base.train.epochs, head_only=args.head_only,
                      unfreeze_after=args.unfreeze_after, first_conv=args.first_conv)
    from harness.outdir import ensure_output_dir

    ensure_output_dir(out)
    # the source store must hold both modality sets before anything runs
    from harness.data.split import load_split
    from harness.data.store import open_store

    store = open_store(Path(base.data.store))
    store.check_modalities(tuple(runs[0].cfg.model.modalities) + tuple(runs[-1].cfg.model.modalities))
    load_split(Path(base.data.split), store)

    print(f"transfer study: {len(runs)} runs into {out}")
    status = execute(runs, out, np_=args.np, timeout_s=args.timeout)
    records = [r for r in (read_record(Path(s["folder"])) for s in status.values()) if r]
    rows = comparison(records, target=args.target_dice)
    table = markdown(rows)
    (out / "comparison.md").write_text(table + "\n")
    write_csv(rows, out / "comparison.csv")
    atomic_write_json(out / "study.json", {"runs": [{"label": r.label, "role": r.role, "id": r.id, **status[r.id]} for r in runs]})
    from analysis.plots import learning_curves_png

    png = out / "learning-curves.png"
    try:
        learning_curves_png(records, png)
    except ValueError as exc:  # no finished fine-tuning/scratch run with validation history
        png = f"(no learning-curve plot: {exc})"
    print()
    print(table)
    print(f"\n{out / 'comparison.md'}\n{out / 'comparison.csv'}\n{png}")
    failed = [s for s in status.values() if s["status"] != "ok"]
    if failed:
        print(f"{len(failed)} run(s) failed; re-run the same command to retry only those")
    return 1 if failed else 0
