"""Load run records from a results folder and flatten them into one table row per run.

Every later table is built from these rows, so the field names here are the vocabulary of the analysis.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd

from harness.record import read_record
from harness.rundir import RECORD

PATH_KEY = "_path"
PHASES = ("wall_s", "to_first_step_s", "steps_s", "validation_s", "checkpoint_s", "input_setup_s", "bookkeeping_s",
          "other_s", "train_share")  # added to each loaded record: the record file it came from

UNKNOWN_SYSTEM = "unknown system"  # the system label of a record written before records named their system

# Settings that change what a step costs; runs that agree on all of them (apart from the one a table varies) are
# compared with each other. Seeds, names, output folders and epochs do not change the cost of a step; the system a
# run ran on does, so runs of one spec on two systems are never pooled.
SETTINGS = (
    "system", "backend", "modalities", "crop", "base_filters", "depth", "norm", "amp", "xla", "loss", "threads",
    "source", "sweep_mode", "benchmark",
)


def find_record_paths(results: str | Path) -> list[Path]:
    """Records of RESULTS/runs/* first, then any other record below RESULTS (each file once: two paths to one file
    through a symbolic link count once; one stat per file, not a path resolution, so 10,000 records stay cheap)."""
    root = Path(results).resolve()
    seen: dict[Any, Path] = {}
    by_parts = lambda p: p.parts  # noqa: E731 - Path's own order, compared in C rather than by Path.__lt__
    for path in [*sorted(root.glob(f"runs/*/{RECORD}"), key=by_parts), *sorted(root.rglob(RECORD), key=by_parts)]:
        try:
            st = path.stat()
            key: Any = (st.st_dev, st.st_ino)
        except OSError:  # a dangling link: kept, so that reading it costs the usual warning line
            key = str(path)
        seen.setdefault(key, path)
    return list(seen.values())


