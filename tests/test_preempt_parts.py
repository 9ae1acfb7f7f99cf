"""The parts of stopping on a signal, without training: the stop signals setting, the flag and the agreement over
ranks, threads from a rank's cores, passing signals on to a run's ranks, settling a preempted run, and what an
array task decides after a preemption or an earlier attempt that never settled.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.checkpoint import resume_problem
from harness.config import ModelConfig, RunConfig, model_signature
from harness.engines.cores import threads_per_rank
from harness.errors import EXIT_PREEMPTED, UserError
from harness.launch import Forwarder, Outcome, deliver, settle
from harness.rundir import RunDir
from harness.sweep import index
from harness.sweep.plan import plan
from harness.sweep.spec import parse_spec
from harness.train import stopping

SPEC = {"name": "parts", "fixed": {"model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
                                   "data": {"synthetic": True, "crop": [16, 16, 16]}}}


# --- the setting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    (["USR1", "TERM"], ("USR1", "TERM")),
    ("sigusr2,term", ("USR2", "TERM")),
    (["TERM", "TERM"], ("TERM",)),
    ("none", ()),
    ([], ()),
])
def test_stop_signals_are_read_in_any_spelling(given, expected):
    cfg = RunConfig()
    cfg.data.synthetic = True
    cfg.train.stop_signals = given
    assert cfg.validate().train.stop_signals == expected


@pytest.mark.parametrize("given", [["INT"], ["KILL"], "USR1,STOP", ["bogus"], 5])
def test_bad_stop_signals_are_one_line(given):
    cfg = RunConfig()
    cfg.data.synthetic = True
    cfg.train.stop_signals = given
    with pytest.raises(UserError, match="stop signal"):
        cfg.validate()


def test_run_ids_do_not_change_with_the_default_stop_signals():
    cfg = RunConfig()
    assert "stop_signals" not in cfg.identity()["train"]
    cfg.train.stop_signals = ("TERM",)
    assert cfg.identity()["train"]["stop_signals"] == ["TERM"]


def test_cli_stop_signals_flag(cli, tmp_path):
    code, _, err = cli("train", "--synthetic", "--stop-signals", "USR1,KILL", "--out", str(tmp_path / "r"))
    assert code == 2 and "KILL" in err and len(err.strip().splitlines()) == 1


# --- the flag and the agreement -------------------------------------------------------------------------


@pytest.fixture
def handlers():
    stopping.uninstall()
    yield stopping
    stopping.uninstall()


def test_a_signal_sets_the_flag_and_a_second_one_changes_nothing(handlers):
    assert not handlers.armed() and not handlers.requested()
    assert handlers.install(["USR1", "TERM"]) and handlers.armed()
    os.kill(os.getpid(), signal.SIGUSR1)
    first = handlers.received()
    os.kill(os.getpid(), signal.SIGTERM)  # the process is not killed: TERM is a stop signal now
    got = handlers.received()
    assert handlers.requested() and got["signal"] == "USR1" and got["count"] == 2 and got["at"] == first["at"]


def test_ranks_agree_when_any_one_was_signalled(handlers):
    """agree() is one mean over ranks: the means of the local values and whether any rank's flag is up."""
    handlers.install(["USR1"])
    ranks = [[3.0, 0.0], [5.0, 0.0]]  # (seconds spent, flag) of two ranks

    def mean(values):  # this rank's values are the last row; the other rank's are fixed
        rows = [ranks[0], list(values)]
        return [sum(col) / len(rows) for col in zip(*rows)]

    (spent,), stop = handlers.agree([5.0], mean)
    assert (spent, stop) == (4.0, False)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert handlers.agree([5.0], mean) == ([4.0], True)
    ranks[0][1] = 1.0  # only the other rank was signalled
    handlers.uninstall()
    handlers.install(["USR1"])
    assert handlers.agree([5.0], mean)[1] is True


@pytest.mark.parametrize("mean_step_s, steps", [(0.01, 100), (0.3, 3), (2.0, 1), (0.0, 1), (float("nan"), 1),
                                                 (1e-6, 1000)])
def test_ranks_ask_about_once_a_second(mean_step_s, steps):
    assert stopping.steps_between(mean_step_s) == steps


