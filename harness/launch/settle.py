"""Logs and records of a launched run: the log tail, the one-line reason a run failed, and settling its record
("ok" only when the process exited 0 AND its record says ok)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

from harness.launch.supervise import Outcome
from harness.record import utc_now
from harness.rundir import RunDir
from harness.system import collect


TAIL_LINES = 40
# the line a resumed attempt writes first in the log it appends to (harness.launch.run)
RESUMED = "resumed from the checkpoint the attempt before wrote"


def log_tail(run: RunDir, lines: int = TAIL_LINES) -> list[str]:
    """Last log lines of a run: the launcher's log (all ranks), else rank 0's stderr, else its stdout."""
    for path in (run.launcher_log, run.rank_log(0, "stderr"), run.rank_log(0, "stdout")):
        tail = file_tail(path, lines)
        if tail:
            return tail
    return []


def file_tail(path: Path, lines: int = TAIL_LINES, limit: int = 64 * 1024) -> list[str]:
    """The last non-blank lines of a log, as a terminal would show them (a tqdm bar's carriage-return redraws
    collapsed to the last state); only its last `limit` bytes are read (a huge log costs nothing), and the line they cut
    into is left out. [] if unreadable."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit - 1))
            data = fh.read()
    except OSError:
        return []
    if size > limit:  # the byte before the window says whether its first line is whole
        before, data = data[:1], data[1:]
        if before != b"\n":
            data = data.partition(b"\n")[2]
    text = data.decode("utf-8", "replace")
    out = []
    for line in text.split("\n"):
        states = [s.rstrip() for s in line.split("\r") if s.strip()]
        if states:
            out.append(states[-1])
    return out[-lines:]


_HVD_FIRST = re.compile(r"first process to do so was:\s*Process name: (\S+)\s*Exit code: (-?\d+)", re.S)
_MWMS_FIRST = re.compile(r"bratsbench launch: worker (\d+) (killed by SIG\w+|exited with code -?\d+)")
_SRUN_TASK = re.compile(r"srun: error: (\S+): tasks? ([\d,-]+): (.+)")


def describe(outcome: Outcome, record: dict | None, tail: list[str]) -> str:
    """Why a run did not end ok, in one line.

    The launcher's word on the rank that failed first wins where that rank was killed by a signal: it could not
    record a reason, and what the others recorded (a broken collective: they survive the launcher's SIGTERM, a stop
    signal, long enough to see it) is only the consequence. A rank that exited with an error code recorded its own
    reason, and the record's error says it."""
    code = outcome.exit_code
    if outcome.reason:
        return outcome.reason
    text = "\n".join(this_attempt(tail))
    found = _MWMS_FIRST.search(text)
    if found:  # our MWMS launcher names the worker that failed first (the others only saw a broken collective)
        return f"MWMS worker {found.group(1)} {found.group(2)}; the launcher stopped the others (exit code {code})"
    srun, hvd = _srun_first(text, code), _horovodrun_first(text, code)
    for first, killed in (srun, hvd):
        if first and killed:
            return first
    if record and record.get("error"):
        return str(record["error"])
    for first, _ in (srun, hvd):
        if first:
            return first
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if record is None:
        return f"exit code {code} and no run record written"
    if record.get("status") == "running":
        return f"exit code {code} with the run record still 'running' (a rank died or the run was killed)"
    return f"exit code {code}"


def this_attempt(tail: list[str]) -> list[str]:
    """The lines after the last attempt's resume mark: an appended log's earlier attempt named its own failed rank."""
    marks = [i for i, line in enumerate(tail) if RESUMED in line]
    return tail[marks[-1] + 1:] if marks else tail


def _srun_first(text: str, code: int | None) -> tuple[str | None, bool]:
    """srun's line on the node and task (rank) that failed first (--kill-on-bad-exit stopped the others), and whether
    that task was killed by a signal rather than exiting with a code."""
    found = _SRUN_TASK.search(text)
    if not found:
        return None, False
    node, task, what = found.groups()
    line = f"{'rank' if task.isdigit() else 'ranks'} {task} on {node}: {what.strip()}; srun stopped the step (exit code {code})"
    return line, not what.strip().startswith("Exited with exit code")


