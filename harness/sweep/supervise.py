"""Supervising one launched run: its whole process tree dies on timeout, on a lost rank, or on Ctrl-C.

Horovod's ranks sit in other sessions than the launcher, so killing the launcher's process group is not
enough: the tree is walked with psutil as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

import psutil

def local_launch(np_: int, cmd: Sequence[str], launcher: str = "horovodrun", output_dir: str | Path | None = None) -> list[str]:
    """`cmd` on np_ local ranks: as is for one rank, else under horovodrun (Gloo) or mpirun on localhost."""
    cmd = list(cmd)
    if np_ == 1:
        return cmd
    n = str(np_)
    logs = ["--output-filename", str(output_dir)] if output_dir else []
    if launcher == "mpirun":
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        return ["mpirun", "-np", n, "--oversubscribe", *root, *logs, *cmd]
    horovodrun = Path(sys.executable).parent / "horovodrun"
    exe = str(horovodrun) if horovodrun.exists() else "horovodrun"
    return [exe, "-np", n, "-H", f"localhost:{n}", "--gloo", *logs, *cmd]


def run_logged(cmd: Sequence[str], log: Path, timeout_s: float | None = None, env: dict[str, str] | None = None) -> int | None:
    """Run `cmd` supervised, stdout and stderr appended to `log`; returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return supervise(cmd, stdout=fh, stderr=fh, timeout_s=timeout_s, env=env).exit_code


RANK_GRACE_S = 30.0  # a rank gone while the job still runs this long -> the job is killed
KILL_WAIT_S = 5.0  # SIGTERM, then SIGKILL after this long


@dataclass
class Outcome:
    """How a launched run ended, as seen from outside it."""

    exit_code: int | None
    seconds: float
    reason: str | None = None  # None, or why the runner killed it




def is_rank_process(proc: psutil.Process) -> bool:
    """A training rank: `bratsbench train ...` or `python -m harness train ...` (not a launcher or shell)."""
    try:
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return False
    for i in range(min(2, len(argv))):
        if Path(argv[i]).name == "bratsbench" and argv[i + 1 : i + 2] == ["train"]:
            return True
        if argv[i : i + 3] == ["-m", "harness", "train"]:
            return True
    return False


def supervise(
    cmd: Sequence[str],
    *,
    stdout: IO | int | None = None,
    stderr: IO | int | None = None,
    timeout_s: float | None = None,
    grace_s: float = RANK_GRACE_S,
    env: dict[str, str] | None = None,
    poll_s: float = 0.5,
    is_rank: Callable[[psutil.Process], bool] = is_rank_process,
) -> Outcome:
    """Run `cmd` in a new session; kill its whole tree on timeout, on a lost rank, or on Ctrl-C (re-raised)."""
    start = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    ranks: dict[int, psutil.Process] = {}
    lost_at: float | None = None
    try:
        while True:
            try:
                code = proc.wait(timeout=poll_s)
                return Outcome(code, time.monotonic() - start)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if timeout_s and now - start > timeout_s:
                kill_tree(proc)
                return Outcome(proc.returncode, now - start, f"timed out after {timeout_s:g} s; killed")
            if lost_at is None and _rank_lost(proc, ranks, is_rank):
                lost_at = now
            if lost_at is not None and now - lost_at > grace_s:
                kill_tree(proc)
                return Outcome(proc.returncode, now - start, f"a rank exited but the job kept running for {grace_s:g} s; killed")
    except BaseException:
        kill_tree(proc)
        raise


def _rank_lost(proc: subprocess.Popen, ranks: dict[int, psutil.Process], is_rank: Callable) -> bool:
    """Track rank processes under `proc`; True once one of them has exited (or is a zombie)."""
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            if child.pid not in ranks and is_rank(child):
                ranks[child.pid] = child
    except psutil.Error:
        return False
    for rank in ranks.values():
        try:
            if not rank.is_running() or rank.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            continue
    return False


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL the launcher's process group and every descendant (ranks may sit in other sessions)."""
    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.Error:
        tree = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in tree:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        if _wait_gone(tree, KILL_WAIT_S):
            break
    try:
        proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL failed; nothing more to do
        pass


def _wait_gone(procs: list[psutil.Process], timeout: float) -> bool:
    """True once every process has exited or is a zombie (orphaned zombies may never be reaped in a container)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.05)
