"""`bratsbench analyze`: tables, plots and a report from a folder of run records (and profiles, MMD results)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="tables, plots and a report from run records: scaling, batch, freeze depth, transfer, MMD, profiles",
        description=(
            "Read every run record below RESULTS (sweep runs first, then any other run folder), plus RESULTS/shift/*.json "
            "and each run's profiler captures and Horovod timeline, and write Markdown and CSV tables, PNG figures and report.md "
            "into --out. A table whose inputs are missing is skipped with one line saying why."
        ),
    )
    parser.add_argument("results", metavar="RESULTS", help="results folder holding run folders")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default RESULTS/analysis)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="ops per rank in the top-ops table (default 10)")
    parser.add_argument("--reference", metavar="FILE", default=None,
                        help="references with tolerances (YAML: system -> point -> metric: [value, lower, upper], as "
                        "`bratsbench compare --write-reference` writes them): every value outside is flagged")
    parser.add_argument("--check", action="store_true", help="with --reference: exit 1 when a value is outside")
    parser.set_defaults(func=run)


def print_report(sections: list, report: Path) -> None:
    """The report's tables, figures and notes on the terminal."""
    from analysis import tables

    for s in sections:
        if s.skipped:
            print(f"skipped {s.name}: {s.skipped}")
            continue
        print(f"\n== {s.title}")
        for caption, table in s.tables:
            if caption:
                print(f"-- {caption}")
            print(tables.terminal(table))
        for png in s.pngs:
            print(f"figure: {png}")
        for note in s.notes:
            print(f"note: {note}")
    print(f"\nreport: {report}")


def run(args: argparse.Namespace) -> int:
    import sys

    from analysis.report import build_report
    from harness.errors import UserError

    if args.top < 1:
        raise UserError(f"--top {args.top} must be at least 1")
    if args.check and not args.reference:
        raise UserError("--check needs --reference FILE")
    sections, report = build_report(args.results, args.out, top=args.top, reference=args.reference)
    print_report(sections, report)
    failed = [line for s in sections for line in s.failures]
    if args.check:
        for line in failed:
            print(f"bratsbench: outside its reference: {line}", file=sys.stderr)
    return 1 if args.check and failed else 0
