"""One emitted array task inside its allocation (`bratsbench sweep run-task`, the line every job file runs).

What it adds to the local runner's `run_one`:
- the job: its ID (array job and task), how often the scheduler restarted it (SLURM_RESTART_COUNT), its time
  limit and when that ends; kept in the run's sweep.json entry, for the next attempt to read;
- an earlier attempt killed without settling (its record still says "running": the wall-time limit's SIGKILL
  came before the run could checkpoint, a lost node, a SIGKILL) is recorded failed, saying which and in what
  job, before anything else; it runs again only where that cannot end the same way (not a wall-time kill under
  a time limit no longer than the one it hit);
- stop signals (the batch shell passes the scheduler's warning on; SIGTERM at scancel or the time limit) go to
  the ranks, which checkpoint at a step they agree on (harness.launch.forward), instead of killing the run;
- after a preemption: whether the array task requeues itself. Exit status EXIT_PREEMPTED (75) asks the job file
  to `scontrol requeue` this array task; never after a SIGTERM (the job is ending: scancel, its time limit, or the
  scheduler's own preemption, which requeues by itself where the site allows it), and not once the job has been
  requeued `max_requeues` times: the run is then recorded failed, saying so; its checkpoint stays, and a later
  submission resumes it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from harness import launch
from harness.errors import EXIT_PREEMPTED, UserError
from harness.record import utc_now
from harness.rundir import RunDir
from harness.sweep import index
from harness.sweep.plan import PlannedRun
from harness.sweep.runner import EXIT_SKIP, run_dir, run_one
from harness.sweep.spec import SweepSpec

WALL_SLACK_S = 180.0  # a run whose logs stopped this close to its job's end was killed by the time limit


def _seconds(limit: str) -> float | None:
    """squeue's %l ("1-02:03:04", "02:03:04", "3:04" = minutes:seconds) in seconds; None for UNLIMITED."""
    days, _, rest = limit.strip().rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        d = int(days) if days else 0
    except ValueError:
        return None
    if len(parts) == 2:
        parts.insert(0, 0)
    if len(parts) != 3:
        return None
    h, m, s = parts
    return float(d * 86400 + h * 3600 + m * 60 + s)


def job_info(env: dict[str, str] | None = None) -> dict[str, Any]:
    """This array task's job: {"job": "12_3", "restarts": n, "ends_at": ISO UTC or None, "time_limit_s"}; {} when
    not under a scheduler. The end time comes from `squeue` (SLURM); PBS gives none."""
    env = dict(os.environ if env is None else env)
    if env.get("SLURM_JOB_ID"):
        array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        info: dict[str, Any] = {"job": f"{array}_{task}" if array and task else env["SLURM_JOB_ID"],
                                "restarts": int(env.get("SLURM_RESTART_COUNT") or 0), "ends_at": None,
                                "time_limit_s": None}
        try:
            out = subprocess.run(["squeue", "-h", "-j", env["SLURM_JOB_ID"], "-o", "%e|%l"], capture_output=True,
                                 text=True, timeout=30, env=env).stdout.strip().splitlines()
            end, limit = out[0].split("|")
            info["ends_at"] = dt.datetime.fromisoformat(end).astimezone(dt.timezone.utc).isoformat(timespec="seconds")
            info["time_limit_s"] = _seconds(limit)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass  # no squeue answer: the wall time cannot be told apart, the rest still works
        return info
    if env.get("PBS_JOBID"):
        return {"job": env["PBS_JOBID"], "restarts": 0, "ends_at": None, "time_limit_s": None}
    return {}


def _last_activity(folder: RunDir) -> dt.datetime | None:
    """When the run last wrote anything (record or logs): about when it was killed."""
    times = [p.stat().st_mtime for p in [folder.record, *folder.logs.rglob("*")] if p.is_file()]
    return dt.datetime.fromtimestamp(max(times), dt.timezone.utc) if times else None


def stale_attempt(results: Path, run: PlannedRun, job: dict[str, Any]) -> tuple[str, bool] | None:
    """(why, run it again) for a run whose record still says "running" while no attempt of it runs (this task
    is the one that owns it); None when there is none."""
    folder = run_dir(results, run)
    record = folder.read_record()
    if not record or record.get("status") != "running":
        return None
    before = index.read_index(results).get("runs", {}).get(run.run_id, {})
    where = f"job {before['job']}" if before.get("job") else "an earlier attempt"
    ended, last = before.get("ends_at"), _last_activity(folder)
    at_limit = bool(ended and last and last >= dt.datetime.fromisoformat(ended) - dt.timedelta(seconds=WALL_SLACK_S))
    if at_limit:
        limit = before.get("time_limit_s")
        why = (f"killed at the wall-time limit of {where} (--time {_hms(limit)}) while running, before it could "
               "write a checkpoint on a signal")
        longer = limit is not None and (job.get("time_limit_s") or 0) > limit
        return why, longer
    return f"killed while running in {where} without a checkpoint on a signal (SIGKILL, a lost node or a requeue)", True


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _record_failed(folder: RunDir, run: PlannedRun, results: Path, error: str) -> None:
    """The run's record (and index entry) says failed with `error`; the checkpoint and history stay."""
    record = folder.read_record() or launch.blank_record(folder, run.np)
    record.update(status="failed", error=error, exit_code=record.get("exit_code") if record.get("status") == "preempted" else None)
    if not record.get("finished_at") or record.get("status") == "running":
        record["finished_at"] = utc_now()
    folder.write_record(record)
    index.set_run(results, run.run_id, status="failed", error=error, label=run.label)


