"""The run folder: the one place that spells the names of its members.

    RUN/record.json            the run record (harness.record), written atomically by rank 0
    RUN/config.json            the RunConfig a launcher hands to `bratsbench train --config`
    RUN/checkpoints/           TensorFlow checkpoints plus model.json (the architecture signature)
    RUN/logs/                  launcher.log (all ranks), rank.N/{stdout,stderr}, evaluate.log;
                               attempt-K/rank.N/ of the earlier attempts of a resumed run
    RUN/profile/rankN/         TensorFlow profiler captures, one folder per rank (TensorBoard lists each)
    RUN/timeline.json          the Horovod timeline of the profiled steps
    RUN/eval-<subset>.json     per-case metrics written by `bratsbench evaluate`

Everything else (sweeps, transfer, analysis, the job templates through `bratsbench`) asks a RunDir for a
path instead of joining names itself, so a layout change happens here only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.record import atomic_write_json, read_record

RECORD = "record.json"
CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
SIGNATURE = "model.json"
LOGS = "logs"
LAUNCHER_LOG = "launcher.log"
EVALUATE_LOG = "evaluate.log"
PROFILE = "profile"
TIMELINE = "timeline.json"


def rank_log(logs: Path, rank: int, stream: str = "stderr") -> Path:
    """Per-rank output in a logs folder, in the layout horovodrun's --output-filename writes (rank.N/stdout|stderr)."""
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream {stream!r} is not stdout or stderr")
    return Path(logs) / f"rank.{rank}" / stream


class RunDir:
    """Paths of one run folder; creates nothing until asked (`create`, `reset_logs`)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # --- members -------------------------------------------------------------------------------------
    @property
    def record(self) -> Path:
        return self.path / RECORD

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def signature(self) -> Path:
        return self.checkpoints / SIGNATURE

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @property
    def launcher_log(self) -> Path:
        return self.logs / LAUNCHER_LOG

    @property
    def evaluate_log(self) -> Path:
        return self.logs / EVALUATE_LOG

    def rank_log(self, rank: int, stream: str = "stderr") -> Path:
        return rank_log(self.logs, rank, stream)

    @property
    def profile(self) -> Path:
        return self.path / PROFILE

    def profile_rank(self, rank: int) -> Path:
        return self.profile / f"rank{rank}"

    def profile_ranks(self) -> dict[int, Path]:
        """rank -> its profile folder, for the ranks that wrote one."""
        found = {}
        for folder in self.profile.glob("rank*"):
            number = folder.name.removeprefix("rank")
            if number.isdigit() and folder.is_dir():
                found[int(number)] = folder
        return dict(sorted(found.items()))

    @property
    def timeline(self) -> Path:
        return self.path / TIMELINE

    def eval_result(self, subset: str) -> Path:
        return self.path / f"eval-{subset}.json"

    # --- state ---------------------------------------------------------------------------------------
    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def reset_logs(self) -> Path:
        """An empty logs/ folder: an earlier attempt's lines must never be reported as this attempt's."""
        import shutil

        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        return self.logs

    def continue_logs(self) -> Path:
        """logs/ for a resumed attempt: launcher.log is appended to; the per-rank folders of the attempt before
        (which horovodrun and mpirun would rewrite) move to logs/attempt-K/, K = 1, 2, ... in order."""
        self.logs.mkdir(parents=True, exist_ok=True)
        ranks = sorted(self.logs.glob("rank.*"))
        if ranks:
            k = 1
            while (self.logs / f"attempt-{k}").exists():
                k += 1
            for folder in ranks:
                (self.logs / f"attempt-{k}").mkdir(exist_ok=True)
                folder.rename(self.logs / f"attempt-{k}" / folder.name)
        return self.logs

    def read_record(self) -> dict[str, Any] | None:
        """The record, or None when there is none or it cannot be read (a run that never started)."""
        try:
            return read_record(self.record)
        except (OSError, ValueError):
            return None

    def load_record(self) -> dict[str, Any]:
        """The record of a run the user named; UserError when it is missing or unreadable."""
        if not self.record.is_file():
            raise UserError(f"run '{self.path}' has no {RECORD}")
        record = self.read_record()
        if record is None:
            raise UserError(f"run '{self.path}': {RECORD} is unreadable")
        return record

    def write_record(self, record: dict[str, Any]) -> Path:
        return atomic_write_json(self.record, record)

    def write_config(self, config: dict[str, Any]) -> Path:
        return atomic_write_json(self.config, config)

    def status(self) -> str | None:
        record = self.read_record()
        return record.get("status") if record else None

    def finished(self) -> bool:
        """Recorded ok and its checkpoints are there (so a later run may start from them)."""
        return self.status() == "ok" and self.checkpoints.is_dir()
