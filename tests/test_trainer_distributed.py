"""Data parallelism is real and exact: Horovod ranks agree, and np=2 x b equals np=1 x 2b."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.horovod  # every test here runs Horovod

from tests.conftest import REPO, bratsbench_cmd, horovodrun_cmd, run

SCRIPT = str(REPO / "tests" / "scripts" / "one_step.py")
SMALL = ["--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--synthetic-samples", "4"]


def _weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda s: int(s.split("_")[1]))]


@pytest.mark.slow
def test_two_ranks_batch_b_equal_one_rank_batch_2b(tmp_path):
    import sys

    run(horovodrun_cmd(2, sys.executable, SCRIPT, str(tmp_path / "np2.npz"), "4"))
    run([sys.executable, SCRIPT, str(tmp_path / "np1.npz"), "4"])
    w2, w1 = _weights(tmp_path / "np2.npz"), _weights(tmp_path / "np1.npz")
    assert len(w1) == len(w2) > 10
    moved = False
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the steps really changed the weights (otherwise equality would prove nothing)
    run([sys.executable, SCRIPT, str(tmp_path / "np1_other.npz"), "2"])
    other = _weights(tmp_path / "np1_other.npz")
    moved = any(not np.allclose(a, b, atol=1e-5) for a, b in zip(w1, other))
    assert moved


@pytest.mark.slow
def test_horovodrun_train_ranks_hold_identical_weights(tmp_path):
    out = tmp_path / "run"
    run(horovodrun_cmd(2, *bratsbench_cmd("train", *SMALL, "--epochs", "2", "--batch-size", "2", "--out", str(out))))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    assert record["world_size"] == 2 and len(record["hosts"]) == 2
    assert record["engine"]["name"] == "horovod" and record["engine"]["transport"] == "gloo"  # horovodrun --gloo
    sums = record["model"]["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert set(record["history"][-1]["val"]) == {"ET", "TC", "WT"}
    assert record["timing"]["global_batch"] == 4


@pytest.mark.slow
def test_mpirun_train_ranks_agree(tmp_path):
    import os
    import shutil

    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("Open MPI is not installed (scripts/setup.sh installs it as root)")
    out = tmp_path / "mpi"
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    run([mpirun, "-np", "2", "--oversubscribe", *root, *bratsbench_cmd("train", *SMALL, "--epochs", "1", "--out", str(out))])
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["engine"]["transport"] == "mpi"
    sums = record["model"]["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
