"""`bratsbench demo`: the whole pipeline on generated data, on the local CPU.

Generate 40 reduced-size cases -> prepare -> split -> a scaling sweep (np 1..2 x frozen depth 0 and the whole
encoder, 3 interleaved repeats, one core per rank) -> a transfer study with 3 seeds (k = 0, the whole encoder,
head-only, scratch), every run a fixed budget of training seconds, two runs side by side on one core each ->
MMD domain shift -> one profiled 2-rank run -> analysis. Every stage reuses finished work, so a second run is
quick.

The study's budget is in seconds, not steps, so the demo takes about the same time on any machine and its models
learn as far as the machine allows: on one core of an AVX-512 Xeon (~150 ms a step with two runs side by side)
100 s is ~650 steps, where scratch reaches test WT Dice ~0.85-0.9; a slower core gets fewer steps (each run's
record says how many).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

CROP = [32, 32, 32]  # sweep, transfer study, shift and profiled run
MODEL = {"base_filters": 8, "depth": 3}
STAGES = 8
REPEATS = 3  # of every sweep point, interleaved
BUDGET_S = 100.0  # seconds of training per study run (pre-training included)
LR = 2e-3  # Adam at batch 2: scratch reached validation WT 0.90 in 100 s, against 0.86 at 1e-3 (one seed each)
STEPS_PER_EPOCH = 36  # three passes over the 24 training cases: a checkpoint and a record write per ~5 s of steps
VALIDATE_EVERY_S = 12.0  # a validation per 12 s of training steps: ~4 points per curve whatever a step costs
VAL_CASES = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline end to end on generated data (about 30 minutes on 2 CPU cores)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo-output", help="working folder (default demo-output)")
    p.add_argument("--cases", type=int, default=40, help="generated cases (default 40)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the transfer study (default 3)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help=f"seconds of training per transfer-study run (default {BUDGET_S:g})")
    p.add_argument("--np", type=int, default=2, help="largest rank count of the sweep (default 2)")
    p.set_defaults(func=run)


_START = time.perf_counter()  # reset by run(): each stage says when it began, so the split of the time is in the log


def _stage(i: int, n: int, text: str) -> float:
    print(f"\n[{i}/{n}] {text}  (at {(time.perf_counter() - _START) / 60:.1f} min)", flush=True)
    return time.perf_counter()


def _sweep_spec(store: Path, split: Path, max_np: int) -> dict:
    whole = MODEL["depth"] + 1
    return {
        "name": "demo-scaling",
        "scaling": "weak",
        # frozen layers need no gradients: how much of the step, and of its speedup, does freezing save?
        "axes": {"np": list(range(1, max_np + 1)), "batch_size": [2], "freeze_depth": [0, whole], "seed": [0]},
        "freeze_scratch": True,  # step time does not depend on the weights, so no pre-training run is needed
        "repeats": REPEATS,
        "fixed": {
            "model": {**MODEL, "modalities": ["t1", "t2"]},
            "data": {"store": str(store), "split": str(split), "crop": CROP},
            # one core per rank at every np, as one GPU per rank on a cluster: the speedup is then the engine's
            "train": {"benchmark": True, "bench_warmup": 2, "bench_steps": 6, "threads": 1},
        },
        "launcher": "horovodrun",
        "timeout_s": 900,
    }


def _run_config(store: Path, split: Path, out: Path, **train: object) -> "RunConfig":
    from harness.config import RunConfig

    return RunConfig.from_dict({
        "model": dict(MODEL), "data": {"store": str(store), "split": str(split), "crop": CROP},
        "train": train, "out": str(out),
    }).validate()


def study_config(store: Path, split: Path, out: Path, budget_s: float = BUDGET_S, threads: int | None = 1) -> "RunConfig":
    """The study's base run: epochs is a ceiling the budget ends first; one core per run, as runs go side by side."""
    cfg = _run_config(store, split, out, batch_size=2, lr=LR, epochs=1000, steps_per_epoch=STEPS_PER_EPOCH,
                      budget_s=budget_s, validate_every_s=VALIDATE_EVERY_S, threads=threads)
    cfg.data.val_cases = VAL_CASES
    return cfg


