"""Benchmark points: the runs of one setting on one system, with the measurements `compare` and references read.

A point is what a sweep plans once and repeats: the run's identity (`harness.config.RunConfig.identity`: the whole
config without output folder, name and tags) with its rank count and without its repeat number, so two results
folders, or two parts of one, line up point by point whatever folder, repeat or time their runs had. Paths (the
checkpoint a run started from, the store and split files) count only as set or not: two clusters keep the same data
under different paths. A transfer study repeats its runs by seed, so there the seed is a repeat too (as in the
transfer table: `bratsbench transfer`'s runs and a training sweep's scratch and transfer runs). Runs of two
systems (record.system.label) are never one point's repeats. A point's ID is `harness.record.run_id` of that
identity; for a sweep point whose config holds no path it is the run ID of its first repeat (RESULTS/runs/<ID>).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from analysis.records import system_label
from analysis.transfer import SCRATCH, reach, region_dice, study_run, variant
from harness.config import RunConfig
from harness.errors import UserError
from harness.record import run_id

PATHS = (("train", "init_from"), ("data", "store"), ("data", "split"))  # compared as set / not set
_REPEAT = re.compile(r"-r\d+$")
_SEED = re.compile(r"-s\d+$")


@dataclass(frozen=True)
class Metric:
    """One measurement of a run: how to read it from a record and which way is better."""

    name: str
    unit: str
    higher_is_better: bool
    better: str  # the verdict when B is significantly better than A
    worse: str
    read: Callable[[dict[str, Any]], Any]


def _timing(key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], Any]:
    return lambda r: _scaled((r.get("timing") or {}).get(key), scale)


def _scaled(value: Any, scale: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) * scale


def _test_dice(region: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: region_dice((r.get("metrics") or {}).get("test")).get(region)


TIME_TO_TARGET = "time_to_target_s"
METRICS: tuple[Metric, ...] = (
    Metric("throughput", "samples/s", True, "faster", "slower", _timing("throughput_samples_s")),
    Metric("step_p50_ms", "ms", False, "faster", "slower", _timing("step_time_p50_s", 1e3)),
    Metric("step_p90_ms", "ms", False, "faster", "slower", _timing("step_time_p90_s", 1e3)),
    Metric("step_p99_ms", "ms", False, "faster", "slower", _timing("step_time_p99_s", 1e3)),
    Metric("first_step_s", "s", False, "faster", "slower",
           lambda r: _scaled((r.get("phases") or {}).get("to_first_step_s"), 1.0)),
    Metric("peak_host_mem_mb", "MB", False, "smaller", "larger", _timing("peak_host_mem_mb")),
    Metric("peak_gpu_mem_mb", "MB", False, "smaller", "larger", _timing("peak_gpu_mem_mb")),
    Metric("test_WT_dice", "", True, "higher", "lower", _test_dice("WT")),
    Metric("test_TC_dice", "", True, "higher", "lower", _test_dice("TC")),
    Metric("test_ET_dice", "", True, "higher", "lower", _test_dice("ET")),
    # training seconds until the validation WT Dice reached the baseline's scratch level (studies only)
    Metric(TIME_TO_TARGET, "s", False, "faster", "slower", lambda r: None),
)
BY_NAME = {m.name: m for m in METRICS}
PRIMARY = "throughput"  # the metric --fail-if-slower guards


def metric(name: str) -> Metric:
    if name not in BY_NAME:
        raise UserError(f"unknown metric '{name}' (one of: {', '.join(BY_NAME)})")
    return BY_NAME[name]


@dataclass
class Point:
    """The runs of one point on one system: each metric's values over its repeats."""

    id: str
    label: str
    system: str
    values: dict[str, list[float]] = field(default_factory=dict)
    runs: int = 0

    def add(self, name: str, value: Any) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.values.setdefault(name, []).append(float(value))


def is_study(record: dict[str, Any]) -> bool:
    """A run of a transfer study (pre-training, fine-tuning or scratch; `bratsbench transfer`'s, or a training
    sweep's scratch and transfer runs): its seed is a repeat."""
    return bool(study_run(record).get("role"))


