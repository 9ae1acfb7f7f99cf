"""Packed sweeps: many sweep points in one allocation of T ranks (`sweep run --pack T`, `sweep emit --pack T`).

Why: on a shared cluster every job queues and starts on its own, so a sweep of small runs as an array spends
its time waiting and starting. Packed, the sweep is one MPI job of T ranks. Its points are grouped into waves
(`waves`: first fit in plan order, a transfer run after its pre-training); in each wave the ranks split
MPI_COMM_WORLD with mpi4py into one sub-communicator per point, each group trains its point in-process with
Horovod on that communicator (`hvd.init(comm=...)`), shuts Horovod down, and all ranks meet at a barrier before
the next wave.

Records are those of unpacked runs: the same run folders and per-rank logs, settled by the same rule
(`launch.settle`); `extra.pack` says where a point ran. A point that raises is recorded failed on its own (its
group's other ranks get Horovod's shut-down error, not a hang). A rank that dies (kill -9, a crash) takes the
MPI job down: the parent (`run_packed`) then runs the points that were in flight again, each alone in its wave,
so the point that crashed fails alone; a point over the sweep's timeout_s is recorded failed by its own watchdog.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from harness import launch
from harness.errors import UserError
from harness.launch import Outcome
from harness.outdir import ensure_output_dir
from harness.record import utc_now
from harness.rundir import RunDir
from harness.sweep import index
from harness.sweep.plan import PlannedRun, plan
from harness.sweep.runner import dependency_problem, prepare_run_dir, run_dir, select, sweep_exit, sweep_info
from harness.sweep.spec import SweepSpec, parse_spec

PACK_LOGS = "pack"  # RESULTS/pack/<launch>.log: the packed job's own output (each point logs in its run folder)
START_SLACK_S = 120.0  # the job's limit: waves x timeout_s plus this, for start-up and barriers
SHUT_DOWN = "Horovod has been shut down"  # what the other ranks of a failed point see


# --- the plan: waves --------------------------------------------------------------------------------------


def check_packable(runs: Sequence[PlannedRun], slots: int) -> None:
    """Everything that would stop a packed sweep, before anything runs."""
    if slots < 1:
        raise UserError(f"--pack {slots}: the allocation needs at least 1 rank")
    from harness.engines import default_backend

    for run in runs:
        if run.np > slots:
            raise UserError(f"--pack {slots}: point {run.label} ({run.run_id}) needs np={run.np} ranks, more than the "
                            f"{slots} of the allocation")
    for run in runs:
        backend = run.config.train.backend or default_backend()
        if backend != "horovod":
            raise UserError(f"--pack: point {run.label} uses backend {backend}; packing runs Horovod points on mpi4py "
                            "sub-communicators (MWMS cannot share a process); run it unpacked")


def waves(runs: Sequence[PlannedRun], slots: int, alone: frozenset[str] | set[str] = frozenset()) -> list[list[PlannedRun]]:
    """Points grouped into waves of at most `slots` ranks: each point goes, in plan order, into the first wave
    with room that comes after the waves of its dependencies (those among `runs`). A point in `alone` fills a
    wave by itself."""
    where: dict[str, int] = {}
    used: list[int] = []
    out: list[list[PlannedRun]] = []
    for run in runs:
        if run.np > slots:
            raise UserError(f"--pack {slots}: point {run.label} needs np={run.np} ranks")
        need = slots if run.run_id in alone else run.np
        w = max((where[d] + 1 for d in run.depends_on if d in where), default=0)
        while w < len(used) and used[w] + need > slots:
            w += 1
        if w == len(used):
            used.append(0)
            out.append([])
        used[w] += need
        out[w].append(run)
        where[run.run_id] = w
    return out


def format_waves(groups: list[list[PlannedRun]], slots: int) -> str:
    lines = []
    for w, group in enumerate(groups):
        used = sum(r.np for r in group)
        points = ", ".join(f"{r.label} (np={r.np})" for r in group)
        lines.append(f"wave {w + 1}: {used}/{slots} ranks: {points}")
    return "\n".join(lines)


# --- the parent: launch the packed job, follow it, settle what it left -----------------------------------


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


# --- the worker: one process per rank of the packed job ---------------------------------------------------


class PackWorker:
    """A rank of the packed job: for each wave, join its point's sub-communicator and train the point."""

    def __init__(self, results: Path, run_ids: Sequence[str], alone: Sequence[str], launch_id: str):
        from mpi4py import MPI

        self.MPI = MPI
        self.world = MPI.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.node_rank, self.node_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.results, self.launch_id = results, launch_id
        data = index.read_index(results)
        if not data.get("plan"):
            raise UserError(f"{results / index.INDEX_NAME}: no sweep plan (start packed sweeps with `bratsbench sweep run --pack`)")
        self.spec = parse_spec(data["spec"], origin=str(results / index.INDEX_NAME))
        by_id = {item["run_id"]: PlannedRun.from_dict(item) for item in data["plan"]}
        missing = [rid for rid in run_ids if rid not in by_id]
        if missing:
            raise UserError(f"{results / index.INDEX_NAME}: no run {missing[0]} in the plan")
        self.runs = [by_id[rid] for rid in run_ids]
        self.alone = set(alone)

    def run(self) -> int:
        for w, group in enumerate(waves(self.runs, self.size, self.alone), 1):
            points = self._start_wave(group, w) if self.rank == 0 else None
            points = self.world.bcast(points, root=0)
            mine = next((p for p in points if p["first"] <= self.rank < p["first"] + p["np"]), None)
            color = points.index(mine) if mine else self.MPI.UNDEFINED
            sub = self.world.Split(color, key=self.rank)
            if mine is not None:
                run = next(r for r in group if r.run_id == mine["run_id"])
                try:
                    self._run_point(run, sub, w, mine["first"])
                finally:
                    sub.Free()
            self.world.Barrier()
        return 0

    def _start_wave(self, group: list[PlannedRun], w: int) -> list[dict[str, Any]]:
        """Rank 0: which points of the wave run, on which ranks; points that cannot run are settled here."""
        points, first = [], 0
        for run in group:
            if run_dir(self.results, run).status() == "ok":
                index.set_run(self.results, run.run_id, status="ok", label=run.label, launch=self.launch_id,
                              wave=w, seconds=0.0)
                continue
            problem = dependency_problem(run, self.results)
            if problem:
                entry = launch.fail_unstarted(run_dir(self.results, run), problem, np_=run.np,
                                              annotate={"sweep": sweep_info(run, self.spec.name)})
                index.set_run(self.results, run.run_id, label=run.label, launch=self.launch_id, wave=w, **entry)
                continue
            points.append({"run_id": run.run_id, "np": run.np, "first": first})
            first += run.np
        return points

    def _run_point(self, run: PlannedRun, sub: Any, w: int, first: int) -> None:
        srank = sub.Get_rank()
        folder = run_dir(self.results, run)
        info = {"sweep": sweep_info(run, self.spec.name)}
        pack = {"slots": self.size, "wave": w, "ranks": list(range(first, first + run.np)), "launch": self.launch_id}
        if srank == 0:
            prepare_run_dir(run, self.results)
            folder.reset_logs()
            folder.record.unlink(missing_ok=True)
            index.set_run(self.results, run.run_id, status="running", label=run.label, started_at=utc_now(),
                          started_s=time.time(), host=os.uname().nodename, launch=self.launch_id, wave=w, error=None)
        sub.Barrier()  # the logs folder exists before any rank writes into it
        cfg = run.config_for(folder.path, self.results)
        start = time.monotonic()
        watchdog = threading.Timer(self.spec.timeout_s, self._expire, args=(run, folder, srank, start, info, w))
        watchdog.daemon = True
        code, error = 0, None
        with _redirected(folder.rank_log(srank, "stdout"), folder.rank_log(srank, "stderr")):
            watchdog.start()
            engine = None
            try:
                from harness.engines import make_engine
                from harness.train.trainer import train

                engine = make_engine("horovod", comm=sub, node_rank=self.node_rank, node_size=self.node_size)
                record = train(cfg, engine=engine, started_at=time.time())
                code = 0 if record.get("status") == "ok" else 1
            except UserError as exc:
                code, error = 2, str(exc)
                print(f"bratsbench: error: {exc}", file=sys.stderr, flush=True)
            except Exception as exc:  # recorded by the trainer; the other points of the wave go on
                code, error = 1, f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            finally:
                watchdog.cancel()
                if engine is not None:
                    engine.shutdown()  # a peer still in a collective gets an error, not a hang
                _reset_tensorflow()
        results = sub.gather((code, error), root=0)
        if srank == 0:
            self._settle(run, folder, results, time.monotonic() - start, {**info, "pack": pack}, w)

    def _settle(self, run: PlannedRun, folder: RunDir, results: list[tuple[int, str | None]], seconds: float,
                annotate: dict[str, Any], w: int) -> None:
        code = next((c for c, _ in results if c), 0)
        record = folder.read_record()
        # the rank that failed first has the reason; the others only saw Horovod shut down
        reasons = [(r, e) for r, (c, e) in enumerate(results) if c and e]
        first = next(((r, e) for r, e in reasons if SHUT_DOWN not in e), reasons[0] if reasons else None)
        if record is not None and first is not None and record.get("status") != "ok":
            record["error"] = first[1] if first[0] == 0 else f"rank {first[0]}: {first[1]}"
            folder.write_record(record)
        # no record at all (the run failed before the trainer wrote one): the error itself is the reason
        reason = first[1] if record is None and first is not None else None
        entry = launch.settle(folder, Outcome(code, seconds, reason), np_=run.np, annotate=annotate)
        index.set_run(self.results, run.run_id, launch=self.launch_id, wave=w, **entry)

    def _expire(self, run: PlannedRun, folder: RunDir, srank: int, start: float, info: dict[str, Any], w: int) -> None:
        """The point ran past the sweep's timeout_s: record it failed and end the job (the parent runs the rest)."""
        if srank == 0:
            reason = f"timed out after {self.spec.timeout_s:g} s; killed"
            entry = launch.settle(folder, Outcome(124, time.monotonic() - start, reason), np_=run.np, annotate=info)
            index.set_run(self.results, run.run_id, launch=self.launch_id, wave=w, **entry)
        else:
            time.sleep(5.0)  # let sub-rank 0 write the record first
        sys.stderr.flush()
        os._exit(124)


