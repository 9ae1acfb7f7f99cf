"""`bratsbench evaluate`: BraTS region metrics of a trained run on its validation or test cases."""

from __future__ import annotations

import argparse
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="per-case and per-region (ET/TC/WT) Dice, HD95, sensitivity, specificity, precision, IoU of a run",
        description="Evaluate a run's latest checkpoint by whole-volume sliding-window inference on the store grid "
        "(HD95 in mm with the store's voxel spacing, BraTS empty-mask convention). Writes the per-case metrics into the run folder and "
        "adds the summary to the run record under metrics.<subset>.",
    )
    p.add_argument("--run", required=True, help="run folder of a finished training run")
    p.add_argument("--subset", choices=("val", "test", "train"), default="test", help="split subset (default test)")
    p.add_argument("--store", default=None, help="store to read (default: the run's)")
    p.add_argument("--split", default=None, help="split file (default: the run's)")
    p.add_argument("--cases", type=int, default=None, help="evaluate only the first N cases")
    p.add_argument("--geometry", choices=("store", "original"), default="store",
                   help="original: also map each prediction back onto the case's original grid and score it against "
                   "the raw label file at its own spacing, as BraTS does (beside the store-grid metrics)")
    p.set_defaults(func=run)


def format_summary(summary: dict) -> str:
    """Region x metric table (mean / median over cases) for the terminal."""
    metrics = ("dice", "hd95", "sensitivity", "specificity", "precision", "iou")
    lines = [f"{'region':<7}" + "".join(f"{m:>22}" for m in metrics)]
    from harness.metrics import REGIONS

    for region in REGIONS:
        cells = []
        for m in metrics:
            mean = summary["mean"].get(f"{region}_{m}", math.nan)
            median = summary["median"].get(f"{region}_{m}", math.nan)
            cells.append(f"{mean:>10.3f} / {median:<9.3f}")
        lines.append(f"{region:<7}" + "".join(f"{c:>22}" for c in cells))
    lines.append(f"(mean / median over {summary['n']} cases)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from harness.errors import UserError
    from harness.model.pretrained import load_run_model
    from harness.outdir import ensure_output_dir
    from harness.record import atomic_write_json
    from harness.rundir import RunDir
    from harness.engines import LocalEngine
    from harness.train.sources import make_source
    from harness.train.validation import evaluate_items

    engine = LocalEngine()
    world = engine.init()  # before any TensorFlow work: it fixes the thread pools
    model, cfg = load_run_model(args.run)
    if args.geometry == "original" and not args.store and (cfg.data.synthetic or not cfg.data.store):  # before any case is read
        raise UserError(f"--geometry original needs a run trained on a store; '{args.run}' used synthetic tensors")
    ensure_output_dir(args.run, what="--run")  # eval-<subset>.json and the record are written there
    if args.store:
        cfg.data.store, cfg.data.synthetic = args.store, False
    if args.split:
        cfg.data.split = args.split
    cfg.data.val_cases = args.cases
    source = make_source(cfg, world)
    items = source.val_items(args.subset)
    original = None
    if args.geometry == "original":
        from harness.data.store import open_store

        original = open_store(cfg.data.store).raw_label
    result = evaluate_items(model, items, cfg.data.crop, engine, original=original)
    if not world.is_root:
        return 0
    run = RunDir(args.run)
    atomic_write_json(run.eval_result(args.subset), result)
    record = run.load_record()
    record.setdefault("metrics", {})[args.subset] = result["summary"]
    record["metrics"][f"{args.subset}_cases"] = result["cases"]
    if "original" in result:  # BraTS geometry: the raw label's grid and spacing
        record["metrics"][f"{args.subset}_original"] = result["original"]["summary"]
        record["metrics"][f"{args.subset}_original_cases"] = result["original"]["cases"]
    run.write_record(record)
    if "original" in result:
        print("store grid (the store's voxel size, cropped to the roi):")
    print(format_summary(result["summary"]))
    if "original" in result:
        print("original geometry (each case's raw label file at its own spacing, as BraTS scores):")
        print(format_summary(result["original"]["summary"]))
    print(f"per-case metrics: {run.eval_result(args.subset)}")
    return 0
