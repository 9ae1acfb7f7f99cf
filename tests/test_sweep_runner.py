"""The local sweep runner: real runs, resumability, failures, a rank killed with -9, Ctrl-C, concurrent writers."""

from __future__ import annotations

import datetime as dt
import io
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from harness.errors import UserError
from harness.record import atomic_write_json
from harness.sweep import index
from harness.sweep.plan import plan
from harness.launch import Outcome, file_tail, is_rank_process, settle, supervise
from harness.sweep.runner import prepare_run_dir, run_sweep, select, sweep_info
from harness.sweep.spec import parse_spec
from tests.conftest import bratsbench_cmd, proc_env

TINY = {
    "model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
    "data": {"synthetic": True, "crop": [16, 16, 16], "synthetic_samples": 4, "val_cases": 1},
    "train": {"batch_size": 1, "benchmark": True, "bench_warmup": 2, "bench_steps": 3},
}
TRANSFER = {"source": ["flair", "t1ce"], "epochs": 1, "steps_per_epoch": 2}


def write_spec(path: Path, **top) -> Path:
    path.write_text(yaml.safe_dump({"fixed": TINY, "timeout_s": 300, **top}))
    return path


def record(results: Path, rid: str) -> dict:
    return json.loads((results / "runs" / rid / "record.json").read_text())


def no_temp_files(results: Path) -> bool:
    return not [p for p in results.rglob("*.tmp")]


# --- supervising one launch (fake processes, no TensorFlow) ----------------------------------------------


def _marked(marker: str):
    return lambda proc: marker in proc.cmdline()


def _alive(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if marker in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_watchdog_kills_the_job_when_one_rank_died():
    marker = f"rank-{uuid.uuid4().hex}"
    py = sys.executable
    # two "ranks": one dies after 2 s, the other would block for a minute; the "launcher" waits for both
    script = f"{py} -c 'import time; time.sleep(60)' {marker} & {py} -c 'import time; time.sleep(2); exit(3)' {marker} & wait"
    outcome = supervise(["sh", "-c", script], timeout_s=120, grace_s=1, poll_s=0.2, is_rank=_marked(marker))
    assert outcome.reason and "a rank exited" in outcome.reason
    assert _alive(marker) == []


def test_timeout_kills_the_whole_tree_even_in_other_sessions():
    marker = f"tree-{uuid.uuid4().hex}"
    py = sys.executable
    script = f"setsid {py} -c 'import time; time.sleep(300)' {marker} & {py} -c 'import time; time.sleep(300)' {marker}; wait"
    outcome = supervise(["sh", "-c", script], timeout_s=1.5, poll_s=0.2, is_rank=_marked(marker))
    assert outcome.reason == "timed out after 1.5 s; killed"
    assert _alive(marker) == []
    ok = supervise([py, "-c", "import sys; sys.exit(5)"], timeout_s=60)
    assert (ok.exit_code, ok.reason) == (5, None)


def test_is_rank_process_tells_ranks_from_launchers(tmp_path):
    script = tmp_path / "bratsbench"
    script.write_text("import time; time.sleep(30)\n")
    procs = [
        subprocess.Popen([sys.executable, str(script), "train", "--out", "x"]),
        subprocess.Popen([sys.executable, str(script), "evaluate", "train"]),
        subprocess.Popen(["sh", "-c", f"sleep 30; echo {script} train"]),
    ]
    try:
        time.sleep(0.5)
        assert [is_rank_process(psutil.Process(p.pid)) for p in procs] == [True, False, False]
    finally:
        for p in procs:
            p.kill()
            p.wait()


# --- records ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, lines, expected", [
    ("a\n\n  \nb\n", 5, ["a", "b"]),                      # blank lines are not shown
    ("x\nbar 1%\rbar 50%\rbar 99%\n", 1, ["bar 99%"]),    # a progress bar's redraws: its last state
    ("".join(f"line {i}\n" for i in range(100_000)), 2, ["line 99998", "line 99999"]),
    ("", 3, []),
])
def test_file_tail(tmp_path, text, lines, expected):
    log = tmp_path / "log"
    log.write_text(text)
    assert file_tail(log, lines) == expected
    assert file_tail(tmp_path / "missing", lines) == []


