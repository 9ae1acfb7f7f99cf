"""A run stopped by a signal: real training processes, no scheduler.

- one rank under the local sweep runner: SIGUSR1 mid-epoch, then SIGTERM over and over while the checkpoint is
  written: exit status 75, the record says preempted at step N with a checkpoint there; the next `sweep run`
  resumes it and ends with the weights, history and losses of the same run uninterrupted (its repeat);
- two Horovod ranks where only rank 1 gets the signal: both stop at the same step (one mean over ranks per step).
The requeue and resume of array tasks under SLURM, for both engines, is tests/test_slurm_preempt.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from harness.errors import EXIT_PREEMPTED
from harness.launch import is_rank_process
from tests.conftest import bratsbench_cmd, horovodrun_cmd, proc_env

TINY = {"model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
        "data": {"synthetic": True, "crop": [16, 16, 16], "synthetic_samples": 4, "val_cases": 1},
        "train": {"batch_size": 1, "epochs": 3, "steps_per_epoch": 400, "threads": 1}}


def _record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _wait(predicate, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _ranks(root: psutil.Process) -> list[psutil.Process]:
    return [p for p in root.children(recursive=True) if is_rank_process(p)]


@pytest.mark.slow
@pytest.mark.stack
def test_a_signalled_run_checkpoints_and_the_next_sweep_run_resumes_it_exactly(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "stop", "repeats": 2, "fixed": TINY, "timeout_s": 600}))
    results = tmp_path / "res"
    plan = json.loads(subprocess.run(bratsbench_cmd("sweep", "plan", str(spec), "--json"), env=proc_env(),
                                     capture_output=True, text=True, check=True).stdout)["runs"]
    first, twin = (results / "runs" / p["run_id"] for p in plan)
    proc = subprocess.Popen(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results)), env=proc_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert _wait(lambda: len(_record(first / "record.json").get("history", [])) >= 1), proc.communicate(timeout=60)
        (rank,) = _ranks(psutil.Process(proc.pid))
        rank.send_signal(signal.SIGUSR1)
        extra = 0
        while rank.is_running() and rank.status() != psutil.STATUS_ZOMBIE:  # a second signal, and more, while saving
            rank.send_signal(signal.SIGTERM)
            extra += 1
            time.sleep(0.01)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err  # the sweep: one run not ok (preempted), its repeat ok
    stopped = _record(first / "record.json")
    info = stopped["extra"]["preempted"]
    assert stopped["status"] == "preempted" and stopped["exit_code"] == EXIT_PREEMPTED, stopped.get("log_tail")
    assert info["signal"] == "USR1" and info["checkpoint"] and 400 < info["step"] < 1200 and extra > 0
    assert (first / "checkpoints" / f"ckpt-{info['step']}.index").is_file()
    assert f"preempted in" in out and f"preempted by SIGUSR1 at step {info['step']}" in out

    again = subprocess.run(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results)), env=proc_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed, reference = _record(first / "record.json"), _record(twin / "record.json")
    assert resumed["status"] == "ok" and resumed["extra"]["resumes"] == 1
    assert resumed["extra"]["preemptions"] == [info]
    assert resumed["model"]["replica_checksums"] == reference["model"]["replica_checksums"]
    assert [h["step"] for h in resumed["history"]] == [400, 800, 1200]
    # the epoch cut by the preemption has the loss of all its steps, as the uninterrupted run's
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in reference["history"]], rel=1e-6)
    logs = first / "logs"
    assert "resumed from the checkpoint" in (logs / "rank.0" / "stderr").read_text()
    assert "preempted by SIGUSR1" in (logs / "attempt-1" / "rank.0" / "stderr").read_text()  # the first attempt's log


@pytest.mark.slow
@pytest.mark.horovod
def test_ranks_stop_at_the_same_step_when_only_one_got_the_signal(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--batch-size", "1",
            "--modalities", "t1,t2", "--synthetic-samples", "4", "--val-cases", "1", "--epochs", "3",
            "--steps-per-epoch", "300", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(horovodrun_cmd(2, *bratsbench_cmd(*args)), env=proc_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert _wait(lambda: len(_record(out / "record.json").get("history", [])) >= 1), proc.communicate(timeout=60)
        ranks = _ranks(psutil.Process(proc.pid))
        assert len(ranks) == 2
        one = next(r for r in ranks if "1" == r.environ().get("HOROVOD_RANK"))
        one.send_signal(signal.SIGUSR1)
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    record = _record(out / "record.json")
    info = record["extra"]["preempted"]
    assert record["status"] == "preempted" and info["ranks_signalled"] == 1 and info["signal"] == "USR1", log[-3000:]
    assert proc.returncode != 0
    assert log.count(f"preempted by SIGUSR1 (checkpoint at step {info['step']})") == 2  # both ranks, the same step
