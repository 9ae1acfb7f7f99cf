"""TensorFlow profiler captures and Horovod timelines, read for `analyze`: finding and converting a run's per-rank
captures (`capture`), the per-step breakdown into compute / communication / input / other (`breakdown`), the ops
with the most self time (`ops`) and the Horovod timeline's totals (`timeline`)."""

from analysis.traces.breakdown import (BUCKETS, COMM_PREFIXES, HOROVOD_PREFIX, plugin_step_times, run_breakdown,
                                       step_breakdown, summarize_breakdown)
from analysis.traces.capture import convert, converter, find_captures, tensorboard_runs, tool_name, trace_events
from analysis.traces.ops import OP_STATS_COLUMNS, op_stats_table, top_op_types, top_ops
from analysis.traces.timeline import TimelineSummary, read_timeline, timeline_summary

__all__ = [
    "BUCKETS", "COMM_PREFIXES", "HOROVOD_PREFIX", "OP_STATS_COLUMNS", "TimelineSummary", "convert", "converter",
    "find_captures", "op_stats_table", "plugin_step_times", "read_timeline", "run_breakdown", "step_breakdown",
    "summarize_breakdown", "tensorboard_runs", "timeline_summary", "tool_name", "top_op_types", "top_ops",
    "trace_events",
]
