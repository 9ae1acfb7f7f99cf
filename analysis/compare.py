"""B against A, point by point: each metric's ratio B ÷ A with a 95% CI, a rank test and a verdict.

The sides are results folders (A is the first, every other is compared with it) or the runs of the folders split by
what they ran on (`by`: system, versions, engine or commit; A is the side whose first run started first, unless a
baseline is named). Points line up by their identity (`analysis.points`): the run settings without repeat, system and
paths. Within a side a point's runs on two systems stay apart; across sides a point is matched on the same system
first, else where each side has it on exactly one system (the usual cluster-A-against-cluster-B case). Whatever does
not match is listed with the reason, never dropped.

Per matched point and metric (both sides measured it): each side's median over its repeats; B/A = median(B) /
median(A) with a 95% percentile-bootstrap CI from resampling each side on its own (`stats.ratio_of_medians_ci`);
a two-sided Mann-Whitney U p-value (`stats.mann_whitney_ps`); and a verdict (`Rule`):

  faster / slower (memory: smaller / larger; Dice: higher / lower) when all of
      each side has at least 3 repeats,
      p <= alpha (default 0.10),
      the 95% CI of B/A excludes 1, and
      |B/A - 1| >= threshold (default 5%);
  ~    (no significant change) otherwise, with the first condition that failed;
  no verdict  fewer than 3 repeats on a side: the ratio is shown, with the reason.

Why alpha 0.10 and not benchstat's 0.05: with 3 repeats a side the exact two-sided test cannot go below p = 0.1 (2
of the 20 orderings are as extreme as "every B beyond every A"), so at 0.05 three repeats could never show a change.
At 0.10 a 3-vs-3 change needs every repeat of one side beyond every repeat of the other, and, for the CI and the
threshold, a change large enough to matter: an unchanged rerun is called changed only if it is both perfectly
separated (10% of the time by chance) and at least `threshold` apart. More repeats buy a stricter alpha. A side
whose repeats spread more than 10% (stats.WIDE_CV, the CV analysis flags as noisy) is marked noisy.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from analysis.points import BY_NAME, METRICS, PRIMARY, TIME_TO_TARGET, Metric, Point, collect, scratch_target
from analysis.records import engine_label, load_records, system_label
from analysis.stats import LEVEL, WIDE_CV, mann_whitney_ps, ratio_of_medians_ci
from harness.errors import UserError

MIN_REPEATS = 3
NA, SAME = "no verdict", "~"
LISTED = 40  # the terminal lists every point of a metric up to this many; past it, the points that changed


def _versions(record: dict[str, Any]) -> str:
    v = record.get("versions") or {}
    parts = [f"{name} {v[key]}" for key, name in (("tensorflow", "TF"), ("horovod", "Horovod"), ("python", "Python"))
             if v.get(key)]
    return ", ".join(parts) or "unknown versions"


def _commit(record: dict[str, Any]) -> str:
    git = (record.get("system") or {}).get("git") or {}
    commit = git.get("commit") or record.get("git_commit")
    if not commit:
        return "unknown commit"
    return str(commit)[:12] + (" (modified)" if git.get("modified") else "")


# --by: what splits the runs into sides, and the settings a point's identity leaves out for it (comparing engines
# means comparing runs whose `backend` setting differs)
SPLITS: dict[str, tuple[Callable[[dict[str, Any]], str], tuple[tuple[str, str], ...]]] = {
    "system": (system_label, ()),
    "versions": (_versions, ()),
    "engine": (engine_label, (("train", "backend"),)),
    "commit": (_commit, ()),
}


@dataclass(frozen=True)
class Rule:
    """When a ratio counts as a change (see the module's docstring)."""

    alpha: float = 0.10
    threshold: float = 0.05  # a fraction: 0.05 is 5%
    min_repeats: int = MIN_REPEATS
    level: float = LEVEL

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not 0 < self.alpha < 1:
            raise UserError(f"--alpha {self.alpha!r} must be between 0 and 1 (e.g. 0.10)")
        if isinstance(self.threshold, bool) or not 0 <= self.threshold < 1:
            raise UserError(f"--threshold {100 * self.threshold:g}% must be at least 0 and below 100")

    def text(self) -> str:
        return (f"faster/slower (memory: smaller/larger; Dice: higher/lower) where each side has >= {self.min_repeats} "
                f"repeats, the two-sided Mann-Whitney U p <= {self.alpha:g}, the {100 * self.level:g}% bootstrap CI of "
                f"B/A excludes 1 and |B/A - 1| >= {100 * self.threshold:g}%; ~ = no significant change; no verdict with fewer "
                f"than {self.min_repeats} repeats on a side (with 3 a side p <= 0.1 needs every repeat of one side "
                "beyond every repeat of the other)")

    def verdict(self, m: Metric, a: Sequence[float], b: Sequence[float], ratio: float, low: float, high: float,
                p: float) -> tuple[str, str]:
        """(verdict, why): why names the first condition that kept a ratio from being a change."""
        if len(a) < self.min_repeats or len(b) < self.min_repeats:
            return NA, f"{len(a)} vs {len(b)} repeats: a verdict needs {self.min_repeats} a side"
        if not math.isfinite(ratio):
            return NA, "A's median is 0"
        if not p <= self.alpha:
            return SAME, f"p {p:.2g} > {self.alpha:g}"
        if low <= 1 <= high:
            return SAME, f"{100 * self.level:g}% CI includes 1"
        if abs(ratio - 1) < self.threshold:
            return SAME, f"{100 * (ratio - 1):+.1f}% is within {100 * self.threshold:g}%"
        return (m.better if (ratio > 1) == m.higher_is_better else m.worse), ""


@dataclass
class Side:
    """One side of a comparison: its runs and their points."""

    name: str  # A, B, C, ...
    source: str  # the results folder, or the value of --by
    records: list[dict[str, Any]]
    points: dict[tuple[str, str], Point] = field(default_factory=dict)

    @property
    def systems(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.points.values():
            out[p.system] = out.get(p.system, 0) + p.runs
        return out

    def describe(self) -> str:
        systems = "; ".join(f"{s} ({n} run{'s' if n != 1 else ''})" for s, n in self.systems.items()) or "no finished runs"
        source = "" if list(self.systems) == [self.source] else f"{self.source}: "  # --by system: the label once
        return f"{self.name}: {source}{systems}, {len(self.points)} point{'s' if len(self.points) != 1 else ''}"


def _natural(text: str) -> list:
    """Sort key that puts np2 before np16."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _name(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"S{i + 1}"


def load_sides(results: Sequence[str | Path], by: str | None = None, baseline: str | None = None,
               warn: Callable[[str], None] | None = None) -> list[Side]:
    """The sides: one per results folder, or (`by`) the runs of all folders split by system, versions, engine or
    commit, the earliest-started first unless `baseline` names the side that is A. Points are collected with a
    study's time to target measured at side A's scratch level."""
    if by is not None and by not in SPLITS:
        raise UserError(f"--by {by}: not one of {', '.join(SPLITS)}")
    if baseline is not None and by is None:
        raise UserError("--baseline names a side of --by; with results folders the first folder is the baseline")
    seen: set[Path] = set()
    loaded: list[tuple[str, list[dict[str, Any]]]] = []
    for folder in results:
        path = Path(folder)
        if not path.is_dir():
            raise UserError(f"results folder '{folder}' does not exist")
        if path.resolve() in seen:
            raise UserError(f"results folder '{folder}' is given twice")
        seen.add(path.resolve())
        records = [r for r in load_records(path, warn=warn) if r.get("kind", "train") == "train"]
        if not records:
            raise UserError(f"'{folder}' holds no training run records (no */record.json of kind train below it)")
        loaded.append((str(folder), records))
    ignore: tuple[tuple[str, str], ...] = ()
    if by is None:
        groups = loaded
    else:
        key, ignore = SPLITS[by]
        split: dict[str, list[dict[str, Any]]] = {}
        for _, records in loaded:
            for r in records:
                split.setdefault(key(r), []).append(r)
        groups = sorted(split.items(), key=lambda kv: (min(str(r.get("started_at") or "") for r in kv[1]), kv[0]))
        if baseline is not None:
            names = [g for g, _ in groups]
            if baseline not in names:
                raise UserError(f"--baseline '{baseline}' is none of the {by} values found: {'; '.join(names)}")
            groups.sort(key=lambda kv: kv[0] != baseline)
    sides = [Side(_name(i), source, records) for i, (source, records) in enumerate(groups)]
    target = scratch_target(sides[0].records)
    for s in sides:
        s.points = collect(s.records, ignore, target)
    return sides


# --------------------------------------------------------------------------------------------- matching


@dataclass
class Unmatched:
    side: str  # the side that has the point
    vs: str  # the side it found no match in
    point: Point
    reason: str


def match(a: dict[tuple[str, str], Point], b: dict[tuple[str, str], Point], a_name: str = "A", b_name: str = "B"
          ) -> tuple[list[tuple[Point, Point]], list[Unmatched]]:
    """Pairs of (A's point, B's point): the same point on the same system, else the point where each side has it on
    exactly one system; the rest unmatched, with the reason."""
    pairs = [(a[k], b[k]) for k in a if k in b]
    left_a = {k: p for k, p in a.items() if k not in b}
    left_b = {k: p for k, p in b.items() if k not in a}
    by_id_a: dict[str, list[Point]] = {}
    by_id_b: dict[str, list[Point]] = {}
    for p in left_a.values():
        by_id_a.setdefault(p.id, []).append(p)
    for p in left_b.values():
        by_id_b.setdefault(p.id, []).append(p)
    unmatched: list[Unmatched] = []
    for pid, mine in by_id_a.items():
        theirs = by_id_b.get(pid, [])
        if len(mine) == 1 and len(theirs) == 1:
            pairs.append((mine[0], theirs[0]))
        elif not theirs:
            unmatched += [Unmatched(a_name, b_name, p, f"not in {b_name}") for p in mine]
        else:
            why = (f"{a_name} has it on {len(mine)} system(s), {b_name} on {len(theirs)} other(s): which pairs with "
                   "which is not clear (split with --by system)")
            unmatched += [Unmatched(a_name, b_name, p, why) for p in mine] + [Unmatched(b_name, a_name, p, why) for p in theirs]
    unmatched += [Unmatched(b_name, a_name, p, f"not in {a_name}") for pid, ps in by_id_b.items() if pid not in by_id_a
                  for p in ps]
    return pairs, unmatched


# --------------------------------------------------------------------------------------------- comparing


def _cv(values: Sequence[float]) -> float:
    """sd (ddof 1) / mean, as analysis.stats computes it (NaN for one value or a zero mean)."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    return sd / abs(mean) if mean != 0 else math.nan


def compare_pairs(pairs: Sequence[tuple[Point, Point]], rule: Rule, side: str = "B",
                  metrics: Sequence[Metric] = METRICS) -> list[dict[str, Any]]:
    """One row per matched point and metric both sides measured, in metric order."""
    todo = [(m, pa, pb) for m in metrics for pa, pb in pairs if pa.values.get(m.name) and pb.values.get(m.name)]
    ps = mann_whitney_ps([(pb.values[m.name], pa.values[m.name]) for m, pa, pb in todo])
    rows = []
    for (m, pa, pb), p in zip(todo, ps):
        a, b = pa.values[m.name], pb.values[m.name]
        med_a, med_b = statistics.median(a), statistics.median(b)
        if med_a == 0:
            ratio, low, high = math.nan, math.nan, math.nan
        else:
            ratio, low, high = ratio_of_medians_ci(b, a, rule.level)
        verdict, why = rule.verdict(m, a, b, ratio, low, high, p)
        cv_a, cv_b = _cv(a), _cv(b)
        noisy = [n for n, cv in (("A", cv_a), (side, cv_b)) if cv > WIDE_CV]
        rows.append({
            "side": side, "point": pa.id, "label": pa.label, "system_a": pa.system, "system_b": pb.system,
            "metric": m.name, "unit": m.unit, "a": float(med_a), "a_n": len(a), "a_cv": cv_a,
            "b": float(med_b), "b_n": len(b), "b_cv": cv_b, "ratio": ratio, "ratio_ci_low": low,
            "ratio_ci_high": high, "change_pct": 100 * (ratio - 1), "p_value": p, "verdict": verdict, "why": why,
            "noisy": ", ".join(noisy),
        })
    return rows


ROW_COLUMNS = ["side", "point", "label", "system_a", "system_b", "metric", "unit", "a", "a_n", "a_cv", "b", "b_n",
               "b_cv", "ratio", "ratio_ci_low", "ratio_ci_high", "change_pct", "p_value", "verdict", "why", "noisy"]
UNMATCHED_COLUMNS = ["side", "vs", "point", "label", "system", "runs", "reason"]


@dataclass
class Comparison:
    """Every side, the rule, the compared rows (every side against A) and the unmatched points."""

    sides: list[Side]
    rule: Rule
    rows: pd.DataFrame
    unmatched: pd.DataFrame

    def verdicts(self, side: str, metric: str = PRIMARY) -> dict[str, int]:
        rows = self.rows[(self.rows["side"] == side) & (self.rows["metric"] == metric)]
        return {v: int(n) for v, n in rows["verdict"].value_counts().items()}

    def header(self) -> list[str]:
        """The systems on every side and the verdicts, as the first lines of every output."""
        others = "B" if len(self.sides) == 2 else ", ".join(s.name for s in self.sides[1:]) + " each"
        lines = [f"compare: {others} ÷ A per point (points matched by their run settings; repeats, system and paths "
                 "left out)"]
        lines += [f"  {s.describe()}" for s in self.sides]
        m = BY_NAME[PRIMARY]
        for s in self.sides[1:]:
            counts = self.verdicts(s.name)
            found = ", ".join(f"{counts.get(v, 0)} {v}" for v in (m.worse, m.better, SAME, NA))
            gone = self.unmatched[(self.unmatched["side"] == s.name) | (self.unmatched["vs"] == s.name)]
            only = gone["side"].value_counts().to_dict()
            noisy = self.rows[(self.rows["side"] == s.name) & (self.rows["metric"] == PRIMARY) & (self.rows["noisy"] != "")]
            lines.append(f"{PRIMARY}, {s.name} vs A: {found} ({SAME}: no significant change); unmatched points: "
                         f"{only.get('A', 0)} of A, {only.get(s.name, 0)} of {s.name}"
                         + (f"; {len(noisy)} noisy (CV > {100 * WIDE_CV:g}%)" if len(noisy) else ""))
        lines.append(f"verdict: {self.rule.text()}")
        return lines

    def slower_than(self, pct: float) -> pd.DataFrame:
        """Rows of the primary metric called slower with a drop of more than `pct` percent."""
        m = BY_NAME[PRIMARY]
        r = self.rows
        return r[(r["metric"] == PRIMARY) & (r["verdict"] == m.worse) & (-r["change_pct"] > pct)]


def compare(sides: Sequence[Side], rule: Rule) -> Comparison:
    """Every side after the first against the first."""
    if len(sides) < 2:
        raise UserError("nothing to compare: give two results folders, or one whose runs --by splits in two or more")
    rows: list[dict[str, Any]] = []
    unmatched: list[Unmatched] = []
    for s in sides[1:]:
        pairs, left = match(sides[0].points, s.points, sides[0].name, s.name)
        pairs.sort(key=lambda ab: (_natural(ab[0].label), ab[0].id, ab[0].system))
        rows += compare_pairs(pairs, rule, s.name)
        unmatched += left
    table = pd.DataFrame(rows, columns=ROW_COLUMNS)
    gone = pd.DataFrame([{"side": u.side, "vs": u.vs, "point": u.point.id, "label": u.point.label, "system": u.point.system,
                          "runs": u.point.runs, "reason": u.reason} for u in unmatched], columns=UNMATCHED_COLUMNS)
    return Comparison(list(sides), rule, table, gone)


# --------------------------------------------------------------------------------------------- display


def _side_cell(median: float, cv: float, n: int) -> str:
    spread = "" if math.isnan(cv) else f" ±{100 * cv:.1f}%"
    return f"{median:.4g}{spread} n={n}"


def display(comparison: Comparison, metric: str, references: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of one metric as people read them: each side's median ± CV (n), B/A [95% CI], the change, p and the
    verdict; the side column where more than two sides are compared, the systems where a side has several."""
    rows = comparison.rows[comparison.rows["metric"] == metric]
    several = any(len(s.systems) > 1 for s in comparison.sides)
    out = []
    for r in rows.to_dict("records"):
        row: dict[str, Any] = {}
        if len(comparison.sides) > 2:
            row["side"] = r["side"]
        row.update(point=r["point"], label=r["label"])
        if several:
            row["system"] = r["system_a"] if r["system_a"] == r["system_b"] else f"{r['system_a']} -> {r['system_b']}"
        other = "B" if len(comparison.sides) == 2 else "side's"  # several sides: the row's side column says which
        row["A"] = _side_cell(r["a"], r["a_cv"], r["a_n"])
        row[other] = _side_cell(r["b"], r["b_cv"], r["b_n"])
        row[f"{other}/A [95% CI]"] = _ratio_cell(r["ratio"], r["ratio_ci_low"], r["ratio_ci_high"])
        row["change"] = "-" if math.isnan(r["change_pct"]) else f"{r['change_pct']:+.1f}%"
        row["p"] = "-" if math.isnan(r["p_value"]) else f"{r['p_value']:.2g}"
        row["verdict"] = r["verdict"]
        row["why"] = r["why"]
        row["noisy"] = r["noisy"]
        if references is not None:
            row["reference"] = reference_cell(references, r)
        out.append(row)
    return pd.DataFrame(out)


def _ratio_cell(ratio: float, low: float, high: float) -> str:
    if math.isnan(ratio):
        return "-"
    if math.isnan(low) or math.isnan(high):
        return f"{ratio:.3f}"
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]"


def reference_cell(references: pd.DataFrame, row: dict[str, Any]) -> str:
    """What the references say about a compared row's point and metric on each side ('A ok, B low'); '' if none."""
    if references.empty:
        return ""
    mine = references[(references["point"] == row["point"]) & (references["metric"] == row["metric"])]
    parts = []
    for side, system in (("A", row["system_a"]), (row["side"], row["system_b"])):
        hit = mine[(mine["side"] == side) & (mine["system"] == system)]
        if len(hit):
            parts.append(f"{side} {hit['status'].iloc[0]}")
    return ", ".join(parts)


def metrics_present(comparison: Comparison) -> list[str]:
    present = set(comparison.rows["metric"])
    return [m.name for m in METRICS if m.name in present]


def describe_metric(name: str) -> str:
    m = BY_NAME[name]
    unit = f"{m.unit}, " if m.unit else ""
    extra = " (training seconds to the baseline's scratch validation WT Dice)" if name == TIME_TO_TARGET else ""
    return f"{name} ({unit}{'higher' if m.higher_is_better else 'lower'} is better){extra}"


# --------------------------------------------------------------------------------------------- outputs


def sections(comparison: Comparison, references: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(title, display table) per metric, then the unmatched points."""
    out = [(describe_metric(name), display(comparison, name, references)) for name in metrics_present(comparison)]
    if not comparison.unmatched.empty:
        out.append(("unmatched points (no counterpart on the other side)", comparison.unmatched))
    return out


def write(comparison: Comparison | None, out: Path, references: pd.DataFrame | None = None,
          notes: Sequence[str] = ()) -> list[Path]:
    """OUT/compare.md (header, a table per metric, unmatched points, references), compare.csv (every number),
    compare_unmatched.csv, compare.png (B/A with its CI per point and metric) and references.csv."""
    from analysis import plots
    from analysis.tables import markdown

    files: list[Path] = []
    lines: list[str] = []
    if comparison is not None:
        lines += ["# " + comparison.header()[0], ""] + [f"- {line.strip()}" for line in comparison.header()[1:]] + [""]
        for title, table in sections(comparison, references):
            lines += [f"## {title}", "", markdown(table), ""]
        (out / "compare.csv").write_text(comparison.rows.to_csv(index=False))
        (out / "compare_unmatched.csv").write_text(comparison.unmatched.to_csv(index=False))
        files += [out / "compare.csv", out / "compare_unmatched.csv"]
        if comparison.rows["ratio"].notna().any():
            files.append(plots.compare_png(comparison.rows, out / "compare.png", comparison.rule.threshold))
            lines += ["![B/A per point](compare.png)", ""]
    if references is not None:
        lines += ["## references", "", markdown(references) if not references.empty else "(none checked)", ""]
        lines += [f"- note: {n}" for n in notes]
        (out / "references.csv").write_text(references.to_csv(index=False))
        files.append(out / "references.csv")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    return [out / "compare.md", *files]


def terminal_text(comparison: Comparison | None, references: pd.DataFrame | None = None,
                  notes: Sequence[str] = ()) -> str:
    """What `bratsbench compare` prints: the header, a table per metric, the unmatched points, the references."""
    from analysis.tables import terminal

    lines: list[str] = []
    if comparison is not None:
        lines += comparison.header()
        for title, table in sections(comparison, references):
            lines += ["", f"== {title}"]
            if "verdict" in table and len(table) > LISTED:  # thousands of points: the changes, and a count of the rest
                changed = table[table["verdict"] != SAME]
                lines += [terminal(changed)] if len(changed) else []
                lines.append(f"... and {len(table) - len(changed)} more point(s) with no significant change "
                             "(compare.md and compare.csv list every one)")
            else:
                lines.append(terminal(table))
    if references is not None:
        lines += ["", "== references", terminal(references.drop(columns=["lower", "upper"])) if not references.empty
                  else "(none checked)"]
        lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
