"""One typed config object per run, validated before any work and recorded whole in the run record."""

from __future__ import annotations


import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from harness.errors import UserError
from harness.modalities import parse_modalities

LOSSES = ("dice_ce", "ce")
NORMS = ("instance", "batch", "none")
FIRST_CONV = ("copy", "average", "reinit")  # how an input layer is initialised across modality sets
HEAD_ONLY = "head"  # the freeze choice that trains only the 1x1x1 head
BACKENDS = ("horovod", "mwms")  # distributed engines (harness.engines)
DEVICES = ("auto", "cpu", "gpu")  # where the step runs: auto = one GPU per local rank where TensorFlow sees GPUs
GRAD_REDUCTIONS = ("per_tensor", "fused")  # a collective per gradient (overlapping the backward pass), or one for all
# signals a run may stop on (checkpoint, record "preempted"): not INT (Ctrl-C: interrupted), nor KILL/STOP (uncatchable)
STOP_SIGNALS = ("USR1", "USR2", "TERM", "HUP", "XCPU")
DEFAULT_STOP_SIGNALS = ("USR1", "TERM")  # SLURM's usual warning (--signal=B:USR1@S) and what ends a job

Freeze = int | str  # 0..depth+1 frozen encoder levels, or HEAD_ONLY


def parse_freeze(value: Any) -> Freeze:
    """The one reading of a freeze choice: an integer depth k >= 0, or "head" (everything but the head frozen).

    Accepts ints, digit strings and the spellings older records used ("head-only", -1)."""
    if isinstance(value, bool):
        raise UserError(f"freeze depth {value!r} is not an integer or '{HEAD_ONLY}'")
    if isinstance(value, int):
        return HEAD_ONLY if value == -1 else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (HEAD_ONLY, "head-only", "head_only"):
            return HEAD_ONLY
        if text.lstrip("-").isdigit():
            return parse_freeze(int(text))
    raise UserError(f"freeze depth {value!r} is not an integer or '{HEAD_ONLY}'")


def freeze_of(train: dict[str, Any]) -> Freeze:
    """The freeze choice of a raw `train` section, also of records written before it had one field
    (`freeze_all_but_head: true`)."""
    if train.get("freeze_all_but_head"):
        return HEAD_ONLY
    return parse_freeze(train.get("freeze_depth", 0))


def freeze_label(value: Any) -> str:
    """How tables and folder names show a freeze choice: "k=2", "head-only"."""
    k = parse_freeze(value)
    return "head-only" if k == HEAD_ONLY else f"k={k}"


def freeze_order(value: Any) -> tuple[int, int]:
    """Sort key: k = 0, 1, ... first, head-only last."""
    k = parse_freeze(value)
    return (1, 0) if k == HEAD_ONLY else (0, int(k))


@dataclass
class ModelConfig:
    """Architecture of the 3D U-Net; `in_channels` follows from the modalities."""

    modalities: tuple[str, ...] = ("flair", "t1ce")
    base_filters: int = 8
    depth: int = 3
    norm: str = "instance"
    dropout: float = 0.0
    n_classes: int = 4
    max_filters: int = 320

    @property
    def in_channels(self) -> int:
        return len(self.modalities)

    def filters(self, level: int) -> int:
        """Filters at encoder level `level` (0-based; `depth` is the bottleneck): doubled per level, capped."""
        return min(self.base_filters * 2**level, self.max_filters)

    def validate(self) -> None:
        self.modalities = parse_modalities(self.modalities)
        _positive("base_filters", self.base_filters)
        _positive("depth", self.depth)
        if self.norm not in NORMS:
            raise UserError(f"norm '{self.norm}' is not one of {', '.join(NORMS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout {self.dropout} must be in [0, 1)")
        if self.n_classes != 4:
            raise UserError(f"n_classes {self.n_classes}: BraTS needs 4 (background, NCR, ED, ET)")


@dataclass
class DataConfig:
    """Where samples come from: generated tensors (`synthetic`) or a prepared store with a split."""

    synthetic: bool = False
    store: str | None = None
    split: str | None = None
    # a benchmark of a store run's step on generated in-memory tensors of the same shapes: the step's rate without
    # the input pipeline, to set beside the store run's (input-bound or compute-bound?)
    synthetic_input: bool = False
    crop: tuple[int, int, int] = (32, 32, 32)
    synthetic_samples: int = 16
    tumour_share: float = 0.5
    augment: bool = True
    deterministic: bool = True
    val_cases: int | None = None

    def validate(self, depth: int) -> None:
        if len(self.crop) != 3:
            raise UserError(f"crop {self.crop} must have three sizes")
        step = 2**depth
        for size in self.crop:
            _positive("crop size", size)
            if size < 2 * step:
                raise UserError(
                    f"depth {depth} is too deep for crop {list(self.crop)}: the bottleneck would be "
                    f"{size / step:g} voxel(s) wide; use a crop of at least {2 * step} or a smaller depth"
                )
            if size % step:
                raise UserError(
                    f"crop {list(self.crop)} is not divisible by 2^depth = {step} (depth {depth}); "
                    f"choose multiples of {step}"
                )
        if not self.synthetic and not self.store:
            raise UserError("no input: pass --synthetic or --store STORE --split FILE")
        if self.store and not self.split:
            raise UserError("--store needs --split FILE (made by `bratsbench split`)")
        if self.synthetic_input and (self.synthetic or not self.store):
            raise UserError("--synthetic-input keeps a store run's shapes: it needs --store and --split, not --synthetic")
        if not 0.0 <= self.tumour_share <= 1.0:
            raise UserError(f"tumour_share {self.tumour_share} must be in [0, 1]")
        _positive("synthetic_samples", self.synthetic_samples)


