"""The lost-rank watchdog under the real launchers, with fake ranks (no TensorFlow).

A rank is a process the launcher started as a rank; what a rank starts is not one, although between fork and
exec it carries the rank's command line. Healthy ranks that keep spawning short-lived children (git, shells,
library helpers) must never be taken for lost ranks; a rank killed with -9 still must be.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.launch import launch_command, launch_env, supervise

FAKE_RANK = """#!{python}
# A fake `bratsbench train` rank: spawns short-lived children for a while; `--die RANK` SIGKILLs that rank after
# 1.5 s (long enough for any watchdog poll to have seen it alive).
import os, signal, subprocess, sys, time
rank = int(os.environ.get("HOROVOD_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)
args = sys.argv[2:]
seconds = float(args[args.index("--seconds") + 1])
die = int(args[args.index("--die") + 1]) if "--die" in args else None
start = time.monotonic()
spawned, end = 0, start + seconds
while time.monotonic() < end:
    if rank == die and time.monotonic() - start > 1.5:
        os.kill(os.getpid(), signal.SIGKILL)
    subprocess.run(["true"])
    spawned += 1
print(f"rank {{rank}} spawned {{spawned}}", flush=True)
"""


@pytest.fixture
def fake_bratsbench(tmp_path: Path) -> Path:
    exe = tmp_path / "bin" / "bratsbench"  # the name the watchdog recognises a rank by
    exe.parent.mkdir()
    exe.write_text(FAKE_RANK.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def _launcher_params() -> list:
    return [pytest.param(1, "horovodrun", id="np1"),
            pytest.param(2, "horovodrun", id="np2-horovodrun", marks=pytest.mark.horovod),
            pytest.param(2, "mpirun", id="np2-mpirun", marks=pytest.mark.skipif(
                shutil.which("mpirun") is None, reason="no mpirun (Open MPI) on this machine"))]


def _run(np_: int, launcher: str, cmd: list[str], grace_s: float) -> tuple:
    start = time.monotonic()
    outcome = supervise(launch_command(np_, cmd, launcher), stdout=None, stderr=None, timeout_s=300,
                        grace_s=grace_s, poll_s=0.05, env=launch_env())
    return outcome, time.monotonic() - start


@pytest.mark.parametrize("np_, launcher", _launcher_params())
def test_ranks_spawning_children_are_never_taken_for_lost_ranks(fake_bratsbench, np_, launcher, capfd):
    # ~8 s of back-to-back fork/exec per rank (hundreds of children) against a 1 s grace and a 50 ms poll: under
    # the old rule (any descendant whose command line reads `bratsbench train`) this was killed within seconds
    outcome, _ = _run(np_, launcher, [str(fake_bratsbench), "train", "--seconds", "8"], grace_s=1.0)
    assert (outcome.exit_code, outcome.reason) == (0, None)
    spawned = [int(line.rsplit(" ", 1)[1]) for line in capfd.readouterr().out.splitlines() if " spawned " in line]
    assert len(spawned) == np_ and min(spawned) >= 100


def test_a_rank_killed_with_sigkill_under_a_launcher_that_waits_is_a_lost_rank(fake_bratsbench):
    # a plain shell as the launcher: it notices nothing, so only the watchdog can end the job; rank 1 dies after
    # 1.5 s of spawning children, rank 0 would go on for a minute
    ranks = " & ".join(f"HOROVOD_RANK={r} {fake_bratsbench} train --seconds 60 --die 1" for r in (0, 1))
    start = time.monotonic()
    outcome = supervise(["sh", "-c", f"{ranks} & wait"], timeout_s=300, grace_s=2.0, poll_s=0.05)
    assert outcome.reason == "a rank exited but the job kept running for 2 s; killed"
    assert time.monotonic() - start < 30
    assert _alive(str(fake_bratsbench)) == []


@pytest.mark.parametrize("np_, launcher", [p for p in _launcher_params() if p.values[0] > 1])
def test_a_rank_killed_with_sigkill_ends_the_job(fake_bratsbench, np_, launcher):
    # horovodrun and mpirun stop the other ranks themselves; either way the job ends failed, soon, with no survivor
    outcome, took = _run(np_, launcher, [str(fake_bratsbench), "train", "--seconds", "60", "--die", "1"], grace_s=2.0)
    assert outcome.exit_code not in (0, None)
    assert took < 30
    assert _alive(str(fake_bratsbench)) == []


def _alive(marker: str) -> list[int]:
    found = []
    for p in psutil.process_iter():
        try:
            if marker in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found
