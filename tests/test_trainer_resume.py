"""Kill -9 mid-training, then --resume: the final weights equal an uninterrupted run's (CPU, same seed)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import bratsbench_cmd, final_weights as _final_weights, proc_env, run

ARGS = ["--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--synthetic-samples", "8",
        "--batch-size", "1", "--epochs", "4", "--checkpoint-every", "3", "--seed", "5", "--threads", "1"]


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run(bratsbench_cmd("train", *ARGS, "--out", str(full)))

    proc = subprocess.Popen(bratsbench_cmd("train", *ARGS, "--out", str(killed)), env=proc_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "ckpt-6.index").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = json.loads((killed / "record.json").read_text())
    assert record["status"] == "running"  # it really died mid-run
    assert record["history"][-1]["step"] < 32 if record["history"] else True

    resumed = run(bratsbench_cmd("train", *ARGS, "--out", str(killed), "--resume"))
    assert resumed.returncode == 0
    record = json.loads((killed / "record.json").read_text())
    assert record["status"] == "ok" and record["history"][-1]["step"] == 32
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4]  # the curve before the kill is kept
    assert record["extra"]["resumes"] == 1

    a, b = _final_weights(full), _final_weights(killed)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
