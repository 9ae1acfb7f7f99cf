"""`bratsbench sweep plan|run|emit`: experiment sweeps from a YAML spec (see examples/sweep-demo.yaml)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="plan, run or emit (SLURM/PBS job arrays) a sweep over np, batch size, freeze depth, mode and seed",
        description="Experiment sweeps from a YAML spec: `plan` lists the runs and their stable IDs, `run` runs them "
        "locally one after another (resumable: finished runs are skipped), `emit` writes job-array scripts for a cluster.",
    )
    sub = p.add_subparsers(dest="sweep_command", metavar="STEP", required=True)

    q = sub.add_parser("plan", help="list the planned runs", description="Print the planned runs (ID, label, np, batch, "
                       "freeze depth, mode, seed, dependency) and their count; nothing runs.")
    q.add_argument("spec", help="sweep spec (YAML)")
    q.add_argument("--json", action="store_true", help="print the plan as JSON (with every run's config)")

    q = sub.add_parser("run", help="run the sweep locally", description="Run every planned run with "
                       "horovodrun/mpirun on localhost into RESULTS/runs/<run_id>/; runs already ok are skipped.")
    q.add_argument("spec", help="sweep spec (YAML)")
    q.add_argument("--out", required=True, help="results folder (RESULTS/sweep.json, RESULTS/runs/<run_id>/)")
    q.add_argument("--dry-run", action="store_true", help="print the launch command of each run; run nothing")
    q.add_argument("--only", nargs="+", metavar="ID", default=None,
                   help="run only these run IDs or labels (plus the pre-training runs they need)")
    q.add_argument("--pack", type=int, default=None, metavar="T",
                   help="run the points packed into one MPI job of T ranks: each wave's points run side by side on "
                   "their own sub-communicators (Horovod points; needs mpirun and mpi4py)")

    q = sub.add_parser("emit", help="write job-array scripts for SLURM or PBS", description="Write one job-array "
                       "script per (pre-training | runs, np) group, run configs, manifest.tsv, plan.json and submit.sh "
                       "(pre-training first, runs after it with afterok).")
    q.add_argument("spec", help="sweep spec (YAML)")
    q.add_argument("--scheduler", required=True, choices=("slurm", "pbs"), help="batch system")
    q.add_argument("--out", required=True, help="job folder to write (e.g. jobs/demo)")
    q.add_argument("--results", default=None, help="results folder the jobs write to (default OUT/results)")
    q.add_argument("--limit", type=int, default=None, help="array tasks running at once (%%K)")
    q.add_argument("--partition", default=None, help="partition (SLURM) or queue (PBS)")
    q.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one rank per GPU (default 0: CPU)")
    q.add_argument("--tasks-per-node", type=int, default=None, help="CPU-only: ranks per node (default: all np on one node)")
    q.add_argument("--time", default=None, help="wall time per array task, HH:MM:SS (default: the spec's timeout_s + 5 min)")
    q.add_argument("--launcher", choices=("srun", "horovodrun", "mpirun"), default=None,
                   help="how a task starts its np ranks (default srun on SLURM, mpirun on PBS)")
    q.add_argument("--srun-mpi", default="pmix", help="srun --mpi plugin for the MPI Horovod build (default pmix)")
    q.add_argument("--pack", type=int, default=None, metavar="T",
                   help="one job of T ranks instead of arrays: the points run packed, in waves side by side (slurm, srun)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.sweep.plan import format_table, plan
    from harness.sweep.spec import load_spec

    spec = load_spec(args.spec)
    if args.sweep_command == "plan":
        runs = plan(spec)
        if args.json:
            print(json.dumps({"spec": spec.to_dict(), "count": len(runs), "runs": [r.to_dict() for r in runs]}, indent=2))
        else:
            print(format_table(runs))
        return 0
    from harness.outdir import ensure_output_dir

    if args.sweep_command == "run":
        from harness.sweep.runner import run_sweep

        if args.pack is not None:
            from harness.sweep.pack import run_packed

            return run_packed(spec, args.out, args.pack, only=args.only, dry_run=args.dry_run)
        if not args.dry_run:
            ensure_output_dir(args.out)
        return run_sweep(spec, args.out, only=args.only, dry_run=args.dry_run)
    from harness.sweep.emit import EmitOptions, emit

    opts = EmitOptions(
        scheduler=args.scheduler,
        results=Path(args.results) if args.results else None,
        limit=args.limit,
        partition=args.partition,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        time=args.time,
        launcher=args.launcher,
        srun_mpi=args.srun_mpi,
        pack=args.pack,
    )
    written = emit(spec, args.out, opts)
    for role, path in written.items():
        print(f"{role:>14}: {path}")
    print(f"submit with: {written['submit']}", file=sys.stderr)
    return 0