@dataclass
class TrainConfig:
    """Optimisation, distribution, timing and checkpointing of one run."""

    batch_size: int = 2
    epochs: int = 1
    steps_per_epoch: int | None = None
    # stop once this many seconds went into training steps (over all epochs; the epoch that crosses it is cut
    # short and still validated): a budget in time, for comparing variants whose steps cost differently
    budget_s: float | None = None
    lr: float = 1e-3
    lr_scaling: bool = True
    warmup_steps: int = 0
    loss: str = "dice_ce"
    class_weights: tuple[float, ...] | None = None
    freeze_depth: Freeze = 0
    unfreeze_after: int | None = None  # epochs after which every level trains again
    amp: bool = False
    xla: bool = False  # forward and backward pass compiled by XLA (jit_compile), on CPUs and GPUs alike
    device: str = "auto"
    # TensorFlow's op determinism; None: on, except where it costs a benchmark its speed (a GPU benchmark run, or
    # --xla on a GPU, where XLA has no deterministic kernel for the MaxPool3D gradient) or data.deterministic is off
    op_determinism: bool | None = None
    grad_reduction: str | None = None  # GRAD_REDUCTIONS; None: the engine's reference practice (recorded resolved)
    seed: int = 0
    backend: str | None = None  # horovod | mwms; None: Horovod where installed, else MWMS (recorded resolved)
    threads: int | None = None
    benchmark: bool = False
    bench_warmup: int = 5
    bench_steps: int = 20
    checkpoint_every: int = 0
    resume: bool = False
    init_from: str | None = None  # checkpoint folder (or prefix) the weights start from
    first_conv: str | None = None  # with init_from across modality sets; None: copy if channels agree, else average
    validate_every: int = 1
    # validate once this many more seconds went into training steps (and after the last epoch) instead of every
    # validate_every epochs: learning curves of variants whose steps cost differently get points at like times
    validate_every_s: float | None = None
    profile_steps: tuple[int, int] | None = None
    timeline: bool = False
    # signals that stop the run at the next step all ranks agree on, with a checkpoint there and the record
    # "preempted" (exit status 75); () turns it off (the signals then act as they would without bratsbench)
    stop_signals: tuple[str, ...] = DEFAULT_STOP_SIGNALS

    def validate(self, depth: int) -> None:
        _positive("batch size", self.batch_size)
        _positive("epochs", self.epochs)
        if self.steps_per_epoch is not None:
            _positive("steps_per_epoch", self.steps_per_epoch)
        if self.budget_s is not None and (isinstance(self.budget_s, bool) or not self.budget_s > 0):
            raise UserError(f"training budget {self.budget_s!r} s must be a positive number of seconds")
        if self.lr <= 0:
            raise UserError(f"learning rate {self.lr} must be positive")
        if self.loss not in LOSSES:
            raise UserError(f"loss '{self.loss}' is not one of {', '.join(LOSSES)}")
        if self.class_weights is not None:
            if len(self.class_weights) != 4 or any(w < 0 for w in self.class_weights):
                raise UserError(f"class weights {list(self.class_weights)} must be 4 non-negative numbers")
        self.freeze_depth = parse_freeze(self.freeze_depth)
        if self.freeze_depth != HEAD_ONLY and not 0 <= self.freeze_depth <= depth + 1:
            raise UserError(
                f"freeze depth {self.freeze_depth} is beyond the model: depth {depth} has encoder levels "
                f"enc1..enc{depth} plus the bottleneck (0..{depth + 1})"
            )
        if self.unfreeze_after is not None:
            _positive("unfreeze_after", self.unfreeze_after)
        if self.first_conv is not None and self.first_conv not in FIRST_CONV:
            raise UserError(f"first conv '{self.first_conv}' is not one of {', '.join(FIRST_CONV)}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise UserError(f"backend '{self.backend}' is not one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise UserError(f"device '{self.device}' is not one of {', '.join(DEVICES)}")
        if self.grad_reduction is not None and self.grad_reduction not in GRAD_REDUCTIONS:
            raise UserError(f"gradient reduction '{self.grad_reduction}' is not one of {', '.join(GRAD_REDUCTIONS)}")
        if self.op_determinism is not None and not isinstance(self.op_determinism, bool):
            raise UserError(f"op_determinism {self.op_determinism!r} must be true, false or null (automatic)")
        if self.threads is not None:
            _positive("threads", self.threads)
        if self.validate_every_s is not None and (isinstance(self.validate_every_s, bool) or not self.validate_every_s > 0):
            raise UserError(f"validation interval {self.validate_every_s!r} s must be a positive number of seconds")
        if self.benchmark:
            _positive("bench_steps", self.bench_steps)
            if self.bench_warmup < 0:
                raise UserError(f"bench warm-up steps {self.bench_warmup} must be >= 0")
        self.stop_signals = parse_stop_signals(self.stop_signals)
        if self.profile_steps is not None:
            start, stop = self.profile_steps
            if start < 0 or stop < start:
                raise UserError(f"profile steps {start}:{stop} must be A:B with 0 <= A <= B")


# (section, field, default): see identity()
ADDED_FIELDS = (("", "repeat", 0), ("train", "budget_s", None), ("train", "validate_every_s", None),
                ("train", "device", "auto"), ("train", "op_determinism", None), ("train", "grad_reduction", None),
                ("train", "stop_signals", list(DEFAULT_STOP_SIGNALS)), ("data", "synthetic_input", False))


@dataclass
class RunConfig:
    """Everything that defines a run; serialised whole into the run record."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/run"
    name: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)  # labels a study attaches (copied to record.extra)
    # which repeat of an otherwise identical run: a benchmark repeats a point to measure its spread, so a repeat
    # is its own run (own ID and record) that computes the same thing
    repeat: int = 0

    def validate(self) -> "RunConfig":
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 0:
            raise UserError(f"repeat {self.repeat!r} must be an integer >= 0")
        self.model.validate()
        self.data.validate(self.model.depth)
        self.train.validate(self.model.depth)
        if self.data.synthetic_input and not self.train.benchmark:
            raise UserError("--synthetic-input times the step without the input pipeline: it needs --benchmark")
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        train = dict(raw.get("train", {}))
        if "freeze_all_but_head" in train:  # records written before the freeze choice had one field
            train["freeze_depth"] = freeze_of(train)
            del train["freeze_all_but_head"]
        top = {k: v for k, v in raw.items() if k not in ("model", "data", "train")}
        unknown = sorted(set(top) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown RunConfig key(s): {', '.join(unknown)}")
        if not isinstance(top.get("tags", {}), dict):
            raise UserError(f"tags {top['tags']!r} must be an object")
        return cls(
            model=_build(ModelConfig, raw.get("model", {})),
            data=_build(DataConfig, raw.get("data", {})),
            train=_build(TrainConfig, train),
            **top,
        )

    def identity(self) -> dict[str, Any]:
        """What defines the computation: the config without where it is written and how it is labelled."""
        ident = self.to_dict()
        for key in ("out", "name", "tags"):
            ident.pop(key, None)
        # fields added after run IDs were first handed out leave the ID alone at their default, so a results
        # folder of an earlier version is still reused (repeat 0, no time budget)
        for section, key, default in ADDED_FIELDS:
            holder = ident.get(section, {}) if section else ident
            if holder.get(key, default) == default:
                holder.pop(key, None)
        return ident


def _build(kind: type, raw: dict[str, Any]) -> Any:
    names = {f.name: f for f in fields(kind)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UserError(f"unknown {kind.__name__} key(s): {', '.join(unknown)}")
    values = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return kind(**values)


def parse_stop_signals(value: Any) -> tuple[str, ...]:
    """Stop signals as canonical names without "SIG" ("USR1", "TERM"), from a list or a comma string; "none" or ""
    is none."""
    if isinstance(value, str):
        value = [] if value.strip().lower() in ("", "none") else value.split(",")
    if not isinstance(value, (list, tuple)):
        raise UserError(f"stop signals {value!r} must be a list of signal names such as USR1,TERM")
    names = []
    for raw in value:
        name = str(raw).strip().upper().removeprefix("SIG")
        if name not in STOP_SIGNALS:
            raise UserError(f"stop signal {raw!r} is not one of {', '.join(STOP_SIGNALS)} (or 'none')")
        if name not in names:
            names.append(name)
    return tuple(names)


def _positive(name: str, value: int | float) -> None:
    if value is None or value <= 0:
        raise UserError(f"{name} {value} must be positive")


def model_signature(cfg: ModelConfig) -> dict[str, Any]:
    """The parts of a model config that decide whether weights are compatible."""
    return {
        "in_channels": cfg.in_channels,
        "base_filters": cfg.base_filters,
        "depth": cfg.depth,
        "norm": cfg.norm,
        "n_classes": cfg.n_classes,
        "max_filters": cfg.max_filters,
    }


__all__ = [
    "BACKENDS",
    "DEFAULT_STOP_SIGNALS",
    "DEVICES",
    "STOP_SIGNALS",
    "parse_stop_signals",
    "FIRST_CONV",
    "GRAD_REDUCTIONS",
    "HEAD_ONLY",
    "freeze_label",
    "freeze_order",
    "parse_freeze",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "model_signature",
]
