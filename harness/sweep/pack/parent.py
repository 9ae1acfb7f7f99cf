"""The parent of a packed sweep: launch the packed job, follow it, settle what it left.

A rank that dies takes the whole MPI job down; the parent then runs the points that were in flight again, each
alone in its wave, so the point that crashed fails alone and the others finish.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Sequence

from harness import launch
from harness.errors import UserError
from harness.launch import Outcome
from harness.outdir import ensure_output_dir
from harness.sweep import index
from harness.sweep.pack.waves import check_packable, format_waves, waves
from harness.sweep.plan import PlannedRun, plan
from harness.sweep.runner import run_dir, select, sweep_exit, sweep_info
from harness.sweep.spec import SweepSpec

PACK_LOGS = "pack"  # RESULTS/pack/<launch>.log: the packed job's own output (each point logs in its run folder)
START_SLACK_S = 120.0  # the job's limit: waves x timeout_s plus this, for start-up and barriers


def worker_command(results: Path, slots: int, run_ids: Sequence[str], alone: Sequence[str], launch_id: str,
                   launcher: str, *, allocation: bool = False, srun_mpi: str = "pmix") -> list[str]:
    """The packed job: `slots` ranks of `python -m harness.sweep.pack worker` (their output: RESULTS/pack/ID.log)."""
    cmd = [sys.executable, "-m", "harness.sweep.pack", "worker", "--results", str(results), "--launch", launch_id,
           "--runs", ",".join(run_ids)]
    if alone:
        cmd += ["--alone", ",".join(alone)]
    # ranks are started by mpirun (locally) or srun (in an allocation); horovodrun's Gloo has no communicators
    launcher = "srun" if launcher == "srun" else "mpirun"
    return launch.launch_command(slots, cmd, launcher, allocation=allocation, srun_mpi=srun_mpi)


def run_packed(
    spec: SweepSpec,
    results: str | Path,
    slots: int,
    *,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    out: IO[str] | None = None,
    launcher: str = "mpirun",
    allocation: bool = False,
    srun_mpi: str = "pmix",
    poll_s: float = 1.0,
) -> int:
    """Run the sweep packed into one job of `slots` ranks; 0 when every selected run is ok, 1 when any failed,
    130 when interrupted. Points already ok are skipped, so a second call finishes only what is missing."""
    out = out or sys.stdout
    results = Path(results).resolve()
    planned = plan(spec)
    runs = select(planned, only)
    check_packable(runs, slots)
    if not allocation and slots > 1 and shutil.which("mpirun") is None:
        raise UserError(f"--pack {slots}: mpirun (Open MPI) is not on PATH; it starts the packed job's ranks")
    shared = [r.label for g in waves(runs, slots) if len(g) > 1 for r in g if r.config.train.benchmark]
    if shared:  # a timing sweep wants each point alone on its cores
        print(f"bratsbench: warning: --pack {slots}: {len(shared)} benchmark point(s) (e.g. {shared[0]}) are timed side "
              "by side with other points; their throughputs are not those of points run alone", file=sys.stderr)
    if dry_run:
        print(format_waves(waves(runs, slots), slots), file=out)
        print(shlex.join(worker_command(results, slots, [r.run_id for r in runs], [], "DRY-RUN", launcher,
                                        allocation=allocation, srun_mpi=srun_mpi)), file=out)
        return 0
    ensure_output_dir(results)  # only now: a bad --pack writes nothing
    index.init_index(results, spec.to_dict(), [r.to_dict() for r in planned])
    from tqdm import tqdm

    counts = {"ok": 0, "skipped": 0, "failed": 0}
    position = {r.run_id: i for i, r in enumerate(runs, 1)}
    bar = tqdm(total=len(runs), desc=f"{spec.name} (packed, {slots} ranks)", unit="run", file=sys.stderr, dynamic_ncols=True)

    def line(run: PlannedRun, text: str) -> None:
        bar.write(f"[{position[run.run_id]}/{len(runs)}] {run.label} ({run.run_id}): {text}", file=out)
        out.flush()
        bar.update(1)

    todo = []
    for run in runs:
        if run_dir(results, run).status() == "ok":
            counts["skipped"] += 1
            index.set_run(results, run.run_id, status="ok", label=run.label)
            line(run, "skipped, already ok")
        else:
            todo.append(run)
    alone: set[str] = set()
    restore = launch.sigterm_as_interrupt()
    try:
        while todo:
            todo, alone = _one_launch(spec, results, slots, todo, alone, counts, line, launcher=launcher,
                                      allocation=allocation, srun_mpi=srun_mpi, poll_s=poll_s)
    except KeyboardInterrupt:
        bar.close()
        return sweep_exit(spec, results, counts, out, interrupted=True)
    finally:
        restore()
        bar.close()
    return sweep_exit(spec, results, counts, out)


def _one_launch(spec: SweepSpec, results: Path, slots: int, todo: list[PlannedRun], alone: set[str],
                counts: dict[str, int], line: Any, **how: Any) -> tuple[list[PlannedRun], set[str]]:
    """One packed job over `todo`; returns the points to run again (and which of them must run alone)."""
    launch_id = uuid.uuid4().hex[:12]
    log = results / PACK_LOGS / f"{launch_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = worker_command(results, slots, [r.run_id for r in todo], sorted(alone), launch_id, how["launcher"],
                         allocation=how["allocation"], srun_mpi=how["srun_mpi"])
    limit = len(waves(todo, slots, alone)) * spec.timeout_s + START_SLACK_S
    reported: set[str] = set()

    def report() -> None:
        """A line (and a count) for each point this launch has settled since the last call."""
        runs = index.read_index(results).get("runs", {})
        for run in todo:
            entry = runs.get(run.run_id, {})
            if run.run_id in reported or entry.get("launch") != launch_id or entry.get("status") in (None, "running", "pending"):
                continue
            reported.add(run.run_id)
            status = entry["status"]
            counts["ok" if status == "ok" else "failed"] += 1
            detail = f" - {entry['error']}" if status != "ok" and entry.get("error") else ""
            line(run, f"{status} in {entry.get('seconds', 0.0):.1f} s (packed, wave {entry.get('wave', '?')}){detail}")

    try:
        outcome = _watch(cmd, log, limit, report, how["poll_s"])
    except KeyboardInterrupt:
        _settle_in_flight(results, todo, launch_id, Outcome(130, 0.0), status="interrupted")
        raise
    report()
    if outcome.exit_code == 0 and outcome.reason is None:
        for run in [r for r in todo if r.run_id not in reported]:  # left alone by a job that ended well: should not happen
            entry = launch.fail_unstarted(run_dir(results, run), "the packed job ended without running this point",
                                          np_=run.np, annotate={"sweep": sweep_info(run, spec.name)})
            index.set_run(results, run.run_id, label=run.label, launch=launch_id, **entry)
            counts["failed"] += 1
            line(run, "failed - the packed job ended without running this point")
        return [], set()
    return _after_crash(results, todo, alone, launch_id, outcome, log, report, reported)


def _watch(cmd: list[str], log: Path, limit: float, report: Any, poll_s: float) -> Outcome:
    """Run the packed job supervised in a thread, calling `report` every `poll_s` until it ends; on Ctrl-C,
    SIGTERM (scancel) or a bug here, kill it before re-raising: the job must not outlive the sweep."""
    box: dict[str, Any] = {}
    stop, done = threading.Event(), threading.Event()

    def job() -> None:
        try:
            with open(log, "ab") as fh:
                box["outcome"] = launch.supervise(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout_s=limit,
                                                  env=launch.launch_env(), stop=stop)
        except BaseException as exc:  # KeyboardInterrupt from `stop`: the tree is already killed
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=job, daemon=True).start()
    try:
        while not done.wait(timeout=poll_s):
            report()
    except BaseException:
        stop.set()
        # an Event, not thread.join(): a join that Ctrl-C interrupted returns at once the next time (CPython 3.11)
        while not done.wait(timeout=1.0):
            pass
        raise
    return box.get("outcome") or Outcome(None, 0.0, f"the packed job could not start: {box.get('error')}")


def _after_crash(results: Path, todo: list[PlannedRun], alone: set[str], launch_id: str, outcome: Outcome,
                 log: Path, report: Any, reported: set[str]) -> tuple[list[PlannedRun], set[str]]:
    """The job died: the points it was running run again, each alone, unless they already ran alone (then they
    are the culprit and fail); the points it never reached run again as they were."""
    why = outcome.reason or launch.describe(outcome, None, launch.file_tail(log))
    in_flight = _in_flight(results, todo, launch_id)
    retry_alone = {rid for rid in in_flight if rid not in alone}
    blame = [r for r in todo if r.run_id in in_flight and r.run_id in alone]
    _settle_in_flight(results, blame, launch_id, outcome, reason=f"the packed job died while this point ran alone: {why}")
    report()
    again = [r for r in todo if r.run_id not in reported]
    if not in_flight and len(again) == len(todo):  # nothing started at all: not the points' fault
        raise UserError(f"the packed job exited before running any point: {why} (log: {log})")
    for run in again:
        if run.run_id in retry_alone:
            index.set_run(results, run.run_id, status="pending", label=run.label,
                          error=f"the packed job died while it ran ({why}); running it again alone")
    return again, (alone & {r.run_id for r in again}) | retry_alone


def _in_flight(results: Path, todo: list[PlannedRun], launch_id: str) -> set[str]:
    runs = index.read_index(results).get("runs", {})
    return {r.run_id for r in todo if runs.get(r.run_id, {}).get("launch") == launch_id
            and runs[r.run_id].get("status") == "running"}


def _settle_in_flight(results: Path, runs: list[PlannedRun], launch_id: str, outcome: Outcome, *,
                      status: str | None = None, reason: str | None = None) -> None:
    in_flight = _in_flight(results, runs, launch_id)
    entries = index.read_index(results).get("runs", {})
    for run in runs:
        if run.run_id in in_flight:
            folder = run_dir(results, run)
            started = entries[run.run_id].get("started_s")
            seconds = time.time() - started if started else outcome.seconds
            entry = launch.settle(folder, Outcome(outcome.exit_code, seconds, reason), np_=run.np, status=status)
            index.set_run(results, run.run_id, launch=launch_id, **entry)
