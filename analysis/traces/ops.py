"""The ops with the most self time in a capture, by name and by op type (the plugin's TF-stats table)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from analysis.traces.capture import convert, converter

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
    raw_to_tool_data = converter()
    if "tensorflow_stats^" in raw_to_tool_data.xspace_to_tool_names([str(xplane)]):
        from tensorflow.python.profiler.internal import _pywrap_profiler  # the plugin's own converter backend

        def legacy(paths: list[str], tool: str, params: dict | None = None) -> tuple[bytes, bool]:
            return _pywrap_profiler.xspace_to_tools_data(paths, "tensorflow_stats" if tool == "framework_op_stats" else tool)

        data, _ = raw_to_tool_data.xspace_to_tool_data([str(xplane)], "framework_op_stats^", {"tqx": "out:csv"}, legacy)
        if data is not None:
            return data.decode() if isinstance(data, bytes) else str(data)
    return convert(xplane, "framework_op_stats^", {"tqx": "out:csv"})
