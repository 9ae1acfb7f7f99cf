"""`bratsbench comm`: sizes and bandwidth conventions (nccl-tests), the timing loop on a fake backend, bad input,
and real runs: raw MPI under mpirun, Horovod under horovodrun, MWMS under our launcher, then `analyze`."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from harness.comm import measure
from harness.comm.baseline import CommOptions
from harness.errors import UserError
from tests.conftest import bratsbench_cmd, run


@pytest.mark.parametrize("text, expected", [("8", 8), ("64K", 65536), ("256M", 256 * 1024**2), ("1g", 1024**3),
                                            (" 4 KiB ", 4096)])
def test_parse_bytes(text, expected):
    assert measure.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "-8", "8X", "1.5M"])
def test_parse_bytes_refuses(text):
    with pytest.raises(UserError, match="expected a number of bytes"):
        measure.parse_bytes(text)


def test_sizes_are_the_powers_of_two_in_range():
    assert measure.sizes(8, 64) == [8, 16, 32, 64]
    assert measure.sizes(8, 256 * 1024**2)[-1] == 256 * 1024**2 and len(measure.sizes(8, 256 * 1024**2)) == 26
    assert measure.sizes(9, 40) == [16, 32]
    for lo, hi in ((64, 8), (4, 64), (8, 512 * 1024**2), (0, 8)):
        with pytest.raises(UserError, match=r"need 8 <= min <= max <= 268435456 \(8 B to 256 MiB\)"):
            measure.sizes(lo, hi)


@pytest.mark.parametrize("op, n, factor", [("allreduce", 2, 1.0), ("allreduce", 8, 1.75), ("allgather", 4, 0.75),
                                           ("broadcast", 16, 1.0)])
def test_bus_factor_follows_nccl_tests(op, n, factor):
    assert measure.bus_factor(op, n) == pytest.approx(factor)


class SleepBackend:
    """Two 'ranks' in one process whose collectives take a known time: the loop's arithmetic, checked."""

    rank, size = 0, 2

    def __init__(self, seconds: float, missing: str = ""):
        self.seconds, self.missing, self.prepared = seconds, missing, []

    def barrier(self) -> None:
        pass

    def max(self, value: float) -> float:
        return value * 1.5  # the other rank is slower: the slowest rank's time is the size's time

    def prepare(self, op: str, nbytes: int, tensors: int):
        if op == self.missing:
            return None
        self.prepared.append((op, nbytes, tensors))
        return lambda: time.sleep(self.seconds)


def test_the_loop_times_the_slowest_rank_and_skips_what_cannot_be_split():
    backend = SleepBackend(0.002, missing="broadcast")
    rows = measure.run(backend, ["allreduce", "broadcast", "allgather"], [4, 8, 1024], warmup=1, iters=5, tensors=1)
    assert [(r.op, r.bytes) for r in rows] == [("allreduce", 4), ("allreduce", 8), ("allreduce", 1024),
                                                ("allgather", 8), ("allgather", 1024)]  # 4 B cannot go to 2 ranks
    for r in rows:
        assert r.time_us >= 1.5 * 2000 and r.iters == 5
        assert r.algbw_gb_s == pytest.approx(r.bytes / (r.time_us * 1e-6) / 1e9)
        assert r.busbw_gb_s == pytest.approx(r.algbw_gb_s * measure.bus_factor(r.op, 2))


@pytest.mark.parametrize("changes, needle", [
    ({"np": 1}, "-np 1: a collective needs at least 2 ranks"),
    ({"backend": "nccl"}, "--backend 'nccl' is not one of mpi, horovod, mwms"),
    ({"ops": ("allreduce", "scatter")}, "--ops allreduce,scatter"),
    ({"fusion": False}, "--no-fusion is Horovod's tensor fusion"),
    ({"launcher": "horovodrun"}, "--launcher horovodrun cannot start the mpi backend"),
    ({"min_bytes": 1024, "max_bytes": 8}, "need 8 <= min <= max"),
    ({"min_bytes": 8, "max_bytes": 1024**3}, "<= 268435456 \\(8 B to 256 MiB\\)"),
    ({"min_bytes": 2, "max_bytes": 64}, "need 8 <= min"),
    ({"iters": 0}, "--iters 0 must be at least 1"),
])
def test_bad_options_are_refused_before_anything_starts(changes, needle):
    with pytest.raises(UserError, match=needle):
        CommOptions(**changes).validate()


