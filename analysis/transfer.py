"""Transfer vs scratch, from run records only: the one comparison `bratsbench transfer` and `analyze` show.

Per variant (frozen depth k, head-only) and for scratch: final validation and test Dice per region as mean
and sample sd (ddof=1; undefined, shown "-", for one seed) over seeds; a paired comparison against scratch
(per test case and seed, Wilcoxon signed-rank); epochs and wall time to reach a validation WT Dice target
(scratch's final one unless given); step time and trainable parameters relative to scratch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from harness.config import freeze_label, freeze_order
from harness.metrics import REGIONS

TABLE = "transfer"  # transfer.md (display), transfer.csv (every number)
CURVES_PNG = "learning_curves.png"
SCRATCH = "scratch"


def region_dice(obj: Any) -> dict[str, float]:
    """ET/TC/WT Dice from any of the shapes records use: {"ET": d}, {"ET_dice": d} or a summary {"mean": {...}}."""
    if not isinstance(obj, dict):
        return {}
    if isinstance(obj.get("mean"), dict):
        obj = obj["mean"]
    out = {}
    for region in REGIONS:
        for key in (region, f"{region}_dice"):
            value = obj.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[region] = float(value)
                break
    return out


def variant(record: dict[str, Any]) -> str | None:
    """"scratch", "k=2", "head-only", or None for records that are not a fine-tuning/scratch run of a study."""
    info = (record.get("extra") or {}).get("transfer") or {}
    role = info.get("role")
    if role == SCRATCH:
        return SCRATCH
    if role != "finetune":
        return None
    k = info.get("freeze_depth", ((record.get("config") or {}).get("train") or {}).get("freeze_depth", 0))
    return freeze_label(k)


def _order(name: str) -> tuple[int, int, int]:
    if name == SCRATCH:
        return (2, 0, 0)
    k = name.split("=", 1)[1] if name.startswith("k=") else "head"
    return (0, *freeze_order(k))


def group(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Finished runs by variant (k=0, k=2, ..., head-only, scratch), each sorted by seed."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        v = variant(r)
        if v is not None and r.get("status") in ("ok", None):
            groups[v].append(r)
    for runs in groups.values():
        runs.sort(key=lambda r: r["extra"]["transfer"].get("seed") or 0)
    return dict(sorted(groups.items(), key=lambda kv: _order(kv[0])))


def _mean_sd(values: Sequence[float | None]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def _final_val(record: dict[str, Any]) -> dict[str, float]:
    history = [h for h in record.get("history") or [] if region_dice(h.get("val"))]
    return region_dice(history[-1]["val"]) if history else region_dice((record.get("metrics") or {}).get("val"))


def _cases(record: dict[str, Any], subset: str) -> dict[str, dict[str, float]]:
    return {c["case_id"]: c for c in (record.get("metrics") or {}).get(f"{subset}_cases", [])}


def reach(record: dict[str, Any], target: float, region: str = "WT") -> tuple[int | None, float | None]:
    """First epoch whose validation Dice reaches target, and the wall time (s) spent until then."""
    wall = 0.0
    for entry in record.get("history", []):
        wall += entry.get("wall_s") or 0.0
        val = region_dice(entry.get("val"))
        if val.get(region) is not None and val[region] >= target:
            return entry["epoch"], wall
    return None, None


def paired(runs: list[dict[str, Any]], scratch: list[dict[str, Any]], region: str, subset: str) -> dict[str, float]:
    """Per-case, per-seed Dice differences (variant - scratch) on the same test cases and seeds."""
    diffs = []
    by_seed = {r["extra"]["transfer"].get("seed"): r for r in scratch}
    for r in runs:
        s = by_seed.get(r["extra"]["transfer"].get("seed"))
        if s is None:
            continue
        a, b = _cases(r, subset), _cases(s, subset)
        for case in sorted(set(a) & set(b)):
            x, y = a[case].get(f"{region}_dice"), b[case].get(f"{region}_dice")
            if x is not None and y is not None:
                diffs.append(x - y)
    out = {"n": len(diffs), "mean_diff": float(np.mean(diffs)) if diffs else math.nan, "p_value": math.nan}
    if sum(abs(d) > 1e-12 for d in diffs) >= 2:
        from scipy.stats import wilcoxon

        out["p_value"] = float(wilcoxon(diffs, zero_method="zsplit").pvalue)
    return out


def comparison(records: Iterable[dict[str, Any]], subset: str = "test", target: float | None = None) -> pd.DataFrame:
    """One row per variant with every number the study reports (empty frame: no study records)."""
    groups = group(records)
    scratch = groups.get(SCRATCH, [])
    if target is None:
        target = _mean_sd([_final_val(r).get("WT") for r in scratch])[0]
    base_step = _mean_sd([(r.get("timing") or {}).get("step_time_mean_s") for r in scratch])[0]
    base_params = _mean_sd([(r.get("model") or {}).get("params_trainable") for r in scratch])[0]
    rows = []
    for name, runs in groups.items():
        row: dict[str, Any] = {"variant": name, "seeds": len(runs), "epochs": max(len(r.get("history") or []) for r in runs)}
        finals = [_final_val(r) for r in runs]
        tests = [region_dice((r.get("metrics") or {}).get(subset)) for r in runs]
        for region in REGIONS:
            row[f"val_{region}"], row[f"val_{region}_sd"] = _mean_sd([f.get(region) for f in finals])
            row[f"{subset}_{region}"], row[f"{subset}_{region}_sd"] = _mean_sd([t.get(region) for t in tests])
        for region in REGIONS:
            if name != SCRATCH and scratch:
                p = paired(runs, scratch, region, subset)
                row[f"{region}_diff"], row[f"{region}_p"], row["paired_n"] = p["mean_diff"], p["p_value"], p["n"]
        reached = [reach(r, target) for r in runs] if not math.isnan(target) else []
        epochs = [e for e, _ in reached if e is not None]
        row["target_WT"] = target
        row["reached"] = f"{len(epochs)}/{len(runs)}"
        row["epochs_to_target"] = _mean_sd(epochs)[0] if epochs else math.nan
        row["wall_s_to_target"] = _mean_sd([w for _, w in reached if w is not None])[0] if epochs else math.nan
        step = _mean_sd([(r.get("timing") or {}).get("step_time_mean_s") for r in runs])[0]
        params = _mean_sd([(r.get("model") or {}).get("params_trainable") for r in runs])[0]
        row["step_time_rel"] = step / base_step if base_step else math.nan
        row["trainable_rel"] = params / base_params if base_params else math.nan
        row["trainable_params"] = params
        rows.append(row)
    return pd.DataFrame(rows)


def curves(records: Iterable[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """variant -> per-epoch mean, sd and count of validation WT Dice over seeds (the learning-curve plot)."""
    out = {}
    for name, runs in group(records).items():
        points = [(int(h.get("epoch", i + 1)), region_dice(h.get("val")).get("WT", math.nan))
                  for r in runs for i, h in enumerate(r.get("history") or []) if region_dice(h.get("val"))]
        if points:
            frame = pd.DataFrame(points, columns=["epoch", "wt"])
            out[name] = frame.groupby("epoch")["wt"].agg(["mean", "std", "size"]).reset_index()
    return out


def _pm(mean: float, sd: float, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd:.{digits}f}")


def _num(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def display(table: pd.DataFrame, subset: str = "test") -> pd.DataFrame:
    """The table as people read it: 'mean ± sd' cells, differences with their p-values."""
    rows = []
    for r in table.to_dict("records"):
        row = {"variant": r["variant"], "seeds": r["seeds"], "epochs": r["epochs"]}
        for region in REGIONS:
            row[f"{region} Dice ({subset})"] = _pm(r.get(f"{subset}_{region}"), r.get(f"{subset}_{region}_sd"))
        for region in REGIONS:
            row[f"{region} Dice (val)"] = _pm(r.get(f"val_{region}"), r.get(f"val_{region}_sd"))
        for region in REGIONS:
            diff = r.get(f"{region}_diff")
            row[f"Δ{region} vs scratch (p)"] = "-" if r["variant"] == SCRATCH or diff is None or math.isnan(diff) else (
                f"{diff:+.3f} ({_num(r.get(f'{region}_p'), '.2g')})")
        row["epochs to target"] = _num(r["epochs_to_target"], ".1f")
        row["wall s to target"] = _num(r["wall_s_to_target"], ".1f")
        row["reached"] = r["reached"]
        row["step time ×"] = _num(r["step_time_rel"], ".2f")
        row["trainable ×"] = _num(r["trainable_rel"], ".2f")
        rows.append(row)
    return pd.DataFrame(rows)


def caption(table: pd.DataFrame) -> str:
    target = table["target_WT"].iloc[0] if len(table) else math.nan
    return (f"Final Dice per region, mean ± sd (ddof=1) over seeds. Target: validation WT Dice {_num(target, '.3f')} "
            "(scratch's final, mean over seeds, unless given). Δ: mean paired difference per test case and seed; "
            "p: Wilcoxon signed-rank. Step time and trainable parameters relative to scratch.")


def write_comparison(records: Sequence[dict[str, Any]], out: str | Path, target: float | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """OUT/transfer.md, OUT/transfer.csv and OUT/learning_curves.png; returns the table and the files written."""
    from analysis import plots
    from analysis.tables import markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison(records, target=target)
    if table.empty:
        return table, []
    md, csv = out / f"{TABLE}.md", out / f"{TABLE}.csv"
    md.write_text(f"**{caption(table)}**\n\n" + markdown(display(table)) + "\n")
    csv.write_text(table.to_csv(index=False))
    files = [md, csv]
    try:
        files.append(plots.learning_curves_png(curves(records), out / CURVES_PNG))
    except ValueError:  # no per-epoch validation Dice (e.g. validation off)
        pass
    return table, files
