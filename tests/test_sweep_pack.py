"""Packed sweeps (`sweep run --pack T`): the wave plan, bad input, and real packed jobs under mpirun compared with
the unpacked sweep, a point that fails beside one that does not, and a rank killed with -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml

from harness.errors import UserError
from harness.sweep import index
from harness.sweep.pack import waves
from harness.sweep.plan import plan
from harness.sweep.spec import parse_spec
from tests.conftest import bratsbench_cmd, proc_env

TINY = {
    "model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
    "data": {"synthetic": True, "crop": [16, 16, 16], "synthetic_samples": 4, "val_cases": 1},
    # one thread per rank in both modes: the packed and unpacked runs must compute the same numbers
    "train": {"batch_size": 1, "epochs": 1, "steps_per_epoch": 3, "threads": 1},
}


@dataclass
class Point:  # what `waves` reads of a PlannedRun
    run_id: str
    np: int
    depends_on: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.run_id


def _ids(groups) -> list[list[str]]:
    return [[p.run_id for p in g] for g in groups]


@pytest.mark.parametrize("points, slots, alone, expected", [
    ([Point("a", 1), Point("b", 1), Point("c", 1)], 2, set(), [["a", "b"], ["c"]]),
    ([Point("a", 2), Point("b", 1), Point("c", 1), Point("d", 2)], 4, set(), [["a", "b", "c"], ["d"]]),
    # a later small point fills an earlier wave's free ranks (first fit, plan order kept within a wave)
    ([Point("a", 1), Point("b", 2), Point("c", 1)], 2, set(), [["a", "c"], ["b"]]),
    # a transfer run waits for its pre-training's wave even where an earlier wave has room
    ([Point("pre", 1), Point("x", 1, ["pre"]), Point("y", 1)], 3, set(), [["pre", "y"], ["x"]]),
    ([Point("pre", 1), Point("x", 1, ["pre"]), Point("z", 1, ["x"])], 4, set(), [["pre"], ["x"], ["z"]]),
    # dependencies outside the packed set (already ok) do not hold a point back
    ([Point("x", 1, ["done-earlier"])], 2, set(), [["x"]]),
    # points run again after a crash run alone in their wave
    ([Point("a", 1), Point("b", 1), Point("c", 1)], 2, {"a", "b"}, [["a"], ["b"], ["c"]]),
    ([Point("a", 1)], 1, set(), [["a"]]),
])
def test_waves_first_fit_in_plan_order(points, slots, alone, expected):
    groups = waves(points, slots, alone)
    assert _ids(groups) == expected
    assert all(sum(slots if p.run_id in alone else p.np for p in g) <= slots for g in groups)


def test_waves_refuse_a_point_larger_than_the_allocation():
    with pytest.raises(UserError, match="--pack 2: point big needs np=4 ranks"):
        waves([Point("a", 1), Point("big", 4)], 2)


def _spec(tmp_path: Path, name: str, axes: dict, fixed: dict = TINY, **top) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "axes": axes, "fixed": fixed, "timeout_s": 300, **top}))
    return path


def _plan(spec: Path):
    return plan(parse_spec(yaml.safe_load(spec.read_text()), origin=str(spec)))


@pytest.mark.parametrize("pack, axes, fixed_train, message", [
    ("1", {"np": [1, 2]}, {}, "--pack 1: point np2-b1-k0-scratch-s0 .* needs np=2 ranks, more than the 1 of the allocation"),
    ("0", {"np": [1]}, {}, "--pack 0: the allocation needs at least 1 rank"),
    ("2", {"np": [1]}, {"backend": "mwms"}, "--pack: point .* uses backend mwms"),
])
def test_bad_pack_is_one_line_before_anything_runs(tmp_path, cli, pack, axes, fixed_train, message):
    fixed = {**TINY, "train": {**TINY["train"], **fixed_train}}
    spec = _spec(tmp_path, "bad", axes, fixed)
    results = tmp_path / "res"
    code, out, err = cli("sweep", "run", str(spec), "--out", str(results), "--pack", pack)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bratsbench: error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not results.exists()  # nothing written


@pytest.mark.horovod  # packing runs Horovod points: without Horovod the default engine is MWMS, refused
def test_dry_run_prints_the_waves_and_the_mpirun_line(tmp_path, cli):
    spec = _spec(tmp_path, "dry", {"np": [1, 2], "seed": [0, 1]})
    code, out, _ = cli("sweep", "run", str(spec), "--out", str(tmp_path / "res"), "--pack", "2", "--dry-run")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("wave 1: 2/2 ranks: np1-b1-k0-scratch-s0 (np=1), np1-b1-k0-scratch-s1 (np=1)")
    assert lines[1].startswith("wave 2: 2/2 ranks: np2-b1-k0-scratch-s0 (np=2)")
    assert "mpirun -np 2" in lines[-1] and "harness.sweep.pack worker" in lines[-1]
    assert not (tmp_path / "res").exists()


@pytest.mark.horovod
def test_benchmark_points_side_by_side_are_warned_about(tmp_path, cli):
    bench = {**TINY, "train": {"batch_size": 1, "benchmark": True, "bench_warmup": 1, "bench_steps": 2, "threads": 1}}
    spec = _spec(tmp_path, "timing", {"seed": [0, 1]}, bench)
    code, _, err = cli("sweep", "run", str(spec), "--out", str(tmp_path / "res"), "--pack", "2", "--dry-run")
    assert code == 0 and "2 benchmark point(s) (e.g. np1-b1-k0-scratch-s0) are timed side by side" in err
    code, _, err = cli("sweep", "run", str(spec), "--out", str(tmp_path / "res"), "--pack", "1", "--dry-run")
    assert code == 0 and "warning" not in err  # one point per wave: each alone


# --- real packed jobs ------------------------------------------------------------------------------------


def _records(results: Path, runs) -> dict[str, dict]:
    return {r.run_id: json.loads((results / "runs" / r.run_id / "record.json").read_text()) for r in runs}


def _comparable(record: dict) -> dict:
    config = dict(record["config"])
    config.pop("out")
    return {"config": config, "status": record["status"], "metrics": record["metrics"], "world_size": record["world_size"],
            "checksums": record["model"]["replica_checksums"], "losses": [e["loss"] for e in record["history"]]}


def _sweep(spec: Path, results: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results), *extra), env=proc_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.horovod
def test_packed_sweep_gives_the_records_of_the_unpacked_sweep(tmp_path):
    spec = _spec(tmp_path, "same", {"np": [1, 2], "seed": [0, 1]})
    runs = _plan(spec)
    assert len(runs) == 4
    t0 = time.monotonic()
    packed = _sweep(spec, tmp_path / "packed", "--pack", "2")
    packed_s = time.monotonic() - t0
    t0 = time.monotonic()
    unpacked = _sweep(spec, tmp_path / "unpacked")
    unpacked_s = time.monotonic() - t0
    print(f"4 points on 2 ranks: packed {packed_s:.1f} s, unpacked {unpacked_s:.1f} s")
    assert packed.returncode == 0, packed.stdout + packed.stderr
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    a, b = _records(tmp_path / "packed", runs), _records(tmp_path / "unpacked", runs)
    for run in runs:
        assert _comparable(a[run.run_id]) == _comparable(b[run.run_id]), run.label
        assert a[run.run_id]["extra"]["sweep"] == b[run.run_id]["extra"]["sweep"]
        pack = a[run.run_id]["extra"]["pack"]
        assert pack["slots"] == 2 and len(pack["ranks"]) == run.np
        s = a[run.run_id]["system"]  # the point's own ranks, on its sub-communicator
        assert [r["rank"] for r in s["ranks"]] == list(range(run.np)) and s["horovod"]["mpi"] is True
        assert a[run.run_id]["phases"]["to_first_step_s"] < 60  # this point's own start, not the job's
    # the two np=1 points share a wave; each np=2 point has a wave of its own
    waves_of = {r.label: a[r.run_id]["extra"]["pack"]["wave"] for r in runs}
    assert waves_of["np1-b1-k0-scratch-s0"] == waves_of["np1-b1-k0-scratch-s1"]
    assert len(set(waves_of.values())) == 3
    lines = packed.stdout.strip().splitlines()
    assert len(lines) == 5 and all("ok in" in line and "(packed, wave" in line for line in lines[:4])
    assert "4 ok, 0 skipped (already ok), 0 failed" in lines[-1]
    entries = index.read_index(tmp_path / "packed")["runs"]
    assert {e["status"] for e in entries.values()} == {"ok"}
    again = _sweep(spec, tmp_path / "packed", "--pack", "2")  # resumable: nothing left to run
    assert again.returncode == 0 and again.stdout.count("skipped, already ok") == 4
    assert _records(tmp_path / "packed", runs) == a


@pytest.mark.slow
@pytest.mark.horovod
def test_a_failing_point_does_not_take_its_wave_down(tmp_path):
    # batch 8 is larger than the 4 synthetic samples: that point fails at run time; its wave-mate trains on
    train = {k: v for k, v in TINY["train"].items() if k != "batch_size"}
    spec = _spec(tmp_path, "fail", {"batch_size": [8, 1], "mode": ["transfer"]}, {**TINY, "train": train},
                 transfer={"source": ["flair"], "epochs": 1, "steps_per_epoch": 2})
    runs = _plan(spec)
    proc = _sweep(spec, tmp_path / "res", "--pack", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    recs = _records(tmp_path / "res", runs)
    by_label = {r.label: recs[r.run_id] for r in runs}
    bad = next(v for k, v in by_label.items() if "-b8-" in k and not k.startswith("pre"))
    good = next(v for k, v in by_label.items() if "-b1-" in k and not k.startswith("pre"))
    assert bad["status"] == "failed" and bad["exit_code"] == 2
    assert "larger than the 4 synthetic samples" in bad["error"]
    assert any("bratsbench: error:" in line for line in bad["log_tail"])  # the point's own log
    assert good["status"] == "ok" and good["model"]["init"]["from"].endswith("checkpoints")
    assert "1 failed" in proc.stdout.strip().splitlines()[-1]


def _pack_ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(proc.pid).children(recursive=True)
                if c.cmdline()[1:4] == ["-m", "harness.sweep.pack", "worker"]]  # the ranks, not mpirun
    except psutil.Error:
        return []


@pytest.mark.slow
@pytest.mark.horovod
def test_a_killed_rank_reruns_the_points_in_flight_alone(tmp_path):
    fixed = {**TINY, "train": {**TINY["train"], "steps_per_epoch": 400}}
    spec = _spec(tmp_path, "kill", {"seed": [0, 1]}, fixed)
    runs = _plan(spec)
    results = tmp_path / "res"
    proc = subprocess.Popen(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results), "--pack", "2"),
                            env=proc_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        entries = index.read_index(results).get("runs", {}) if (results / "sweep.json").exists() else {}
        training = all((results / "runs" / r.run_id / "logs" / "rank.0" / "stderr").exists()
                       and entries.get(r.run_id, {}).get("status") == "running" for r in runs)
        ranks = _pack_ranks(proc)
        if training and len(ranks) == 2:
            time.sleep(3)  # inside train()
            victim = ranks[1]
        time.sleep(0.3)
    assert victim is not None, proc.communicate(timeout=60)
    victim.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out + err
    recs = _records(results, runs)
    assert {r["status"] for r in recs.values()} == {"ok"}
    logs = {p.stem for p in (results / "pack").glob("*.log")}
    launches = {r["extra"]["pack"]["launch"] for r in recs.values()}
    assert len(logs) == 2 and len(launches) == 1 and launches < logs  # the killed job, then one rerun of both
    waves_of = sorted(r["extra"]["pack"]["wave"] for r in recs.values())
    assert waves_of == [1, 2]  # rerun alone: one point per wave
    assert out.count("ok in") == 2


def _default_sigint() -> None:  # a user's Ctrl-C reaches a foreground process; background jobs ignore SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.horovod
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_scancel_stops_the_packed_job_and_records_its_points_interrupted(tmp_path, sig):
    fixed = {**TINY, "train": {**TINY["train"], "steps_per_epoch": 400}}
    spec = _spec(tmp_path, "intr", {"seed": [0, 1]}, fixed)
    runs = _plan(spec)
    results = tmp_path / "res"
    proc = subprocess.Popen(bratsbench_cmd("sweep", "run", str(spec), "--out", str(results), "--pack", "2"),
                            env=proc_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    ranks: list[psutil.Process] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        entries = index.read_index(results).get("runs", {}) if (results / "sweep.json").exists() else {}
        ranks = _pack_ranks(proc)
        if len(ranks) == 2 and all(entries.get(r.run_id, {}).get("status") == "running" for r in runs):
            break
        time.sleep(0.3)
    assert len(ranks) == 2, proc.communicate(timeout=60)
    time.sleep(2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted" in out.strip().splitlines()[-1]
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, "the packed job outlived the sweep"
    for run in runs:
        rec = _records(results, [run])[run.run_id]
        assert (rec["status"], rec["exit_code"], rec["error"]) == ("interrupted", 130, "interrupted by the user")
    assert {e["status"] for e in index.read_index(results)["runs"].values()} == {"interrupted"}


def test_emit_pack_with_a_point_too_large_is_one_line_and_writes_nothing(tmp_path, cli):
    spec = _spec(tmp_path, "emitbad", {"np": [1, 2]})
    jobs = tmp_path / "jobs"
    code, out, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(jobs), "--pack", "1")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "bratsbench: error: --pack 1: point np2-b1-k0-scratch-s0 (" + _plan(spec)[-1].run_id
        + ") needs np=2 ranks, more than the 1 of the allocation"]
    assert not jobs.exists()
    code, _, err = cli("sweep", "emit", str(spec), "--scheduler", "pbs", "--out", str(jobs), "--pack", "2")
    assert code == 2 and "--pack is emitted for slurm" in err and not jobs.exists()
