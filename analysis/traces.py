"""Per-rank step-time breakdown and top ops from TensorFlow profiler captures, and Horovod timeline totals.

Captures are read with the profile plugin's own converter (tensorboard_plugin_profile 2.15: tool names end
in '^'; `xspace_to_tool_data` returns a `(data, content_type)` tuple whose data is a str, or None when the
tool failed).

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
               buckets sum exactly to `span`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from harness.rundir import RunDir

BUCKETS = ("compute_ms", "communication_ms", "input_ms", "other_ms")
HOROVOD_PREFIX = "Horovod"
# op types that move data between ranks: Horovod's ops, and TensorFlow's collectives (MWMS: CollectiveReduceV2,
# CollectiveGatherV2, CollectiveBcast*), whose op event on the collective_ops thread spans the transfer in flight
COMM_PREFIXES = (HOROVOD_PREFIX, "Collective")
_TF_COLLECTIVE_RUNTIME = ("CollectiveExecutor::", "BaseCollectiveExecutor::", "CollectiveOpV2Kernel::")
_GETNEXT = re.compile(r"IteratorGetNext")

Interval = tuple[float, float]


# ---------------------------------------------------------------- capture discovery and conversion


def find_captures(run_dir: str | Path) -> dict[int, Path]:
    """rank -> its newest capture, <rank's profile folder>/plugins/profile/<ts>/*.xplane.pb (timestamp folders
    sort in time order)."""
    found: dict[int, Path] = {}
    for rank, rank_dir in RunDir(run_dir).profile_ranks().items():
        files = sorted(rank_dir.glob("plugins/profile/*/*.xplane.pb"))
        if files:
            found[rank] = files[-1]
    return found


def _converter() -> Any:
    """The profile plugin's converter: tensorboard_plugin_profile up to 2.19, xprof from 2.20 on."""
    try:
        from tensorboard_plugin_profile.convert import raw_to_tool_data
    except ImportError:
        from xprof.convert import raw_to_tool_data
    return raw_to_tool_data


def tool_name(xplane: str | Path, tool: str) -> str:
    """The plugin's name of a tool: up to 2.19 they end in '^' ('trace_viewer^'), xprof drops it."""
    try:
        names = set(_converter().xspace_to_tool_names([str(xplane)]))
    except Exception:  # noqa: BLE001 - an older plugin without the listing: ask for the name as given
        return tool
    for candidate in (tool, tool.rstrip("^"), tool.rstrip("^") + "^", tool.rstrip("^") + "@"):
        if candidate in names:
            return candidate
    return tool


def convert(xplane: str | Path, tool: str, params: dict[str, Any] | None = None) -> str:
    """One profile-plugin tool's output as text; RuntimeError when the plugin could not build it."""
    raw_to_tool_data = _converter()
    tool = tool_name(xplane, tool)
    data, _content_type = raw_to_tool_data.xspace_to_tool_data([str(xplane)], tool, params or {})
    if data is None:
        raise RuntimeError(f"{xplane}: the profile plugin produced no '{tool}' data")
    return data.decode() if isinstance(data, bytes) else str(data)


_OP_EVENT = re.compile(r"^[^\s:][^:]*:[A-Z][A-Za-z0-9_]*$")  # a TensorFlow op's host event: "scope/name:OpType"


def _stat_value(stat: Any, names: dict[int, str]) -> Any:
    kind = stat.WhichOneof("value")
    if kind == "ref_value":
        return names.get(stat.ref_value, "")
    if kind == "bytes_value":
        return stat.bytes_value.hex()
    return getattr(stat, kind) if kind else None


def trace_events(xplane: str | Path) -> dict[str, Any]:
    """The capture as Chrome-trace events, built from the XSpace itself: one process per plane, one thread per
    line, every stat of an event (and of its metadata) as an arg, times in microseconds.

    Read directly rather than through the plugin's trace viewer, whose JSON keeps the stats (step_num, is_eager,
    long_name) up to TensorFlow 2.18 but drops them with xprof 2.21. An op event ("scope/name:OpType") gets
    `long_name` (its full name) and `is_eager` (0 unless the profiler recorded it)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    try:
        space = xplane_pb2.XSpace.FromString(Path(xplane).read_bytes())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{xplane}: not a readable profiler capture ({exc})") from None
    events: list[dict[str, Any]] = []
    for pid, plane in enumerate(space.planes):
        names = {k: v.name for k, v in plane.stat_metadata.items()}
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": plane.name}})
        for line in plane.lines:
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": line.id,
                           "args": {"name": line.display_name or line.name}})
            base_ps = line.timestamp_ns * 1000
            for ev in line.events:
                md = plane.event_metadata[ev.metadata_id]
                args = {names.get(st.metadata_id, str(st.metadata_id)): _stat_value(st, names)
                        for st in (*md.stats, *ev.stats)}
                if _OP_EVENT.match(md.name):
                    args.setdefault("long_name", md.name)
                    args.setdefault("is_eager", 0)
                events.append({"ph": "X", "pid": pid, "tid": line.id, "name": md.display_name or md.name,
                               "ts": (base_ps + ev.offset_ps) / 1e6, "dur": ev.duration_ps / 1e6, "args": args})
    return {"traceEvents": events}


def tensorboard_runs(logdir: str | Path) -> list[str]:
    """The runs TensorBoard's profile plugin lists for `tensorboard --logdir LOGDIR`, found with its own code.

    The plugin only looks below TensorBoard runs, i.e. folders holding an events file (plus the logdir itself),
    so a rank folder with nothing but plugins/profile/ is not listed.
    """
    import argparse

    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins import base_plugin
    try:
        from tensorboard_plugin_profile.profile_plugin import ProfilePlugin
    except ImportError:  # xprof >= 2.20
        from xprof.profile_plugin import ProfilePlugin

    import logging

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its INFO lines would flood `analyze`
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    context = base_plugin.TBContext(
        logdir=str(logdir),
        data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir)),
        flags=argparse.Namespace(master_tpu_unsecure_channel=""),
    )
    return sorted(ProfilePlugin(context).runs_imp())


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


def _op_self_times(xplane: str | Path) -> pd.DataFrame:
    """The plugin's TF-stats rows with IDLE left out and self time as float microseconds."""
    table = op_stats_table(_op_stats_csv(xplane))
    table = table[table["type"] != "IDLE"]
    return table.assign(occurrences=table["occurrences"].astype(int), self_us=table["total_self_time"].astype(float))


