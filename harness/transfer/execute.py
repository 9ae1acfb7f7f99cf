"""Running a transfer study: each run is a real `bratsbench train` launched through `harness.launch` (horovodrun
for np > 1), then a test-set `bratsbench evaluate`. Finished runs are reused, so a re-run only does what is
missing and the pre-training happens once per seed and config.

Runs are independent except that fine-tuning waits for its pre-training run, so `parallel` > 1 runs several side
by side, each pinned to its own share of this process's cores (one core each on a 2-core machine): on a CPU,
two one-core runs finish sooner than two two-core runs one after the other, as Conv3D does not scale linearly
with threads.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from harness import launch
from harness.errors import UserError
from harness.metrics import REGIONS
from harness.rundir import RunDir
from harness.transfer.plan import StudyRun


def core_slots(parallel: int, np_: int = 1, cores: list[int] | None = None) -> list[list[int]]:
    """Split the cores this process may use into `parallel` disjoint sets of at least `np_` cores each."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else sorted(cores)
    if parallel < 1:
        raise UserError(f"--parallel {parallel} must be at least 1")
    if parallel * np_ > len(cores):
        raise UserError(f"--parallel {parallel} with --np {np_} needs {parallel * np_} cores; this process may use {len(cores)}")
    share = len(cores) // parallel
    return [cores[i * share:(i + 1) * share] for i in range(parallel)]


def _evaluate(run: RunDir, timeout_s: float | None, cpus: list[int] | None, stop: threading.Event | None) -> int | None:
    args = ["evaluate", "--run", str(run.path), "--subset", "test"]
    return launch.run_logged(launch.bratsbench_command() + args, run.evaluate_log, timeout_s, cpus=cpus, stop=stop)


def schedule(runs: list[StudyRun]) -> list[StudyRun]:
    """The order runs start in: pre-training first (others wait for it), then runs that wait for nothing, then
    fine-tuning, in plan order within each group. A run's dependency always starts before it, so a pool of
    workers taking runs in this order never waits on a run that no worker has taken."""
    rank = {"pretrain": 0, "scratch": 1}
    return sorted(runs, key=lambda r: rank.get(r.role, 2 if r.depends_on else 1))


def execute(runs: list[StudyRun], *, np_: int = 1, timeout_s: float | None = None, parallel: int = 1,
            report: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run (or reuse) every planned run, `parallel` at a time; returns {run id: status dict}."""
    status: dict[str, dict[str, Any]] = {}
    if parallel == 1:
        for i, run in enumerate(runs, 1):
            dep = status.get(run.depends_on.id) if run.depends_on else None
            status[run.id] = _one(run, f"[{i}/{len(runs)}] {run.label}", dep, np_, timeout_s, None, None, report)
        return status
    slots: queue.Queue[list[int]] = queue.Queue()
    for cpus in core_slots(parallel, np_):
        slots.put(cpus)
    stop = threading.Event()
    futures: dict[str, Future] = {}
    order = schedule(runs)
    report(f"{len(runs)} runs, {parallel} side by side on cores " + " | ".join(_cores(c) for c in list(slots.queue)))

    def task(i: int, run: StudyRun) -> dict[str, Any]:
        # a dependency was submitted earlier (schedule), so it is running or done and this wait ends
        dep = futures[run.depends_on.id].result() if run.depends_on is not None else None
        cpus = slots.get()
        try:
            return _one(run, f"[{i}/{len(runs)}] {run.label}", dep, np_, timeout_s, cpus, stop, report)
        finally:
            slots.put(cpus)

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="study") as pool:
        try:
            for i, run in enumerate(order, 1):
                futures[run.id] = pool.submit(task, i, run)
            for run in order:
                status[run.id] = futures[run.id].result()
        except BaseException:  # Ctrl-C: the running runs are killed and recorded interrupted
            stop.set()
            for f in futures.values():
                f.cancel()
            raise
    return {run.id: status[run.id] for run in runs}


def _one(run: StudyRun, prefix: str, dep: dict[str, Any] | None, np_: int, timeout_s: float | None,
         cpus: list[int] | None, stop: threading.Event | None, report: Callable[[str], None]) -> dict[str, Any]:
    folder = run.run_dir
    if run.depends_on and (dep or {}).get("status") != "ok":
        report(f"{prefix}: skipped, its pre-training run failed")
        return {"status": "failed", "error": f"dependency {run.depends_on.label} failed", "folder": str(folder)}
    if folder.finished():
        report(f"{prefix}: reusing finished run {folder.name}")
    else:
        folder.create().write_config(run.cfg.to_dict())
        report(f"{prefix}: training{f' on cores {_cores(cpus)}' if cpus else ''} ...")
        entry = launch.launch_train(folder, np_, timeout_s=timeout_s, cpus=cpus, stop=stop)
        if entry["status"] != "ok":
            report(f"{prefix}: FAILED ({entry['error']}); see {folder.logs}")
            return {"status": "failed", "exit_code": entry["exit_code"], "folder": str(folder), "error": entry["error"]}
    record = folder.read_record() or {}
    if run.role != "pretrain" and "test" not in (record.get("metrics") or {}):
        code = _evaluate(folder, timeout_s, cpus, stop)
        if code != 0:
            report(f"{prefix}: test evaluation FAILED; see {folder.evaluate_log}")
            return {"status": "failed", "exit_code": code, "folder": str(folder),
                    "error": "test evaluation failed: " + " | ".join(launch.file_tail(folder.evaluate_log, 5))}
        record = folder.read_record() or {}
    test = (record.get("metrics") or {}).get("test", {}).get("mean", {})
    dice = " ".join(f"{r}={test[f'{r}_dice']:.3f}" for r in REGIONS if f"{r}_dice" in test)
    share = (record.get("phases") or {}).get("train_share")
    report(f"{prefix}: ok ({record.get('wall_s') or 0:.0f} s{f', {share:.0%} in training steps' if share else ''})"
           f"{' test Dice ' + dice if dice else ''}")
    return {"status": "ok", "folder": str(folder), "wall_s": record.get("wall_s")}


def _cores(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))
