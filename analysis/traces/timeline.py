"""Horovod timeline totals: time per phase, and per-rank negotiation from the coordinator's readiness ticks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

def read_timeline(path: str | Path) -> list[dict[str, Any]]:
    """Events of a Horovod timeline, also when the job died before writing the closing ']' (or mid-event)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
        return data["traceEvents"] if isinstance(data, dict) else list(data)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    pos = text.find("[") + 1
    events: list[dict[str, Any]] = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # a torn last event
        events.append(obj)
    return events


@dataclass
class TimelineSummary:
    """`phases`: count and total ms per activity over all tensors (rank 0 writes the file; the processing phases are
    collective, every rank takes part). `ranks`: per-rank negotiation, from the coordinator's readiness ticks."""

    phases: pd.DataFrame
    ranks: pd.DataFrame
    unclosed: int  # activities begun but never ended (the job died, or the window closed mid-activity)
    unopened: int  # ends whose beginning precedes the window (hvd.start_timeline mid-negotiation): not counted
    note: str | None


def timeline_summary(events: Sequence[dict[str, Any]]) -> TimelineSummary:
    """Totals per phase and per rank.

    Per rank: `ready` = readiness ticks, `wait_ms` = time from the rank's tick to the end of the negotiation (how long
    it waited for the others), `late_ms` = time from the negotiation's start to its tick; only negotiations seen
    whole count (a window opened by hvd.start_timeline can begin inside one). The ticks exist only for
    negotiations that go through the coordinator: Horovod's response cache skips them for repeated tensors, so run
    with `horovodrun --cache-capacity 0` (HOROVOD_CACHE_CAPACITY=0) to record them.
    """
    stacks: dict[Any, list[tuple[str, float]]] = {}
    totals: dict[str, list[float]] = {}
    ranks: dict[int, dict[str, float]] = {}
    pending_ticks: dict[Any, list[tuple[int, float]]] = {}
    unopened = 0
    for e in events:
        ph, pid = e.get("ph"), e.get("pid")
        if ph == "B":
            stacks.setdefault(pid, []).append((str(e.get("name")), float(e["ts"])))
            if str(e.get("name", "")).startswith("NEGOTIATE"):
                pending_ticks[pid] = []
        elif ph == "E" and not stacks.get(pid):
            unopened += 1
        elif ph == "E":
            name, ts = stacks[pid].pop()
            dur = float(e["ts"]) - ts
            totals.setdefault(name, []).append(dur)
            if name.startswith("NEGOTIATE"):
                for rank, tick in pending_ticks.pop(pid, []):
                    r = ranks.setdefault(rank, {"ready": 0, "wait_ms": 0.0, "late_ms": 0.0})
                    r["ready"] += 1
                    r["wait_ms"] += (float(e["ts"]) - tick) / 1e3
                    r["late_ms"] += (tick - ts) / 1e3
        elif ph == "X" and str(e.get("name", "")).isdigit() and pid in pending_ticks:
            pending_ticks[pid].append((int(e["name"]), float(e["ts"])))
    unclosed = sum(len(s) for s in stacks.values())
    phases = pd.DataFrame(
        [{"phase": k, "count": len(v), "total_ms": sum(v) / 1e3, "mean_ms": sum(v) / len(v) / 1e3} for k, v in totals.items()],
        columns=["phase", "count", "total_ms", "mean_ms"],
    ).sort_values("total_ms", ascending=False, ignore_index=True)
    rank_table = pd.DataFrame(
        [{"rank": k, **v} for k, v in sorted(ranks.items())], columns=["rank", "ready", "wait_ms", "late_ms"]
    )
    note = None
    if rank_table.empty and any(k.startswith("NEGOTIATE") for k in totals):
        note = "no per-rank readiness ticks: Horovod's response cache skipped negotiation (use --cache-capacity 0 to record them)"
    return TimelineSummary(phases, rank_table, unclosed, unopened, note)
