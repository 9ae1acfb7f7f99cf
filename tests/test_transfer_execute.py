"""The study executor's scheduling: core shares, start order, dependencies and failures, with real subprocesses
standing in for training (a run is "trained" by a tiny Python command that writes its record)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.errors import UserError
from harness.record import new_record
from harness.transfer import execute as ex
from harness.transfer.plan import plan_study


def _plan(tmp_path: Path, seeds=(0, 1)):
    base = RunConfig.from_dict({"model": {"base_filters": 4, "depth": 2},
                                "data": {"store": str(tmp_path / "store"), "split": str(tmp_path / "split.json")},
                                "train": {"epochs": 1, "steps_per_epoch": 1}})
    return plan_study(base, "flair,t1ce", "t1,t2", [0, 3], list(seeds), tmp_path / "study", pretrain_epochs=1,
                      head_only=True)


@pytest.mark.parametrize("parallel, np_, cores, expected", [
    (1, 1, [0, 1], [[0, 1]]),
    (2, 1, [0, 1], [[0], [1]]),
    (2, 1, [4, 5, 6, 7, 8], [[4, 5], [6, 7]]),
    (2, 2, [0, 1, 2, 3], [[0, 1], [2, 3]]),
])
def test_core_slots_are_disjoint_shares(parallel, np_, cores, expected):
    assert ex.core_slots(parallel, np_, cores) == expected


@pytest.mark.parametrize("parallel, np_, cores, needle", [
    (0, 1, [0, 1], "--parallel 0 must be at least 1"),
    (3, 1, [0, 1], "--parallel 3 with --np 1 needs 3 cores; this process may use 2"),
    (2, 2, [0, 1, 2], "needs 4 cores"),
])
def test_core_slots_refuse_more_runs_than_cores(parallel, np_, cores, needle):
    with pytest.raises(UserError, match=needle):
        ex.core_slots(parallel, np_, cores)


def test_schedule_starts_every_dependency_before_its_dependents(tmp_path):
    runs = _plan(tmp_path)
    order = ex.schedule(runs)
    assert sorted(r.id for r in order) == sorted(r.id for r in runs)
    assert [r.role for r in order[:2]] == ["pretrain", "pretrain"]
    assert [r.role for r in order[2:4]] == ["scratch", "scratch"]
    pos = {r.id: i for i, r in enumerate(order)}
    assert all(pos[r.depends_on.id] < pos[r.id] for r in runs if r.depends_on)


class FakeLaunch:
    """Records which runs overlap in time and on which cores; the `fail` labels exit 1."""

    def __init__(self, fail=(), seconds=0.3):
        self.fail, self.seconds = set(fail), seconds
        self.spans: dict[str, tuple[float, float, tuple[int, ...]]] = {}
        self.lock = threading.Lock()

    def launch_train(self, folder, np_, *, timeout_s=None, cpus=None, stop=None):
        label = folder.name.rsplit("-", 1)[0]
        start = time.monotonic()
        code = ex.launch.supervise([sys.executable, "-c", f"import time; time.sleep({self.seconds})"], cpus=cpus, stop=stop).exit_code
        ok = code == 0 and label not in self.fail
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        folder.write_record(new_record({}, probe=False) | {"status": "ok" if ok else "failed", "wall_s": self.seconds,
                                                           "metrics": {"test": {"mean": {"WT_dice": 0.5}}}})
        with self.lock:
            self.spans[label] = (start, time.monotonic(), tuple(cpus or ()))
        return {"status": "ok" if ok else "failed", "exit_code": 0 if ok else 1, "error": None if ok else "exit 1"}


def test_parallel_runs_overlap_on_their_own_cores_and_a_failed_pretraining_skips_only_its_dependents(tmp_path, monkeypatch):
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    fake = FakeLaunch(fail={"pretrain-s1"})
    monkeypatch.setattr(ex.launch, "launch_train", fake.launch_train)
    runs = _plan(tmp_path)
    lines: list[str] = []
    status = ex.execute(runs, parallel=2, report=lines.append)
    assert list(status) == [r.id for r in runs]  # plan order, whatever order they ran in
    by_label = {r.label: status[r.id] for r in runs}
    assert by_label["pretrain-s1"]["status"] == "failed"
    assert all(by_label[f"finetune-{v}-s1"]["error"] == "dependency pretrain-s1 failed" for v in ("k0", "k3", "head"))
    assert all(s["status"] == "ok" for label, s in by_label.items() if label.endswith("s0") or label == "scratch-s1"), by_label
    (a0, a1, ca), (b0, b1, cb) = fake.spans["pretrain-s0"], fake.spans["pretrain-s1"]
    assert a0 < b1 and b0 < a1  # side by side
    assert len(ca) == len(cb) == len(os.sched_getaffinity(0)) // 2 and not set(ca) & set(cb)
    for r in runs:  # a fine-tuning run starts only after its pre-training ended
        if r.depends_on and r.label in fake.spans:
            assert fake.spans[r.label][0] >= fake.spans[r.depends_on.label][1]


def test_a_stop_event_kills_the_supervised_command(tmp_path):
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ex.launch.supervise([sys.executable, "-c", "import time; time.sleep(30)"], stop=stop, poll_s=0.1)
    assert time.monotonic() - start < 10
