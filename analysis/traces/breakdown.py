"""Per-rank step-time breakdown of profiled steps.

How one profiled step is split (all times are wall-clock intervals of one rank's capture, read from its XSpace):
  span         the trainer's timed step: from the start of the `next(it)` call that fetched this step's batch
               (the top-level host event around IteratorGetNext, between the previous step marker and this one)
               to the end of the `train N` step marker. The trainer's `next(it)` runs outside its
               `Trace("train", step_num=N)`, so the marker alone (`marker_ms`, what the plugin's step views show)
               misses the input wait; `span` matches the trainer's timed interval t2 - t0.
  compute      time in which at least one TensorFlow op runs (events carrying `is_eager`, on any host thread,
               plus events on the 'Stream' lines of /device:* planes; only the CPU case is tested here), Horovod
               ops excluded.
  communication time in which a Horovod collective is in flight (from its ProcessAsync::Start on the executor
               thread to its ProcessAsync::Done callback) and no op computes: the allreduce wait that is NOT
               hidden behind back-propagation. `comm_inflight_ms` is the whole in-flight time, overlap included.
  input        time blocked in the iterator's GetNext that is neither compute nor communication. Time inside the
               marker before the first op (function dispatch, argument copies) is not counted as input, since the
               batch is already in hand by then; it goes to other.
  other        the remainder (Python, eager dispatch, executor scheduling, the loss read-back), so the four
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from analysis.traces.capture import convert, find_captures, trace_events

BUCKETS = ("compute_ms", "communication_ms", "input_ms", "other_ms")
HOROVOD_PREFIX = "Horovod"
# op types that move data between ranks: Horovod's ops, and TensorFlow's collectives (MWMS: CollectiveReduceV2,
# CollectiveGatherV2, CollectiveBcast*), whose op event on the collective_ops thread spans the transfer in flight
COMM_PREFIXES = (HOROVOD_PREFIX, "Collective")
_TF_COLLECTIVE_RUNTIME = ("CollectiveExecutor::", "BaseCollectiveExecutor::", "CollectiveOpV2Kernel::")
_GETNEXT = re.compile(r"IteratorGetNext")

Interval = tuple[float, float]


# ---------------------------------------------------------------- interval arithmetic


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _length(intervals: Sequence[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def _intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _minus(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    return _union(_minus_iter(a, b))


def _minus_iter(a: Sequence[Interval], b: Sequence[Interval]) -> Iterable[Interval]:
    for start, end in a:
        cur = start
        for lo, hi in b:
            if hi <= cur or lo >= end:
                continue
            if lo > cur:
                yield (cur, lo)
            cur = max(cur, hi)
        if cur < end:
            yield (cur, end)


# ---------------------------------------------------------------- step breakdown


@dataclass
class _Trace:
    events: list[dict[str, Any]]
    device_streams: set[tuple[Any, Any]]  # (pid, tid) of accelerator stream lines: kernels and copies

    @classmethod
    def parse(cls, trace: dict[str, Any]) -> "_Trace":
        raw = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
        meta = [e for e in raw if e.get("ph") == "M"]
        device_pids = {
            e["pid"] for e in meta if e.get("name") == "process_name" and str(e.get("args", {}).get("name", "")).startswith("/device:")
        }
        streams = {
            (e["pid"], e.get("tid")) for e in meta
            if e.get("name") == "thread_name" and e["pid"] in device_pids and str(e.get("args", {}).get("name", "")).startswith("Stream")
        }
        events = [e for e in raw if e.get("ph") == "X" and "ts" in e]
        for e in events:
            e["_end"] = e["ts"] + float(e.get("dur", 0.0))
        return cls(events, streams)


def _is_op(e: dict[str, Any]) -> bool:
    args = e.get("args", {})
    if "is_eager" not in args:
        return False
    op_type = str(args.get("long_name", "")).rsplit(":", 1)[-1]
    return not op_type.startswith(COMM_PREFIXES) and not _GETNEXT.search(op_type)


def _compute_intervals(tr: _Trace) -> list[Interval]:
    return _union((e["ts"], e["_end"]) for e in tr.events if _is_op(e) or (e["pid"], e.get("tid")) in tr.device_streams)


def _comm_intervals(tr: _Trace) -> list[Interval]:
    """Collectives in flight: Horovod's async Start on the executor thread until the Done callback; TensorFlow's
    collective ops (MWMS) for the length of their op event, and their executor's own events (parameter resolution
    with the peers, execution): the profiler sometimes loses the op event of the last captured step, not those."""
    starts: dict[tuple[str, str], dict[str, Any]] = {}
    done: dict[tuple[str, str], dict[str, Any]] = {}
    spans: list[Interval] = []
    for e in tr.events:
        args = e.get("args", {})
        if str(args.get("kernel_type", "")).startswith(HOROVOD_PREFIX):
            # a Start and its Done share a step group (trace viewer JSON) or a flow id: the Start's _p is the Done's _c
            flow = args.get("group_id", args.get("_p", args.get("_c", "")))
            key = (str(flow), str(args.get("name", "")))
            if e["name"].endswith("::Start"):
                starts.setdefault(key, e)
            elif e["name"].endswith("::Done"):
                done.setdefault(key, e)
        elif "is_eager" in args and str(args.get("long_name", "")).rsplit(":", 1)[-1].startswith(COMM_PREFIXES):
            spans.append((e["ts"], e["_end"]))  # a TensorFlow collective, or a synchronous Horovod op
        elif e["name"].startswith(_TF_COLLECTIVE_RUNTIME):
            spans.append((e["ts"], e["_end"]))
    for key, start in starts.items():
        end = done[key]["_end"] if key in done else start["_end"]
        spans.append((start["ts"], end))
    return _union(spans)


def _top_level(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of one thread not nested inside another event of that thread."""
    tops: list[dict[str, Any]] = []
    for e in sorted(events, key=lambda e: (e["ts"], -e["_end"])):
        if tops and e["_end"] <= tops[-1]["_end"] and e["ts"] >= tops[-1]["ts"]:
            continue
        tops.append(e)
    return tops


