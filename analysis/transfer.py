"""Transfer vs scratch, from run records only: the one comparison `bratsbench transfer` and `analyze` show.

Per variant (frozen depth k, head-only) and for scratch: final validation and test Dice per region as the mean
over seeds with a 95% CI (test: bootstrap over seeds and patients together, analysis.stats.two_way_mean_ci;
validation: over seeds) and the sample sd; the paired difference to scratch (per test case and seed) with its CI,
Cohen's d_z and a Wilcoxon signed-rank p; training seconds, steps and epochs to reach a validation WT Dice
target (scratch's final one unless given), each with a CI over seeds; step time and trainable parameters
relative to scratch. Training seconds are the time in training steps (history.train_s): validation, which a
study may run more or less often, does not count. A study whose runs come from several systems is compared per
system (a `system` column; each system's scratch runs set its own target): two systems are never pooled.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from analysis.records import system_label
from analysis.stats import cohens_dz, mean_ci, two_way_mean_ci
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


def study_run(record: dict[str, Any]) -> dict[str, Any]:
    """The study labels of a run, {"role", "freeze_depth", "seed"}: extra.transfer as `bratsbench transfer` writes
    it, else those of a training sweep's run (extra.sweep mode scratch or transfer, as a sweep with
    `mode: [transfer, scratch]` emitted as job arrays writes them; benchmark runs time steps and are no study
    runs); {} for any other record."""
    extra = record.get("extra") or {}
    if isinstance(extra.get("transfer"), dict):
        return extra["transfer"]
    sweep = extra.get("sweep") or {}
    train = (record.get("config") or {}).get("train") or {}
    role = {SCRATCH: SCRATCH, "transfer": "finetune"}.get(sweep.get("mode"))
    if role is None or sweep.get("kind") != "run" or train.get("benchmark"):
        return {}
    return {"role": role, "freeze_depth": train.get("freeze_depth", 0), "seed": sweep.get("seed", train.get("seed"))}


def variant(record: dict[str, Any]) -> str | None:
    """"scratch", "k=2", "head-only", or None for records that are not a fine-tuning/scratch run of a study."""
    info = study_run(record)
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
        runs.sort(key=lambda r: study_run(r).get("seed") or 0)
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


class Reach(NamedTuple):
    epoch: int | None  # first epoch whose validation Dice reaches the target
    seconds: float | None  # training seconds until then (history.train_s; epoch wall time in older records)
    step: int | None  # optimizer steps until then


def reach(record: dict[str, Any], target: float, region: str = "WT") -> Reach:
    """When a run's validation Dice first reached `target` (all None if it never did)."""
    seconds = 0.0
    for entry in record.get("history", []):
        seconds += entry.get("train_s", entry.get("wall_s")) or 0.0
        val = region_dice(entry.get("val"))
        if val.get(region) is not None and val[region] >= target:
            return Reach(entry["epoch"], seconds, entry.get("step"))
    return Reach(None, None, None)


def _case_matrix(runs: list[dict[str, Any]], subset: str, region: str,
                 minus: list[dict[str, Any]] | None = None) -> np.ndarray:
    """Seeds x test cases of per-case Dice (or of its difference to the scratch run of the same seed); cases any
    seed lacks are NaN. Zero columns where the records hold no per-case metrics."""
    by_seed = {study_run(r).get("seed"): r for r in minus or []}
    rows: list[dict[str, float]] = []
    for r in runs:
        mine = _cases(r, subset)
        other = _cases(by_seed[study_run(r).get("seed")], subset) if minus is not None else None
        if minus is not None and other is None:
            continue
        row = {}
        for case, c in mine.items():
            x = c.get(f"{region}_dice")
            y = other.get(case, {}).get(f"{region}_dice") if other is not None else 0.0
            if x is not None and y is not None:
                row[case] = x - y
        rows.append(row)
    cases = sorted(set().union(*rows)) if rows else []
    return np.array([[row.get(c, math.nan) for c in cases] for row in rows], dtype=float).reshape(len(rows), len(cases))


def paired(runs: list[dict[str, Any]], scratch: list[dict[str, Any]], region: str, subset: str) -> dict[str, float]:
    """Per-case, per-seed Dice differences (variant - scratch) on the same test cases and seeds: their mean with a
    CI over seeds and patients, d_z and a Wilcoxon p."""
    matrix = _case_matrix(runs, subset, region, minus=scratch)
    diffs = [float(d) for d in matrix.ravel() if not math.isnan(d)]
    out = {"n": len(diffs), "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "dz": cohens_dz(diffs),
           "p_value": math.nan}
    if diffs:
        est = two_way_mean_ci(matrix)
        out.update(mean_diff=est.value, ci_low=est.low, ci_high=est.high)
    if sum(abs(d) > 1e-12 for d in diffs) >= 2:
        from scipy.stats import wilcoxon

        out["p_value"] = float(wilcoxon(diffs, zero_method="zsplit").pvalue)
    return out