def test_file_tail_reads_only_the_end(tmp_path):
    log = tmp_path / "log"
    with open(log, "wb") as fh:  # 20 MB of one line (not even UTF-8), then the lines that matter
        fh.write(b"\xff" * 20_000_000 + b"\nsecond\nthird\n")
    assert file_tail(log, 10, limit=len("xx\nsecond\nthird\n")) == ["second", "third"]  # not the cut "xx"
    assert file_tail(log, 10, limit=len("third\n")) == ["third"]  # exactly the last line: nothing cut


def test_settle_tells_the_truth(tmp_path):
    spec = parse_spec({"fixed": TINY, "axes": {"np": [2]}}, origin="s")
    run = plan(spec)[0]
    run_dir = prepare_run_dir(run, tmp_path)
    folder = run_dir.path
    run_dir.reset_logs()
    run_dir.launcher_log.write_text("".join(f"line {i}\n" for i in range(100)) + "bar 1%\rbar 50%\rbar 99%\n")
    info = {"sweep": sweep_info(run, "s")}

    def settle_(outcome):
        return settle(run_dir, outcome, np_=run.np, annotate=info)

    # no record at all
    entry = settle_(Outcome(1, 3.0))
    rec = record(tmp_path, run.run_id)
    assert entry["status"] == rec["status"] == "failed" and rec["exit_code"] == 1
    assert "no run record" in rec["error"] and rec["config"]["out"] == str(folder)
    assert rec["system"]["source"] == "launcher" and rec["system"]["ranks"] == []  # the launcher's host, marked
    assert rec["system"]["hosts"][0]["hostname"] == socket.gethostname() and rec["system"]["label"]
    assert len(rec["log_tail"]) == 40 and rec["log_tail"][-1] == "bar 99%" and rec["log_tail"][0] == "line 61"
    # a record the trainer left "running" (rank killed)
    atomic_write_json(folder / "record.json", {**rec, "status": "running", "error": None, "exit_code": None})
    settle_(Outcome(-9, 3.0))
    rec = record(tmp_path, run.run_id)
    assert (rec["status"], rec["exit_code"], rec["error"]) == ("failed", -9, "killed by SIGKILL")
    # "ok" in the record but a non-zero exit is not ok; exit 0 with an ok record is
    atomic_write_json(folder / "record.json", {**rec, "status": "ok", "error": None})
    assert settle_(Outcome(1, 3.0))["status"] == "failed"
    atomic_write_json(folder / "record.json", {**rec, "status": "ok", "error": None})
    assert settle_(Outcome(0, 3.0))["status"] == "ok"
    assert record(tmp_path, run.run_id)["extra"]["sweep"]["label"] == run.label


