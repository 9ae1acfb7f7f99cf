"""How `make test` shares two cores between two pytest-xdist workers (`-n 2 --dist loadfile`).

- A module is the unit of work (its module-scoped fixtures, a SLURM cluster or a transfer study, are made once), and
  the modules that start a SLURM test cluster (test_slurm*.py) are one unit: two clusters that each believe they own
  the machine's cores would put four ranks on two.
- Heavy modules go first (SLURM, then those with slow tests), so the quick ones fill in at the end and the workers
  finish together.
- A test marked `alone` runs with no other test beside it: every test holds a shared lock on a file in the run's
  temporary folder, an `alone` test an exclusive one; a gate lock keeps the shared holders from starving it. Timing
  comparisons are marked so, and every SLURM test is: the test cluster's timings (KillWait, the requeue delay, the
  credential's lifetime) are those of an otherwise idle machine. Even alone, under an xdist worker a requeued MWMS
  task's new job step was cancelled by SLURM 11 s after it started (2 runs in 4), so `make test` runs the SLURM
  modules after the xdist part, in a plain pytest process.
Without xdist (`-n 0`, or a plain `pytest tests/test_x.py`) none of this does anything but order the modules.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

SHARED_UNITS = {"slurm": "test_slurm"}  # unit name: module name prefix


def module_rank(items: list[pytest.Item]) -> dict[str, int]:
    """Per module path: 0 for a SLURM module, 1 for one with slow tests, 2 otherwise."""
    rank: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if any(Path(path).name.startswith(prefix) for prefix in SHARED_UNITS.values()):
            rank[path] = 0
        else:
            rank[path] = min(rank.get(path, 2), 1 if "slow" in item.keywords else 2)
    return rank


def heavy_first(items: list[pytest.Item]) -> None:
    """Reorder in place: by module rank, keeping the collection order within a rank and within a module; the tests
    of the SLURM modules are marked `alone`."""
    rank = module_rank(items)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])  # sort is stable
    for item in items:
        if rank[item.nodeid.split("::", 1)[0]] == 0:
            item.add_marker(pytest.mark.alone)


def make_scheduler(config: pytest.Config, log):
    """loadfile scheduling with the SLURM modules as one unit, in collection order (heavy first)."""
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return next((unit for unit, prefix in SHARED_UNITS.items() if Path(module).name.startswith(prefix)), module)

    config.option.loadscopereorder = False  # keep the heavy-first order instead of "most tests first"
    return Scheduling(config, log)


@contextmanager
def cpu_turn(config: pytest.Config, alone: bool) -> Iterator[None]:
    """Hold the run's CPU lock while one test runs: shared, or exclusive for an `alone` test (xdist workers only)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or not config.option.basetemp:
        yield
        return
    folder = Path(config.option.basetemp).parent  # the controller's temporary folder, shared by the workers
    with open(folder / "cpu.gate", "a") as gate, open(folder / "cpu.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
