"""Which points of a packed sweep run side by side: waves of at most T ranks, in plan order."""

from __future__ import annotations

from typing import Sequence

from harness.errors import UserError
from harness.sweep.plan import PlannedRun


def check_packable(runs: Sequence[PlannedRun], slots: int) -> None:
    """Everything that would stop a packed sweep, before anything runs."""
    if slots < 1:
        raise UserError(f"--pack {slots}: the allocation needs at least 1 rank")
    from harness.engines import default_backend

    for run in runs:
        if run.np > slots:
            raise UserError(f"--pack {slots}: point {run.label} ({run.run_id}) needs np={run.np} ranks, more than the "
                            f"{slots} of the allocation")
    for run in runs:
        backend = run.config.train.backend or default_backend()
        if backend != "horovod":
            raise UserError(f"--pack: point {run.label} uses backend {backend}; packing runs Horovod points on mpi4py "
                            "sub-communicators (MWMS cannot share a process); run it unpacked")


def waves(runs: Sequence[PlannedRun], slots: int, alone: frozenset[str] | set[str] = frozenset()) -> list[list[PlannedRun]]:
    """Points grouped into waves of at most `slots` ranks: each point goes, in plan order, into the first wave
    with room that comes after the waves of its dependencies (those among `runs`). A point in `alone` fills a
    wave by itself."""
    where: dict[str, int] = {}
    used: list[int] = []
    out: list[list[PlannedRun]] = []
    for run in runs:
        if run.np > slots:
            raise UserError(f"--pack {slots}: point {run.label} needs np={run.np} ranks")
        need = slots if run.run_id in alone else run.np
        w = max((where[d] + 1 for d in run.depends_on if d in where), default=0)
        while w < len(used) and used[w] + need > slots:
            w += 1
        if w == len(used):
            used.append(0)
            out.append([])
        used[w] += need
        out[w].append(run)
        where[run.run_id] = w
    return out


def format_waves(groups: list[list[PlannedRun]], slots: int) -> str:
    lines = []
    for w, group in enumerate(groups):
        used = sum(r.np for r in group)
        points = ", ".join(f"{r.label} (np={r.np})" for r in group)
        lines.append(f"wave {w + 1}: {used}/{slots} ranks: {points}")
    return "\n".join(lines)
