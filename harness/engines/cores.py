"""How many CPU threads a rank runs: from the cores it may really use, divided only when ranks share them.

A rank may use the cores of its affinity mask. A scheduler that binds every task to cores of its own (srun with
`--cpus-per-task`, task/affinity or task/cgroup) leaves each rank only its share, so the mask is the answer;
where the ranks of a node share one mask (horovodrun, mpirun --bind-to none, a batch step, a laptop) each gets
the mask divided by the ranks on the node. SLURM_CPUS_PER_TASK, where set, is what the job asked for per rank:
a mask no larger than it is the rank's own, and a shared mask is never divided into more than it.
"""

from __future__ import annotations

import os
from typing import Mapping


def allowed_cores() -> list[int]:
    """The CPU ids this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpus_per_task(env: Mapping[str, str] | None = None) -> int | None:
    """SLURM_CPUS_PER_TASK as a positive integer, else None (not set, or not a number)."""
    raw = (os.environ if env is None else env).get("SLURM_CPUS_PER_TASK", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def threads_per_rank(cores: int, local_size: int, per_task: int | None = None) -> int:
    """Intra-op threads of a rank that may use `cores` cores, one of `local_size` ranks on its node."""
    cores, local_size = max(1, cores), max(1, local_size)
    if per_task and cores <= per_task:  # the scheduler bound this rank to its own cores
        return cores
    shared = max(1, cores // local_size)
    return min(shared, per_task) if per_task else shared