_IDENTITY_CACHE: dict[str, dict[str, Any]] = {}


def identity(record: dict[str, Any], ignore: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The point's identity of a run (see the module's docstring); `ignore`: (section, field) pairs left out too
    (e.g. ("train", "backend") when the engines are what is compared)."""
    cfg = dict(record.get("config") or {})
    for key in ("out", "name", "tags", "repeat"):
        cfg.pop(key, None)
    blob = json.dumps(cfg, sort_keys=True, default=str)
    ident = _IDENTITY_CACHE.get(blob)
    if ident is None:
        try:  # the RunConfig fills fields an older record lacks with their defaults, so old and new runs line up
            ident = RunConfig.from_dict(cfg).identity()
        except (UserError, TypeError, ValueError):  # a record of another version: its config as written
            ident = json.loads(blob)
        ident.pop("repeat", None)
        for section, key in PATHS:
            holder = ident.get(section)
            if isinstance(holder, dict) and holder.get(key) is not None:
                holder[key] = "set"
        _IDENTITY_CACHE[blob] = ident
    ident = json.loads(json.dumps(ident))  # a private copy (the cache's is shared)
    if is_study(record):
        ident.get("train", {}).pop("seed", None)
    for section, key in ignore:
        holder = ident.get(section) if section else ident
        if isinstance(holder, dict):
            holder.pop(key, None)
    ident["np"] = int(record.get("world_size") or ((record.get("extra") or {}).get("sweep") or {}).get("np") or 1)
    return ident


_ID_CACHE: dict[tuple[Any, ...], str] = {}


def point_id(record: dict[str, Any], ignore: Sequence[tuple[str, str]] = ()) -> str:
    """harness.record.run_id of the point's identity (computed once per distinct config: sides share them)."""
    cfg = {k: v for k, v in (record.get("config") or {}).items() if k not in ("out", "name", "tags", "repeat")}
    np_ = record.get("world_size") or ((record.get("extra") or {}).get("sweep") or {}).get("np") or 1
    key = (json.dumps(cfg, sort_keys=True, default=str), is_study(record), tuple(ignore), int(np_))
    found = _ID_CACHE.get(key)
    if found is None:
        found = _ID_CACHE[key] = run_id(identity(record, ignore))
    return found


def label(record: dict[str, Any]) -> str:
    """How tables name a point: the sweep's label without its repeat (np2-b2-k0-scratch-s0), a study run's label
    without its seed (finetune-k0), else the run's name."""
    name = record.get("name") or ((record.get("extra") or {}).get("sweep") or {}).get("label") or ""
    name = _REPEAT.sub("", str(name))
    if is_study(record):
        name = _SEED.sub("", name)
    return name or f"np{identity(record).get('np')}"


def scratch_target(records: Iterable[dict[str, Any]]) -> float | None:
    """The mean final validation WT Dice of a study's scratch runs: the level time to target is measured at."""
    finals = []
    for r in records:
        if variant(r) == SCRATCH and r.get("status") in ("ok", None):
            history = [h for h in r.get("history") or [] if region_dice(h.get("val")).get("WT") is not None]
            if history:
                finals.append(region_dice(history[-1]["val"])["WT"])
    return sum(finals) / len(finals) if finals else None


def collect(records: Iterable[dict[str, Any]], ignore: Sequence[tuple[str, str]] = (),
            target: float | None = None) -> dict[tuple[str, str], Point]:
    """(point ID, system) -> Point over the finished training runs among `records`; `target`: the validation WT
    Dice a study run's time to target is measured at (None: no time to target)."""
    points: dict[tuple[str, str], Point] = {}
    for r in records:
        if r.get("kind", "train") != "train" or r.get("status") not in ("ok", None):
            continue
        pid, system = point_id(r, ignore), system_label(r)
        point = points.get((pid, system))
        if point is None:
            point = points[(pid, system)] = Point(pid, label(r), system)
        point.runs += 1
        for m in METRICS:
            point.add(m.name, m.read(r))
        if target is not None and variant(r) is not None:
            point.add(TIME_TO_TARGET, reach(r, target).seconds)
    return points
