"""`python -m harness.sweep.pack worker|run`: the packed job's ranks, and the packed sweep inside an allocation
(the one line of an emitted pack.sbatch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from harness.errors import UserError
from harness.sweep.pack.parent import run_packed
from harness.sweep.pack.worker import PackWorker
from harness.sweep.spec import parse_spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep.pack",
                                     description="The packed job's ranks (started by `bratsbench sweep run --pack`).")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("worker", help="one rank of the packed job")
    p.add_argument("--results", required=True, type=Path)
    p.add_argument("--launch", required=True, help="this launch's ID (written into the index entries)")
    p.add_argument("--runs", required=True, help="comma-separated run IDs, in plan order")
    p.add_argument("--alone", default="", help="comma-separated run IDs that run alone in their wave")
    p = sub.add_parser("run", help="inside an allocation: run an emitted sweep packed into its ranks")
    p.add_argument("--plan", required=True, type=Path, help="plan.json written by `bratsbench sweep emit --pack`")
    p.add_argument("--results", required=True, type=Path)
    p.add_argument("--slots", required=True, type=int, help="ranks of the allocation")
    p.add_argument("--launcher", default="srun", choices=("srun", "mpirun"))
    p.add_argument("--srun-mpi", default="pmix")
    args = parser.parse_args(argv)
    try:
        if args.step == "worker":
            ids = [x for x in args.runs.split(",") if x]
            return PackWorker(args.results, ids, [x for x in args.alone.split(",") if x], args.launch).run()
        try:
            data = json.loads(args.plan.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{args.plan}: cannot read the emitted plan ({exc})") from None
        spec = parse_spec(data["spec"], origin=str(args.plan))
        return run_packed(spec, args.results, args.slots, launcher=args.launcher, allocation=True,
                          srun_mpi=args.srun_mpi)
    except UserError as exc:
        print(f"bratsbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