@contextlib.contextmanager
def _redirected(stdout: Path, stderr: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors too: TensorFlow's C++ log) into a point's rank logs."""
    stdout.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    files = [open(stdout, "ab"), open(stderr, "ab")]
    try:
        os.dup2(files[0].fileno(), 1)
        os.dup2(files[1].fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for fh in files:
            fh.close()


def _reset_tensorflow() -> None:
    """What one point leaves in the process that the next must not see: Keras's graph, names and policy."""
    import tensorflow as tf

    tf.keras.backend.clear_session()
    tf.keras.mixed_precision.set_global_policy("float32")
    tf.config.optimizer.set_jit(False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep.pack",
                                     description="The packed job's ranks (started by `bratsbench sweep run --pack`).")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("worker", help="one rank of the packed job")
    p.add_argument("--results", required=True, type=Path)
    p.add_argument("--launch", required=True, help="this launch's ID (written into the index entries)")
    p.add_argument("--runs", required=True, help="comma-separated run IDs, in plan order")
    p.add_argument("--alone", default="", help="comma-separated run IDs that run alone in their wave")
    p = sub.add_parser("run", help="inside an allocation: run an emitted sweep packed into its ranks")
    p.add_argument("--plan", required=True, type=Path, help="plan.json written by `bratsbench sweep emit --pack`")
    p.add_argument("--results", required=True, type=Path)
    p.add_argument("--slots", required=True, type=int, help="ranks of the allocation")
    p.add_argument("--launcher", default="srun", choices=("srun", "mpirun"))
    p.add_argument("--srun-mpi", default="pmix")
    args = parser.parse_args(argv)
    try:
        if args.step == "worker":
            ids = [x for x in args.runs.split(",") if x]
            return PackWorker(args.results, ids, [x for x in args.alone.split(",") if x], args.launch).run()
        try:
            data = json.loads(args.plan.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{args.plan}: cannot read the emitted plan ({exc})") from None
        spec = parse_spec(data["spec"], origin=str(args.plan))
        return run_packed(spec, args.results, args.slots, launcher=args.launcher, allocation=True,
                          srun_mpi=args.srun_mpi)
    except UserError as exc:
        print(f"bratsbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