def after_preemption(folder: RunDir, run: PlannedRun, results: Path, got_term: bool, job: dict[str, Any],
                     max_requeues: int | None) -> int:
    """EXIT_PREEMPTED when this array task should requeue itself, else 1 (with the reason printed, and recorded
    when it is the requeue cap)."""
    record = folder.read_record() or {}
    info = record.get("extra", {}).get("preempted") or {}
    step, sig = info.get("step"), info.get("signal")
    head = f"{run.label} ({run.run_id}): {launch.preempted_line(record)}"
    if got_term or sig == "TERM":
        print(f"{head}; the job is ending (SIGTERM: scancel, its time limit or the scheduler's preemption), so it is "
              "not requeued here; submitting the array again resumes it", flush=True)
        return 1
    if max_requeues is None or not job:
        print(f"{head}; submitting again resumes it", flush=True)
        return 1
    restarts = int(job.get("restarts") or 0)
    if restarts >= max_requeues:
        error = (f"preempted by SIG{sig} at step {step} after {restarts} requeue(s) of array task {job.get('job')}: "
                 f"--max-requeues {max_requeues} reached; its checkpoint stays, submitting again resumes it")
        _record_failed(folder, run, results, error)
        print(f"{run.label} ({run.run_id}): failed - {error}", flush=True)
        return 1
    index.set_run(results, run.run_id, requeues=restarts + 1)
    print(f"{head}; requeueing array task {job.get('job')} ({restarts + 1} of at most {max_requeues})", flush=True)
    return EXIT_PREEMPTED


def run_task(spec: SweepSpec, planned: list[dict[str, Any]], run: PlannedRun, results: Path, launcher: str,
             srun_mpi: str = "pmix", tasks_per_node: int | None = None, max_requeues: int | None = None) -> int:
    """One array task: 0 ok, EXIT_SKIP already ok, EXIT_PREEMPTED requeue me, 1 failed or preempted (recorded)."""
    results = Path(results)
    if not (results / index.INDEX_NAME).exists():
        index.init_index(results, spec.to_dict(), planned)
    folder = run_dir(results, run)
    if folder.status() == "ok":
        index.set_run(results, run.run_id, status="ok", label=run.label)
        print(f"{run.label}: already ok, skipped")
        return EXIT_SKIP
    job = job_info()
    stale = stale_attempt(results, run, job)
    if stale is not None:
        why, again = stale
        _record_failed(folder, run, results, why)
        print(f"{run.label} ({run.run_id}): failed - {why}" + ("; running it again" if again else
              "; not run again under the same time limit: emit with a longer --time (or a --warning-s that leaves "
              "time to checkpoint) and submit again"), flush=True)
        if not again:
            return 1
    hosts = launch.allocation_hosts(tasks_per_node or run.np) if launcher == "horovodrun" and run.np > 1 else None
    # a signal waits until the ranks have installed their handlers (the trainer's record then says "running")
    with launch.Forwarder(ready=lambda: folder.status() == "running") as forward:
        try:
            entry = run_one(run, results, spec, allocation=True, launcher=launcher, srun_mpi=srun_mpi, hosts=hosts,
                            forward=forward, job=job)
        except KeyboardInterrupt:
            return 130
    if entry["status"] == "preempted":
        return after_preemption(folder, run, results, forward.got("SIGTERM"), job, max_requeues)
    print(f"{run.label} ({run.run_id}): {entry['status']} in {entry['seconds']:.1f} s"
          + (f" - {entry['error']}" if entry["error"] else ""), flush=True)
    if entry["status"] == "failed" and forward.got("SIGTERM") and job.get("ends_at"):
        _note_wall_time(folder, run, results, job)
    return 0 if entry["status"] == "ok" else 1


def _note_wall_time(folder: RunDir, run: PlannedRun, results: Path, job: dict[str, Any]) -> None:
    """A run that died on the SIGTERM of its job's time limit (it could not checkpoint): the record says so."""
    ends = dt.datetime.fromisoformat(job["ends_at"])
    if dt.datetime.now(dt.timezone.utc) < ends - dt.timedelta(seconds=WALL_SLACK_S):
        return
    record = folder.read_record() or {}
    error = (f"killed at the wall-time limit of job {job.get('job')} (--time {_hms(job.get('time_limit_s'))}) "
             f"before it could write a checkpoint ({record.get('error') or 'SIGTERM'})")
    _record_failed(folder, run, results, error)
    print(f"{run.label} ({run.run_id}): {error}", flush=True)


def load_emitted(plan_path: Path, run_id: str) -> tuple[SweepSpec, list[dict[str, Any]], PlannedRun]:
    from harness.sweep.spec import parse_spec

    try:
        data = json.loads(Path(plan_path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{plan_path}: cannot read the emitted plan ({exc})") from None
    for item in data["plan"]:
        if item["run_id"] == run_id:
            return parse_spec(data["spec"], origin=str(plan_path)), data["plan"], PlannedRun.from_dict(item)
    raise UserError(f"{plan_path}: no run {run_id} in the plan")


def main(plan: Path, results: Path, run_id: str, launcher: str, srun_mpi: str = "pmix",
         tasks_per_node: int | None = None, max_requeues: int | None = None) -> int:
    """`bratsbench sweep run-task`: check the options, load the plan, run the task."""
    if max_requeues is not None and max_requeues < 0:
        raise UserError(f"--max-requeues {max_requeues} must be >= 0")
    if launcher not in launch.LAUNCHERS:
        raise UserError(f"--launcher {launcher!r} is not one of {', '.join(launch.LAUNCHERS)}")
    spec, planned, run = load_emitted(plan, run_id)
    return run_task(spec, planned, run, results, launcher, srun_mpi, tasks_per_node, max_requeues)

