"""Tables that answer the benchmark's questions, computed from run records only (and MMD result files).

Each function returns a pandas DataFrame (empty when the records cannot answer the question), so other commands
(e.g. a transfer comparison) can reuse them; `markdown` and `terminal` render any of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.records import PHASES, SETTINGS, engine_label, frame, settings_label, system_label, varying
from harness.config import HEAD_ONLY

COST_KEYS = (*SETTINGS, "freeze_depth")  # what must agree for two runs' step times to be comparable
SYSTEM = "system"  # the column naming the system a row's runs ran on (shown only where several systems are)


# ---------------------------------------------------------------- rendering


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}" if abs(value) < 10 ** digits else f"{float(value):.0f}"
    return str(value).replace("|", "\\|")


def markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (numbers right-aligned), written here because `tabulate` is not installed."""
    cols = list(df.columns)
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols]
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def terminal(df: pd.DataFrame, digits: int = 4) -> str:
    """Aligned columns for a terminal."""
    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = [_cell(v, digits) for v in shown[col]]
    return shown.to_string(index=False)


# ---------------------------------------------------------------- grouping helpers


def several_systems(df: pd.DataFrame) -> bool:
    """Whether the rows come from more than one system (then every table names each row's system)."""
    return SYSTEM in df and df[SYSTEM].nunique() > 1


def system_column(table: pd.DataFrame, show: bool) -> pd.DataFrame:
    """`table` with its system column first where `show` (several systems), without it otherwise: on one system
    the tables stay as they were."""
    if SYSTEM not in table:
        return table
    if not show:
        return table.drop(columns=SYSTEM)
    return table[[SYSTEM, *[c for c in table.columns if c != SYSTEM]]]



def _key_frame(records: Iterable[dict[str, Any]], need: str) -> pd.DataFrame:
    df = frame(records)
    if df.empty or need not in df:
        return df.iloc[0:0]
    df = df[df[need].notna()].copy()
    for key in COST_KEYS:  # groupby drops None keys; make them explicit values
        df[key] = df[key].astype(object).where(df[key].notna(), "-")
    return df


def _mean_by(g: pd.DataFrame, by: str, value: str) -> pd.DataFrame:
    """Repeated runs of one configuration averaged (runs = how many, sd over them)."""
    extra = {"batch_size": "first", "global_batch": "first", "step_time_s": "mean", "params_trainable": "first",
             "throughput": "mean"}
    spec = {name: (name, how) for name, how in extra.items() if name != by}
    return g.groupby(by, sort=True).agg(runs=(value, "size"), mean=(value, "mean"), sd=(value, "std"), **spec).reset_index()


# ---------------------------------------------------------------- scaling


def _series(df: pd.DataFrame, keys: Sequence[str], by: str, value: str) -> list[tuple[pd.Series, pd.DataFrame]]:
    """(settings row, points averaged per `by` value) for every group with at least two `by` values."""
    if df.empty:
        return []
    out = []
    for _, g in df.groupby(list(keys), sort=True, dropna=False):
        points = _mean_by(g, by, value)
        if len(points) >= 2:
            out.append((g.iloc[0], points))
    return out


def _labels(series: list[tuple[pd.Series, pd.DataFrame]], keys: Sequence[str], fallback: str) -> list[str]:
    rows = [first for first, _ in series]
    names = [k for k in varying(rows, keys) if k != SYSTEM]  # the system has its own column
    return [settings_label(first, names) or fallback for first in rows]