def load_records(results: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every readable run record below RESULTS; an unreadable one costs one warning line, not the analysis."""
    warn = warn or (lambda line: print(line, file=sys.stderr))
    with collector_paused():
        return _load(find_record_paths(results), warn)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off for a bounded piece of work over many records: parsed JSON makes no cycles
    (reference counting frees it), and with 10,000 records alive the collector's passes over them took a quarter of
    `compare`'s time. Whatever cycles the work makes are collected once it is back on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _load(paths: list[Path], warn: Callable[[str], None]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        try:
            record = read_record(path)
            if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
                raise ValueError("not a run record (no 'config' object)")
        except (OSError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
            reason = str(exc).replace(str(path) + ": ", "").splitlines()[0] if str(exc) else type(exc).__name__
            warn(f"warning: skipping {path}: {reason}")
            continue
        record[PATH_KEY] = str(path)
        records.append(record)
    return records


def run_dir(record: dict[str, Any]) -> Path | None:
    """The run folder a loaded record lives in (where its profiles and timeline are), else its config's `out`."""
    if record.get(PATH_KEY):
        return Path(record[PATH_KEY]).parent
    out = (record.get("config") or {}).get("out")
    return Path(out) if out else None


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _text(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else ",".join(map(str, value))
    return value


def system_label(record: dict[str, Any]) -> str:
    """The short name of the system a run ran on (record.system.label), "unknown system" for older records."""
    label = _get(record, "system", "label")
    return label.strip() if isinstance(label, str) and label.strip() else UNKNOWN_SYSTEM


def systems(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """System label -> how many of the records ran on it, in order of first appearance."""
    counts: dict[str, int] = {}
    for record in records:
        label = system_label(record)
        counts[label] = counts.get(label, 0) + 1
    return counts


def engine_label(record: dict[str, Any]) -> str:
    """"horovod/mpi", "horovod/gloo", "mwms/ring", "mpi/mpi"...: an engine and what carried its collectives, the
    pair a communication baseline must match. Records from before `engine.transport` existed: Horovod's follows
    the launcher (Gloo under horovodrun, MPI otherwise) where the record names one, else the engine alone."""
    engine = record.get("engine") or {}
    name = engine.get("name") or "?"
    transport = engine.get("transport")
    if transport is None and name == "horovod" and (record.get("comm") or {}).get("launcher"):
        transport = "gloo" if record["comm"]["launcher"] == "horovodrun" else "mpi"
    return f"{name}/{transport}" if transport else name


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One row of the fields the tables use (missing values are None)."""
    cfg = record.get("config") or {}
    model, data, train = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("train") or {}
    timing = record.get("timing") or {}
    sweep = _get(record, "extra", "sweep") or {}
    world = record.get("world_size") or sweep.get("np") or 1
    batch = train.get("batch_size")
    return {
        "run": record.get("name") or (run_dir(record) or Path("")).name or record.get("run_id"),
        "path": record.get(PATH_KEY),
        "status": record.get("status"),
        "system": system_label(record),
        "np": int(world),
        "batch_size": batch,
        "global_batch": timing.get("global_batch") or (batch * world if batch else None),
        "throughput": timing.get("throughput_samples_s"),
        "step_time_s": timing.get("step_time_mean_s"),
        "step_time_sd_s": timing.get("step_time_sd_s"),
        "steps": timing.get("steps"),
        "freeze_depth": _freeze(train),
        "backend": train.get("backend") or _get(record, "engine", "name") or ("horovod" if record else None),
        "params_trainable": _get(record, "model", "params_trainable"),
        "params_total": _get(record, "model", "params_total"),
        "modalities": _text(model.get("modalities")),
        "crop": _text(data.get("crop")),
        "base_filters": model.get("base_filters"),
        "depth": model.get("depth"),
        "norm": model.get("norm"),
        "amp": bool(train.get("amp")),
        "xla": bool(train.get("xla")),
        "loss": train.get("loss"),
        "threads": train.get("threads"),
        "benchmark": bool(train.get("benchmark")),
        "source": "synthetic" if data.get("synthetic") else "in-memory" if data.get("synthetic_input") else "store",
        "input_wait_share": timing.get("input_wait_share"),
        "sweep_scaling": sweep.get("scaling"),
        "sweep_mode": sweep.get("mode"),
        "sweep_label": sweep.get("label"),
        "repeat": int(cfg.get("repeat") or 0),
        **{f"phase_{k}": _get(record, "phases", k) for k in PHASES},
        "seed": train.get("seed"),
    }


def frame(records: Iterable[dict[str, Any]], ok_only: bool = True) -> pd.DataFrame:
    """Flattened records as a DataFrame (only finished runs unless ok_only is False)."""
    rows = [flatten(r) for r in records if not ok_only or r.get("status") in ("ok", None)]
    return pd.DataFrame(rows, columns=list(flatten({}).keys()) if not rows else None)


_LABELS = {"crop": "crop", "base_filters": "base", "depth": "depth", "modalities": "", "np": "np",
           "batch_size": "batch", "norm": "norm", "loss": "loss", "threads": "threads", "source": "",
           "sweep_mode": "", "freeze_depth": "freeze", "benchmark": "", "amp": "", "xla": ""}


def _part(key: str, value: Any) -> str | None:
    if value is None or value == "-" or (isinstance(value, float) and pd.isna(value)):
        return None
    if key in ("amp", "xla"):
        return key if value else f"no {key}"
    if key == "benchmark":
        return "benchmark" if value else "training"
    if isinstance(value, float) and value.is_integer():  # pandas turns int columns with gaps into floats
        value = int(value)
    return f"{_LABELS.get(key, key)} {value}".strip()


def settings_label(row: pd.Series | dict[str, Any], keys: Iterable[str]) -> str:
    """A short human label of a group from the given settings, e.g. 'crop 32x32x32, base 8, amp'."""
    parts = [_part(key, row.get(key)) for key in keys if key in row]
    return ", ".join(p for p in parts if p)


def varying(rows: Sequence[pd.Series | dict[str, Any]], keys: Iterable[str]) -> list[str]:
    """The keys whose values differ between rows: only those are worth naming in a group label."""
    return [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]


def _freeze(train: dict[str, Any]) -> int | str:
    """The freeze choice as one value (k, or "head"), whichever way the record spelled it."""
    from harness.config import freeze_of
    from harness.errors import UserError

    try:
        return freeze_of(train)
    except UserError:  # an unreadable value must not stop the analysis
        return train.get("freeze_depth", 0)
