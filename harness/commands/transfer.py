"""`bratsbench transfer`: does pre-training on one modality pair help on another? With controls and seeds."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transfer",
        help="pre-train on source modalities, fine-tune on target modalities per frozen depth, compare with scratch",
        description="(a) pre-train on --source on the split's train cases; (b) fine-tune on --target from those weights "
        "with the first k encoder levels frozen, for each k in --freeze-depths, and with all but the head frozen; "
        "(c) train --target from scratch with the same split, budget (epochs x steps, or --budget-s seconds of training), "
        "optimiser and seed; evaluate every run on the test cases and write "
        "OUT/transfer.{md,csv} and OUT/learning_curves.png (the same table `bratsbench analyze` writes). Finished runs (the pre-training included) are reused.",
    )
    from harness.commands.train import add_run_arguments

    add_run_arguments(p)
    p.add_argument("--source", default="flair,t1ce", help="source modalities (default flair,t1ce)")
    p.add_argument("--target", default="t1,t2", help="target modalities (default t1,t2)")
    p.add_argument("--freeze-depths", default=None,
                   help="comma list of k (default: 0, half and the whole encoder, e.g. 0,2,4 at depth 3)")
    p.add_argument("--head-only", action=argparse.BooleanOptionalAction, default=True,
                   help="also fine-tune with everything but the head frozen (default: yes)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1; default 3)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="pre-training epochs (default: --epochs)")
    p.add_argument("--pretrain-budget-s", type=float, default=None, metavar="S",
                   help="seconds of training for each pre-training run (default: no limit; it runs its epochs)")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs side by side, each pinned to its own share of the CPU cores (default 1; use the core "
                        "count with --threads 1 on a CPU). It does not share out GPUs: on a GPU cluster run the study "
                        "as a sweep with mode: [transfer, scratch]")
    p.add_argument("--target-dice", type=float, default=None,
                   help="validation WT Dice to time against (default: scratch's final validation WT Dice)")
    p.add_argument("--np", type=int, default=1, help="ranks per run (horovodrun over Gloo when > 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from analysis.transfer import display, write_comparison
    from analysis.tables import markdown
    from harness.commands.train import config_from_args
    from harness.errors import UserError
    from harness.transfer.study import StudyOptions, run_study

    if args.out is None:
        raise UserError("--out is required (the study folder)")
    for flag in ("modalities", "freeze_depth", "resume", "init_from", "benchmark", "extra"):
        if getattr(args, flag, None) not in (None, False):
            raise UserError(f"--{flag.replace('_', '-')} is set by transfer itself; use --source/--target/--freeze-depths")
    try:
        depths = [int(k) for k in args.freeze_depths.split(",")] if args.freeze_depths else None
    except ValueError:
        raise UserError(f"--freeze-depths '{args.freeze_depths}' is not a comma list of integers") from None
    opts = StudyOptions(source=args.source, target=args.target, depths=depths, head_only=args.head_only,
                        seeds=args.seeds, pretrain_epochs=args.pretrain_epochs, pretrain_budget_s=args.pretrain_budget_s,
                        np=args.np, parallel=args.parallel, timeout_s=args.timeout)
    out = Path(args.out)
    result = run_study(config_from_args(args), opts, out, report=lambda line: print(line, flush=True))
    table, files = write_comparison(result.records, out, target=args.target_dice)
    if not table.empty:
        print("\n" + markdown(display(table)))
    print("\n" + "\n".join(str(f) for f in files))
    if result.failed:
        print(f"{len(result.failed)} run(s) failed; re-run the same command to retry only those")
    return 1 if result.failed else 0