def test_uninstall_puts_back_the_previous_handlers(handlers):
    before = signal.getsignal(signal.SIGUSR2)
    handlers.install(["USR2"])
    assert signal.getsignal(signal.SIGUSR2) is not before
    handlers.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is before and not handlers.armed()


def test_partial_epoch_merges_into_the_resumed_epochs_entry():
    extra = {"preemptions": [{"step": 110, "epoch_steps": 10, "epoch_loss": 2.0, "epoch_train_s": 1.0}]}
    assert stopping.partial_epoch(extra, 111) == {}  # resumed elsewhere: nothing to merge
    part = stopping.partial_epoch(extra, 110)
    entry = {"step": 200, "loss": 1.0, "train_s": 9.0, "step_time_mean_s": 0.1}
    stopping.merge_partial(entry, part, 90)
    assert entry["loss"] == pytest.approx((2.0 * 10 + 1.0 * 90) / 100)
    assert entry["train_s"] == 10.0 and entry["step_time_mean_s"] == pytest.approx(0.1) and entry["resumed_at_step"] == 110
    assert stopping.carried({"preemptions": [1], "preempted": 2}) == {"preemptions": [1, 2]}


# --- cores and threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cores, local, per_task, threads", [
    (8, 1, None, 8),   # a laptop: every core
    (8, 2, None, 4),   # two ranks share the mask
    (2, 2, 1, 1),      # srun task/none: the node's mask shared, cpus-per-task 1
    (1, 2, 1, 1),      # srun task/affinity: its own core
    (2, 1, 2, 2),      # its own two cores: not divided by anything
    (4, 1, 2, 2),      # a batch step of 4 cores, one rank asked for 2: never more than it asked for
    (16, 2, 8, 8),     # mpirun --bind-to none in a job of 2 x 8 cores
    (16, 4, 8, 4),     # more ranks than cpus-per-task x ranks: the mask is divided
    (1, 4, None, 1),   # never zero
])
def test_threads_per_rank(cores, local, per_task, threads):
    assert threads_per_rank(cores, local, per_task) == threads


def test_mpirun_binds_deliberately():
    from harness.launch import launch_command

    cmd = launch_command(2, ["bratsbench", "train"], "mpirun", allocation=True)
    assert cmd[cmd.index("--bind-to") + 1] == "none" and cmd[-2:] == ["bratsbench", "train"]


# --- passing signals on ---------------------------------------------------------------------------------

# A "rank": records each signal it gets into a file, exits when told to (SIGUSR2) or after 30 s.
RANK = r"""
import signal, sys, time
out = open(sys.argv[1], "a")
def note(s, f):
    out.write(signal.Signals(s).name + "\n"); out.flush()
    if s == signal.SIGUSR2: sys.exit(0)
for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM): signal.signal(s, note)
open(sys.argv[1] + ".ready", "w").close()
end = time.time() + 30
while time.time() < end: time.sleep(0.05)
"""


def _launcher(tmp_path: Path, name: str) -> Path:
    """A launcher called `name` that starts one rank and records the signals it gets itself."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    (tmp_path / "rank.py").write_text(RANK)
    script = folder / name
    script.write_text(f"""#!/bin/bash
