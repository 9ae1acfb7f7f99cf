"""Case-parallel work in worker processes: the one pool of `synth` and `prepare`."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence, TypeVar

from harness.errors import UserError

Job = TypeVar("Job")
Result = TypeVar("Result")


def worker_count(workers: int | None, jobs: int) -> int:
    """`workers` (None: one per core), never more than there are jobs, at least 1."""
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def map_in_processes(fn: Callable[[Job], Result], jobs: Sequence[Job], workers: int | None,
                     died: str) -> Iterator[Result]:
    """Yield fn(job) for every job, in the order they finish, from up to `workers` processes (1: in this one).

    Spawned, never forked: the caller may hold threads (TensorFlow's, OpenBLAS's, a test runner's), and a child
    forked from a threaded process can block forever on a lock that was held when it was copied. A
    ProcessPoolExecutor, unlike multiprocessing.Pool, notices a worker that died (killed for memory, crashed) instead
    of waiting for it forever: that ends the map with `died` as one line. Closing the iterator early cancels the
    jobs not yet started.
    """
    n = worker_count(workers, len(jobs))
    if n == 1:
        for job in jobs:
            yield fn(job)
        return
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            raise UserError(died) from None
        finally:
            for future in futures:
                future.cancel()