def step_breakdown(trace: dict[str, Any], rank: int = 0) -> pd.DataFrame:
    """One row per profiled step: span, marker and the four buckets in ms (see the module docstring)."""
    tr = _Trace.parse(trace)
    markers = sorted((e for e in tr.events if "step_num" in e.get("args", {})), key=lambda e: e["ts"])
    if not markers:
        raise ValueError("no step markers in the trace (steps must run inside tf.profiler.experimental.Trace(step_num=...))")
    marker_tid = {(m["pid"], m["tid"]) for m in markers}
    thread_events = [e for e in tr.events if (e["pid"], e.get("tid")) in marker_tid]
    tops = _top_level(thread_events)
    getnext = [e for e in thread_events if _GETNEXT.search(e["name"]) or _GETNEXT.search(str(e.get("args", {}).get("eager_op", "")))]
    input_spans: list[Interval] = []
    for g in getnext:
        outer = next((t for t in tops if t["ts"] <= g["ts"] and g["_end"] <= t["_end"]), g)
        if "step_num" in outer.get("args", {}):
            outer = g  # GetNext inside the step marker: only the GetNext itself is input wait
        input_spans.append((outer["ts"], outer["_end"]))
    input_all = _union(input_spans)
    compute_all = _compute_intervals(tr)
    comm_all = _comm_intervals(tr)

    rows = []
    prev_end = float("-inf")
    for m in markers:
        own_input = [i for i in input_all if i[0] >= prev_end and i[1] <= m["_end"]]
        start = min([m["ts"]] + [i[0] for i in own_input])
        span = [(start, m["_end"])]
        compute = _intersect(compute_all, span)
        comm_inflight = _intersect(comm_all, span)
        comm = _minus(comm_inflight, compute)
        busy = _union(compute + comm)
        inp = _minus(_intersect(input_all, span), busy)
        total = m["_end"] - start
        c, h, i = _length(compute), _length(comm), _length(inp)
        rows.append({
            "rank": rank,
            "step": int(m["args"]["step_num"]),
            "step_ms": total / 1e3,
            "marker_ms": (m["_end"] - m["ts"]) / 1e3,
            "compute_ms": c / 1e3,
            "communication_ms": h / 1e3,
            "input_ms": i / 1e3,
            "other_ms": max(total - c - h - i, 0.0) / 1e3,
            "comm_inflight_ms": _length(comm_inflight) / 1e3,
        })
        prev_end = m["_end"]
    return pd.DataFrame(rows)


