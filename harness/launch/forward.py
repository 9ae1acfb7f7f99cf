"""Passing a stop signal on to a launched run's ranks (a cluster array task: the batch shell got the scheduler's
warning, or SIGTERM at the end of the job), instead of killing the run as Ctrl-C does.

Where a signal goes depends on the launcher: `srun` and `mpirun` forward SIGUSR1/SIGUSR2 to every rank on every
node (they treat SIGTERM as "kill the job", so it is never sent to them); the ranks this process started itself
(one rank without a launcher, horovodrun's and mpirun's local ranks) get every signal directly. The ranks agree
on their stop step through a collective, so reaching one of them is enough.

A signal that arrives before the run is ready (its ranks have not installed their handlers: the record does
not say "running" yet) waits until it is.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

FORWARDING_LAUNCHERS = ("srun", "mpirun")  # pass SIGUSR1/SIGUSR2 on to every rank (Open MPI: ess_base_forward_signals)
PASSED_THROUGH = (signal.SIGUSR1, signal.SIGUSR2)  # what those launchers forward rather than act on
FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)  # what an array task passes on to its run


class Forwarder:
    """Catch `signals` in this process (main thread) and hand them to `deliver` once `ready()` says the run can
    take them. `received` lists every signal caught, by name, in order."""

    def __init__(self, signals: Sequence[int] = FORWARDED, ready: Callable[[], bool] = lambda: True):
        self.signals = tuple(signals)
        self.ready = ready
        self.received: list[str] = []
        self._pending: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Forwarder":
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._catch)
            except ValueError:  # not the main thread: nothing is caught here
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _catch(self, signum: int, frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)
        self._pending.append(signum)

    def got(self, name: str) -> bool:
        return name in self.received

    def flush(self, proc: subprocess.Popen, is_rank: Callable[[psutil.Process], bool]) -> None:
        """Deliver what is pending to the run started as `proc`, if it is ready for it."""
        if not self._pending or not self.ready():
            return
        pending, self._pending = self._pending, []
        for sig in dict.fromkeys(pending):
            deliver(proc, sig, is_rank)


def deliver(proc: subprocess.Popen, sig: int, is_rank: Callable[[psutil.Process], bool]) -> list[int]:
    """Send `sig` to the run started as `proc`; returns the PIDs it was sent to."""
    sent = []
    args = proc.args if isinstance(proc.args, (list, tuple)) else [proc.args]
    if Path(str(args[0])).name in FORWARDING_LAUNCHERS and sig in PASSED_THROUGH:
        proc.send_signal(sig)
        sent.append(proc.pid)
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return sent
    for p in tree:
        try:
            if p.pid not in sent and is_rank(p):
                p.send_signal(sig)
                sent.append(p.pid)
        except psutil.Error:
            continue
    return sent