def _comm(tmp_path: Path, backend: str, *extra: str) -> dict:
    out = tmp_path / backend
    result = run(bratsbench_cmd("comm", "--backend", backend, "-np", "2", "--max-bytes", "64K", "--warmup", "2",
                                "--iters", "5", "--gradient-bytes", "16K", "--out", str(out), *extra), timeout=300)
    assert "allreduce at the model's gradient size" in result.stdout
    return json.loads((out / "record.json").read_text())


def _check(record: dict, backend: str, ops: tuple[str, ...], transport: str) -> None:
    assert record["kind"] == "comm" and record["status"] == "ok" and record["world_size"] == 2
    s = record["system"]  # probed on both ranks, as a training record's
    assert s["source"] == "ranks" and [r["rank"] for r in s["ranks"]] == [0, 1] and s["label"]
    assert {r["host"] for r in s["ranks"]} == {h["hostname"] for h in s["hosts"]} == set(record["hosts"])
    assert all(r["cores"] and set(r["cores"]) <= set(os.sched_getaffinity(0)) for r in s["ranks"])
    assert record["engine"]["name"] == backend and record["hosts"]
    assert record["engine"]["transport"] == transport  # what its baseline is matched on
    rows = record["comm"]["rows"]
    sizes = measure.sizes(8, 64 * 1024)
    assert [(r["op"], r["bytes"]) for r in rows] == [(op, b) for op in ops for b in sizes]
    assert all(r["time_us"] > 0 and r["busbw_gb_s"] > 0 for r in rows)
    assert record["comm"]["gradient_bytes"] == 16 * 1024


@pytest.fixture(scope="module")
def mpi_record(tmp_path_factory):
    if shutil.which("mpirun") is None:
        pytest.skip("no mpirun on this machine (Open MPI: apt-get install openmpi-bin libopenmpi-dev)")
    return _comm(tmp_path_factory.mktemp("comm"), "mpi")


def test_raw_mpi_under_mpirun(mpi_record):
    _check(mpi_record, "mpi", measure.OPS, "mpi")
    assert "Open MPI" in mpi_record["engine"]["version"] or "MPICH" in mpi_record["engine"]["version"]


@pytest.mark.horovod
def test_horovod_under_horovodrun_without_fusion_and_the_analysis(mpi_record, tmp_path, cli):
    record = _comm(tmp_path, "horovod", "--no-fusion")
    _check(record, "horovod", measure.OPS, "gloo")  # horovodrun --gloo
    assert record["comm"]["fusion_bytes"] == 0 and record["comm"]["launcher"] == "horovodrun"
    results = tmp_path / "results"
    (results / "mpi").mkdir(parents=True)
    (results / "mpi" / "record.json").write_text(json.dumps(mpi_record))
    shutil.copytree(tmp_path / "horovod", results / "horovod")
    code, stdout, err = cli("analyze", str(results))
    assert code == 0, err
    import pandas as pd

    marks = pd.read_csv(results / "analysis" / "comm_gradient.csv").set_index("backend")
    assert set(marks.index) == {"mpi", "horovod/gloo (no fusion)"} and (marks["bytes"] == 16 * 1024).all()
    assert marks.loc["mpi", "vs_mpi"] == 1.0 and marks.loc["horovod/gloo (no fusion)", "vs_mpi"] > 0
    assert (results / "analysis" / "comm.png").read_bytes()[:4] == b"\x89PNG"
    assert "Communication baselines" in stdout


# slow: on the 3.11/3.12 stack only (a minute on 2 cores); the 3.13 stack's MWMS collectives run in its training tests
@pytest.mark.slow
@pytest.mark.mwms
def test_mwms_allreduce_and_allgather_under_our_launcher(tmp_path):
    record = _comm(tmp_path, "mwms")
    _check(record, "mwms", ("allreduce", "allgather"), "ring")  # MWMS has no broadcast collective
    # TensorFlow spends a sleeping thread per collective on MWMS's timeout: the baseline runs without one
    assert record["comm"]["mwms_collective_timeout_s"] is None


@pytest.mark.parametrize("flags, needle", [
    (["--max-bytes", "1G"], "message sizes 8..1073741824 bytes: need 8 <= min <= max <= 268435456 (8 B to 256 MiB)"),
    (["--min-bytes", "2"], "message sizes 2..268435456 bytes: need 8 <= min"),
    (["--min-bytes", "1M", "--max-bytes", "1K"], "message sizes 1048576..1024 bytes"),
    (["--max-bytes", "12abc"], "message size '12abc': expected a number of bytes"),
])
def test_sizes_out_of_range_are_one_line_before_anything_runs(tmp_path, cli, flags, needle):
    out = tmp_path / "comm"
    code, stdout, err = cli("comm", "--backend", "mpi", "-np", "2", *flags, "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bratsbench: error: ") and needle in lines[0], err
    assert not out.exists()
