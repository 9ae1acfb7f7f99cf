"""Performance references with tolerances, as ReFrame keeps them: what a point should measure on a system.

A reference file (YAML) holds one mapping, `references`: system label (as tables print it; "*" for any system) ->
point (its label, e.g. np2-b2-k0-scratch-s0, or its ID, both printed by `bratsbench compare`) -> metric ->
[value, lower, upper] (or [value, lower, upper, unit]). lower and upper are fractions of the value, as in ReFrame:
lower in [-1, 0], upper >= 0, null for no bound; the measured value (the median over the point's repeats) is inside
when value * (1 + lower) <= measured <= value * (1 + upper). An unknown key or metric, a bad tolerance, or a point
that matches no run of a system the runs ran on is one line of error; the entries of a system none of the runs ran
on are left unchecked, and said so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from analysis.points import METRICS, TIME_TO_TARGET, Point
from harness.errors import UserError

ANY_SYSTEM = "*"
TOP_KEYS = ("references",)
METRIC_NAMES = tuple(m.name for m in METRICS if m.name != TIME_TO_TARGET)  # time to target depends on A's scratch
WRITTEN = ("throughput", "test_WT_dice")  # what --write-reference records per point, where measured
OK, LOW, HIGH, MISSING = "ok", "low", "high", "not measured"
COLUMNS = ["side", "system", "point", "label", "metric", "measured", "n", "expected", "lower", "upper", "range",
           "deviation_pct", "status"]


@dataclass(frozen=True)
class Reference:
    system: str  # a system label or ANY_SYSTEM
    point: str  # a point's label or ID
    metric: str
    value: float
    lower: float | None  # fractions of value; None: unbounded
    upper: float | None
    unit: str | None = None

    def bounds(self) -> tuple[float, float]:
        low = -math.inf if self.lower is None else self.value * (1 + self.lower)
        high = math.inf if self.upper is None else self.value * (1 + self.upper)
        return low, high

    def status(self, measured: float | None) -> str:
        if measured is None:
            return MISSING
        low, high = self.bounds()
        return LOW if measured < low else HIGH if measured > high else OK


def _fraction(raw: Any, lower: bool) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ValueError
    if (lower and not -1 <= raw <= 0) or (not lower and raw < 0):
        raise ValueError
    return float(raw)


def _entry(path: str, system: str, point: str, metric: str, raw: Any) -> Reference:
    where = f"{path}: system '{system}', point '{point}', {metric}"
    try:
        if not isinstance(raw, (list, tuple)) or len(raw) not in (3, 4):
            raise ValueError
        value = raw[0]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError
        unit = raw[3] if len(raw) == 4 else None
        if unit is not None and not isinstance(unit, str):
            raise ValueError
        return Reference(system, point, metric, float(value), _fraction(raw[1], True), _fraction(raw[2], False), unit)
    except ValueError:
        raise UserError(f"{where}: bad tolerance {raw!r}: expected [value, lower, upper] with value > 0, lower in "
                        "[-1, 0] or null, upper >= 0 or null (fractions of value)") from None


def load(path: str | Path) -> list[Reference]:
    """Every reference of a file, checked (one line of error naming the file and the entry)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"reference file '{path}': {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}: not YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with the key 'references'")
    unknown = sorted(set(map(str, raw)) - set(TOP_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (a reference file holds: {', '.join(TOP_KEYS)})")
    systems = raw.get("references")
    if not isinstance(systems, dict) or not systems:
        raise UserError(f"{path}: references: expected a mapping of system labels to points")
    refs = []
    for system, points in systems.items():
        if not isinstance(points, dict) or not points:
            raise UserError(f"{path}: system '{system}': expected a mapping of points to metrics")
        for point, metrics in points.items():
            if not isinstance(metrics, dict) or not metrics:
                raise UserError(f"{path}: system '{system}', point '{point}': expected a mapping of metrics to "
                                "[value, lower, upper]")
            for metric, entry in metrics.items():
                if metric not in METRIC_NAMES:
                    raise UserError(f"{path}: system '{system}', point '{point}': unknown metric '{metric}' (one of: "
                                    f"{', '.join(METRIC_NAMES)})")
                refs.append(_entry(str(path), str(system), str(point), str(metric), entry))
    return refs


def _resolve(ref: Reference, points: list[Point], path: str) -> list[Point]:
    """The points a reference names among one system's points (by ID, else by label)."""
    by_id = [p for p in points if p.id == ref.point]
    if by_id:
        return by_id
    by_label = [p for p in points if p.label == ref.point]
    if len({p.id for p in by_label}) > 1:
        raise UserError(f"{path}: system '{ref.system}', point '{ref.point}': the label names "
                        f"{len({p.id for p in by_label})} points ({', '.join(sorted({p.id for p in by_label}))}): "
                        "use a point ID")
    return by_label


def check(refs: Iterable[Reference], sides: dict[str, dict[tuple[str, str], Point]], path: str | Path
          ) -> tuple[pd.DataFrame, list[str]]:
    """One row per reference and side's point it applies to (`sides`: side name -> its points), with the median
    measured, the range allowed and the status (ok, low, high, not measured); and notes (systems not present).
    A reference of a present system (or of "*") that names no point is a UserError."""
    path = str(path)
    rows, skipped = [], {}
    all_systems = {p.system for pts in sides.values() for p in pts.values()}
    for ref in refs:
        if ref.system != ANY_SYSTEM and ref.system not in all_systems:
            skipped[ref.system] = skipped.get(ref.system, 0) + 1
            continue
        hits = []
        for side, points in sides.items():
            mine = [p for p in points.values() if ref.system in (ANY_SYSTEM, p.system)]
            hits += [(side, p) for p in _resolve(ref, mine, path)]
        if not hits:
            known = sorted({p.label for pts in sides.values() for p in pts.values()
                            if ref.system in (ANY_SYSTEM, p.system)})
            raise UserError(f"{path}: system '{ref.system}', point '{ref.point}' matches no run (points there: "
                            f"{', '.join(known[:6])}{', ...' if len(known) > 6 else ''})")
        for side, p in hits:
            values = p.values.get(ref.metric) or []
            measured = float(pd.Series(values).median()) if values else None
            low, high = ref.bounds()
            rows.append({
                "side": side, "system": p.system, "point": p.id, "label": p.label, "metric": ref.metric,
                "measured": measured, "n": len(values), "expected": ref.value, "lower": ref.lower, "upper": ref.upper,
                "range": f"[{low:.4g}, {high:.4g}]", "status": ref.status(measured),
                "deviation_pct": None if measured is None else 100 * (measured / ref.value - 1),
            })
    notes = [f"{path}: {n} reference(s) of system '{s}' not checked: none of these runs ran there"
             for s, n in skipped.items()]
    return pd.DataFrame(rows, columns=COLUMNS), notes


def failures(table: pd.DataFrame) -> list[str]:
    """One line per checked value outside its tolerance (or not measured): what --check fails on."""
    bad = table[table["status"] != OK]
    return [f"{r.label} ({r.point}) on {r.system}: {r.metric} {'-' if r.measured is None or pd.isna(r.measured) else f'{r.measured:.4g}'} "
            f"is {r.status} (reference {r.expected:.4g}, allowed {r.range})" for r in bad.itertuples()]


def write(path: str | Path, points: Iterable[Point], tolerance: float = 0.10, metrics: Iterable[str] = WRITTEN) -> int:
    """A reference file from measured points: per system and point, each of `metrics` it measured, at its median
    with tolerance ±`tolerance`; points named by label where the label is unique on their system, else by ID.
    Returns how many references it wrote."""
    import yaml

    if not 0 < tolerance <= 1:
        raise UserError(f"--tolerance {100 * tolerance:g}% must be above 0 and at most 100")
    merged: dict[tuple[str, str], Point] = {}
    for p in points:  # the same point on the same system from several sides: its repeats together
        into = merged.setdefault((p.id, p.system), Point(p.id, p.label, p.system))
        for name, values in p.values.items():
            into.values.setdefault(name, []).extend(values)
    body: dict[str, dict[str, dict[str, list]]] = {}
    count = 0
    units = {m.name: m.unit for m in METRICS}
    for (pid, system), p in sorted(merged.items(), key=lambda kv: (kv[0][1], kv[1].label, kv[0][0])):
        same_label = sum(1 for q in merged.values() if q.system == system and q.label == p.label)
        key = p.label if same_label == 1 and p.label else pid
        for name in metrics:
            values = p.values.get(name)
            if not values:
                continue
            value = float(pd.Series(values).median())
            if not value > 0:
                continue
            entry = [float(f"{value:.4g}"), -tolerance, tolerance] + ([units[name]] if units[name] else [])
            body.setdefault(system, {}).setdefault(key, {})[name] = entry
            count += 1
    if not count:
        raise UserError("no point measured any of " + ", ".join(metrics) + ": no reference to write")
    head = ("# bratsbench performance references: system label -> point (label or ID) -> metric: [value, lower, upper"
            "(, unit)]\n# lower/upper are fractions of value (ReFrame's convention): -0.1 allows 10% below, null no "
            "bound.\n# Check with: bratsbench analyze RESULTS --reference FILE --check (or bratsbench compare ... "
            "--reference FILE --check)\n")
    text = head + yaml.safe_dump({"references": body}, sort_keys=False, default_flow_style=None, width=120,
                                 allow_unicode=True)
    target = Path(path)
    if target.is_dir():
        raise UserError(f"--write-reference {path}: is a folder")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(target)
    except OSError as exc:
        raise UserError(f"--write-reference {path}: {exc.strerror or exc}") from None
    return count