trap 'echo USR1 >> {tmp_path}/launcher' USR1
trap 'echo TERM >> {tmp_path}/launcher' TERM
{sys.executable} {tmp_path}/rank.py {tmp_path}/rank & P=$!
while kill -0 $P 2>/dev/null; do wait $P; done
""")
    script.chmod(0o755)
    return script


def _is_rank(tmp_path: Path):
    def is_rank(p: psutil.Process) -> bool:
        try:
            return str(tmp_path / "rank.py") in " ".join(p.cmdline())
        except psutil.Error:
            return False

    return is_rank


def _rank_pid(tmp_path: Path) -> psutil.Process:
    return next(p for p in psutil.process_iter() if _is_rank(tmp_path)(p))


def _wait_file(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists()


@pytest.mark.parametrize("launcher, usr1_to_launcher", [("horovodrun", False), ("srun", True), ("mpirun", True)])
def test_deliver_reaches_the_ranks_and_only_forwarding_launchers(tmp_path, launcher, usr1_to_launcher):
    script = _launcher(tmp_path, launcher)
    proc = subprocess.Popen([str(script)], start_new_session=True)
    try:
        _wait_file(tmp_path / "rank.ready")
        sent = deliver(proc, signal.SIGTERM, _is_rank(tmp_path))
        assert proc.pid not in sent and len(sent) == 1  # never SIGTERM to a launcher: srun and mpirun kill on it
        sent = deliver(proc, signal.SIGUSR1, _is_rank(tmp_path))
        assert (proc.pid in sent) == usr1_to_launcher and len(sent) == 1 + usr1_to_launcher
        time.sleep(0.3)
        _rank_pid(tmp_path).send_signal(signal.SIGUSR2)  # the rank ends
        proc.wait(timeout=20)
        time.sleep(0.2)
        got = (tmp_path / "rank").read_text().split()
        assert sorted(got) == ["SIGTERM", "SIGUSR1", "SIGUSR2"]  # each once
        launcher_got = (tmp_path / "launcher").read_text().split() if (tmp_path / "launcher").exists() else []
        assert launcher_got == (["USR1"] if usr1_to_launcher else [])  # never TERM
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in filter(_is_rank(tmp_path), psutil.process_iter()):
            p.kill()


def test_forwarder_holds_a_signal_until_the_run_is_ready(tmp_path):
    script = _launcher(tmp_path, "horovodrun")
    ready = {"now": False}
    proc = subprocess.Popen([str(script)], start_new_session=True)
    try:
        _wait_file(tmp_path / "rank.ready")
        with Forwarder(ready=lambda: ready["now"]) as forward:
            os.kill(os.getpid(), signal.SIGUSR1)
            forward.flush(proc, _is_rank(tmp_path))
            time.sleep(0.3)
            assert (tmp_path / "rank").read_text() == ""  # held: the run is not ready
            ready["now"] = True
            forward.flush(proc, _is_rank(tmp_path))
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGUSR2)
            forward.flush(proc, _is_rank(tmp_path))
            assert forward.got("SIGUSR1") and not forward.got("SIGTERM")
        proc.wait(timeout=20)
        assert (tmp_path / "rank").read_text().split() == ["SIGUSR1", "SIGUSR2"]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in filter(_is_rank(tmp_path), psutil.process_iter()):
            p.kill()


# --- settling, resuming, and the array task's decisions -------------------------------------------------


def _preempted_record(signal_name: str = "USR1", step: int = 120) -> dict:
    return {"schema_version": 1, "status": "preempted", "exit_code": EXIT_PREEMPTED, "error": None,
            "config": {}, "history": [], "extra": {"preempted": {"signal": signal_name, "step": step, "checkpoint": True}}}


def test_settle_keeps_a_preempted_record_whatever_the_launcher_made_of_75(tmp_path):
    run = RunDir(tmp_path / "r").create()
    run.reset_logs()
    run.write_record(_preempted_record())
    for code in (EXIT_PREEMPTED, 1, 143):
        entry = settle(run, Outcome(code, 3.0), np_=2, annotate={"sweep": {"label": "x"}})
        assert entry["status"] == "preempted" and entry["error"] == "preempted by SIGUSR1 at step 120 (checkpoint written)"
        assert run.read_record()["status"] == "preempted" and run.read_record()["extra"]["sweep"] == {"label": "x"}
    entry = settle(run, Outcome(137, 3.0, "timed out after 5 s; killed"))  # the runner killed it: failed
    assert entry["status"] == "failed"


def _checkpoint_folder(folder: Path, model: ModelConfig, step: int = 120) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n')
    (folder / f"ckpt-{step}.index").write_bytes(b"x")
    (folder / "model.json").write_text(json.dumps({"signature": model_signature(model)}))


def test_resume_problem_reads_the_checkpoint_state_and_signature(tmp_path):
    model = ModelConfig(modalities=("t1", "t2"), base_filters=4, depth=2)
    assert "no complete checkpoint" in resume_problem(tmp_path / "none", model)
    _checkpoint_folder(tmp_path / "c", model)
    assert resume_problem(tmp_path / "c", model) is None
    assert "does not match the model: base_filters 4 != 8" in resume_problem(tmp_path / "c", ModelConfig(("t1", "t2"), 8, 2))
    (tmp_path / "c" / "ckpt-120.index").unlink()  # killed while saving: the state file is ahead of the files
    assert "incomplete" in resume_problem(tmp_path / "c", model)


def test_the_runner_resumes_a_preempted_run_only_from_a_fitting_checkpoint(tmp_path):
    from harness.sweep.runner import prepare_run_dir, resume_from

    (run,) = plan(parse_spec(SPEC))
    folder = RunDir(index.run_dir(tmp_path, run.run_id)).create()
    assert resume_from(run, tmp_path) == (False, None)  # nothing there: a new run
    folder.write_record(_preempted_record())
    resume, why = resume_from(run, tmp_path)
    assert not resume and "no complete checkpoint" in why
    _checkpoint_folder(folder.checkpoints, run.config.model)
    assert resume_from(run, tmp_path) == (True, None)
    assert json.loads(prepare_run_dir(run, tmp_path, resume=True).config.read_text())["train"]["resume"] is True
    benchmark = _preempted_record()
    benchmark["extra"]["preempted"]["checkpoint"] = False
    folder.write_record(benchmark)
    assert resume_from(run, tmp_path) == (False, "its preemption left no checkpoint (a benchmark run)")


def test_continue_logs_keeps_what_earlier_attempts_wrote(tmp_path):
    run = RunDir(tmp_path / "r")
    run.reset_logs()
    run.launcher_log.write_text("attempt 1\n")
    run.rank_log(0).parent.mkdir()
    run.rank_log(0).write_text("rank 0, attempt 1\n")
    run.continue_logs()
    assert run.launcher_log.read_text() == "attempt 1\n" and not run.rank_log(0).exists()
    assert (run.logs / "attempt-1" / "rank.0" / "stderr").read_text() == "rank 0, attempt 1\n"
    run.rank_log(0).parent.mkdir()
    run.continue_logs()
    assert (run.logs / "attempt-2" / "rank.0").is_dir()


@pytest.mark.parametrize("got_term, sig, restarts, cap, code, says", [
    (False, "USR1", 0, 3, EXIT_PREEMPTED, "requeueing array task 7_1 (1 of at most 3)"),
    (False, "USR1", 2, 3, EXIT_PREEMPTED, "(3 of at most 3)"),
    (False, "USR1", 3, 3, 1, "--max-requeues 3 reached"),
    (False, "USR1", 0, 0, 1, "--max-requeues 0 reached"),
    (True, "USR1", 0, 3, 1, "the job is ending"),   # the task itself got SIGTERM: scancel or the time limit
    (False, "TERM", 0, 3, 1, "the job is ending"),  # the ranks got SIGTERM
    (False, "USR1", 0, None, 1, "submitting again resumes it"),  # PBS: no requeue
])
def test_after_a_preemption_the_task_requeues_itself_only_within_the_cap(tmp_path, capsys, got_term, sig, restarts,
                                                                            cap, code, says):
    from harness.sweep.task import after_preemption

    (run,) = plan(parse_spec(SPEC))
    folder = RunDir(index.run_dir(tmp_path, run.run_id)).create()
    folder.write_record(_preempted_record(sig))
    job = {"job": "7_1", "restarts": restarts}
    assert after_preemption(folder, run, tmp_path, got_term, job, cap) == code
    assert says in capsys.readouterr().out
    record = folder.read_record()
    if "reached" in says:
        assert record["status"] == "failed" and says in record["error"] and "submitting again resumes it" in record["error"]
        assert record["extra"]["preempted"]["step"] == 120  # kept: a later submission resumes from it
        assert index.read_index(tmp_path)["runs"][run.run_id]["status"] == "failed"
    else:
        assert record["status"] == "preempted"


def _stale(tmp_path: Path, ends_in_s: float, last_write_ago_s: float, limit_s: float = 60.0):
    (run,) = plan(parse_spec(SPEC))
    folder = RunDir(index.run_dir(tmp_path, run.run_id)).create()
    folder.reset_logs()
    folder.write_record({"schema_version": 1, "status": "running", "extra": {}, "history": []})
    folder.launcher_log.write_text("step 40\n")
    now = time.time()
    for path in (folder.record, folder.launcher_log):
        os.utime(path, (now - last_write_ago_s, now - last_write_ago_s))
    ends = dt.datetime.fromtimestamp(now + ends_in_s, dt.timezone.utc).isoformat(timespec="seconds")
    index.set_run(tmp_path, run.run_id, status="running", job="9_0", ends_at=ends, time_limit_s=limit_s)
    return run


def test_an_attempt_killed_at_its_wall_time_is_told_apart(tmp_path):
    from harness.sweep.task import stale_attempt

    run = _stale(tmp_path / "a", ends_in_s=-30, last_write_ago_s=31)  # its logs stopped when its job ended
    why, again = stale_attempt(tmp_path / "a", run, {"time_limit_s": 60.0})
    assert why.startswith("killed at the wall-time limit of job 9_0 (--time 00:01:00)") and not again
    assert stale_attempt(tmp_path / "a", run, {"time_limit_s": 120.0})[1]  # a longer limit now: run it again
    run = _stale(tmp_path / "b", ends_in_s=3000, last_write_ago_s=60)  # died long before its end
    why, again = stale_attempt(tmp_path / "b", run, {"time_limit_s": 60.0})
    assert why.startswith("killed while running in job 9_0") and again
    folder = RunDir(index.run_dir(tmp_path / "b", run.run_id))
    folder.write_record({"schema_version": 1, "status": "preempted", "extra": {}})
    assert stale_attempt(tmp_path / "b", run, {}) is None


def test_run_task_records_a_stale_wall_time_attempt_failed_without_rerunning_it(tmp_path, capsys, monkeypatch):
    from harness.sweep.task import run_task

    run = _stale(tmp_path, ends_in_s=-30, last_write_ago_s=31)
    spec = parse_spec(SPEC)
    for var in [v for v in os.environ if v.startswith(("SLURM_", "PBS_"))]:
        monkeypatch.delenv(var)
    code = run_task(spec, [run.to_dict()], run, tmp_path, "srun", max_requeues=3)
    assert code == 1
    record = RunDir(index.run_dir(tmp_path, run.run_id)).read_record()
    assert record["status"] == "failed" and "wall-time limit of job 9_0" in record["error"]
    assert "not run again under the same time limit" in capsys.readouterr().out
    assert index.read_index(tmp_path)["runs"][run.run_id]["status"] == "failed"


def test_job_info_reads_the_array_task_and_its_restarts(monkeypatch):
    from harness.sweep.task import _seconds, job_info

    info = job_info({"SLURM_JOB_ID": "13", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "1",
                     "SLURM_RESTART_COUNT": "2", "PATH": "/nonexistent"})
    assert (info["job"], info["restarts"], info["ends_at"]) == ("12_1", 2, None)  # no squeue here: no end time
    assert job_info({"PBS_JOBID": "5[1].pbs"})["job"] == "5[1].pbs" and job_info({}) == {}
    assert [_seconds(x) for x in ("1-02:03:04", "02:03:04", "3:04", "UNLIMITED")] == [93784.0, 7384.0, 184.0, None]


@pytest.mark.parametrize("tail, expected", [
    # a rank killed by a signal recorded nothing: the launcher's word wins over rank 0's broken collective
    (["srun: error: node2: task 1: Killed"], "rank 1 on node2: Killed; srun stopped the step (exit code 137)"),
    (["Process name: 1", "first process to do so was:\nProcess name: 1\nExit code: 137"],
     "rank 1 exited with code 137 (SIGKILL); horovodrun stopped the job (exit code 137)"),
    # a rank that exited with an error recorded its reason: the record's error wins
    (["srun: error: node2: task 1: Exited with exit code 1"], "UnknownError: Horovod has been shut down"),
    # a resumed attempt appends to the log: the attempt before named its own failed rank, not this one's
    (["bratsbench launch: worker 1 killed by SIGKILL", "--- 2026-12-07T10:00:00Z: resumed from the checkpoint the "
      "attempt before wrote ---", "bratsbench launch: worker 0 killed by SIGTERM"],
     "MWMS worker 0 killed by SIGTERM; the launcher stopped the others (exit code 137)"),
    (["srun: error: node1: task 0: Killed", "--- 2026-12-07T10:00:00Z: resumed from the checkpoint the attempt before "
      "wrote ---", "0: step 12"], "UnknownError: Horovod has been shut down"),
])
def test_a_rank_killed_by_a_signal_is_named_before_the_others_broken_collective(tail, expected):
    from harness.launch import describe

    record = {"status": "failed", "error": "UnknownError: Horovod has been shut down"}
    assert describe(Outcome(137, 1.0), record, tail) == expected
