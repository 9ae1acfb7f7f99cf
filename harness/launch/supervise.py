"""Supervision of a launched job: its own session, killed whole on timeout, on a lost rank (a rank gone while the
job still runs RANK_GRACE_S leaves the others blocked in a collective) or on Ctrl-C; Horovod's ranks sit in other
sessions than the launcher, so the tree is walked with psutil as well as the process group killed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Sequence

import psutil

if TYPE_CHECKING:
    from harness.launch.forward import Forwarder


RANK_GRACE_S = 30.0  # a rank gone while the job still runs this long -> the job is killed
KILL_WAIT_S = 5.0  # SIGTERM, then SIGKILL after this long


@dataclass
class Outcome:
    """How a launched run ended, as seen from outside it."""

    exit_code: int | None
    seconds: float
    reason: str | None = None  # None, or why the runner killed it


def is_rank_process(proc: psutil.Process, command: str = "train") -> bool:
    """A rank: `bratsbench COMMAND ...` or `python -m harness COMMAND ...` (not a launcher or shell)."""
    try:
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return False
    for i in range(min(2, len(argv))):
        if Path(argv[i]).name == "bratsbench" and argv[i + 1 : i + 2] == [command]:
            return True
        if argv[i : i + 3] == ["-m", "harness", command]:
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
    cpus: Sequence[int] | None = None,
    stop: threading.Event | None = None,
    forward: "Forwarder | None" = None,
) -> Outcome:
    """Run `cmd` in a new session; kill its whole tree on timeout, on a lost rank, or on Ctrl-C (re-raised).

    `cpus`: the cores the command (and every process it starts) may use, for runs side by side. `stop`: set by
    another thread to kill the command as Ctrl-C would (a new session does not see the terminal's Ctrl-C).
    `forward`: stop signals this process catches are passed on to the run's ranks (which then stop by themselves);
    the command then starts with SIGUSR1/SIGUSR2 ignored, so a launcher or a rank that is still starting is not
    killed by one (srun, mpirun and the trainer install their own handlers)."""
    start = time.monotonic()
    preexec = None
    if forward is not None:
        from harness.launch.forward import PASSED_THROUGH

        def preexec() -> None:  # runs in the child between fork and exec; exec keeps ignored signals ignored
            for sig in PASSED_THROUGH:
                signal.signal(sig, signal.SIG_IGN)
    proc = subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, preexec_fn=preexec)
    ranks: dict[int, psutil.Process] = {}
    lost_at: float | None = None
    try:
        if cpus:  # set before the child gets past its imports; its ranks and threads inherit it
            os.sched_setaffinity(proc.pid, set(cpus))
        while True:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            if forward is not None:
                forward.flush(proc, is_rank)
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
    """Track the job's ranks; True once one of them has exited (or is a zombie) while the job runs on.

    A rank is the outermost rank-looking process of its branch: one the launcher started. Anything a rank starts
    (git, a shell, a library's helper) is not a rank, although between fork and exec it still carries the rank's
    command line; counting it made every short-lived child of a healthy rank look like a lost rank. Where the
    launched process is itself the rank (one rank, no launcher), its exit ends the job and nothing is tracked."""
    try:
        root = psutil.Process(proc.pid)
        if is_rank(root):
            return False
        descendants = root.children(recursive=True)
    except psutil.Error:
        return False
    parents: dict[int, int] = {}
    for child in descendants:
        try:
            parents[child.pid] = child.ppid()
        except psutil.Error:
            continue
    looks_like_rank: dict[int, bool] = {}

    def rank_like(pid: int, process: psutil.Process | None = None) -> bool:
        if pid not in looks_like_rank:
            looks_like_rank[pid] = pid in ranks or is_rank(process or psutil.Process(pid))
        return looks_like_rank[pid]

    for child in descendants:
        if child.pid in ranks or child.pid not in parents:
            continue
        try:
            if not rank_like(child.pid, child):
                continue
            ancestor = parents[child.pid]
            while ancestor in parents and not rank_like(ancestor):  # up to the launched process (not a rank)
                ancestor = parents[ancestor]
            if ancestor in parents:  # a rank's own child, caught between fork and exec
                continue
        except psutil.Error:
            continue
        ranks[child.pid] = child
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