def _ci(values: Sequence[float | None]) -> tuple[float, float]:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return math.nan, math.nan
    est = mean_ci(clean)
    return est.low, est.high


def _dice_columns(row: dict[str, Any], runs: list[dict[str, Any]], subset: str) -> None:
    finals = [_final_val(r) for r in runs]
    tests = [region_dice((r.get("metrics") or {}).get(subset)) for r in runs]
    for region in REGIONS:
        vals = [f.get(region) for f in finals]
        row[f"val_{region}"], row[f"val_{region}_sd"] = _mean_sd(vals)
        row[f"val_{region}_ci_low"], row[f"val_{region}_ci_high"] = _ci(vals)
        per_seed = [t.get(region) for t in tests]
        row[f"{subset}_{region}"], row[f"{subset}_{region}_sd"] = _mean_sd(per_seed)
        matrix = _case_matrix(runs, subset, region)
        if matrix.size and not np.isnan(matrix).all():
            est = two_way_mean_ci(matrix)
            row[f"{subset}_{region}_ci_low"], row[f"{subset}_{region}_ci_high"] = est.low, est.high
        else:  # no per-case metrics: the CI over the seeds' means
            row[f"{subset}_{region}_ci_low"], row[f"{subset}_{region}_ci_high"] = _ci(per_seed)


def _target_columns(row: dict[str, Any], runs: list[dict[str, Any]], target: float) -> None:
    reached = [reach(r, target) for r in runs] if not math.isnan(target) else []
    hits = [r for r in reached if r.epoch is not None]
    row["target_WT"] = target
    row["reached"] = f"{len(hits)}/{len(runs)}"
    for key, values in (("epochs", [r.epoch for r in hits]), ("seconds", [r.seconds for r in hits]),
                        ("steps", [r.step for r in hits if r.step is not None])):
        row[f"{key}_to_target"] = _mean_sd(values)[0] if values else math.nan
        row[f"{key}_to_target_ci_low"], row[f"{key}_to_target_ci_high"] = _ci(values)


