"""The sweep spec: a small YAML file naming the axes to cross and the RunConfig fields to hold fixed.

Everything is checked here, before anything runs, so a typo costs one line of error instead of a half-run
sweep. The plan (harness.sweep.plan) then validates every planned RunConfig with RunConfig.validate().

Conventions (docs/clusters.md has the whole spec reference):
  scaling   weak: `batch_size` is per rank (global batch grows with np);
            strong: `batch_size` is the global batch, split over np (must divide evenly). Under strong scaling
            the global batch does not grow, so the learning rate is not scaled by np either
            (train.lr_scaling defaults to false there unless `fixed.train.lr_scaling` says otherwise).
  repeats   R runs of every point (default 1), planned round by round (every point once, then again), so a
            slow phase of a shared machine hits all points alike; analysis gives each point its median and a
            95% bootstrap CI, and a speedup pairs the repeats of two points round by round.
  mode      scratch: random init; transfer: init from a pre-training run on `transfer.source`.
            Scratch runs ignore freeze_depth (freezing random weights is rarely meant) and are de-duplicated,
            unless `freeze_scratch: true`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from harness.config import BACKENDS, FIRST_CONV, HEAD_ONLY, DataConfig, ModelConfig, TrainConfig, parse_freeze
from harness.errors import UserError
from harness.launch import LOCAL_LAUNCHERS as LAUNCHERS
from harness.modalities import parse_modalities

AXES = ("np", "batch_size", "freeze_depth", "mode", "seed", "backend")
MODES = ("scratch", "transfer")
SCALINGS = ("weak", "strong")
SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
TOP_KEYS = ("name", "scaling", "axes", "fixed", "transfer", "launcher", "timeout_s", "freeze_scratch", "repeats")
TRANSFER_KEYS = ("source", "epochs", "np", "batch_size", "steps_per_epoch", "first_conv")
# Fields the sweep sets itself: a value in `fixed` would be silently overridden, so it is refused.
MANAGED = {"train": ("init_from", "resume", "first_conv")}
AXIS_FIELDS = {"batch_size": "batch_size", "freeze_depth": "freeze_depth", "seed": "seed", "backend": "backend"}
DEFAULT_TIMEOUT_S = 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TransferSpec:
    """The pre-training run that transfer runs start from (one per seed)."""

    source: tuple[str, ...]
    epochs: int = 1
    np: int = 1
    batch_size: int | None = None
    steps_per_epoch: int | None = None
    first_conv: str | None = None


@dataclass
class SweepSpec:
    name: str
    axes: dict[str, list[Any]]
    fixed: dict[str, dict[str, Any]]
    scaling: str = "weak"
    transfer: TransferSpec | None = None
    launcher: str = "horovodrun"
    timeout_s: float = DEFAULT_TIMEOUT_S
    freeze_scratch: bool = False
    repeats: int = 1
    origin: str = "<spec>"
    explicit_axes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored in sweep.json: defaults filled in, axes as given (others follow from `fixed`)."""
        out: dict[str, Any] = {
            "name": self.name,
            "scaling": self.scaling,
            "axes": {a: list(self.axes[a]) for a in self.explicit_axes},
            "fixed": copy.deepcopy(self.fixed),
            "launcher": self.launcher,
            "timeout_s": self.timeout_s,
            "freeze_scratch": self.freeze_scratch,
            "repeats": self.repeats,
        }
        if self.transfer is not None:
            t = self.transfer
            out["transfer"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in t.__dict__.items() if v is not None}
        return out


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec file; every problem is a one-line UserError naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"sweep spec '{path}' not found") from None
    except OSError as exc:
        raise UserError(f"sweep spec '{path}': cannot read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"sweep spec '{path}': not valid YAML{at}: {problem}") from None
    return parse_spec(raw, origin=str(path), default_name=path.stem)


def parse_spec(raw: Any, origin: str = "<spec>", default_name: str = "sweep") -> SweepSpec:
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: a sweep spec must be a mapping (name, axes, fixed, ...), not {type(raw).__name__}")
    _no_unknown(raw, TOP_KEYS, origin, "top level")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"{origin}: name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (it names jobs and files)")
    scaling = raw.get("scaling", "weak")
    if scaling not in SCALINGS:
        raise UserError(f"{origin}: scaling {scaling!r} is not one of {', '.join(SCALINGS)}")
    launcher = raw.get("launcher", "horovodrun")
    if launcher not in LAUNCHERS:
        raise UserError(f"{origin}: launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    timeout_s = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise UserError(f"{origin}: timeout_s {timeout_s!r} must be a positive number of seconds")
    freeze_scratch = raw.get("freeze_scratch", False)
    if not isinstance(freeze_scratch, bool):
        raise UserError(f"{origin}: freeze_scratch {freeze_scratch!r} must be true or false")

    repeats = raw.get("repeats", 1)
    if not _is_int(repeats) or repeats < 1:
        raise UserError(f"{origin}: repeats {repeats!r} must be an integer >= 1 (runs of every point)")
    fixed = _parse_fixed(raw.get("fixed") or {}, origin)
    raw_axes = raw.get("axes") or {}
    if not isinstance(raw_axes, dict):
        raise UserError(f"{origin}: axes must be a mapping of axis name to a list of values")
    _no_unknown(raw_axes, AXES, origin, "axes")
    for axis, key in AXIS_FIELDS.items():
        if axis in raw_axes and key in fixed.get("train", {}):
            raise UserError(f"{origin}: '{axis}' is both an axis and fixed.train.{key}; keep one")
    axes = {axis: _parse_axis(axis, raw_axes[axis], origin) if axis in raw_axes else _default_axis(axis, fixed) for axis in AXES}
    transfer = _parse_transfer(raw.get("transfer"), origin)
    if "transfer" in axes["mode"] and transfer is None:
        raise UserError(f"{origin}: mode 'transfer' needs a 'transfer' section (transfer: {{source: [flair, t1ce], epochs: 2}})")
    spec = SweepSpec(
        name=name,
        axes=axes,
        fixed=fixed,
        scaling=scaling,
        transfer=transfer,
        launcher=launcher,
        timeout_s=float(timeout_s),
        freeze_scratch=freeze_scratch,
        repeats=repeats,
        origin=origin,
        explicit_axes=tuple(a for a in AXES if a in raw_axes),
    )
    if scaling == "strong":
        for n in axes["np"]:
            for b in axes["batch_size"]:
                if b % n:
                    raise UserError(
                        f"{origin}: strong scaling splits the global batch over np, but batch_size {b} is not divisible by np {n}"
                    )
    return spec


def _no_unknown(raw: dict, known: tuple[str, ...], origin: str, where: str) -> None:
    for key in raw:
        if key not in known:
            raise UserError(f"{origin}: unknown key '{key}' in {where} (known: {', '.join(known)})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_axis(axis: str, values: Any, origin: str) -> list[Any]:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise UserError(f"{origin}: axes.{axis} is an empty list; give at least one value or drop the axis")
    out: list[Any] = []
    for value in values:
        if axis == "mode":
            if value not in MODES:
                raise UserError(f"{origin}: axes.mode value {value!r} is not one of {', '.join(MODES)}")
        elif axis == "backend":
            if value not in BACKENDS:
                raise UserError(f"{origin}: axes.backend value {value!r} is not one of {', '.join(BACKENDS)}")
        elif axis == "freeze_depth" and not _is_int(value):
            try:
                value = parse_freeze(value)
            except UserError:
                raise UserError(f"{origin}: axes.freeze_depth value {value!r} must be an integer or '{HEAD_ONLY}'") from None
        elif not _is_int(value):
            raise UserError(f"{origin}: axes.{axis} value {value!r} must be an integer")
        elif axis == "np" and value < 1:
            raise UserError(f"{origin}: axes.np value {value} must be >= 1 (processes per run)")
        elif axis == "batch_size" and value < 1:
            raise UserError(f"{origin}: axes.batch_size value {value} must be >= 1")
        elif axis == "freeze_depth" and value != HEAD_ONLY and value < 0:
            raise UserError(f"{origin}: axes.freeze_depth value {value} must be >= 0")
        if value not in out:
            out.append(value)
    return out


def _default_axis(axis: str, fixed: dict[str, dict[str, Any]]) -> list[Any]:
    train = fixed.get("train", {})
    defaults = {"np": 1, "mode": "scratch"}
    if axis in AXIS_FIELDS:
        return [train.get(AXIS_FIELDS[axis], getattr(TrainConfig(), AXIS_FIELDS[axis]))]
    return [defaults[axis]]


def _parse_fixed(raw: Any, origin: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: fixed must be a mapping of sections (model, data, train)")
    _no_unknown(raw, tuple(SECTIONS), origin, "fixed")
    out: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        values = values or {}
        if not isinstance(values, dict):
            raise UserError(f"{origin}: fixed.{section} must be a mapping of {SECTIONS[section].__name__} fields")
        known = tuple(f.name for f in fields(SECTIONS[section]))
        _no_unknown(values, known, origin, f"fixed.{section}")
        for key in MANAGED.get(section, ()):
            if key in values:
                raise UserError(f"{origin}: fixed.{section}.{key} is set by the sweep itself; remove it")
        out[section] = copy.deepcopy(values)
    return out


def _parse_transfer(raw: Any, origin: str) -> TransferSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: transfer must be a mapping (source, epochs, ...)")
    _no_unknown(raw, TRANSFER_KEYS, origin, "transfer")
    if "source" not in raw:
        raise UserError(f"{origin}: transfer.source is missing (the pre-training modalities, e.g. [flair, t1ce])")
    try:
        source = parse_modalities(raw["source"])
    except UserError as exc:
        raise UserError(f"{origin}: transfer.source: {exc}") from None
    except (TypeError, AttributeError):
        raise UserError(f"{origin}: transfer.source {raw['source']!r} must be a list of modalities") from None
    values: dict[str, Any] = {"source": source}
    for key in ("epochs", "np", "batch_size", "steps_per_epoch"):
        if key in raw:
            if not _is_int(raw[key]) or raw[key] < 1:
                raise UserError(f"{origin}: transfer.{key} {raw[key]!r} must be an integer >= 1")
            values[key] = raw[key]
    if "first_conv" in raw:
        if raw["first_conv"] not in FIRST_CONV:
            raise UserError(f"{origin}: transfer.first_conv {raw['first_conv']!r} is not one of {', '.join(FIRST_CONV)}")
        values["first_conv"] = raw["first_conv"]
    return TransferSpec(**values)


def spec_from_dict(raw: dict[str, Any]) -> SweepSpec:
    """Rebuild a spec from its `to_dict()` form (as stored in sweep.json / plan.json)."""
    return parse_spec(raw, origin="<stored spec>")
