"""A rank of the packed job: for each wave, join its point's mpi4py sub-communicator and train the point
in-process with Horovod on it; a point that raises is recorded failed on its own."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness import launch
from harness.errors import UserError
from harness.launch import Outcome
from harness.record import utc_now
from harness.rundir import RunDir
from harness.sweep import index
from harness.sweep.pack.waves import waves
from harness.sweep.plan import PlannedRun
from harness.sweep.runner import dependency_problem, prepare_run_dir, run_dir, sweep_info
from harness.sweep.spec import parse_spec

SHUT_DOWN = "Horovod has been shut down"  # what the other ranks of a failed point see


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
