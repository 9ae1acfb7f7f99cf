"""`bratsbench demo`: the whole pipeline on generated data, on this machine's CPU.

Generate reduced-size cases -> prepare -> split -> a scaling x freeze-depth sweep (np 1,2; two batch sizes;
frozen depth 0, half, whole encoder, plus scratch) -> a transfer study with 2 seeds -> MMD domain shift ->
one profiled 2-rank run -> analysis. Every stage reuses finished work, so a second run is quick.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

CROP = [32, 32, 32]  # transfer study, shift and profiled run
SWEEP_CROP = [48, 48, 48]  # enough work per step that two ranks can show their speedup
MODEL = {"base_filters": 8, "depth": 3}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline end to end on generated data (about 15 minutes on 2 CPU cores)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo-output", help="working folder (default demo-output)")
    p.add_argument("--cases", type=int, default=12, help="generated cases (default 12)")
    p.add_argument("--seeds", type=int, default=2, help="seeds of the transfer study (default 2)")
    p.add_argument("--np", type=int, default=2, help="largest rank count of the sweep (default 2)")
    p.set_defaults(func=run)


def _stage(i: int, n: int, text: str) -> float:
    print(f"\n[{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def _sweep_spec(store: Path, split: Path, max_np: int) -> dict:
    whole = MODEL["depth"] + 1
    return {
        "name": "demo-scaling",
        "scaling": "weak",
        "axes": {"np": list(range(1, max_np + 1)), "batch_size": [1, 2], "freeze_depth": [0, whole // 2, whole],
                 "mode": ["transfer", "scratch"], "seed": [0]},
        "fixed": {
            "model": {**MODEL, "modalities": ["t1", "t2"]},
            "data": {"store": str(store), "split": str(split), "crop": SWEEP_CROP},
            # one core per rank at every np, as one GPU per rank on a cluster: the speedup is then Horovod's
            "train": {"benchmark": True, "bench_warmup": 3, "bench_steps": 10, "threads": 1},
        },
        "transfer": {"source": ["flair", "t1ce"], "epochs": 2, "steps_per_epoch": 4},
        "launcher": "horovodrun",
        "timeout_s": 900,
    }


def _subprocess(args: list[str], log: Path, np_: int = 1) -> int:
    from harness.sweep.runner import bratsbench_command
    from harness.sweep.supervise import local_launch, run_logged

    return run_logged(local_launch(np_, bratsbench_command() + args), log, timeout_s=1800) or 0


def run(args: argparse.Namespace) -> int:
    import json

    import yaml

    from harness.cli import main as cli
    from harness.errors import UserError
    from harness.sweep.runner import run_sweep
    from harness.sweep.spec import load_spec

    if args.cases < 6:
        raise UserError(f"--cases {args.cases}: the demo needs at least 6 cases for train/val/test")
    if args.np < 1 or args.seeds < 1:
        raise UserError("--np and --seeds must be at least 1")
    from harness.outdir import ensure_output_dir

    out = ensure_output_dir(args.out).resolve()
    raw, store, results = out / "raw", out / "store", out / "results"
    split = store / "split-seed0.json"
    n, t0 = 8, time.perf_counter()
    failures: list[str] = []

    t = _stage(1, n, f"generating {args.cases} BraTS 2020 cases at 96x96x64 voxels (2.5 mm) into {raw}")
    if not (raw / "MICCAI_BraTS2020_TrainingData").is_dir():
        if cli(["synth", "--out", str(raw), "--cases", str(args.cases), "--seed", "0", "--shape", "96", "96", "64"]):
            return 1
    else:
        print("reusing the generated cases")
    _stage(2, n, "preparing the store (z-score in the brain, crop to the brain, roi 64x64x48 at 2.5 mm)")
    if cli(["prepare", "--data", str(raw), "--out", str(store), "--roi", "64", "64", "48", "--spacing", "2.5"]):
        return 1
    _stage(3, n, "patient-level split, stratified by grade")
    if not split.exists() and cli(["split", "--store", str(store), "--seed", "0", "--val", "0.2", "--test", "0.2",
                                   "--stratify", "grade"]):
        return 1

    spec_path = out / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(_sweep_spec(store, split, args.np), sort_keys=False))
    t = _stage(4, n, f"scaling x freeze-depth sweep ({spec_path}), benchmark mode, resumable")
    if run_sweep(load_spec(spec_path), results / "sweep") != 0:
        failures.append("sweep")
    print(f"sweep: {time.perf_counter() - t:.0f} s")

    t = _stage(5, n, f"transfer study: pre-train flair,t1ce -> fine-tune t1,t2 at k = 0, 2, 4 vs scratch, {args.seeds} seed(s)")
    study = results / "transfer"
    code = cli(["transfer", "--store", str(store), "--split", str(split), "--crop", *map(str, CROP),
                "--base-filters", str(MODEL["base_filters"]), "--depth", str(MODEL["depth"]), "--batch-size", "2",
                "--epochs", "5", "--steps-per-epoch", "8", "--seeds", str(args.seeds), "--out", str(study)])
    if code:
        failures.append("transfer")
    print(f"transfer: {time.perf_counter() - t:.0f} s")

    t = _stage(6, n, "domain shift: MMD between flair+t1ce and t1+t2 (patches and the pre-trained bottleneck)")
    pretrain = sorted(study.glob("pretrain-s0-*"))
    shift_args = ["shift", "--store", str(store), "--split", str(split), "--per-case", "150", "--out", str(results / "shift")]
    if pretrain and (pretrain[0] / "checkpoints").is_dir():
        shift_args += ["--run", str(pretrain[0])]
    if cli(shift_args):
        failures.append("shift")

    t = _stage(7, n, "one profiled 2-rank run: TensorFlow profiler on every rank and a Horovod timeline")
    profiled = results / "profiled"
    done = profiled / "record.json"
    if not (done.exists() and json.loads(done.read_text()).get("status") == "ok"):
        code = _subprocess(["train", "--store", str(store), "--split", str(split), "--modalities", "t1,t2",
                            "--crop", *map(str, CROP), "--base-filters", str(MODEL["base_filters"]),
                            "--depth", str(MODEL["depth"]), "--batch-size", "2", "--benchmark", "--warmup", "3",
                            "--bench-steps", "8", "--profile-steps", "4:7", "--hvd-timeline", "--out", str(profiled)],
                           profiled.parent / "profiled.log", np_=min(2, args.np))
        if code:
            failures.append("profiled run")
    print(f"tensorboard --logdir {profiled / 'profile'}   # one run per rank")

    _stage(8, n, f"analysis of {results}")
    if cli(["analyze", str(results)]):
        failures.append("analyze")
    print(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min; everything is under {out}")
    if failures:
        print(f"some stages failed: {', '.join(failures)} (re-run `bratsbench demo` to retry only what is missing)")
        return 1
    return 0