def test_only_adds_pretraining_and_dry_run_writes_nothing(tmp_path):
    spec = parse_spec({"fixed": TINY, "axes": {"np": [1, 2], "mode": ["transfer", "scratch"]}, "transfer": TRANSFER}, origin="s")
    runs = plan(spec)
    picked = select(runs, ["np2-b1-k0-transfer-s0"])
    assert [r.kind for r in picked] == ["pretrain", "run"] and picked[1].np == 2
    assert select(runs, [runs[-1].run_id]) == [runs[-1]]
    with pytest.raises(UserError, match="--only nope"):
        select(runs, ["nope"])
    out = io.StringIO()
    assert run_sweep(spec, tmp_path / "res", dry_run=True, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == len(runs) and not (tmp_path / "res").exists()
    np2 = next(line for line in lines if "np2-b1-k0-transfer" in line)
    from harness.engines import unavailable

    launcher = "horovodrun -np 2 -H localhost:2 --gloo --output-filename" if unavailable("horovod") is None else (
        "launch --backend mwms -np 2 --logs")  # this environment's default engine
    assert launcher in np2 and "--config" in np2
    # the pre-training run is named in the planned config, and becomes its checkpoint folder in config.json
    pre = picked[0]
    assert picked[1].config.train.init_from == f"run:{pre.run_id}"
    assert picked[1].config_for(tmp_path / "x", tmp_path / "res").train.init_from == str(
        tmp_path / "res" / "runs" / pre.run_id / "checkpoints")


# --- concurrent writers ----------------------------------------------------------------------------------


def _writer(results: str, i: int, rounds: int) -> None:
    results = Path(results)
    rid = f"run{i:02d}"
    for k in range(rounds):
        atomic_write_json(results / "runs" / rid / "record.json", {"status": "running", "k": k, "pad": "x" * 50_000})
        index.set_run(results, rid, status="running", k=k, pad="y" * 2000)
    atomic_write_json(results / "runs" / rid / "record.json", {"status": "ok", "k": rounds})
    index.set_run(results, rid, status="ok", k=rounds)


def test_concurrent_writers_lose_and_tear_nothing(tmp_path):
    writers, rounds = 10, 25
    results = tmp_path / "res"
    index.init_index(results, {"name": "c"}, [])
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(results), i, rounds)) for i in range(writers)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):  # unlocked readers always see a whole file
        json.loads((results / "sweep.json").read_text())
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    data = json.loads((results / "sweep.json").read_text())
    assert {rid: (e["status"], e["k"]) for rid, e in data["runs"].items()} == {
        f"run{i:02d}": ("ok", rounds) for i in range(writers)
    }
    assert data["spec"] == {"name": "c"} and reads > 0
    for i in range(writers):
        assert record(results, f"run{i:02d}") == {"status": "ok", "k": rounds}
    assert no_temp_files(results)


# --- real runs -------------------------------------------------------------------------------------------


def _default_sigint() -> None:
    # a shell starts background jobs with SIGINT ignored and children inherit that; a user's Ctrl-C comes
    # to a foreground process, so give the sweep the default disposition whatever ran this test suite
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sweep_proc(spec: Path, results: Path) -> subprocess.Popen:
    return subprocess.Popen(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results)), env=proc_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _find_rank(proc: subprocess.Popen, want_rank: str | None, ready) -> psutil.Process | None:
    while proc.poll() is None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if is_rank_process(child) and (want_rank is None or child.environ().get("HOROVOD_RANK") == want_rank) and ready():
                    return child
        except psutil.Error:
            pass
        time.sleep(0.2)
    return None


@pytest.mark.slow
def test_failed_pretraining_is_recorded_and_its_dependents_fail_without_running(tmp_path, cli):
    # the pre-training asks for batches larger than its synthetic data: it fails at run time, not at plan time
    spec = write_spec(tmp_path / "f.yaml", name="fail", axes={"mode": ["transfer"]}, transfer={**TRANSFER, "batch_size": 8})
    results = tmp_path / "res"
    code, out, _ = cli("sweep", "run", str(spec), "--out", str(results))
    pre, run = plan(parse_spec(yaml.safe_load(spec.read_text()), origin="f"))
    assert code == 1
    rec = record(results, pre.run_id)
    assert rec["status"] == "failed" and rec["exit_code"] == 2
    assert "larger than the 4 synthetic samples" in rec["error"]
    assert any("bratsbench: error:" in line for line in rec["log_tail"])
    dep = record(results, run.run_id)
    assert (dep["status"], dep["error"]) == ("failed", f"dependency {pre.run_id} failed")
    assert not (results / "runs" / run.run_id / "logs").exists()  # never launched
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"[1/2] {pre.label} ({pre.run_id}): failed") and lines[1].startswith(f"[2/2] {run.label}")
    assert "0 ok, 0 skipped (already ok), 2 failed" in lines[-1]
    assert {e["status"] for e in index.read_index(results)["runs"].values()} == {"failed"}


