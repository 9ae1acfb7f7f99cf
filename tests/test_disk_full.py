"""A disk that fills up mid-work: one line naming the file and the space left, and nothing half-written.

Each test mounts its own small tmpfs (root only; otherwise skipped with the reason) and unmounts it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import bratsbench_cmd, proc_env, run, shown_lines
from tests.test_loader import training_set

ARRAYS = {"image": (32, 32, 32, 4), "label": (32, 32, 32), "mask": (32, 32, 32)}
NO_SPACE = re.compile(r"^bratsbench: error: (/\S+): No space left on device \(\d+(\.\d)? (B|KiB|MiB) left\)$")


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size (e.g. '2m'); every mount is undone after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip(f"mounting a tmpfs needs root (running as uid {os.geteuid()})")
        if shutil.which("mount") is None:
            pytest.skip("no mount command on PATH")
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {(result.stderr or result.stdout).strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=True)


def _resize(point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)


def _no_space_line(err: str) -> str:
    """The one error line of a run that hit a full disk; no traceback, nothing else said as an error.

    (Progress bars are there too: subprocess's text mode turns their carriage returns into newlines.)
    """
    assert "Traceback" not in err, err
    errors = [line for line in shown_lines(err) if line.startswith("bratsbench: error:")]
    assert len(errors) == 1 and NO_SPACE.match(errors[0]), err
    return errors[0]


def _assert_store_whole(store: Path) -> list[str]:
    """The manifest parses, lists only complete cases, and no temporary or half-written folder is visible."""
    from harness.data.store import open_store

    manifest = json.loads((store / "manifest.json").read_text())
    listed = open_store(store).case_ids
    assert listed == sorted(manifest["cases"])
    visible = sorted(p.name for p in (store / "cases").iterdir())
    assert all(not name.startswith(".") for name in visible), visible  # no .tmp-/.old- folder
    assert set(listed) <= set(visible)
    for name in visible:  # a finished case not yet in the manifest is whole too (the next run redoes it)
        folder = store / "cases" / name
        assert json.loads((folder / "meta.json").read_text())["case_id"] == name
        for array, shape in ARRAYS.items():
            assert np.load(folder / f"{array}.npy").shape == shape
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(".")) == []  # no temp manifest, no lock
    return listed


@pytest.mark.parametrize("workers", ["1", "2"])
def test_prepare_runs_out_of_space_mid_work(tmp_path, tmpfs, workers):
    raw = tmp_path / "raw"
    training_set(raw / "MICCAI_BraTS2020_TrainingData", 6)
    disk = tmpfs("1m")  # a case at roi 32^3 takes about 330 KiB: two or three fit, the fourth does not
    store = disk / "store"
    argv = bratsbench_cmd("prepare", "--data", str(raw), "--out", str(store), "--roi", "32", "32", "32",
                          "--workers", workers)
    result = run(argv, check=False)
    assert result.returncode == 1, result.stderr
    line = _no_space_line(result.stderr)
    assert NO_SPACE.match(line).group(1).startswith(str(store))
    listed = _assert_store_whole(store)
    assert 1 <= len(listed) < 6

    # with room again, the same command finishes the store and keeps the cases already done
    _resize(disk, "8m")
    done = {cid: (store / "cases" / cid / "image.npy").stat().st_mtime_ns for cid in listed}
    assert run(argv).returncode == 0
    assert len(_assert_store_whole(store)) == 6
    assert {cid: (store / "cases" / cid / "image.npy").stat().st_mtime_ns for cid in listed} == done


STEPS = 6  # per epoch; checkpoints are named by step: ckpt-6, ckpt-12, ckpt-18
TRAIN = ["train", "--synthetic", "--crop", "32", "32", "32", "--base-filters", "8", "--depth", "3", "--epochs", "3",
         "--steps-per-epoch", str(STEPS), "--threads", "1"]


def _latest(ckpt: Path) -> str | None:
    """The checkpoint the `checkpoint` state file names (what tf.train.latest_checkpoint returns)."""
    try:
        found = re.search(r'^model_checkpoint_path: "(.*)"$', (ckpt / "checkpoint").read_text(), re.M)
    except FileNotFoundError:
        return None
    return found.group(1) if found else None


def _bytes(paths) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


@pytest.mark.slow
def test_checkpoint_save_on_full_disk_fails_whole_and_resumes(tmp_path, tmpfs):
    disk = tmpfs("64m")
    out, ckpt, filler = disk / "run", disk / "run" / "checkpoints", disk / "filler"
    first, second = f"ckpt-{STEPS}", f"ckpt-{2 * STEPS}"
    logs = tmp_path / "stderr.txt"  # off the small disk, and no pipe to fill while the test waits
    with open(logs, "w") as err:
        proc = subprocess.Popen(bratsbench_cmd(*TRAIN, "--out", str(out)), env=proc_env(), stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            deadline = time.monotonic() + 300
            while _latest(ckpt) != first:  # the first checkpoint is complete and recorded
                assert proc.poll() is None and time.monotonic() < deadline, logs.read_text()
                time.sleep(0.02)
            # Frozen while the disk fills, so nothing the run writes meanwhile races the filler. Fill it but half
            # of what the next checkpoint still needs: the record still fits, the checkpoint does not.
            os.kill(proc.pid, signal.SIGSTOP)
            size = _bytes(ckpt.glob(f"{first}.*"))
            begun = _bytes(ckpt.glob(f"{second}*"))  # nothing, unless epoch 2 ended before the stop
            st = os.statvfs(disk)
            with open(filler, "wb") as fh:
                fh.write(b"\0" * (st.f_bavail * st.f_frsize - max(size - begun, 0) // 2))
            os.kill(proc.pid, signal.SIGCONT)
            proc.wait(timeout=300)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, logs.read_text()
    line = _no_space_line(logs.read_text())
    assert re.match(rf"bratsbench: error: {re.escape(str(ckpt / second))}: ", line), line
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    leftovers = [p.name for p in ckpt.iterdir() if "temp" in p.name or p.name.startswith((f"{second}.", "checkpoint."))]
    assert leftovers == []
    assert _latest(ckpt) == first

    filler.unlink()
    run(bratsbench_cmd(*TRAIN, "--resume", "--out", str(out)))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert record["extra"]["resumes"] == 1 and _latest(ckpt) == f"ckpt-{3 * STEPS}"
