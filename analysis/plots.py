"""PNG figures of the analysis tables (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def _groups(table: pd.DataFrame, by: str = "group"):
    """(legend label, rows) per series; with a system column (several systems) each system's series is its own
    line, labelled "group [system]", so two systems are never drawn as one."""
    if "system" not in table:
        yield from table.groupby(by, sort=False)
        return
    for (system, group), g in table.groupby(["system", by], sort=False):
        yield f"{group} [{system}]", g


def _ci_bars(g: pd.DataFrame, col: str) -> np.ndarray:
    """Asymmetric error bars (2 x n) from a table's `col`_ci_low/high; none (0) where a point has no CI."""
    low = (g[col] - g[f"{col}_ci_low"]).fillna(0).clip(lower=0)
    high = (g[f"{col}_ci_high"] - g[col]).fillna(0).clip(lower=0)
    return np.vstack([low.to_numpy(float), high.to_numpy(float)])


def scaling_png(table: pd.DataFrame, kind: str, path: str | Path) -> Path:
    """Throughput vs ranks with each series' ideal line (left) and parallel efficiency (right); bars: 95% CIs."""
    plt = _plt()
    data = table[table["scaling"] == kind]
    fig, (ax, ax_eff) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    labels = list(dict(_groups(data)))
    for i, (group, g) in enumerate(_groups(data)):
        colour = f"C{i % 10}"
        ax.errorbar(g["np"], g["throughput"], yerr=_ci_bars(g, "throughput"), marker="o", color=colour, label=group, capsize=3)
        ax.plot(g["np"], g["ideal"], linestyle="--", color=colour, alpha=0.7, label=f"ideal ({group})" if len(labels) > 1 else "ideal (linear)")
        ax_eff.errorbar(g["np"], 100 * g["efficiency"], yerr=100 * _ci_bars(g, "efficiency"), marker="o", color=colour,
                        label=group, capsize=3)
    ticks = sorted(data["np"].unique())
    fixed = "per-rank batch fixed" if kind == "weak" else "global batch fixed"
    ax.set(xlabel="ranks (np)", ylabel="throughput (samples/s)", title=f"{kind} scaling ({fixed})", xticks=ticks)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax_eff.axhline(100, color="grey", linestyle="--", label="ideal (100%)")
    ax_eff.set(xlabel="ranks (np)", ylabel="parallel efficiency (%)", title="efficiency = speedup / np", xticks=ticks)
    ax_eff.set_ylim(0, max(110, float(100 * data["efficiency"].max()) + 10))
    ax_eff.legend(fontsize=7, loc="lower left")
    ax_eff.grid(alpha=0.3)
    return _save(fig, path)


def batch_png(table: pd.DataFrame, path: str | Path) -> Path:
    """Step time and time per sample vs per-rank batch size."""
    plt = _plt()
    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for i, (group, g) in enumerate(_groups(table)):
        ax.errorbar(g["batch_size"], g["step_time_ms"], yerr=g["step_time_sd_ms"].fillna(0), marker="o", color=f"C{i % 10}", label=group, capsize=3)
        ax_s.plot(g["batch_size"], g["ms_per_sample"], marker="o", color=f"C{i % 10}", label=group)
    ticks = sorted(table["batch_size"].unique())
    ax.set(xlabel="per-rank batch size", ylabel="step time (ms)", title="step time vs batch size", xticks=ticks)
    ax_s.set(xlabel="per-rank batch size", ylabel="step time per sample (ms)", title="time per sample", xticks=ticks)
    for a in (ax, ax_s):
        a.set_ylim(bottom=0)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return _save(fig, path)