def _horovodrun_first(text: str, code: int | None) -> tuple[str | None, bool]:
    """horovodrun's line on the rank that failed first, and whether a signal killed it (exit code 128 + signal)."""
    found = _HVD_FIRST.search(text)
    if not found:
        return None, False
    rank, rank_code = found.group(1), int(found.group(2))
    killed = 128 < rank_code < 128 + 32
    how = f" ({signal.Signals(rank_code - 128).name})" if killed else ""
    return f"rank {rank} exited with code {rank_code}{how}; horovodrun stopped the job (exit code {code})", killed


def preempted_line(record: dict[str, Any]) -> str:
    """One line for a preempted run: "preempted by SIGUSR1 at step 538 (checkpoint written)"."""
    info = record.get("extra", {}).get("preempted") or {}
    kept = "checkpoint written" if info.get("checkpoint") else "no checkpoint: a benchmark run starts over"
    return f"preempted by SIG{info.get('signal') or '?'} at step {info.get('step')} ({kept})"


def blank_record(run: RunDir, np_: int) -> dict[str, Any]:
    """A schema-1 record for a run that never wrote one, from its config file (no TensorFlow import)."""
    from harness.record import new_record

    try:
        import json

        config = json.loads(run.config.read_text())
    except (OSError, ValueError):
        config = {"out": str(run.path)}
    record = new_record(config, probe=False)
    record.update(status="failed", world_size=np_)
    record["system"] = collect(None, source="launcher")  # the launcher's host: the ranks never described theirs
    record["extra"].update(config.get("tags") or {})
    return record


def settle(run: RunDir, outcome: Outcome, *, np_: int = 1, annotate: dict[str, Any] | None = None,
           status: str | None = None) -> dict[str, Any]:
    """Make the run record tell the truth about how the run ended; returns {status, exit_code, seconds, error}.

    ok only when the process exited 0 AND the trainer recorded "ok"; "preempted" when the trainer recorded it
    (every rank wrote its share of the checkpoint and waited for rank 0's record before exiting, so the launcher's
    exit status, 75 or whatever it makes of the ranks' 75, adds nothing); anything else becomes "failed" (or
    `status`, e.g. "interrupted") with exit_code, error and log_tail. `annotate` is merged into record.extra."""
    record = run.read_record()
    seconds = round(outcome.seconds, 2)
    if status is None and outcome.exit_code == 0 and outcome.reason is None and record and record.get("status") == "ok":
        if annotate:
            record.setdefault("extra", {}).update(annotate)
            run.write_record(record)
        return {"status": "ok", "exit_code": 0, "seconds": seconds, "error": None}
    if status is None and outcome.exit_code != 0 and outcome.reason is None and record and record.get("status") == "preempted":
        record["log_tail"] = log_tail(run)
        record.setdefault("extra", {}).update(annotate or {})
        run.write_record(record)
        return {"status": "preempted", "exit_code": record["exit_code"], "seconds": seconds,
                "error": preempted_line(record)}
    tail = log_tail(run)
    error = "interrupted by the user" if status == "interrupted" else describe(outcome, record, tail)
    if record is None:
        record = blank_record(run, np_)
    record.update(status=status or "failed", exit_code=130 if status == "interrupted" else outcome.exit_code,
                  error=error, log_tail=tail)
    if not record.get("finished_at"):
        record["finished_at"] = utc_now()
    if record.get("wall_s") is None:
        record["wall_s"] = outcome.seconds
    record.setdefault("extra", {}).update(annotate or {})
    run.write_record(record)
    return {"status": record["status"], "exit_code": record["exit_code"], "seconds": seconds, "error": error}


def fail_unstarted(run: RunDir, error: str, *, np_: int = 1, annotate: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a run that was never launched (e.g. its pre-training failed) as failed."""
    run.create()
    record = blank_record(run, np_)
    record.update(error=error, finished_at=utc_now(), wall_s=0.0, log_tail=[])
    record["extra"].update(annotate or {})
    run.write_record(record)
    return {"status": "failed", "exit_code": None, "seconds": 0.0, "error": error}
