"""Finding a run's profiler captures and reading them: with the profile plugin's own converter (its tool names
end in '^' up to 2.19, xprof drops it; `xspace_to_tool_data` returns `(data, content_type)`, data None when the
tool failed), or straight from the XSpace protobuf as Chrome-trace events."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.rundir import RunDir

def find_captures(run_dir: str | Path) -> dict[int, Path]:
    """rank -> its newest capture, <rank's profile folder>/plugins/profile/<ts>/*.xplane.pb (timestamp folders
    sort in time order)."""
    found: dict[int, Path] = {}
    for rank, rank_dir in RunDir(run_dir).profile_ranks().items():
        files = sorted(rank_dir.glob("plugins/profile/*/*.xplane.pb"))
        if files:
            found[rank] = files[-1]
    return found


def converter() -> Any:
    """The profile plugin's converter: tensorboard_plugin_profile up to 2.19, xprof from 2.20 on."""
    try:
        from tensorboard_plugin_profile.convert import raw_to_tool_data
    except ImportError:
        from xprof.convert import raw_to_tool_data
    return raw_to_tool_data


def tool_name(xplane: str | Path, tool: str) -> str:
    """The plugin's name of a tool: up to 2.19 they end in '^' ('trace_viewer^'), xprof drops it."""
    try:
        names = set(converter().xspace_to_tool_names([str(xplane)]))
    except Exception:  # noqa: BLE001 - an older plugin without the listing: ask for the name as given
        return tool
    for candidate in (tool, tool.rstrip("^"), tool.rstrip("^") + "^", tool.rstrip("^") + "@"):
        if candidate in names:
            return candidate
    return tool


def convert(xplane: str | Path, tool: str, params: dict[str, Any] | None = None) -> str:
    """One profile-plugin tool's output as text; RuntimeError when the plugin could not build it."""
    raw_to_tool_data = converter()
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