def top_ops(xplane: str | Path, n: int = 10) -> pd.DataFrame:
    """The ops with the most self time in the capture (the plugin's TF-stats table), IDLE left out."""
    table = _op_self_times(xplane)
    total = table["self_us"].sum()
    out = pd.DataFrame({
        "name": table["operation"],
        "type": table["type"],
        "where": table["host_or_device"],
        "count": table["occurrences"],
        "self_ms": table["self_us"] / 1e3,
        "share": table["self_us"] / total if total > 0 else 0.0,
    })
    return out.sort_values("self_ms", ascending=False).head(n).reset_index(drop=True)


def top_op_types(xplane: str | Path, n: int = 10) -> pd.DataFrame:
    """Self time summed per op type (every Conv3D of the model together, ...), most first.

    The per-name table splits a small model's convolutions into one row per layer, each shorter than one
    normalisation's elementwise op; summed by type they show what the step is made of."""
    table = _op_self_times(xplane)
    total = table["self_us"].sum()
    grouped = (table.groupby(["type", "host_or_device"], as_index=False)
               .agg(ops=("operation", "nunique"), count=("occurrences", "sum"), self_us=("self_us", "sum")))
    out = pd.DataFrame({
        "type": grouped["type"],
        "where": grouped["host_or_device"],
        "ops": grouped["ops"].astype(int),
        "count": grouped["count"].astype(int),
        "self_ms": grouped["self_us"] / 1e3,
        "share": grouped["self_us"] / total if total > 0 else 0.0,
    })
    return out.sort_values("self_ms", ascending=False).head(n).reset_index(drop=True)


# The op-stats columns by the ids of xprof's DataTable; older plugins send CSV with these labels instead.
OP_STATS_COLUMNS = ("type", "operation", "host_or_device", "occurrences", "total_self_time")
_OP_STATS_LABELS = {"Type": "type", "Operation Type": "type", "Operation": "operation", "Operation Name": "operation",
                    "Host/device": "host_or_device", "#Occurrences": "occurrences",
                    "Total self-time (us)": "total_self_time"}


def op_stats_table(text: str) -> pd.DataFrame:
    """The framework-op-stats table from the plugin's answer: CSV (tensorboard-plugin-profile 2.15-2.18, which
    honour `tqx=out:csv`) or a Google DataTable JSON (xprof 2.21 sends that whatever is asked). Columns are
    OP_STATS_COLUMNS; ValueError naming what is missing when neither shape has them."""
    import io
    import json

    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        tables = json.loads(stripped)
        for table in tables if isinstance(tables, list) else [tables]:
            ids = [c.get("id") for c in table.get("cols", [])]
            if set(OP_STATS_COLUMNS) <= set(ids):
                rows = [[(cell or {}).get("v") for cell in row.get("c", [])] for row in table.get("rows", [])]
                return pd.DataFrame(rows, columns=ids)[list(OP_STATS_COLUMNS)]
        raise ValueError(f"no op-stats table with columns {', '.join(OP_STATS_COLUMNS)} in the plugin's JSON")
    table = pd.read_csv(io.StringIO(text)).rename(columns=_OP_STATS_LABELS)
    missing = [c for c in OP_STATS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"op-stats CSV has no column {', '.join(missing)} (it has {', '.join(map(str, table.columns))})")
    return table[list(OP_STATS_COLUMNS)]


def _op_stats_csv(xplane: str | Path) -> str:
    """'framework_op_stats^' as CSV. TensorFlow 2.15 only knows its legacy name 'tensorflow_stats': ask for that one
    directly when the capture lists it, instead of letting the plugin fail first and log a C++ error line."""
    raw_to_tool_data = _converter()
    if "tensorflow_stats^" in raw_to_tool_data.xspace_to_tool_names([str(xplane)]):
        from tensorflow.python.profiler.internal import _pywrap_profiler  # the plugin's own converter backend

        def legacy(paths: list[str], tool: str, params: dict | None = None) -> tuple[bytes, bool]:
            return _pywrap_profiler.xspace_to_tools_data(paths, "tensorflow_stats" if tool == "framework_op_stats" else tool)

        data, _ = raw_to_tool_data.xspace_to_tool_data([str(xplane)], "framework_op_stats^", {"tqx": "out:csv"}, legacy)
        if data is not None:
            return data.decode() if isinstance(data, bytes) else str(data)
    return convert(xplane, "framework_op_stats^", {"tqx": "out:csv"})


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


# ---------------------------------------------------------------- Horovod timeline


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
