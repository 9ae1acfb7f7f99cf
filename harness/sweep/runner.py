"""Run a planned sweep on this machine, one run after another, and settle every run's record.

Each run gets RESULTS/runs/<run_id>/ (config.json, logs/, record.json written by the trainer). The runner owns
what the trainer cannot report itself: a run that crashed, hung, lost a rank or was timed out is recorded
"failed" with its exit code and the last log lines, and the sweep goes on. Runs already "ok" are skipped, so a
second `sweep run` finishes only what is missing.

Hangs: the launcher runs in its own session; a run past `timeout_s` is killed as a process tree, and a
watchdog kills it too when one rank process has exited while the job keeps running for RANK_GRACE_S (a rank
killed with -9 leaves the others blocked in a collective; horovodrun usually tears them down itself).

Also the entry point of cluster array tasks: `python -m harness.sweep.runner start-task|finish-task`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Sequence


from harness.errors import UserError
from harness.record import RECORD_NAME, atomic_write_json, new_record, utc_now
from harness.sweep import index
from harness.sweep.plan import PlannedRun, plan
from harness.sweep.spec import SweepSpec
from harness.sweep.supervise import (  # noqa: F401 - re-exported for callers of the runner
    KILL_WAIT_S,
    RANK_GRACE_S,
    Outcome,
    is_rank_process,
    kill_tree,
    local_launch,
    supervise,
)

TAIL_LINES = 40
LOGS = "logs"
LAUNCHER_LOG = "launcher.log"
CONFIG_NAME = "config.json"
EXIT_SKIP, EXIT_DEPENDENCY = 3, 4  # start-task exit codes read by the job scripts


# --- commands -------------------------------------------------------------------------------------------


def bratsbench_command() -> list[str]:
    """The bratsbench executable of this Python environment (falls back to `python -m harness`)."""
    exe = Path(sys.executable).parent / "bratsbench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "harness"]


def train_args(run: PlannedRun, results: Path) -> list[str]:
    folder = index.run_dir(results, run.run_id)
    args = ["train", "--config", str(folder / CONFIG_NAME), "--out", str(folder)]
    for dep in run.depends_on:
        args += ["--init-from", str(index.run_dir(results, dep) / "checkpoints")]
    if run.first_conv:
        args += ["--first-conv", run.first_conv]
    return args


def launch_command(run: PlannedRun, results: Path, launcher: str = "horovodrun") -> list[str]:
    """The local command line of one run: plain for np=1, else horovodrun (Gloo) or mpirun on localhost."""
    cmd = bratsbench_command() + train_args(run, results)
    return local_launch(run.np, cmd, launcher, index.run_dir(results, run.run_id) / LOGS)


# --- records --------------------------------------------------------------------------------------------


def log_tail(folder: Path, lines: int = TAIL_LINES) -> list[str]:
    """Last log lines of a run: the launcher's log (all ranks), else rank 0's stderr, else its stdout."""
    logs = folder / LOGS
    for path in (logs / LAUNCHER_LOG, logs / "rank.0" / "stderr", logs / "rank.0" / "stdout"):
        text = _read_end(path)
        if text.strip():
            out = []
            for line in text.split("\n"):
                states = [s.rstrip() for s in line.split("\r") if s.strip()]  # tqdm redraws with '\r'
                if states:
                    out.append(states[-1])
            return out[-lines:]
    return []


def _read_end(path: Path, limit: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def sweep_info(run: PlannedRun, sweep: str) -> dict[str, Any]:
    keys = ("label", "kind", "np", "mode", "seed", "batch_size", "per_rank_batch", "global_batch", "freeze_depth",
            "depends_on", "scaling")
    info = {k: v for k, v in run.to_dict().items() if k in keys}
    return {"sweep": sweep, "run_id": run.run_id, **info}


_HVD_FIRST = re.compile(r"first process to do so was:\s*Process name: (\S+)\s*Exit code: (-?\d+)", re.S)


def _describe(outcome: Outcome, record: dict | None, tail: list[str]) -> str:
    code = outcome.exit_code
    if outcome.reason:
        return outcome.reason
    if record and record.get("error"):
        return str(record["error"])
    found = _HVD_FIRST.search("\n".join(tail))
    if found:  # horovodrun names the rank that failed first
        rank, rank_code = found.group(1), int(found.group(2))
        how = f" ({signal.Signals(rank_code - 128).name})" if 128 < rank_code < 128 + 32 else ""
        return f"rank {rank} exited with code {rank_code}{how}; horovodrun stopped the job (exit code {code})"
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


def settle(run: PlannedRun, folder: Path, outcome: Outcome, sweep: str, status: str | None = None) -> dict[str, Any]:
    """Make record.json tell the truth about how the run ended; returns the sweep.json entry for it.

    ok only when the process exited 0 AND the trainer recorded "ok"; anything else becomes "failed" (or
    `status`, e.g. "interrupted") with exit_code, error and log_tail.
    """
    record = read_record(folder)
    info = sweep_info(run, sweep)
    if status is None and outcome.exit_code == 0 and outcome.reason is None and record and record.get("status") == "ok":
        record.setdefault("extra", {})["sweep"] = info
        atomic_write_json(folder / RECORD_NAME, record)
        return {"status": "ok", "exit_code": 0, "seconds": round(outcome.seconds, 2), "error": None}
    tail = log_tail(folder)
    error = "interrupted by the user" if status == "interrupted" else _describe(outcome, record, tail)
    if record is None:
        record = _blank_record(run, folder)
    record.update(
        status=status or "failed",
        exit_code=130 if status == "interrupted" else outcome.exit_code,
        error=error,
        log_tail=tail,
    )
    if not record.get("finished_at"):
        record["finished_at"] = utc_now()
    if record.get("wall_s") is None:
        record["wall_s"] = outcome.seconds
    record.setdefault("extra", {})["sweep"] = info
    atomic_write_json(folder / RECORD_NAME, record)
    return {"status": record["status"], "exit_code": record["exit_code"], "seconds": round(outcome.seconds, 2), "error": error}


def _blank_record(run: PlannedRun, folder: Path) -> dict[str, Any]:
    """A schema-1 record for a run that never wrote one (no TensorFlow import needed)."""
    record = new_record(run.config_for(folder).to_dict(), probe=False)
    record.update(name=run.label, status="failed", world_size=run.np)
    return record


def prepare_run_dir(run: PlannedRun, results: Path) -> Path:
    """config.json (out = this folder) and an empty logs/ folder. The logs and record of an earlier failed
    attempt are removed, so a new failure is never reported with the old attempt's error or log lines."""
    folder = index.run_dir(results, run.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / CONFIG_NAME, run.config_for(folder).to_dict())
    (folder / RECORD_NAME).unlink(missing_ok=True)
    shutil.rmtree(folder / LOGS, ignore_errors=True)
    (folder / LOGS).mkdir()
    return folder


