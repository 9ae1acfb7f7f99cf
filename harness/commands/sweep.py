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
    q.add_argument("--gpus-per-node", type=int, default=0,
                   help="GPUs per node; one rank per GPU, a job of np ranks asks for min(np, G) per node (default 0: CPU)")
    q.add_argument("--tasks-per-node", type=int, default=None, help="CPU-only: ranks per node (default: all np on one node)")
    q.add_argument("--cpus-per-task", type=int, default=None, metavar="N",
                   help="cores per rank (--cpus-per-task); each rank runs that many threads. Required with --gpus-per-node "
                   "unless --cores-per-node is given; CPU jobs without it or --cores-per-node get SLURM's default (one)")
    q.add_argument("--cores-per-node", type=int, default=None, metavar="C",
                   help="the nodes' cores: --cpus-per-task defaults to C / GPUs per node (GPU jobs) or C / ranks per node")
    q.add_argument("--time", default=None, help="wall time per array task, HH:MM:SS (default: the spec's timeout_s + 5 min)")
    q.add_argument("--launcher", choices=("srun", "horovodrun", "mpirun"), default=None,
                   help="how a task starts its np ranks (default srun on SLURM, mpirun on PBS)")
    q.add_argument("--srun-mpi", default="pmix", help="srun --mpi plugin for the MPI Horovod build (default pmix)")
    q.add_argument("--pack", type=int, default=None, metavar="T",
                   help="one job of T ranks instead of arrays: the points run packed, in waves side by side (slurm, srun)")
    g = q.add_argument_group("site")
    g.add_argument("--exclusive", action="store_true", help="whole nodes (timing runs beside other jobs are noise)")
    g.add_argument("--constraint", default=None, help="node features, e.g. a100 (SLURM --constraint)")
    g.add_argument("--account", default=None, help="account to charge (SLURM --account, PBS -A)")
    g.add_argument("--qos", default=None, help="quality of service (SLURM --qos)")
    g.add_argument("--directive", action="append", default=[], metavar="LINE",
                   help="one more #SBATCH/#PBS line, as is; repeatable (e.g. --directive=--mail-type=END)")
    g.add_argument("--setup", type=Path, default=None, metavar="FILE",
                   help="shell lines the job runs before activating the environment (module load ..., exports)")
    g.add_argument("--env", default=None, metavar="NAME_OR_PATH",
                   help="the environment the job activates: a virtual environment's or conda environment's folder, or a "
                   "conda environment's name (default: the environment running this emit)")
    g = q.add_argument_group("preemption (SLURM)")
    g.add_argument("--warning-s", type=int, default=None, metavar="S",
                   help="ask for SIGUSR1 S seconds before the time limit (--signal=B:USR1@S): the run checkpoints and "
                   "the task requeues itself (default 300; 0: no warning)")
    g.add_argument("--max-requeues", type=int, default=None, metavar="N",
                   help="requeues of a preempted array task before its run is recorded failed (default 3; 0: never)")

    q = sub.add_parser("run-task", help="run one run of an emitted job array (the step every job file runs)",
                       description="Inside an allocation: run the one run of an emitted plan that this array task owns "
                       "and settle its record, as `sweep run` would; a run whose last attempt was preempted continues "
                       "from its checkpoint; stop signals this process gets (the job file passes the scheduler's "
                       "warning on) go to the run's ranks. Exit status: 0 ok, 3 already ok, 75 preempted and to be "
                       "requeued, 1 failed or preempted otherwise, 2 bad input.")
    q.add_argument("--plan", required=True, type=Path, help="plan.json written by `bratsbench sweep emit`")
    q.add_argument("--results", required=True, type=Path, help="the sweep's results folder")
    q.add_argument("--run-id", required=True, help="the run this array task owns")
    q.add_argument("--launcher", required=True, help="how ranks start in the allocation: srun, mpirun or horovodrun")
    q.add_argument("--srun-mpi", default="pmix", help="srun --mpi plugin (default pmix)")
    q.add_argument("--tasks-per-node", type=int, default=None, help="ranks per node (horovodrun's -H)")
    q.add_argument("--max-requeues", type=int, default=None, metavar="N",
                   help="after a preemption, ask to be requeued (exit status 75) while the job was requeued fewer "
                   "than N times (SLURM_RESTART_COUNT); default: never")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.sweep.plan import format_table, plan
    from harness.sweep.spec import load_spec

    if args.sweep_command == "run-task":
        from harness.sweep import task

        return task.main(args.plan, args.results, args.run_id, args.launcher, args.srun_mpi, args.tasks_per_node,
                         args.max_requeues)
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
        cpus_per_task=args.cpus_per_task,
        cores_per_node=args.cores_per_node,
        exclusive=args.exclusive,
        constraint=args.constraint,
        account=args.account,
        qos=args.qos,
        directives=tuple(args.directive),
        setup=args.setup,
        env=args.env,
        warning_s=args.warning_s,
        max_requeues=args.max_requeues,
    )
    written = emit(spec, args.out, opts)
    for role, path in written.items():
        print(f"{role:>14}: {path}")
    print(f"submit with: {written['submit']}", file=sys.stderr)
    return 0
