"""MMD result tables: Markdown for people, CSV for programs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("features", "pair", "mmd2", "mmd2_ci_low", "mmd2_ci_high", "p_value", "n", "m", "dim", "sigma")


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = "| features | pair | MMD² | 95% CI (bootstrap) | p-value (permutations) | n | m | dim | σ |"
    lines = [head, "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        sigma = f"{r['sigma']:.3g}" if r.get("sigma") is not None else "-"
        low, high = r.get("mmd2_ci_low"), r.get("mmd2_ci_high")
        ci = "-" if low is None or high is None or low != low else f"[{low:.5f}, {high:.5f}]"
        lines.append(f"| {r['features']} | {r['pair']} | {r['mmd2']:.5f} | {ci} | {r['p_value']:.4f} | {r['n']} | {r['m']} "
                     f"| {r['dim']} | {sigma} |")
    return "\n".join(lines)


def write_tables(rows: Sequence[dict[str, Any]], out: Path) -> list[str]:
    (out / "shift.md").write_text(markdown(rows) + "\n")
    with open(out / "shift.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [markdown(rows), str(out / "shift.md"), str(out / "shift.csv")]