@pytest.mark.slow
@pytest.mark.horovod  # kills Horovod rank 1 (test_engines_sweep does the same to an MWMS worker)
def test_sweep_survives_a_killed_rank_and_resumes_only_missing_runs(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", name="flow", axes={"np": [2, 1], "mode": ["transfer"]}, transfer=TRANSFER)
    results = tmp_path / "res"
    pre, np2, np1 = plan(parse_spec(yaml.safe_load(spec.read_text()), origin="s"))
    assert (pre.kind, np2.np, np1.np) == ("pretrain", 2, 1)

    proc = _sweep_proc(spec, results)
    np2_record = results / "runs" / np2.run_id / "record.json"
    victim = _find_rank(proc, "1", np2_record.exists)  # rank 1 of the np=2 run, once that run has started
    assert victim is not None, proc.communicate()
    victim.kill()
    killed_at = dt.datetime.now(dt.timezone.utc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"[1/3] {pre.label} ({pre.run_id}): ok")
    assert lines[1].startswith(f"[2/3] {np2.label} ({np2.run_id}): failed")
    assert lines[2].startswith(f"[3/3] {np1.label} ({np1.run_id}): ok")  # the sweep went on
    failed = record(results, np2.run_id)
    assert failed["status"] == "failed" and failed["exit_code"] not in (0, None)
    assert "rank" in failed["error"] and failed["log_tail"]  # horovodrun names rank 1, or the watchdog fired
    assert (dt.datetime.fromisoformat(failed["finished_at"]) - killed_at).total_seconds() <= 60
    before = {r.run_id: record(results, r.run_id) for r in (pre, np1)}

    again = subprocess.run(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results)), env=proc_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = again.stdout.strip().splitlines()
    assert "skipped, already ok" in lines[0] and "skipped, already ok" in lines[2]
    assert lines[1].startswith(f"[2/3] {np2.label} ({np2.run_id}): ok")
    assert {rid: record(results, rid) for rid in before} == before  # untouched
    done = record(results, np2.run_id)
    assert done["status"] == "ok" and done["world_size"] == 2
    assert done["model"]["init"]["from"] == str(results / "runs" / pre.run_id / "checkpoints")
    assert done["extra"]["sweep"]["depends_on"] == [pre.run_id]
    assert {rid: e["status"] for rid, e in index.read_index(results)["runs"].items()} == {
        r.run_id: "ok" for r in (pre, np2, np1)
    }
    assert no_temp_files(results)


@pytest.mark.slow
def test_ctrl_c_kills_the_run_and_records_it_interrupted(tmp_path):
    spec = write_spec(tmp_path / "c.yaml", name="intr", axes={"seed": [0, 1]})
    results = tmp_path / "res"
    first = plan(parse_spec(yaml.safe_load(spec.read_text()), origin="c"))[0]
    proc = _sweep_proc(spec, results)
    rank = _find_rank(proc, None, lambda: True)
    assert rank is not None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert not rank.is_running() or rank.status() == psutil.STATUS_ZOMBIE
    rec = record(results, first.run_id)
    assert (rec["status"], rec["exit_code"]) == ("interrupted", 130)
    runs = index.read_index(results)["runs"]
    assert runs[first.run_id]["status"] == "interrupted" and len(runs) == 2
    assert "interrupted" in out.strip().splitlines()[-1]
    assert not (results / "runs" / plan(parse_spec(yaml.safe_load(spec.read_text()), origin="c"))[1].run_id).exists()
    assert no_temp_files(results)


@pytest.mark.parametrize("tail, record, expected", [
    (["0: step 3", "srun: error: node2: task 1: Killed", "srun: Terminating StepId=5.0"], {"status": "running"},
     "rank 1 on node2: Killed; srun stopped the step (exit code 137)"),
    (["srun: error: c12: tasks 0-1: Exited with exit code 2"], None,
     "ranks 0-1 on c12: Exited with exit code 2; srun stopped the step (exit code 137)"),
    # the trainer's own error wins over srun's summary of it
    (["srun: error: node2: task 1: Exited with exit code 2"], {"status": "failed", "error": "crop too large"},
     "crop too large"),
])
def test_describe_names_the_rank_and_node_srun_saw_fail(tail, record, expected):
    from harness.launch import describe

    assert describe(Outcome(137, 1.0), record, tail) == expected