def dependency_problem(run: PlannedRun, results: Path) -> str | None:
    for dep in run.depends_on:
        status = index.record_status(index.run_dir(results, dep))
        if status != "ok":
            return f"dependency {dep} {'failed' if status in ('failed', 'interrupted') else 'did not run'}"
    return None


def fail_without_running(run: PlannedRun, results: Path, error: str, sweep: str) -> dict[str, Any]:
    folder = index.run_dir(results, run.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    record = _blank_record(run, folder)
    record.update(error=error, finished_at=utc_now(), wall_s=0.0, log_tail=[])
    record["extra"]["sweep"] = sweep_info(run, sweep)
    atomic_write_json(folder / RECORD_NAME, record)
    return {"status": "failed", "exit_code": None, "seconds": 0.0, "error": error}


def _launch_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"  # logs stay current, so a killed run still has a useful tail
    return env


def run_one(run: PlannedRun, results: Path, spec: SweepSpec, grace_s: float = RANK_GRACE_S) -> dict[str, Any]:
    """Launch one run and settle it. KeyboardInterrupt: the run is killed, recorded 'interrupted', re-raised."""
    folder = prepare_run_dir(run, results)
    logs = folder / LOGS
    cmd = launch_command(run, results, spec.launcher)
    index.set_run(results, run.run_id, status="running", label=run.label, started_at=utc_now())
    start = time.monotonic()
    try:
        if run.np == 1:
            (logs / "rank.0").mkdir()
            with open(logs / "rank.0" / "stdout", "wb") as out, open(logs / "rank.0" / "stderr", "wb") as err:
                outcome = supervise(cmd, stdout=out, stderr=err, timeout_s=spec.timeout_s, grace_s=grace_s, env=_launch_env())
        else:
            with open(logs / LAUNCHER_LOG, "wb") as out:
                outcome = supervise(
                    cmd, stdout=out, stderr=subprocess.STDOUT, timeout_s=spec.timeout_s, grace_s=grace_s, env=_launch_env()
                )
    except KeyboardInterrupt:
        entry = settle(run, folder, Outcome(130, time.monotonic() - start), spec.name, status="interrupted")
        index.set_run(results, run.run_id, **entry)
        raise
    entry = settle(run, folder, outcome, spec.name)
    index.set_run(results, run.run_id, **entry)
    return entry


# --- the sweep ------------------------------------------------------------------------------------------


def select(runs: list[PlannedRun], only: Sequence[str] | None) -> list[PlannedRun]:
    """The runs named in `only` (IDs or labels) plus the pre-training runs they need, in plan order."""
    if not only:
        return runs
    by_key = {r.run_id: r for r in runs} | {r.label: r for r in runs}
    wanted: set[str] = set()
    for key in only:
        if key not in by_key:
            raise UserError(f"--only {key}: no run with that ID or label in the plan (see `bratsbench sweep plan`)")
        wanted.add(by_key[key].run_id)
        wanted.update(by_key[key].depends_on)
    return [r for r in runs if r.run_id in wanted]


def run_sweep(
    spec: SweepSpec,
    results: str | Path,
    *,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    out: IO[str] | None = None,
    grace_s: float = RANK_GRACE_S,
) -> int:
    """Run the sweep; returns 0 when every selected run is ok, 1 when any failed, 130 when interrupted."""
    out = out or sys.stdout
    results = Path(results).resolve()
    planned = plan(spec)
    runs = select(planned, only)
    if dry_run:
        for i, run in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {run.label} ({run.run_id}): {shlex.join(launch_command(run, results, spec.launcher))}", file=out)
        return 0
    index.init_index(results, spec.to_dict(), [r.to_dict() for r in planned])
    from tqdm import tqdm

    counts = {"ok": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=len(runs), desc=spec.name, unit="run", file=sys.stderr, dynamic_ncols=True)
    restore = _sigterm_as_interrupt()
    i, run = 0, None
    try:
        for i, run in enumerate(runs, 1):
            folder = index.run_dir(results, run.run_id)
            bar.set_postfix_str(run.label)
            if index.record_status(folder) == "ok":
                counts["skipped"] += 1
                index.set_run(results, run.run_id, status="ok", label=run.label)
                _line(bar, out, f"[{i}/{len(runs)}] {run.label} ({run.run_id}): skipped, already ok")
                bar.update(1)
                continue
            problem = dependency_problem(run, results)
            if problem:
                entry = fail_without_running(run, results, problem, spec.name)
                index.set_run(results, run.run_id, label=run.label, **entry)
            else:
                entry = run_one(run, results, spec, grace_s)
            status = entry["status"]
            counts["ok" if status == "ok" else "failed"] += 1
            detail = f" - {entry['error']}" if status != "ok" and entry.get("error") else ""
            _line(bar, out, f"[{i}/{len(runs)}] {run.label} ({run.run_id}): {status} in {entry['seconds']:.1f} s{detail}")
            bar.update(1)
    except KeyboardInterrupt:
        if run is not None:
            _line(bar, out, f"[{i}/{len(runs)}] {run.label} ({run.run_id}): interrupted")
        bar.close()
        print(_summary(spec, results, counts, interrupted=True), file=out, flush=True)
        return 130
    finally:
        restore()
        bar.close()
    print(_summary(spec, results, counts), file=out, flush=True)
    return 0 if counts["failed"] == 0 else 1


def _line(bar: Any, out: IO[str], text: str) -> None:
    bar.write(text, file=out)
    out.flush()


def _summary(spec: SweepSpec, results: Path, counts: dict[str, int], interrupted: bool = False) -> str:
    head = "interrupted" if interrupted else "done"
    return (
        f"sweep {spec.name} {head}: {counts['ok']} ok, {counts['skipped']} skipped (already ok), "
        f"{counts['failed']} failed; results in {results / index.INDEX_NAME}"
    )


def _sigterm_as_interrupt() -> Callable[[], None]:
    """SIGTERM (scancel, kill) is handled like Ctrl-C: the current run is killed and recorded 'interrupted'."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


# --- cluster array tasks --------------------------------------------------------------------------------


def _load_emitted(plan_path: Path, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], PlannedRun]:
    data = json.loads(Path(plan_path).read_text())
    for item in data["plan"]:
        if item["run_id"] == run_id:
            return data["spec"], data["plan"], PlannedRun.from_dict(item)
    raise UserError(f"{plan_path}: no run {run_id} in the plan")


def start_task(plan_path: Path, results: Path, run_id: str) -> int:
    """Before an array task launches its run: 0 go, EXIT_SKIP already ok, EXIT_DEPENDENCY pre-training failed."""
    spec, planned, run = _load_emitted(plan_path, run_id)
    results = Path(results)
    if not (results / index.INDEX_NAME).exists():
        index.init_index(results, spec, planned)
    if index.record_status(index.run_dir(results, run_id)) == "ok":
        index.set_run(results, run_id, status="ok", label=run.label)
        return EXIT_SKIP
    problem = dependency_problem(run, results)
    if problem:
        entry = fail_without_running(run, results, problem, spec["name"])
        index.set_run(results, run_id, label=run.label, **entry)
        print(f"{run.label}: {problem}", file=sys.stderr)
        return EXIT_DEPENDENCY
    prepare_run_dir(run, results)
    index.set_run(results, run_id, status="running", label=run.label, started_at=utc_now(), host=os.uname().nodename)
    return 0


def finish_task(plan_path: Path, results: Path, run_id: str, exit_code: int, seconds: float) -> int:
    """After the launch: settle the record like the local runner; returns 0 when the run is ok."""
    spec, _, run = _load_emitted(plan_path, run_id)
    reason = None
    if exit_code == 124:  # coreutils timeout
        reason = f"timed out after {spec.get('timeout_s'):g} s; killed"
    if exit_code > 128 and exit_code - 128 in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
        exit_code = -(exit_code - 128)
    entry = settle(run, index.run_dir(results, run_id), Outcome(exit_code, seconds, reason), spec["name"])
    index.set_run(Path(results), run_id, **entry)
    print(f"{run.label} ({run_id}): {entry['status']} in {seconds:.1f} s" + (f" - {entry['error']}" if entry["error"] else ""))
    return 0 if entry["status"] == "ok" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep.runner", description="Helpers called by emitted array jobs.")
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("start-task", "finish-task"):
        p = sub.add_parser(name)
        p.add_argument("--plan", required=True, type=Path, help="plan.json written by `bratsbench sweep emit`")
        p.add_argument("--results", required=True, type=Path, help="the sweep's results folder")
        p.add_argument("--run-id", required=True, help="the run this array task owns")
        if name == "finish-task":
            p.add_argument("--exit-code", required=True, type=int, help="exit status of the launcher")
            p.add_argument("--seconds", type=float, default=0.0, help="wall time of the launch")
    args = parser.parse_args(argv)
    try:
        if args.step == "start-task":
            return start_task(args.plan, args.results, args.run_id)
        return finish_task(args.plan, args.results, args.run_id, args.exit_code, args.seconds)
    except UserError as exc:
        print(f"bratsbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
