"""RESULTS/sweep.json: the one file that many writers share (local runner, SLURM/PBS array tasks).

Each run writes only its own folder; this index is the exception, so every update takes an exclusive
fcntl.flock on RESULTS/.sweep.lock, reads the current file, changes it and replaces it atomically. Readers that
do not lock still never see a torn file (atomic replace). flock works across processes on one host and on
most cluster file systems (NFSv4, Lustre and GPFS with flock enabled).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.record import atomic_write_json, utc_now
from harness.rundir import RunDir

INDEX_NAME = "sweep.json"
LOCK_NAME = ".sweep.lock"


def runs_dir(results: str | Path) -> Path:
    return Path(results) / "runs"


def run_dir(results: str | Path, run_id: str) -> Path:
    return runs_dir(results) / run_id


@contextlib.contextmanager
def locked(results: str | Path) -> Iterator[None]:
    """Hold the results folder's exclusive lock (blocks until other writers are done)."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    fd = os.open(results / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_index(results: str | Path) -> dict[str, Any]:
    path = Path(results) / INDEX_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def update_index(results: str | Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read-modify-write sweep.json under the lock; `change` edits the dict in place."""
    with locked(results):
        data = read_index(results)
        change(data)
        atomic_write_json(Path(results) / INDEX_NAME, data)
    return data


def init_index(results: str | Path, spec: dict[str, Any], plan: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the spec and plan, keeping what is known about runs (statuses are re-read from their records)."""

    def change(data: dict[str, Any]) -> None:
        data["schema_version"] = 1
        data["name"] = spec.get("name")
        data["spec"] = spec
        data["plan"] = plan
        runs = data.setdefault("runs", {})
        for item in plan:
            entry = runs.setdefault(item["run_id"], {"status": "pending"})
            entry["label"] = item["label"]
            status = RunDir(run_dir(results, item["run_id"])).status()
            if status is not None:  # the run's own record is the truth
                entry["status"] = status

    return update_index(results, change)


def set_run(results: str | Path, run_id: str, **entry: Any) -> dict[str, Any]:
    """Merge `entry` into runs[run_id] (status, exit_code, seconds, error, ...)."""

    def change(data: dict[str, Any]) -> None:
        data.setdefault("runs", {}).setdefault(run_id, {}).update(entry, updated_at=utc_now())

    return update_index(results, change)
