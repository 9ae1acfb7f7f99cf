"""TensorFlow's MultiWorkerMirroredStrategy as the second engine: exact data parallelism, identical replicas,
faults that fail the run instead of hanging it, exact resume, and one-line errors before training starts.
Real workers over loopback, started by `bratsbench launch --backend mwms`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.mwms  # run on every stack, the Python 3.13 one included

from harness.engines.mwms import _tasks_per_node, read_cluster, slurm_tf_config, tf_config
from harness.errors import UserError
from tests.conftest import REPO, bratsbench_cmd, final_weights as _final_weights, proc_env, run

SCRIPT = str(REPO / "tests" / "scripts" / "one_step.py")
SMALL = ["--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--synthetic-samples", "4",
         "--threads", "1"]


def launch_cmd(np_: int, *cmd: str, logs: str | None = None) -> list[str]:
    return bratsbench_cmd("launch", "--backend", "mwms", "-np", str(np_), *(["--logs", logs] if logs else []), "--", *cmd)


def _weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda s: int(s.split("_")[1]))]


# --- TF_CONFIG -----------------------------------------------------------------------------------------


def test_tf_config_round_trip_and_slurm_task_counts():
    raw = tf_config(["h1:5000", "h1:5001", "h2:5000"], 2)
    assert read_cluster(raw) == (["h1:5000", "h1:5001", "h2:5000"], 2)
    assert read_cluster(None) == (["localhost:0"], 0)
    assert _tasks_per_node("2(x3),1") == [2, 2, 2, 1] and _tasks_per_node("4") == [4]
    assert slurm_tf_config({"PATH": os.environ["PATH"]}) is None  # not inside a SLURM step


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("{not json", "TF_CONFIG is not a worker cluster"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}), "is not one of the 1 workers"),
        (json.dumps({"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}), "is not HOST:PORT"),
    ],
)
def test_bad_tf_config_is_one_line(raw, fragment):
    with pytest.raises(UserError, match=fragment):
        read_cluster(raw)


# --- exact data parallelism ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.stack
def test_two_workers_batch_b_equal_one_worker_batch_2b(tmp_path):
    run(launch_cmd(2, sys.executable, SCRIPT, str(tmp_path / "np2.npz"), "4", "mwms"))
    run([sys.executable, SCRIPT, str(tmp_path / "np1.npz"), "4", "mwms"])
    w2, w1 = _weights(tmp_path / "np2.npz"), _weights(tmp_path / "np1.npz")
    assert len(w1) == len(w2) > 10
    for a, b in zip(w1, w2):  # RING sums in another order than one process: a few 1e-5 apart on TF 2.21
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    run([sys.executable, SCRIPT, str(tmp_path / "np1_other.npz"), "2", "mwms"])
    assert any(not np.allclose(a, b, atol=1e-5) for a, b in zip(w1, _weights(tmp_path / "np1_other.npz")))


@pytest.mark.slow
def test_launched_workers_train_identical_replicas_with_per_rank_logs(tmp_path):
    out = tmp_path / "run"
    result = run(launch_cmd(2, "train", *SMALL, "--epochs", "2", "--batch-size", "2", "--out", str(out),
                            logs=str(out / "logs")))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["engine"]["name"] == "mwms" and record["engine"]["transport"] == "ring"
    assert record["config"]["train"]["backend"] == "mwms"  # resolved from TF_CONFIG and recorded
    assert record["world_size"] == 2 and len(record["hosts"]) == 2
    sums = record["model"]["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert record["timing"]["global_batch"] == 4 and set(record["history"][-1]["val"]) == {"ET", "TC", "WT"}
    s = record["system"]  # each worker probed itself; the launcher left their affinity as it was (this process's)
    assert [(r["rank"], r["cores"], r["device"]) for r in s["ranks"]] == [(i, sorted(os.sched_getaffinity(0)), "CPU") for i in (0, 1)]
    assert s["hosts"][0]["cpu_model"] and s["env"]["TF_CONFIG"] and s["tensorflow"]["gpus_seen"] == 0
    assert s["horovod"] is None or s["horovod"]["mpi"] is None  # an MWMS run loads no Horovod
    assert "epoch 2" in (out / "logs" / "rank.0" / "stderr").read_text()  # rank 0 alone prints the epoch lines
    assert (out / "logs" / "rank.1" / "stderr").is_file()
    assert "[0]<stderr>:" in result.stderr  # the launcher relays each worker's output, prefixed with its rank


def test_a_time_budget_stops_every_worker_at_the_same_step(tmp_path):
    out = tmp_path / "budget"
    run(launch_cmd(2, "train", *SMALL, "--epochs", "200", "--steps-per-epoch", "4", "--batch-size", "1",
                   "--budget-s", "3", "--out", str(out)))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["extra"]["stopped"]["reason"] == "budget"
    history = record["history"]
    assert len(history) < 200 and set(history[-1]["val"]) == {"ET", "TC", "WT"}  # the cut epoch is validated
    assert sum(h["train_s"] for h in history) >= 3 * 0.5  # rank 0's share of a mean over ranks that reached 3 s
    sums = record["model"]["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both stopped after the same step


# --- faults --------------------------------------------------------------------------------------------


def _worker(proc: subprocess.Popen, index: int, ready) -> psutil.Process | None:
    while proc.poll() is None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                config = child.environ().get("TF_CONFIG")
                if config and json.loads(config)["task"]["index"] == index and "train" in child.cmdline() and ready():
                    return child
        except psutil.Error:
            pass
        time.sleep(0.1)
    return None


ARGS = [*SMALL[:-2], "--synthetic-samples", "8", "--batch-size", "1", "--epochs", "4", "--checkpoint-every", "3",
        "--seed", "5", "--threads", "1"]


@pytest.mark.slow
def test_kill_9_of_a_worker_stops_the_run_and_resume_matches_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run(launch_cmd(2, "train", *ARGS, "--out", str(full)))

    proc = subprocess.Popen(launch_cmd(2, "train", *ARGS, "--out", str(killed)), env=proc_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = _worker(proc, 1, lambda: (killed / "checkpoints" / "ckpt-6.index").exists())
    assert victim is not None, proc.communicate()
    victim.kill()
    killed_at = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert time.monotonic() - killed_at < 60
    assert "worker 1 killed by SIGKILL; stopping the other workers" in err
    assert not [p for p in psutil.process_iter() if _is_worker_of(p, killed)]  # nothing left behind

    resumed = run(launch_cmd(2, "train", *ARGS, "--out", str(killed), "--resume"))
    assert resumed.returncode == 0
    record = json.loads((killed / "record.json").read_text())
    assert record["status"] == "ok" and record["history"][-1]["step"] == 32 and record["extra"]["resumes"] == 1
    a, b = _final_weights(full), _final_weights(killed)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _is_worker_of(proc: psutil.Process, out) -> bool:
    try:
        return str(out) in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- bad input before training -------------------------------------------------------------------------


def test_taken_port_is_one_line_before_training(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = proc_env(TF_CONFIG=tf_config([f"127.0.0.1:{port}", "127.0.0.1:1"], 0))
        result = subprocess.run(bratsbench_cmd("train", *SMALL, "--out", str(tmp_path / "r")), env=env,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"bratsbench: error: MWMS worker 0: port {port} of 127.0.0.1:{port} is taken by another process"
    assert "Traceback" not in result.stderr and not (tmp_path / "r" / "checkpoints").exists()


def test_missing_peer_is_one_line_before_training(tmp_path):
    from harness.launch import free_ports

    a, b = free_ports(2)
    env = proc_env(TF_CONFIG=tf_config([f"127.0.0.1:{a}", f"127.0.0.1:{b}"], 0), BRATSBENCH_MWMS_PEER_WAIT_S="3")
    result = subprocess.run(bratsbench_cmd("train", *SMALL, "--out", str(tmp_path / "r")), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"bratsbench: error: MWMS worker 1 at 127.0.0.1:{b} did not answer within 3 s "
        "(TF_CONFIG lists 2 workers; is every one started?)")
    assert "Traceback" not in result.stderr and not (tmp_path / "r" / "checkpoints").exists()


def test_unknown_backend_and_horovod_where_missing(tmp_path, cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli("train", *SMALL, "--backend", "gloo", "--out", str(tmp_path / "x"))
    assert exit_.value.code == 2 and "invalid choice: 'gloo'" in capsys.readouterr().err
    from harness.engines import unavailable

    problem = unavailable("horovod")
    code, _, err = cli("launch", "--backend", "mwms", "-np", "0", "--", "train")
    assert code == 2 and err.strip() == "bratsbench: error: -np 0 must be at least 1"
    if problem is None:
        assert unavailable("mwms") is None  # both engines here; the other stack checks the message below
    else:
        code, _, err = cli("train", *SMALL, "--backend", "horovod", "--out", str(tmp_path / "h"))
        assert code == 2 and err.strip() == f"bratsbench: error: {problem}"
        assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("raw, expected", [(None, 60.0), ("30", 30.0), ("0", None), (" 0 ", None)])
def test_collective_timeout_from_the_environment(monkeypatch, raw, expected):
    from harness.engines.mwms import TIMEOUT_ENV, collective_timeout_s

    if raw is None:
        monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_ENV, raw)
    assert collective_timeout_s() == expected


@pytest.mark.parametrize("raw, fragment", [("-5", "must be positive"), ("soon", "is not a number of seconds")])
def test_bad_collective_timeout_is_one_line(monkeypatch, raw, fragment):
    from harness.engines.mwms import TIMEOUT_ENV, collective_timeout_s

    monkeypatch.setenv(TIMEOUT_ENV, raw)
    with pytest.raises(UserError, match=fragment):
        collective_timeout_s()
