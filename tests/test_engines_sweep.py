"""Both engines in one sweep: a `backend` axis gives a scaling table and plot with the engines side by side, and
a worker killed with -9 fails only its own run, within a minute, while the sweep goes on."""

from __future__ import annotations

import json
import subprocess
import time

import psutil
import pytest

pytestmark = pytest.mark.mwms  # run on every stack, the Python 3.13 one included
import yaml

from harness.engines import unavailable
from harness.sweep.plan import plan
from harness.sweep.spec import parse_spec
from tests.conftest import bratsbench_cmd, proc_env

TINY = {
    "model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
    "data": {"synthetic": True, "crop": [16, 16, 16], "synthetic_samples": 4, "val_cases": 1},
    "train": {"batch_size": 1, "benchmark": True, "bench_warmup": 2, "bench_steps": 3, "threads": 1},
}
BOTH = [b for b in ("horovod", "mwms") if unavailable(b) is None]


def _record(results, rid):
    return json.loads((results / "runs" / rid / "record.json").read_text())


@pytest.mark.slow
def test_backend_axis_gives_engines_side_by_side(tmp_path, cli):
    spec = tmp_path / "engines.yaml"
    spec.write_text(yaml.safe_dump({"name": "engines", "fixed": TINY, "timeout_s": 600,
                                    "axes": {"np": [1, 2], "backend": BOTH}}))
    results = tmp_path / "res"
    code, out, err = cli("sweep", "run", str(spec), "--out", str(results))
    assert code == 0, out + err
    runs = plan(parse_spec(yaml.safe_load(spec.read_text()), origin="s"))
    assert sorted(r.label for r in runs) == sorted(f"np{n}-b1-k0-scratch-s0-{b}" for n in (1, 2) for b in BOTH)
    for r in runs:
        rec = _record(results, r.run_id)
        assert rec["engine"]["name"] == r.config.train.backend and rec["world_size"] == r.np
        assert len(set(rec["model"]["replica_checksums"])) == 1
    code, out, err = cli("analyze", str(results))
    assert code == 0, err
    import pandas as pd

    table = pd.read_csv(results / "analysis" / "scaling.csv")
    for backend in BOTH:  # a group label names the backend where more than one engine ran
        rows = table[table["group"].str.contains(f"backend {backend}")] if len(BOTH) > 1 else table
        assert sorted(rows["np"]) == [1, 2], table[["group", "np"]]
    assert (results / "analysis" / "scaling_weak.png").read_bytes()[:4] == b"\x89PNG"


def _worker_of(proc: subprocess.Popen, label_dir, index: int):
    while proc.poll() is None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                config = child.environ().get("TF_CONFIG")
                if (config and json.loads(config)["task"]["index"] == index and "train" in child.cmdline()
                        and (label_dir / "record.json").exists()):
                    return child
        except psutil.Error:
            pass
        time.sleep(0.2)
    return None


@pytest.mark.slow
def test_killed_mwms_worker_fails_its_run_and_the_sweep_goes_on(tmp_path):
    spec = tmp_path / "kill.yaml"
    spec.write_text(yaml.safe_dump({"name": "kill", "fixed": {**TINY, "train": {**TINY["train"], "bench_steps": 400}},
                                    "timeout_s": 600, "axes": {"np": [2, 1], "backend": ["mwms"]}}))
    np2, np1 = plan(parse_spec(yaml.safe_load(spec.read_text()), origin="s"))
    results = tmp_path / "res"
    proc = subprocess.Popen(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results)), env=proc_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = _worker_of(proc, results / "runs" / np2.run_id, 1)
    assert victim is not None, proc.communicate()
    victim.kill()
    killed_at = time.time()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    failed = _record(results, np2.run_id)
    assert failed["status"] == "failed" and failed["error"].startswith("MWMS worker 1 killed by SIGKILL")
    from datetime import datetime

    assert datetime.fromisoformat(failed["finished_at"]).timestamp() - killed_at < 60
    assert _record(results, np1.run_id)["status"] == "ok"  # the sweep went on
