"""`bratsbench compare`: B against A point by point (ratio with a 95% CI, a rank test, a verdict), and references
with tolerances (check them, or write them from measured runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="B against A per point: throughput and other ratios with 95%% CIs, Mann-Whitney p and a verdict; "
        "performance references with tolerances",
        description=(
            "Match the points of results folders (or of the runs of one folder split with --by) by their run settings "
            "(repeats, system and paths left out) and give each metric's ratio B/A of the medians with a 95%% bootstrap "
            "CI over the repeats, a two-sided Mann-Whitney U p and a verdict: faster/slower where each side has >= 3 "
            "repeats, p <= --alpha, the CI excludes 1 and the change is at least --threshold; '~' (no significant "
            "change) otherwise; no verdict with fewer than 3 repeats on a side. Points without a counterpart are listed. "
            "Writes compare.md, compare.csv and compare.png into --out. Exit status 1 with --fail-if-slower when a "
            "point is slower by more than PCT, and with --check when a value is outside its reference."
        ),
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="results folders: the first is A (the baseline), each other is compared with it")
    parser.add_argument("--by", choices=("system", "versions", "engine", "commit"), default=None,
                        help="split the runs of RESULTS into sides by the system they ran on, their TensorFlow/Horovod/"
                        "Python versions, their engine (the backend setting is then left out of the match) or their git "
                        "commit; A is the side whose first run started first")
    parser.add_argument("--baseline", metavar="VALUE", default=None,
                        help="with --by: the side (a system label, versions, engine or commit as the header prints it) "
                        "that is A")
    parser.add_argument("--alpha", type=float, default=0.10, metavar="P",
                        help="largest Mann-Whitney p that can show a change (default 0.10: the smallest p 3 repeats a "
                        "side can give)")
    parser.add_argument("--threshold", type=float, default=5.0, metavar="PCT",
                        help="smallest change that counts, in %% of A (default 5)")
    parser.add_argument("--fail-if-slower", type=float, default=None, metavar="PCT",
                        help="exit 1 when a point's throughput is called slower and dropped by more than PCT %%")
    parser.add_argument("--reference", metavar="FILE", default=None,
                        help="references with tolerances (YAML: system -> point -> metric: [value, lower, upper]): "
                        "every value outside is flagged")
    parser.add_argument("--check", action="store_true", help="with --reference: exit 1 when a value is outside")
    parser.add_argument("--write-reference", metavar="FILE", default=None,
                        help="write a reference file from the measured points (their medians, ± --tolerance)")
    parser.add_argument("--tolerance", type=float, default=10.0, metavar="PCT",
                        help="tolerance written by --write-reference, in %% of the value (default 10)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: the last RESULTS/analysis/compare, or compare-by-KEY)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from analysis.records import collector_paused

    with collector_paused():  # thousands of records alive: the cycle collector's passes over them cost a quarter
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from analysis import compare, reference
    from harness.errors import UserError
    from harness.outdir import ensure_output_dir

    rule = compare.Rule(alpha=args.alpha, threshold=args.threshold / 100)
    if args.fail_if_slower is not None and not 0 <= args.fail_if_slower < 100:
        raise UserError(f"--fail-if-slower {args.fail_if_slower:g}: a percentage from 0 to below 100")
    if args.check and not args.reference:
        raise UserError("--check needs --reference FILE")
    if args.write_reference and not 0 < args.tolerance <= 100:
        raise UserError(f"--tolerance {args.tolerance:g}: a percentage above 0 and at most 100")
    refs = reference.load(args.reference) if args.reference else None
    sides = compare.load_sides(args.results, args.by, args.baseline)
    comparing = len(sides) > 1
    if not comparing and ((refs is None and not args.write_reference) or args.fail_if_slower is not None):
        raise UserError("nothing to compare: give two results folders, or one whose runs --by splits in two or more"
                        + (f" (its runs are all of one {args.by}: {sides[0].source})" if args.by else ""))
    checked, notes = (reference.check(refs, {s.name: s.points for s in sides}, args.reference)
                      if refs is not None else (None, []))
    result = compare.compare(sides, rule) if comparing else None
    out = Path(args.out) if args.out else Path(args.results[-1]) / "analysis" / (f"compare-by-{args.by}" if args.by else "compare")
    out = ensure_output_dir(out, "--out")
    files = compare.write(result, out, checked, notes)
    print(compare.terminal_text(result, checked, notes))
    if args.write_reference:
        n = reference.write(args.write_reference, [p for s in sides for p in s.points.values()], args.tolerance / 100)
        print(f"\nwrote {n} reference(s) to {args.write_reference}")
    print("\n" + "\n".join(f"written: {f}" for f in files))
    status = 0
    if args.fail_if_slower is not None and result is not None:
        for r in result.slower_than(args.fail_if_slower).itertuples():
            print(f"bratsbench: {r.side} is slower than A by more than --fail-if-slower {args.fail_if_slower:g}%: "
                  f"{r.label} ({r.point}): throughput {r.change_pct:+.1f}% (B/A {r.ratio:.3f} [{r.ratio_ci_low:.3f}, "
                  f"{r.ratio_ci_high:.3f}], p {r.p_value:.2g})", file=sys.stderr)
            status = 1
        judged = result.rows[result.rows["metric"] == "throughput"]
        undecided = int((judged["verdict"] == compare.NA).sum())
        if undecided:
            print(f"bratsbench: note: {undecided} point(s) have too few repeats for a verdict; --fail-if-slower cannot "
                  "judge them", file=sys.stderr)
    if args.check and checked is not None:
        for line in reference.failures(checked):
            print(f"bratsbench: outside its reference: {line}", file=sys.stderr)
            status = 1
    return status
