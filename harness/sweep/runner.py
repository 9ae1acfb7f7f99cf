"""Run a planned sweep on this machine, one run after another, and settle every run's record.

Each run gets RESULTS/runs/<run_id>/ (a RunDir: config, logs, the record written by the trainer). Launching,
supervision and settling live in `harness.launch`; this module adds the sweep's index (sweep.json), the
dependency rule (a transfer run needs its pre-training ok) and resumability: runs already "ok" are skipped, so
a second `sweep run` finishes only what is missing.

A run whose last attempt was preempted (it stopped on a signal with a checkpoint: record.extra.preempted)
continues from that checkpoint instead of starting over, keeping its record's history and earlier logs.

Cluster array tasks (`bratsbench sweep run-task`, harness.sweep.task) do in one allocation what `run_one` does
locally (skip if ok, fail if the pre-training failed, write the run's config, launch with
srun/mpirun/horovodrun under the sweep's timeout, settle), passes the job's stop signals on to the ranks, and
says whether a preempted run's array task should requeue itself (exit status 75); an earlier attempt that
was killed without settling (a record still "running") is recorded failed first.

`--pack` (many points in one MPI job, side by side on sub-communicators) lives in `harness.sweep.pack`, which
reuses this module's dependency rule, run folders and summary line.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import IO, Any, Sequence

from harness import launch
from harness.checkpoint import resume_problem
from harness.errors import UserError
from harness.launch import RANK_GRACE_S
from harness.record import utc_now
from harness.rundir import RunDir
from harness.sweep import index
from harness.sweep.plan import PlannedRun, plan
from harness.sweep.spec import SweepSpec

EXIT_SKIP = 3  # run-task: the run was already ok


def run_dir(results: Path, run: PlannedRun) -> RunDir:
    return RunDir(index.run_dir(results, run.run_id))


def sweep_info(run: PlannedRun, sweep: str) -> dict[str, Any]:
    keys = ("label", "kind", "np", "mode", "seed", "batch_size", "per_rank_batch", "global_batch", "freeze_depth",
            "depends_on", "scaling")
    info = {k: v for k, v in run.to_dict().items() if k in keys}
    return {"sweep": sweep, "run_id": run.run_id, **info}


def prepare_run_dir(run: PlannedRun, results: Path, resume: bool = False) -> RunDir:
    """The run's config file, with `out` = this folder, `init_from` resolved into the pre-training run's folder and
    `train.resume` when it continues from its own checkpoint."""
    folder = run_dir(results, run).create()
    cfg = run.config_for(folder.path, results)
    cfg.train.resume = resume
    folder.write_config(cfg.to_dict())
    return folder


def resume_from(run: PlannedRun, results: Path) -> tuple[bool, str | None]:
    """(whether the run continues from its checkpoint, why a preempted run cannot): its last attempt was preempted
    with a checkpoint, and that checkpoint is complete and fits the run's model."""
    folder = run_dir(results, run)
    record = folder.read_record() or {}
    preempted = (record.get("extra") or {}).get("preempted")
    if not preempted:
        return False, None
    if not preempted.get("checkpoint"):
        return False, "its preemption left no checkpoint (a benchmark run)"
    problem = resume_problem(folder.checkpoints, run.config.model)
    return problem is None, problem


def dependency_problem(run: PlannedRun, results: Path) -> str | None:
    for dep in run.depends_on:
        status = RunDir(index.run_dir(results, dep)).status()
        if status != "ok":
            how = {"failed": "failed", "interrupted": "failed", "preempted": "was preempted"}.get(status, "did not run")
            return f"dependency {dep} {how}"
    return None


def launch_command(run: PlannedRun, results: Path, launcher: str = "horovodrun") -> list[str]:
    """The local command line of one run (for --dry-run)."""
    folder = run_dir(results, run)
    launcher = launch.launcher_for(run.config.train.backend, launcher)
    return launch.launch_command(run.np, launch.bratsbench_command() + launch.train_args(folder), launcher, folder.logs)


def run_one(run: PlannedRun, results: Path, spec: SweepSpec, grace_s: float = RANK_GRACE_S, *,
            allocation: bool = False, launcher: str | None = None, srun_mpi: str = "pmix",
            hosts: str | None = None, forward: launch.Forwarder | None = None,
            job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Launch one run (continuing a preempted one from its checkpoint) and settle it. KeyboardInterrupt: the run is
    killed, recorded 'interrupted', re-raised. `forward`, `job`: an array task's signal forwarding and its job
    (kept in the run's index entry)."""
    info = {"sweep": sweep_info(run, spec.name)}
    problem = dependency_problem(run, results)
    if problem:
        entry = launch.fail_unstarted(run_dir(results, run), problem, np_=run.np, annotate=info)
        index.set_run(results, run.run_id, label=run.label, **entry)
        return entry
    resume, why_not = resume_from(run, results)
    if why_not:
        print(f"{run.label} ({run.run_id}): starts over: {why_not}", file=sys.stderr, flush=True)
    folder = prepare_run_dir(run, results, resume=resume)
    index.set_run(results, run.run_id, status="running", label=run.label, started_at=utc_now(),
                  host=os.uname().nodename, resumed=resume, **(job or {}))
    if not allocation:
        launcher = launch.launcher_for(run.config.train.backend, launcher or spec.launcher)
    try:
        entry = launch.launch_train(folder, run.np, launcher=launcher or spec.launcher, allocation=allocation,
                                    srun_mpi=srun_mpi, hosts=hosts, timeout_s=spec.timeout_s, grace_s=grace_s,
                                    annotate=info, resume=resume, forward=forward)
    except KeyboardInterrupt:
        index.set_run(results, run.run_id, status="interrupted", error="interrupted by the user")
        raise
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
    restore = launch.sigterm_as_interrupt()
    i, run = 0, None
    try:
        for i, run in enumerate(runs, 1):
            bar.set_postfix_str(run.label)
            if run_dir(results, run).status() == "ok":
                counts["skipped"] += 1
                index.set_run(results, run.run_id, status="ok", label=run.label)
                _line(bar, out, f"[{i}/{len(runs)}] {run.label} ({run.run_id}): skipped, already ok")
                bar.update(1)
                continue
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
        return sweep_exit(spec, results, counts, out, interrupted=True)
    finally:
        restore()
        bar.close()
    return sweep_exit(spec, results, counts, out)


def sweep_exit(spec: SweepSpec, results: Path, counts: dict[str, int], out: IO[str], interrupted: bool = False) -> int:
    """Print the sweep's summary line; its exit status: 130 interrupted, 1 when a run failed, else 0."""
    print(summary_line(spec, results, counts, interrupted=interrupted), file=out, flush=True)
    return 130 if interrupted else 0 if counts["failed"] == 0 else 1


def _line(bar: Any, out: IO[str], text: str) -> None:
    bar.write(text, file=out)
    out.flush()


def summary_line(spec: SweepSpec, results: Path, counts: dict[str, int], interrupted: bool = False) -> str:
    head = "interrupted" if interrupted else "done"
    return (
        f"sweep {spec.name} {head}: {counts['ok']} ok, {counts['skipped']} skipped (already ok), "
        f"{counts['failed']} failed; results in {results / index.INDEX_NAME}"
    )
