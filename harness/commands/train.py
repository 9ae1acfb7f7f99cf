"""`bratsbench train`: one training or benchmark run (one process per rank under horovodrun/mpirun/srun)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.config import BACKENDS, DEVICES, FIRST_CONV, GRAD_REDUCTIONS, HEAD_ONLY, STOP_SIGNALS, RunConfig, parse_freeze
from harness.errors import Preempted, UserError

# flag -> (section, key); every flag defaults to None so only what the user typed overrides --config.
_FLAGS: dict[str, tuple[str, str]] = {
    "modalities": ("model", "modalities"),
    "base_filters": ("model", "base_filters"),
    "depth": ("model", "depth"),
    "norm": ("model", "norm"),
    "dropout": ("model", "dropout"),
    "synthetic": ("data", "synthetic"),
    "synthetic_samples": ("data", "synthetic_samples"),
    "store": ("data", "store"),
    "split": ("data", "split"),
    "synthetic_input": ("data", "synthetic_input"),
    "crop": ("data", "crop"),
    "tumour_share": ("data", "tumour_share"),
    "augment": ("data", "augment"),
    "deterministic": ("data", "deterministic"),
    "val_cases": ("data", "val_cases"),
    "batch_size": ("train", "batch_size"),
    "epochs": ("train", "epochs"),
    "steps_per_epoch": ("train", "steps_per_epoch"),
    "budget_s": ("train", "budget_s"),
    "lr": ("train", "lr"),
    "lr_scaling": ("train", "lr_scaling"),
    "warmup_steps": ("train", "warmup_steps"),
    "loss": ("train", "loss"),
    "class_weights": ("train", "class_weights"),
    "freeze_depth": ("train", "freeze_depth"),
    "unfreeze_after": ("train", "unfreeze_after"),
    "first_conv": ("train", "first_conv"),
    "amp": ("train", "amp"),
    "xla": ("train", "xla"),
    "device": ("train", "device"),
    "op_determinism": ("train", "op_determinism"),
    "grad_reduction": ("train", "grad_reduction"),
    "seed": ("train", "seed"),
    "threads": ("train", "threads"),
    "backend": ("train", "backend"),
    "benchmark": ("train", "benchmark"),
    "bench_warmup": ("train", "bench_warmup"),
    "bench_steps": ("train", "bench_steps"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "resume": ("train", "resume"),
    "init_from": ("train", "init_from"),
    "validate_every": ("train", "validate_every"),
    "validate_every_s": ("train", "validate_every_s"),
    "profile_steps": ("train", "profile_steps"),
    "timeline": ("train", "timeline"),
    "stop_signals": ("train", "stop_signals"),
}


def _profile_steps(text: str) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not A:B (two step numbers)") from None
    return start, stop


def _freeze(text: str) -> int | str:
    try:
        return parse_freeze(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that define a RunConfig (shared by `train` and the commands that wrap it)."""
    g = p.add_argument_group("input")
    g.add_argument("--synthetic", action="store_true", default=None, help="train on generated in-memory tensors")
    g.add_argument("--synthetic-samples", type=int, default=None, help="generated samples per rank (default 16)")
    g.add_argument("--store", default=None, help="prepared store (bratsbench prepare)")
    g.add_argument("--split", default=None, help="split file (bratsbench split)")
    g.add_argument("--synthetic-input", action="store_true", default=None,
                   help="with --store and --benchmark: feed in-memory tensors of the same shapes instead of the store, "
                   "to time the step without the input pipeline")
    g.add_argument("--modalities", default=None, help="comma list of flair,t1,t1ce,t2 (default flair,t1ce)")
    g.add_argument("--crop", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None, help="training crop (default 32 32 32)")
    g.add_argument("--tumour-share", type=float, default=None, help="share of crops centred on tumour (default 0.5)")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no flips/intensity augmentation")
    g.add_argument("--nondeterministic", dest="deterministic", action="store_false", default=None,
                   help="input order free to vary between runs (and, unless --op-determinism, ops as well)")
    g.add_argument("--val-cases", type=int, default=None, help="limit validation to the first N cases")
    g = p.add_argument_group("model")
    g.add_argument("--base-filters", type=int, default=None, help="filters at the first level (default 8)")
    g.add_argument("--depth", type=int, default=None, help="pooling levels (default 3)")
    g.add_argument("--norm", choices=("instance", "batch", "none"), default=None, help="normalisation (default instance)")
    g.add_argument("--dropout", type=float, default=None, help="spatial dropout rate per level (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None, help="per-rank batch size (default 2)")
    g.add_argument("--epochs", type=int, default=None, help="epochs (default 1)")
    g.add_argument("--steps-per-epoch", type=int, default=None, help="steps per epoch (default: one pass over this rank's shard)")
    g.add_argument("--budget-s", type=float, default=None, metavar="S",
                   help="stop once S seconds went into training steps (the last epoch is cut short and validated)")
    g.add_argument("--lr", type=float, default=None, help="base learning rate (default 1e-3)")
    g.add_argument("--no-lr-scaling", dest="lr_scaling", action="store_false", default=None,
                   help="do not scale the learning rate by the number of ranks")
    g.add_argument("--warmup-steps", type=int, default=None, help="steps of linear LR warm-up to the scaled rate")
    g.add_argument("--loss", choices=("dice_ce", "ce"), default=None, help="loss (default dice_ce)")
    g.add_argument("--class-weights", type=float, nargs=4, default=None, help="cross-entropy weights for the 4 classes")
    g.add_argument("--freeze-depth", type=_freeze, default=None, metavar="K|head",
                   help="freeze the first K encoder levels (0 = none), or 'head': train only the 1x1x1 head")
    g.add_argument("--freeze-all-but-head", dest="freeze_depth", action="store_const", const=HEAD_ONLY,
                   help="the same as --freeze-depth head")
    g.add_argument("--unfreeze-after", type=int, default=None, metavar="N", help="unfreeze all levels after N epochs")
    g.add_argument("--init-from", default=None, help="initialise weights from a checkpoint folder")
    g.add_argument("--first-conv", choices=FIRST_CONV, default=None,
                   help="with --init-from across modality sets: how the first convolution is initialised "
                   "(default: copy for equal channel counts, else average)")
    g.add_argument("--seed", type=int, default=None, help="seed (model init, data order, augmentation)")
    g = p.add_argument_group("execution")
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help="distributed engine: horovod (horovodrun/mpirun/srun) or mwms (TensorFlow's "
                   "MultiWorkerMirroredStrategy; bratsbench launch or srun); default horovod where installed")
    g.add_argument("--threads", type=int, default=None, help="CPU threads per rank (default cores / local ranks)")
    g.add_argument("--device", choices=DEVICES, default=None,
                   help="where the step runs: gpu (one per local rank; an error if TensorFlow sees none), cpu, or "
                   "auto (default: GPUs where TensorFlow sees them; an error if the environment names GPUs it cannot see)")
    g.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision: float16 with loss scaling on GPUs, bfloat16 on CPUs")
    g.add_argument("--xla", action="store_true", default=None,
                   help="compile the forward and backward pass with XLA (jit_compile), on CPUs and GPUs")
    g.add_argument("--op-determinism", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorFlow's op determinism (default: on, but off for GPU benchmark runs and --xla on GPUs, "
                   "and with --nondeterministic)")
    g.add_argument("--grad-reduction", choices=GRAD_REDUCTIONS, default=None,
                   help="gradients over ranks: per_tensor (one collective each, overlapping the backward pass; "
                   "Horovod's default) or fused (one collective after it; MWMS's default)")
    g.add_argument("--benchmark", action="store_true", default=None, help="time steps only: warm-up + timed steps")
    g.add_argument("--warmup", dest="bench_warmup", type=int, default=None, help="untimed warm-up steps (default 5)")
    g.add_argument("--bench-steps", type=int, default=None, help="timed steps in benchmark mode (default 20)")
    g.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps (0 = per epoch only)")
    g.add_argument("--resume", action="store_true", default=None, help="continue from the latest checkpoint in --out")
    g.add_argument("--stop-signals", default=None, metavar="LIST",
                   help="signals on which every rank stops at the same step, writes a checkpoint there and the run "
                   f"ends 'preempted' with exit status 75 (default USR1,TERM; any of {','.join(STOP_SIGNALS)}; 'none')")
    g.add_argument("--validate-every", type=int, default=None, help="validate every N epochs (default 1)")
    g.add_argument("--validate-every-s", type=float, default=None, metavar="S",
                   help="validate after each epoch that brings S more seconds of training steps (instead of every N epochs)")
    g.add_argument("--profile-steps", type=_profile_steps, default=None, metavar="A:B",
                   help="TensorFlow profiler trace of steps A..B on every rank, one TensorBoard run per rank under OUT")
    # not --timeline: horovodrun would reject it as an ambiguous abbreviation of its own --timeline-* options
    g.add_argument("--hvd-timeline", dest="timeline", action="store_true", default=None,
                   help="Horovod timeline of the profiled steps, in OUT")
    p.add_argument("--config", default=None, help="run config JSON (as in a run record's 'config'); flags override it")
    p.add_argument("--out", default=None, help="run folder (run record, checkpoints, logs, profiles)")
    p.add_argument("--name", default=None, help="a label stored in the run record")
    p.add_argument("--extra", default=None, metavar="JSON",
                   help="JSON object of labels stored under 'extra' in the run record (RunConfig.tags)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    raw: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"config '{path}' not found") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"config '{path}' is not valid JSON: {exc}") from None
        raw = raw.get("config", raw)  # a whole run record works too
    cfg = RunConfig.from_dict(raw)
    for flag, (section, key) in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(getattr(cfg, section), key, tuple(value) if isinstance(value, list) else value)
    if args.out is not None:
        cfg.out = args.out
    if args.name is not None:
        cfg.name = args.name
    if getattr(args, "extra", None):
        try:
            tags = json.loads(args.extra)
        except json.JSONDecodeError as exc:
            raise UserError(f"--extra is not valid JSON: {exc}") from None
        if not isinstance(tags, dict):
            raise UserError("--extra must be a JSON object")
        cfg.tags.update(tags)
    return cfg.validate()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train (or benchmark) the 3D U-Net; run under horovodrun -np N for data parallelism",
        description="Train the 3D U-Net on a prepared store or generated tensors. Under horovodrun/mpirun/srun every "
        "process is one rank; rank 0 writes checkpoints, the progress bar and the run record in OUT.",
    )
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from harness.train import stopping

    stopping.install(cfg.train.stop_signals)  # before TensorFlow's import: a signal during start-up is kept
    from harness.train.trainer import train

    try:
        record = train(cfg)
    except Preempted:
        stopping.ignore()  # the run is over: a late signal must not turn exit status 75 into death by that signal
        raise
    return 0 if record["status"] == "ok" else 1