def _paired(g: pd.DataFrame, base: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Throughputs of a point and of its baseline paired by (repeat, seed): the runs made in the same round."""
    mine = g.groupby(["repeat", "seed"], dropna=False)["throughput"].median()
    ref = base.groupby(["repeat", "seed"], dropna=False)["throughput"].median()
    both = mine.index.intersection(ref.index)
    return list(mine[both]), list(ref[both])


SCALING_COLUMNS = ["scaling", "group", "np", "batch_size", "global_batch", "runs", "throughput", "throughput_ci_low",
                   "throughput_ci_high", "throughput_cv", "ideal", "speedup", "speedup_ci_low", "speedup_ci_high",
                   "efficiency", "efficiency_ci_low", "efficiency_ci_high", "step_time_ms", "noisy", "input_wait_share",
                   "input_bound"]
# a point whose steps wait for input longer than this share of their time measures the input pipeline, not the step
INPUT_BOUND_SHARE = 0.10


def scaling_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Throughput against the number of ranks, with the ideal line, speedup and efficiency, each with a 95% CI.

    Weak scaling keeps the per-rank batch fixed, strong scaling the global batch; a record whose
    extra.sweep.scaling names one kind only joins that kind. Within a series the baseline is the smallest np
    (normally 1). A point is the median throughput of its repeats with a bootstrap CI (analysis.stats); its
    speedup is the median of throughput(np) / throughput(base) over repeats paired by round (repeat, seed), with
    a bootstrap CI over the pairs; ideal = median throughput(base) * np / base_np, efficiency = speedup / (np /
    base_np). With one repeat the CIs are empty ("-"). `noisy` flags a point whose repeats (or paired ratios)
    spread more than analysis.stats.WIDE_CV; `input_bound` one whose steps waited for input more than
    INPUT_BOUND_SHARE of their time (median over repeats). Group labels name only the settings that differ.
    """
    from analysis.stats import median_ci, ratio_ci

    df = _key_frame(records, "throughput")
    found = []
    for kind, fixed in (("weak", "batch_size"), ("strong", "global_batch")):
        sel = df[df["sweep_scaling"].isna() | (df["sweep_scaling"] == kind)] if not df.empty else df
        for _, g in sel.groupby([*COST_KEYS, fixed], sort=True, dropna=False) if not sel.empty else []:
            if g["np"].nunique() >= 2:
                found.append((kind, fixed, g))
    labels = _labels([(g.iloc[0], g) for _, _, g in found], COST_KEYS, "")
    rows = []
    for (kind, fixed, g), label in zip(found, labels):
        label = "; ".join(x for x in (label, f"{'per-rank' if kind == 'weak' else 'global'} batch {int(g.iloc[0][fixed])}") if x)
        points = [(int(n), p) for n, p in g.groupby("np", sort=True)]
        base_np, base = points[0]
        base_median = median_ci(base["throughput"]).value
        for n, p in points:
            thr = median_ci(p["throughput"])
            wait = float(p["input_wait_share"].median()) if p["input_wait_share"].notna().any() else math.nan
            num, den = _paired(p, base)
            if num:
                speed = ratio_ci(num, den)
            else:  # no runs of the same round to pair: the ratio of the medians, without a CI
                speed = ratio_ci([thr.value], [base_median])
            scale = n / base_np
            rows.append({
                SYSTEM: g.iloc[0][SYSTEM], "scaling": kind, "group": label, "np": n, "batch_size": p["batch_size"].iloc[0],
                "global_batch": p["global_batch"].iloc[0], "runs": len(p), "throughput": thr.value,
                "throughput_ci_low": thr.low, "throughput_ci_high": thr.high, "throughput_cv": thr.cv,
                "ideal": base_median * scale, "speedup": speed.value, "speedup_ci_low": speed.low,
                "speedup_ci_high": speed.high, "efficiency": speed.value / scale,
                "efficiency_ci_low": speed.low / scale, "efficiency_ci_high": speed.high / scale,
                "step_time_ms": float(p["step_time_s"].median()) * 1e3 if p["step_time_s"].notna().any() else math.nan,
                "noisy": bool(thr.wide or (n != base_np and speed.wide)),
                "input_wait_share": wait, "input_bound": bool(wait > INPUT_BOUND_SHARE),
            })
    return system_column(pd.DataFrame(rows, columns=[SYSTEM, *SCALING_COLUMNS]), several_systems(df))


def with_ci(value: float, low: float, high: float, digits: int = 3) -> str:
    """'1.74 [1.70, 1.78]', or the value alone where there is no CI (one repeat)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def scaling_view(table: pd.DataFrame) -> pd.DataFrame:
    """The scaling table as printed: each estimate with its 95% CI in brackets, the spread as CV in %."""
    view = table[[c for c in (SYSTEM, "scaling", "group", "np", "global_batch", "runs") if c in table]].copy()
    for col in ("throughput", "speedup", "efficiency"):
        view[col if col != "throughput" else "throughput (samples/s)"] = [
            with_ci(v, lo, hi) for v, lo, hi in zip(table[col], table[f"{col}_ci_low"], table[f"{col}_ci_high"])]
    view["cv %"] = (100 * table["throughput_cv"]).round(1)
    view["noisy"] = ["yes" if n else "" for n in table["noisy"]]
    view["input wait %"] = (100 * table["input_wait_share"]).round(1)
    view["input-bound"] = ["yes" if b else "" for b in table["input_bound"]]
    return view


# ---------------------------------------------------------------- batch size and freeze depth


def batch_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Step time against the per-rank batch size (same ranks and settings), time per sample, and step time
    relative to the smallest batch of the series."""
    keys = [*COST_KEYS, "np"]
    df = _key_frame(records, "step_time_s")
    series = _series(df, keys, "batch_size", "step_time_s")
    rows = []
    for (first, points), label in zip(series, _labels(series, keys, "all runs")):
        base = points.iloc[0]
        for p in points.itertuples(index=False):
            rows.append({
                SYSTEM: first[SYSTEM], "group": label, "np": int(first["np"]), "batch_size": int(p.batch_size), "runs": int(p.runs),
                "step_time_ms": p.mean * 1e3, "step_time_sd_ms": p.sd * 1e3,
                "ms_per_sample": p.mean * 1e3 / p.batch_size, "step_time_rel": p.mean / base["mean"],
                "throughput": p.throughput,
            })
    return system_column(pd.DataFrame(rows, columns=[SYSTEM, "group", "np", "batch_size", "runs", "step_time_ms",
                                                     "step_time_sd_ms", "ms_per_sample", "step_time_rel", "throughput"]),
                         several_systems(df))


def freeze_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Step time and trainable parameters against the number of frozen encoder levels, relative to depth 0
    (NaN where a series has no depth-0 run). Runs that freeze all but the head are not a depth and are left out."""
    df = _key_frame(records, "step_time_s")
    if not df.empty:
        df = df[df["freeze_depth"] != HEAD_ONLY]
        df = df.assign(freeze_depth=df["freeze_depth"].astype(int))
    keys = [k for k in COST_KEYS if k != "freeze_depth"] + ["np", "batch_size"]
    series = _series(df, keys, "freeze_depth", "step_time_s")
    rows = []
    for (first, points), label in zip(series, _labels(series, keys, "all runs")):
        zero = points[points["freeze_depth"] == 0]
        t0 = float(zero["mean"].iloc[0]) if len(zero) else math.nan
        p0 = _num(zero["params_trainable"].iloc[0]) if len(zero) else math.nan
        for p in points.itertuples(index=False):
            params = _num(p.params_trainable)
            rows.append({
                SYSTEM: first[SYSTEM], "group": label, "freeze_depth": int(p.freeze_depth), "runs": int(p.runs),
                "params_trainable": params, "params_rel": params / p0,
                "step_time_ms": p.mean * 1e3, "step_time_rel": p.mean / t0,
            })
    return system_column(pd.DataFrame(rows, columns=[SYSTEM, "group", "freeze_depth", "runs", "params_trainable",
                                                     "params_rel", "step_time_ms", "step_time_rel"]),
                         several_systems(df))


def _num(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def phases_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Where each run's wall time went (record.phases, from the process's start): start-up to the end of the first
    step, training steps, validation, checkpoints, the rest; and the share spent in training steps. `kind`:
    benchmark points (a few timed steps: mostly start-up) or training runs."""
    df = frame(records)
    if df.empty or df["phase_wall_s"].isna().all():
        return pd.DataFrame(columns=["run", "np", "kind", *PHASES])
    df = df[df["phase_wall_s"].notna()]
    view = df[["run", SYSTEM, "np"]].copy()
    view["kind"] = df["benchmark"].map({True: "benchmark", False: "training"})
    for key in PHASES:
        view[key] = df[f"phase_{key}"].astype(float)
    view = view.sort_values([SYSTEM, "run"], kind="stable").reset_index(drop=True)
    return system_column(view, several_systems(view))


# ---------------------------------------------------------------- MMD


MMD_COLUMNS = ("features", "pair", "mmd2", "mmd2_ci_low", "mmd2_ci_high", "p_value", "n", "m")


def mmd_table(results: str | Path) -> pd.DataFrame:
    """Rows of every RESULTS/shift/*.json ({"rows": [...]}) with the file they came from."""
    rows = []
    for path in sorted(Path(results, "shift").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for row in data.get("rows", []) if isinstance(data, dict) else []:
            if isinstance(row, dict) and "mmd2" in row:
                rows.append({"file": path.stem, **{k: row.get(k) for k in MMD_COLUMNS}})
    return pd.DataFrame(rows, columns=["file", *MMD_COLUMNS])


# ---------------------------------------------------------------- profiler


def breakdown_view(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-rank breakdown columns worth printing."""
    cols = ["run", "rank", "steps", "step_ms", "marker_ms", "compute_ms", "communication_ms", "input_ms", "other_ms",
            "compute_share", "communication_share", "input_share", "other_share", "comm_inflight_ms",
            "record_step_ms", "trace_vs_record"]
    view = summary[[c for c in cols if c in summary]].copy()
    for col in [c for c in view if c.endswith("_share") or c == "trace_vs_record"]:
        view[col] = view[col].round(3)
    return view


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if f is not None and not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _comm_label(record: dict) -> str:
    c = record.get("comm") or {}
    name = (record.get("engine") or {}).get("name")
    label = engine_label(record) if name in ("horovod", "mwms") else name or "?"  # raw MPI needs no "/mpi"
    if c.get("fusion_bytes") == 0:
        label += " (no fusion)"
    if (c.get("tensors") or 1) > 1:
        label += f", {c['tensors']} tensors"
    return label


def comm_table(records: list[dict]) -> pd.DataFrame:
    """One row per comm record, collective and size (and the system it ran on, where several are)."""
    rows = []
    for r in records:
        for row in (r.get("comm") or {}).get("rows", []):
            rows.append({SYSTEM: system_label(r), "backend": _comm_label(r), "np": r.get("world_size"), "op": row["op"], "bytes": row["bytes"],
                         "time_us": row["time_us"], "algbw_gb_s": row["algbw_gb_s"], "busbw_gb_s": row["busbw_gb_s"]})
    table = pd.DataFrame(rows)
    return system_column(table, several_systems(table))


def nearest(rows: list[dict], op: str, nbytes: int) -> dict | None:
    """The measured row of `op` whose size is nearest `nbytes` on a log scale (the gradient-size mark)."""
    import math

    cands = [r for r in rows if r["op"] == op]
    return min(cands, key=lambda r: abs(math.log2(r["bytes"]) - math.log2(max(1, nbytes)))) if cands else None


def comm_marks(records: list[dict]) -> pd.DataFrame:
    """Allreduce at each record's gradient size, with busbw relative to raw MPI at the same np and size on the same
    system."""
    rows = []
    for r in records:
        c = r.get("comm") or {}
        row = nearest(c.get("rows", []), "allreduce", c.get("gradient_bytes") or 0)
        if row:
            rows.append({SYSTEM: system_label(r), "backend": _comm_label(r), "np": r.get("world_size"), "gradient_bytes": c.get("gradient_bytes"),
                         "bytes": row["bytes"], "time_us": row["time_us"], "busbw_gb_s": row["busbw_gb_s"]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    keys = list(zip(table[SYSTEM], table["np"], table["bytes"]))
    mpi = {key: bw for key, bw, name in zip(keys, table["busbw_gb_s"], table["backend"]) if name == "mpi"}
    table["vs_mpi"] = [bw / mpi[key] if key in mpi else None for key, bw in zip(keys, table["busbw_gb_s"])]
    return system_column(table, several_systems(table))
