"""harness.data.workers: the process pool of synth and prepare."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from harness.data.workers import map_in_processes, worker_count
from harness.errors import UserError

_LOCK = threading.Lock()  # held by a thread of the test process while the workers run


def _square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _take_the_lock(_: int) -> bool:
    """A forked worker inherits _LOCK held by the parent's thread and never gets it; a spawned one has its own."""
    got = _LOCK.acquire(timeout=10)
    if got:
        _LOCK.release()
    return got


def _die_on_two(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.parametrize("workers, jobs, expected", [(1, 5, 1), (3, 2, 2), (4, 4, 4), (2, 0, 1), (None, 1, 1)])
def test_worker_count(workers, jobs, expected):
    assert worker_count(workers, jobs) == expected


def test_worker_count_defaults_to_the_cores():
    assert worker_count(None, 10_000) == min(os.cpu_count() or 1, 10_000)


@pytest.mark.parametrize("workers", [1, 2])
def test_every_job_is_done_once(workers):
    out = list(map_in_processes(_square, list(range(6)), workers, died="unused"))
    assert sorted(r for r, _ in out) == [x * x for x in range(6)]
    pids = {pid for _, pid in out}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


def test_workers_do_not_inherit_the_parents_held_locks():
    """The hang this pool exists to avoid: a thread of the caller holds a lock when the workers start."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with _LOCK:
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        holding.wait(10)
        assert list(map_in_processes(_take_the_lock, [0, 1], 2, died="unused")) == [True, True]
    finally:
        release.set()
        thread.join()


def test_a_worker_that_dies_is_one_line_not_a_hang():
    with pytest.raises(UserError, match="^a worker died: run again$"):
        list(map_in_processes(_die_on_two, [0, 1, 2, 3], 2, died="a worker died: run again"))