def per_system(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The study's records (fine-tuning and scratch runs) by the system they ran on."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if variant(r) is not None:
            out.setdefault(system_label(r), []).append(r)
    return out


def comparison(records: Iterable[dict[str, Any]], subset: str = "test", target: float | None = None) -> pd.DataFrame:
    """One row per variant with every number the study reports (empty frame: no study records); per system, with
    a `system` column, where the runs come from several."""
    systems = per_system(records)
    if len(systems) <= 1:
        return _comparison(next(iter(systems.values()), []), subset, target)
    table = pd.concat([_comparison(runs, subset, target).assign(system=label) for label, runs in systems.items()],
                      ignore_index=True)
    return table[["system", *[c for c in table.columns if c != "system"]]]


def _comparison(records: Iterable[dict[str, Any]], subset: str, target: float | None) -> pd.DataFrame:
    groups = group(records)
    scratch = groups.get(SCRATCH, [])
    if target is None:
        target = _mean_sd([_final_val(r).get("WT") for r in scratch])[0]
    base_step = _mean_sd([(r.get("timing") or {}).get("step_time_mean_s") for r in scratch])[0]
    base_params = _mean_sd([(r.get("model") or {}).get("params_trainable") for r in scratch])[0]
    rows = []
    for name, runs in groups.items():
        row: dict[str, Any] = {"variant": name, "seeds": len(runs), "epochs": max(len(r.get("history") or []) for r in runs)}
        _dice_columns(row, runs, subset)
        for region in REGIONS:
            if name != SCRATCH and scratch:
                p = paired(runs, scratch, region, subset)
                row[f"{region}_diff"], row[f"{region}_p"], row["paired_n"] = p["mean_diff"], p["p_value"], p["n"]
                row[f"{region}_diff_ci_low"], row[f"{region}_diff_ci_high"] = p["ci_low"], p["ci_high"]
                row[f"{region}_dz"] = p["dz"]
        _target_columns(row, runs, target)
        step = _mean_sd([(r.get("timing") or {}).get("step_time_mean_s") for r in runs])[0]
        params = _mean_sd([(r.get("model") or {}).get("params_trainable") for r in runs])[0]
        row["step_time_rel"] = step / base_step if base_step else math.nan
        row["trainable_rel"] = params / base_params if base_params else math.nan
        row["trainable_params"] = params
        rows.append(row)
    return pd.DataFrame(rows)


def curves(records: Iterable[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """variant -> per epoch: validation WT Dice over seeds (mean, sd, 95% CI, count) and the mean training
    seconds and steps done by then (the learning-curve plot's two x axes). Where the study ran on several systems
    the keys are "variant [system]"."""
    systems = per_system(records)
    if len(systems) > 1:
        return {f"{name} [{label}]": c for label, runs in systems.items() for name, c in curves(runs).items()}
    out = {}
    for name, runs in group(records).items():
        points = []
        for r in runs:
            seconds = 0.0
            for i, h in enumerate(r.get("history") or []):
                seconds += h.get("train_s", h.get("wall_s")) or 0.0
                if region_dice(h.get("val")):
                    points.append((int(h.get("epoch", i + 1)), region_dice(h.get("val")).get("WT", math.nan), seconds,
                                   h.get("step", math.nan)))
        if points:
            frame = pd.DataFrame(points, columns=["epoch", "wt", "seconds", "step"])
            agg = frame.groupby("epoch").agg(mean=("wt", "mean"), std=("wt", "std"), size=("wt", "size"),
                                             seconds=("seconds", "mean"), step=("step", "mean")).reset_index()
            bands = [_ci(list(g["wt"])) for _, g in frame.groupby("epoch")]
            agg["ci_low"], agg["ci_high"] = [b[0] for b in bands], [b[1] for b in bands]
            out[name] = agg
    return out


def _num(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ci_cell(value: float | None, low: float | None, high: float | None, spec: str = ".3f", sign: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = format(value, sign + spec)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    return f"{text} [{format(low, spec)}, {format(high, spec)}]"


def display(table: pd.DataFrame, subset: str = "test") -> pd.DataFrame:
    """The table as people read it: 'mean [95% CI]' cells, differences with their CI, d_z and p."""
    rows = []
    for r in table.to_dict("records"):
        row = {"system": r["system"]} if "system" in r else {}
        row.update(variant=r["variant"], seeds=r["seeds"], epochs=r["epochs"])
        for region in REGIONS:
            row[f"{region} Dice ({subset})"] = _ci_cell(r.get(f"{subset}_{region}"), r.get(f"{subset}_{region}_ci_low"),
                                                        r.get(f"{subset}_{region}_ci_high"))
        row["WT Dice (val)"] = _ci_cell(r.get("val_WT"), r.get("val_WT_ci_low"), r.get("val_WT_ci_high"))
        for region in REGIONS:
            diff = r.get(f"{region}_diff")
            row[f"Δ{region} vs scratch"] = "-" if r["variant"] == SCRATCH or diff is None or math.isnan(diff) else (
                _ci_cell(diff, r.get(f"{region}_diff_ci_low"), r.get(f"{region}_diff_ci_high"), sign="+")
                + f" (d_z {_num(r.get(f'{region}_dz'), '.2f')}, p {_num(r.get(f'{region}_p'), '.2g')})")
        row["reached"] = r["reached"]
        row["train s to target"] = _ci_cell(r.get("seconds_to_target"), r.get("seconds_to_target_ci_low"),
                                            r.get("seconds_to_target_ci_high"), ".0f")
        row["steps to target"] = _ci_cell(r.get("steps_to_target"), r.get("steps_to_target_ci_low"),
                                          r.get("steps_to_target_ci_high"), ".0f")
        row["step time ×"] = _num(r["step_time_rel"], ".2f")
        row["trainable ×"] = _num(r["trainable_rel"], ".2f")
        rows.append(row)
    return pd.DataFrame(rows)


def caption(table: pd.DataFrame) -> str:
    if "system" in table:  # each system's scratch runs set its target
        targets = "; ".join(f"{system}: {_num(t, '.3f')}" for system, t in
                            table.groupby("system", sort=False)["target_WT"].first().items())
    else:
        targets = _num(table["target_WT"].iloc[0] if len(table) else math.nan, ".3f")
    return (f"Final Dice per region: mean over seeds [95% CI: bootstrap over seeds and test patients; validation "
            f"over seeds]. Target: validation WT Dice {targets} (scratch's final, mean over seeds, unless "
            "given); training seconds (time in training steps) and steps to reach it, mean over the seeds that did "
            "[95% CI over seeds]. Δ: mean paired difference per test case and seed [95% CI], d_z: its effect size, "
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
