"""`bratsbench launch`: start N local ranks of a command with either engine's launcher."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "launch",
        help="start N local ranks: MWMS workers with TF_CONFIG on free loopback ports, or horovodrun over Gloo",
        description="Run CMD as NP ranks on the local machine. --backend mwms starts NP workers, each with a TF_CONFIG "
        "naming all of them (free loopback ports), copies each worker's output into --logs/rank.N/ and, prefixed "
        "with its rank, into this terminal, and stops every worker as soon as one fails. --backend horovod runs "
        "horovodrun -np NP --gloo. CMD is a bratsbench sub-command (train ...) or a whole command line. "
        "Under SLURM use srun instead: MWMS builds its TF_CONFIG from the step's variables.",
    )
    p.add_argument("--backend", choices=("mwms", "horovod"), default="mwms", help="engine (default mwms)")
    p.add_argument("-np", "--np", dest="np", type=int, required=True, help="number of ranks")
    p.add_argument("--logs", default=None, help="folder for per-rank logs (rank.N/stdout, rank.N/stderr)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command each rank runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from harness import launch
    from harness.commands import COMMANDS
    from harness.errors import UserError

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UserError("launch needs a command after --, e.g. bratsbench launch -np 2 -- train --synthetic")
    if args.np < 1:
        raise UserError(f"-np {args.np} must be at least 1")
    if cmd[0] in COMMANDS:
        cmd = launch.bratsbench_command() + cmd
    if args.backend == "horovod":
        argv = launch.launch_command(args.np, cmd, "horovodrun", args.logs)
        os.execvp(argv[0], argv)
    if args.np == 1:
        import subprocess

        return subprocess.call(cmd)
    return launch.run_mwms_workers(args.np, cmd, args.logs)