def freeze_png(table: pd.DataFrame, path: str | Path) -> Path:
    """Step time and trainable parameters relative to freeze depth 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    series = list(_groups(table))
    multi = len(series) > 1
    for i, (group, g) in enumerate(series):
        suffix = f" ({group})" if multi else ""
        ax.plot(g["freeze_depth"], g["step_time_rel"], marker="o", color=f"C{i % 10}", label=f"step time{suffix}")
        ax.plot(g["freeze_depth"], g["params_rel"], marker="s", linestyle=":", color=f"C{i % 10}", label=f"trainable parameters{suffix}")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set(xlabel="frozen encoder levels (freeze depth)", ylabel="relative to freeze depth 0",
           title="cost of training vs frozen levels" + ("" if multi else f"\n{series[0][0]}"),
           xticks=sorted(table["freeze_depth"].unique()))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def learning_curves_png(curves: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Validation WT Dice against training seconds (left) and steps (right), one line per fine-tuning variant and
    for scratch (mean over seeds; band: 95% CI over seeds); `curves` as `analysis.transfer.curves` returns them."""
    if not curves:
        raise ValueError("no transfer records (extra.transfer with role finetune/scratch) with per-epoch validation Dice")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    for ax, x, label in ((axes[0], "seconds", "training time (s, in training steps)"), (axes[1], "step", "optimizer steps")):
        for i, (condition, c) in enumerate(curves.items()):
            if c[x].isna().all():
                x_values = c["epoch"]
            else:
                x_values = c[x]
            scratch = condition == "scratch" or condition.startswith("scratch [")  # "variant [system]": several systems
            style = dict(color="black" if condition == "scratch" else f"C{i % 10}", linestyle="--") if scratch \
                else dict(color=f"C{i % 10}")
            seeds = int(c["size"].max())
            ax.plot(x_values, c["mean"], marker="o", markersize=3, label=f"{condition} ({seeds} seed{'s' if seeds != 1 else ''})", **style)
            if c["ci_low"].notna().any():
                ax.fill_between(x_values, c["ci_low"].fillna(c["mean"]), c["ci_high"].fillna(c["mean"]), alpha=0.15,
                                color=style["color"])
        ax.set(xlabel=label if not curves or not all(c[x].isna().all() for c in curves.values()) else "epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="validation WT Dice", title="fine-tuning vs scratch (whole tumour) against training time")
    axes[1].set(title="... and against steps")
    axes[1].legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def breakdown_png(summary: pd.DataFrame, path: str | Path) -> Path:
    """Stacked bars: mean ms per profiled step in compute / communication / input / other, one bar per run and rank."""
    plt = _plt()
    labels = [f"{r.run}\nrank {r.rank}" if "run" in summary else f"rank {r.rank}" for r in summary.itertuples()]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(labels) + 2), 4.5), dpi=110)
    bottom = [0.0] * len(labels)
    colours = {"compute_ms": "C0", "communication_ms": "C3", "input_ms": "C2", "other_ms": "C7"}
    for bucket, colour in colours.items():
        values = list(summary[bucket])
        ax.bar(labels, values, bottom=bottom, color=colour, label=bucket.replace("_ms", ""))
        bottom = [b + v for b, v in zip(bottom, values)]
    if "record_step_ms" in summary and summary["record_step_ms"].notna().any():
        ax.scatter(labels, summary["record_step_ms"], marker="_", s=600, color="black", zorder=3, label="record mean step")
    ax.set(ylabel="ms per profiled step", title="step-time breakdown (profiled steps)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def scaling_model_png(table: pd.DataFrame, path: str | Path, measured: pd.DataFrame | None = None,
                      measured_label: str = "measured (this machine)") -> Path:
    """Predicted weak-scaling efficiency against rank count (log2), one line per run and interconnect; `measured`
    (run, np, efficiency): the runs' own throughput as a share of what their compute alone would give."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for (run, link), g in table.groupby(["run", "interconnect"], sort=False):
        ax.plot(g["np"], g["efficiency"], marker="o", ms=3, label=f"{run}: {link}")
    if measured is not None and not measured.empty:
        ax.scatter(measured["np"], measured["efficiency"], marker="*", s=120, color="black", zorder=5,
                   label=measured_label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="ranks (one GPU or core each)", ylabel="weak-scaling efficiency (predicted)", ylim=(0, 1.05),
           title="scaling model: compute + exposed ring allreduce")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def comm_png(table: pd.DataFrame, records: list[dict], path: str | Path) -> Path:
    """Bus bandwidth against message size (log-log), one line per backend and rank count, one panel per op;
    the model's gradient size and Horovod's fusion buffer marked."""
    plt = _plt()
    ops = [op for op in ("allreduce", "broadcast", "allgather") if op in set(table["op"])]
    fig, axes = plt.subplots(1, len(ops), figsize=(5.2 * len(ops), 4.2), dpi=110, squeeze=False)
    grads = {(r.get("comm") or {}).get("gradient_bytes") for r in records} - {None}
    fusion = {(r.get("comm") or {}).get("fusion_bytes") for r in records} - {None, 0}
    for ax, op in zip(axes[0], ops):
        keys = ["system", "backend", "np"] if "system" in table else ["backend", "np"]
        for key, g in table[table["op"] == op].groupby(keys, sort=False):
            system = f" [{key[0]}]" if len(key) == 3 else ""
            ax.plot(g["bytes"], g["busbw_gb_s"], marker="o", ms=3, label=f"{key[-2]}, np={key[-1]}{system}")
        for b in grads:
            ax.axvline(b, color="black", ls="--", lw=0.8, label="model gradients")
        for b in fusion:
            ax.axvline(b, color="grey", ls=":", lw=0.8, label="Horovod fusion buffer")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="message size (bytes)", ylabel="bus bandwidth (GB/s)", title=op)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, path)


LABELLED = 40  # up to this many points a panel names each one; past it the points are drawn sorted by B/A


def compare_png(rows: pd.DataFrame, path: str | Path, threshold: float = 0.05) -> Path:
    """B/A with its 95% CI per point, one panel per metric (`analysis.compare` rows): red where B is worse, green
    where better, grey where there is no significant change, hollow without a verdict; the band is the threshold.
    A panel of more than LABELLED points draws them sorted by B/A, unnamed, the CIs as a band (the CSV names them)."""
    from analysis.points import BY_NAME

    plt = _plt()
    rows = rows[rows["ratio"].notna()]
    metrics = list(dict.fromkeys(rows["metric"]))
    counts = [int((rows["metric"] == m).sum()) for m in metrics]
    heights = [1.4 + 0.3 * min(n, LABELLED) for n in counts]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8.5, min(sum(heights), 40) + 0.6), dpi=110, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    sides = rows["side"].nunique() > 1
    for ax, name, n in zip(axes[:, 0], metrics, counts):
        g = rows[rows["metric"] == name]
        named = n <= LABELLED
        g = g.reset_index(drop=True) if named else g.sort_values("ratio", kind="stable").reset_index(drop=True)
        y = np.arange(len(g))[::-1] if named else np.arange(len(g))
        ax.axvspan(1 - threshold, 1 + threshold, color="grey", alpha=0.12, lw=0)
        ax.axvline(1.0, color="black", lw=0.8)
        m = BY_NAME.get(name)
        kind = np.where(g["verdict"] == (m.better if m else ""), "C2",
                        np.where(g["verdict"] == (m.worse if m else ""), "C3", "C7"))
        ratio = g["ratio"].to_numpy(float)
        if not named:  # thousands of points: the CIs as one band, the ratios as one scatter
            ax.fill_betweenx(y, g["ratio_ci_low"].fillna(g["ratio"]), g["ratio_ci_high"].fillna(g["ratio"]), color="C7",
                             alpha=0.3, lw=0, step="mid")
            ax.scatter(ratio, y, c=kind, s=4, zorder=3)
        low = (g["ratio"] - g["ratio_ci_low"]).clip(lower=0).fillna(0).to_numpy(float)
        high = (g["ratio_ci_high"] - g["ratio"]).clip(lower=0).fillna(0).to_numpy(float)
        for colour in ("C7", "C3", "C2") if named else ():
            for hollow in (False, True):
                sel = (kind == colour) & ((g["verdict"] == "no verdict").to_numpy() == hollow)
                if sel.any():
                    ax.errorbar(ratio[sel], y[sel], xerr=np.vstack([low[sel], high[sel]]), fmt="o", color=colour,
                                capsize=3, ms=5, mfc="white" if hollow else colour)
        if named:
            ax.set_yticks(y, [f"{r.side}: {r.label}" if sides else r.label for r in g.itertuples()], fontsize=7)
            ax.set_ylim(-0.7, len(g) - 0.3)
        else:
            ax.set(ylabel="points, sorted by B/A")
        ax.set_title(f"{name}: B / A with 95% CI ({n} point{'s' if n != 1 else ''})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(f"ratio B / A (band: ±{100 * threshold:g}%)")
    return _save(fig, path)