def plugin_step_times(xplane: str | Path) -> dict[int, float]:
    """step -> duration in ms as the plugin's input-pipeline analyzer measures it (from the same step markers)."""
    try:
        tables = json.loads(convert(xplane, "input_pipeline_analyzer^"))
        # the per-step table: the first (plugin <= 2.19) or the first with a step-number column (xprof 2.21)
        table = next(t for t in tables if t.get("rows") and any(c.get("id") in ("stepnum", "stepTimeMs") or
                                                                 str(c.get("id", "")).endswith("TimeMs") for c in t.get("cols", [])))
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError, StopIteration):
        return {}
    ids = [c.get("id", "") for c in table.get("cols", [])]
    out: dict[int, float] = {}
    for row in table.get("rows", []):
        cells = [c.get("v") for c in row.get("c", [])]
        match = re.search(r"(\d+)\s*$", str(cells[0])) if cells else None
        if match:
            values = dict(zip(ids, cells))
            if values.get("stepTimeMs") is not None:  # plugin >= 2.18 adds the total beside its parts
                out[int(match.group(1))] = float(values["stepTimeMs"])
            else:
                out[int(match.group(1))] = sum(float(v) for k, v in values.items() if k.endswith("TimeMs") and v is not None)
    return out


def run_breakdown(run_dir: str | Path, progress: Any = None) -> pd.DataFrame:
    """Per-step breakdown rows for every rank's capture of one run, plus the plugin's own step time per step."""
    frames = []
    for rank, xplane in find_captures(run_dir).items():
        frame = step_breakdown(trace_events(xplane), rank)
        plugin = plugin_step_times(xplane)
        frame["plugin_step_ms"] = frame["step"].map(plugin)
        frames.append(frame)
        if progress is not None:
            progress.update(1)
    if not frames:
        raise FileNotFoundError(f"{run_dir}: no profiler capture in its per-rank profile folders")
    return pd.concat(frames, ignore_index=True)


def summarize_breakdown(per_step: pd.DataFrame, record: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per-rank mean ms per profiled step of each bucket, their shares, and the record's step time to compare.

    The record's `timing.step_time_mean_s` averages every timed step (profiled or not), so it is shown beside the
    trace's own mean (`step_ms`), not forced to equal it: the profiled steps also pay the tracer's overhead.
    """
    agg = per_step.groupby("rank").agg(
        steps=("step", "count"), first_step=("step", "min"), last_step=("step", "max"),
        step_ms=("step_ms", "mean"), marker_ms=("marker_ms", "mean"),
        **{b: (b, "mean") for b in BUCKETS}, comm_inflight_ms=("comm_inflight_ms", "mean"),
    ).reset_index()
    for b in BUCKETS:
        agg[b.replace("_ms", "_share")] = agg[b] / agg["step_ms"]
    mean_s = ((record or {}).get("timing") or {}).get("step_time_mean_s")
    agg["record_step_ms"] = mean_s * 1e3 if mean_s else float("nan")
    agg["trace_vs_record"] = agg["step_ms"] / agg["record_step_ms"]
    return agg
