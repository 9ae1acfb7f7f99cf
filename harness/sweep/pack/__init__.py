"""Packed sweeps: many sweep points in one allocation of T ranks (`sweep run --pack T`, `sweep emit --pack T`).

Why: on a shared cluster every job queues and starts on its own, so a sweep of small runs as an array spends
its time waiting and starting. Packed, the sweep is one MPI job of T ranks. Its points are grouped into waves
(`waves`: first fit in plan order, a transfer run after its pre-training); in each wave the ranks split
MPI_COMM_WORLD with mpi4py into one sub-communicator per point, each group trains its point in-process with
Horovod on that communicator (`hvd.init(comm=...)`), shuts Horovod down, and all ranks meet at a barrier before
the next wave.

Records are those of unpacked runs: the same run folders and per-rank logs, settled by the same rule
(`launch.settle`); `extra.pack` says where a point ran. A point that raises is recorded failed on its own (its
group's other ranks get Horovod's shut-down error, not a hang). A rank that dies (kill -9, a crash) takes the
MPI job down: the parent (`run_packed`) then runs the points that were in flight again, each alone in its wave,
so the point that crashed fails alone; a point over the sweep's timeout_s is recorded failed by its own watchdog.

The parts: `waves` (the plan), `parent` (launches the packed job, follows it, settles what it left), `worker`
(one process per rank of the packed job) and `__main__` (`python -m harness.sweep.pack worker|run`).
"""

from harness.sweep.pack.parent import START_SLACK_S, run_packed, worker_command
from harness.sweep.pack.waves import check_packable, format_waves, waves

__all__ = ["START_SLACK_S", "check_packable", "format_waves", "run_packed", "waves", "worker_command"]
