"""Transfer vs scratch, from run records only.

Per fine-tuning variant (frozen depth k, or head-only) and for scratch: test Dice per region as mean ± sd
over seeds; a paired comparison against scratch (per test case and seed, Wilcoxon signed-rank); epochs and
wall time to reach scratch's final validation WT Dice (or a given target); step time and trainable
parameters relative to scratch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

REGIONS = ("ET", "TC", "WT")


def _variant(record: dict[str, Any]) -> str | None:
    info = record.get("extra", {}).get("transfer")
    if not info or info.get("role") == "pretrain":
        return None
    if info["role"] == "scratch":
        return "scratch"
    k = info.get("freeze_depth")
    return "head-only" if k == "head" else f"k={k}"


def _order(name: str) -> tuple[int, float]:
    if name == "scratch":
        return (2, 0)
    if name == "head-only":
        return (1, 0)
    return (0, float(name.split("=")[1]))


def group(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        v = _variant(r)
        if v is not None and r.get("status") == "ok":
            groups[v].append(r)
    for v in groups:
        groups[v].sort(key=lambda r: r["extra"]["transfer"]["seed"])
    return dict(sorted(groups.items(), key=lambda kv: _order(kv[0])))


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _test_dice(record: dict[str, Any], region: str, subset: str) -> float:
    summary = record.get("metrics", {}).get(subset) or {}
    return float(summary.get("mean", {}).get(f"{region}_dice", math.nan))


def _cases(record: dict[str, Any], subset: str) -> dict[str, dict[str, float]]:
    return {c["case_id"]: c for c in record.get("metrics", {}).get(f"{subset}_cases", [])}


def reach(record: dict[str, Any], target: float, region: str = "WT") -> tuple[int | None, float | None]:
    """First epoch whose validation Dice reaches target, and the wall time (s) spent until then."""
    wall = 0.0
    for entry in record.get("history", []):
        wall += entry.get("wall_s") or 0.0
        val = entry.get("val") or {}
        if val.get(region) is not None and val[region] >= target:
            return entry["epoch"], wall
    return None, None


def paired(variant: list[dict[str, Any]], scratch: list[dict[str, Any]], region: str, subset: str) -> dict[str, float]:
    """Per-case, per-seed Dice differences (variant - scratch) on the same test cases and seeds."""
    diffs = []
    by_seed = {r["extra"]["transfer"]["seed"]: r for r in scratch}
    for r in variant:
        s = by_seed.get(r["extra"]["transfer"]["seed"])
        if s is None:
            continue
        a, b = _cases(r, subset), _cases(s, subset)
        for case in sorted(set(a) & set(b)):
            x, y = a[case].get(f"{region}_dice"), b[case].get(f"{region}_dice")
            if x is not None and y is not None:
                diffs.append(x - y)
    out = {"n": len(diffs), "mean_diff": float(np.mean(diffs)) if diffs else math.nan, "p_value": math.nan}
    nonzero = [d for d in diffs if abs(d) > 1e-12]
    if len(nonzero) >= 2:
        from scipy.stats import wilcoxon

        out["p_value"] = float(wilcoxon(diffs, zero_method="zsplit").pvalue)
    return out


def comparison(records: Iterable[dict[str, Any]], subset: str = "test", target: float | None = None) -> list[dict[str, Any]]:
    """One row per variant (k=..., head-only, scratch) with the numbers the study reports."""
    groups = group(records)
    scratch = groups.get("scratch", [])
    if target is None:
        finals = [r["history"][-1].get("val", {}).get("WT") for r in scratch if r.get("history")]
        target = _mean_sd([f for f in finals if f is not None])[0]
    base_step = _mean_sd([r.get("timing", {}).get("step_time_mean_s") for r in scratch])[0]
    base_params = _mean_sd([r.get("model", {}).get("params_trainable") for r in scratch])[0]
    rows = []
    for name, runs in groups.items():
        row: dict[str, Any] = {"variant": name, "seeds": len(runs)}
        for region in REGIONS:
            row[f"{region}_mean"], row[f"{region}_sd"] = _mean_sd([_test_dice(r, region, subset) for r in runs])
            if name != "scratch" and scratch:
                p = paired(runs, scratch, region, subset)
                row[f"{region}_diff"], row[f"{region}_p"], row["paired_n"] = p["mean_diff"], p["p_value"], p["n"]
        reached = [reach(r, target) for r in runs] if target is not None and not math.isnan(target) else []
        epochs = [e for e, _ in reached if e is not None]
        row["target_WT"] = target
        row["reached"] = f"{len(epochs)}/{len(runs)}"
        row["epochs_to_target"] = _mean_sd(epochs)[0] if epochs else math.nan
        row["wall_s_to_target"] = _mean_sd([w for _, w in reached if w is not None])[0] if epochs else math.nan
        step = _mean_sd([r.get("timing", {}).get("step_time_mean_s") for r in runs])[0]
        params = _mean_sd([r.get("model", {}).get("params_trainable") for r in runs])[0]
        row["step_time_rel"] = step / base_step if base_step else math.nan
        row["trainable_rel"] = params / base_params if base_params else math.nan
        row["trainable_params"] = params
        rows.append(row)
    return rows


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def markdown(rows: list[dict[str, Any]], subset: str = "test") -> str:
    head = ["variant", "seeds"] + [f"{r} Dice ({subset})" for r in REGIONS] + [f"Δ{r} vs scratch (p)" for r in REGIONS] + [
        "epochs to target", "wall s to target", "reached", "step time ×", "trainable ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["variant"], str(r["seeds"])]
        cells += [f"{_fmt(r[f'{g}_mean'])} ± {_fmt(r[f'{g}_sd'])}" for g in REGIONS]
        cells += ["–" if r["variant"] == "scratch" else f"{_fmt(r.get(f'{g}_diff'), '+.3f')} ({_fmt(r.get(f'{g}_p'), '.2g')})" for g in REGIONS]
        cells += [_fmt(r["epochs_to_target"], ".1f"), _fmt(r["wall_s_to_target"], ".1f"), r["reached"],
                  _fmt(r["step_time_rel"], ".2f"), _fmt(r["trainable_rel"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    target = rows[0]["target_WT"] if rows else math.nan
    lines.append("")
    lines.append(f"Target: validation WT Dice {_fmt(target)} (scratch's final, mean over seeds). Δ: mean paired "
                 f"difference per test case and seed; p: Wilcoxon signed-rank. Step time and trainable parameters "
                 f"relative to scratch.")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