def _data(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """Stages 1-3: generated cases -> store -> split (each reused when done)."""
    from harness.data.split import default_split_path, split_store
    from harness.data.store import open_store, prepare_store
    from harness.data.synth import write_dataset

    raw, store_dir = out / "raw", out / "store"
    _stage(1, STAGES, f"generating {args.cases} BraTS 2020 cases at 96x96x64 voxels (2.5 mm) into {raw}")
    if not (raw / "MICCAI_BraTS2020_TrainingData").is_dir():
        write_dataset(raw, cases=args.cases, seed=0, shape=(96, 96, 64))
    else:
        print("reusing the generated cases")
    _stage(2, STAGES, "preparing the store (z-score in the brain, crop to the brain, roi 64x64x48 at 2.5 mm)")
    report = prepare_store(raw, store_dir, roi=(64, 64, 48), spacing=2.5)
    print(f"store {store_dir}: {len(report.prepared)} prepared, {len(report.reused)} unchanged, {len(report.skipped)} skipped")
    _stage(3, STAGES, "patient-level split, stratified by grade")
    store = open_store(store_dir)
    split = default_split_path(store, 0)
    if not split.exists():
        split_store(store, seed=0, val=0.2, test=0.2, stratify="grade").save(split)
    return store_dir, split


def _sweep(store: Path, split: Path, out: Path, results: Path, max_np: int) -> bool:
    import yaml

    from harness.sweep.runner import run_sweep
    from harness.sweep.spec import load_spec

    spec_path = out / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(_sweep_spec(store, split, max_np), sort_keys=False))
    t = _stage(4, STAGES, f"scaling x freeze-depth sweep ({spec_path}), benchmark mode, resumable")
    ok = run_sweep(load_spec(spec_path), results / "sweep") == 0
    print(f"sweep: {time.perf_counter() - t:.0f} s")
    return ok


def _transfer(store: Path, split: Path, results: Path, seeds: int, budget_s: float):
    import os

    from analysis.transfer import write_comparison
    from harness.model.unet import encoder_levels
    from harness.transfer.study import StudyOptions, run_study

    whole = len(encoder_levels(MODEL["depth"]))
    parallel = max(1, min(2, len(os.sched_getaffinity(0))))
    t = _stage(5, STAGES, f"transfer study: pre-train flair,t1ce -> fine-tune t1,t2 at k = 0, {whole} and head-only "
               f"vs scratch, {seeds} seed(s), {budget_s:g} s of training each, {parallel} side by side")
    study_dir = results / "transfer"
    study = run_study(study_config(store, split, study_dir, budget_s), StudyOptions(seeds=seeds, depths=[0, whole], pretrain_budget_s=budget_s,
                                         parallel=parallel, timeout_s=1800), study_dir)
    _, files = write_comparison(study.records, study_dir)
    print("\n".join(str(f) for f in files))
    print(f"transfer: {time.perf_counter() - t:.0f} s")
    return study


def _profiled(store: Path, split: Path, results: Path, np_: int) -> bool:
    from harness import launch
    from harness.rundir import RunDir

    launcher = launch.launcher_for(None, "horovodrun")  # this environment's engine: MWMS where Horovod is missing
    timeline = launcher != "mwms"  # only Horovod has a timeline
    _stage(7, STAGES, "one profiled 2-rank run: TensorFlow profiler on every rank"
           + (" and a Horovod timeline" if timeline else " (MWMS workers)"))
    profiled = RunDir(results / "profiled")
    ok = True
    if profiled.status() != "ok":
        cfg = _run_config(store, split, profiled.path, batch_size=2, benchmark=True, bench_warmup=3, bench_steps=8,
                          profile_steps=[4, 7], timeline=timeline)
        cfg.model.modalities = ("t1", "t2")
        profiled.create().write_config(cfg.validate().to_dict())
        ok = launch.launch_train(profiled, min(2, np_), launcher=launcher, timeout_s=1800)["status"] == "ok"
    print(f"tensorboard --logdir {profiled.profile}   # one run per rank")
    return ok


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from analysis.report import build_report
    from harness.commands.analyze import print_report
    from harness.errors import UserError
    from harness.shift.study import ShiftOptions, run_shift

    if args.cases < 6:
        raise UserError(f"--cases {args.cases}: the demo needs at least 6 cases for train/val/test")
    if args.np < 1 or args.seeds < 1:
        raise UserError("--np and --seeds must be at least 1")
    if not args.budget_s > 0:
        raise UserError(f"--budget-s {args.budget_s}: must be a positive number of seconds")
    from harness.outdir import ensure_output_dir

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = ensure_output_dir(args.out).resolve()
    results = out / "results"
    global _START
    t0 = _START = time.perf_counter()
    failures: list[str] = []
    store, split = _data(args, out)
    if not _sweep(store, split, out, results, args.np):
        failures.append("sweep")
    study = _transfer(store, split, results, args.seeds, args.budget_s)
    if study.failed:
        failures.append("transfer")
    _stage(6, STAGES, "domain shift: MMD between flair+t1ce and t1+t2 (patches and the pre-trained bottleneck)")
    pretrain = next((r.run_dir for r in study.runs if r.role == "pretrain" and r.run_dir.finished()), None)
    run_shift(ShiftOptions(store=str(store), split=str(split), per_case=150, out=str(results / "shift"),
                           run=str(pretrain.path) if pretrain else None))
    if not _profiled(store, split, results, args.np):
        failures.append("profiled run")
    _stage(8, STAGES, f"analysis of {results}")
    print_report(*build_report(results))
    print(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min; everything is under {out}")
    if failures:
        print(f"some stages failed: {', '.join(failures)} (re-run `bratsbench demo` to retry only what is missing)")
        return 1
    return 0
