"""`bratsbench comm`: collective latency and bandwidth over message sizes, for raw MPI and each engine."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "comm",
        help="time allreduce, broadcast and allgather from 8 B to 256 MiB: raw MPI (mpi4py), Horovod, MWMS",
        description="Start NP ranks (mpirun for --backend mpi; horovodrun, or mpirun, for horovod; our launcher for "
        "mwms), time each collective at every power-of-two size and write one run record (kind comm) into --out. "
        "Bandwidths follow nccl-tests: algbw = bytes / time, busbw = algbw x 2(n-1)/n for allreduce, x (n-1)/n "
        "for allgather. `bratsbench analyze` draws the table and a bandwidth-vs-size plot.",
    )
    p.add_argument("--backend", default="mpi", help="mpi (mpi4py on numpy buffers), horovod or mwms (default mpi)")
    p.add_argument("-np", "--np", dest="np", type=int, default=2, help="ranks (default 2)")
    p.add_argument("--launcher", default=None, help="mpirun or horovodrun for horovod (default horovodrun)")
    p.add_argument("--ops", default="allreduce,broadcast,allgather", help="comma list (default all three)")
    p.add_argument("--min-bytes", default="8", help="smallest message, 8 B at least (default 8; K, M, G suffixes)")
    p.add_argument("--max-bytes", default="256M", help="largest message, 256 MiB at most (default 256M)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per size (default 5)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per size (default: 5-200 by size)")
    p.add_argument("--tensors", type=int, default=1,
                   help="split each message into this many tensors sent together, as a step's gradients are (default 1)")
    p.add_argument("--no-fusion", dest="fusion", action="store_false", help="Horovod: tensor fusion off")
    p.add_argument("--gradient-bytes", default=None, help="the gradient size to mark (default: the default model's)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before the ranks are killed")
    p.add_argument("--out", required=True, help="run folder for the record")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)  # one rank process, started by comm itself
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from analysis.tables import nearest
    from harness.comm import baseline, measure

    opts = baseline.CommOptions(
        backend=args.backend, np=args.np, launcher=args.launcher, ops=tuple(o.strip() for o in args.ops.split(",") if o.strip()),
        min_bytes=measure.parse_bytes(args.min_bytes), max_bytes=measure.parse_bytes(args.max_bytes),
        warmup=args.warmup, iters=args.iters, tensors=args.tensors, fusion=args.fusion,
        gradient_bytes=measure.parse_bytes(args.gradient_bytes) if args.gradient_bytes else None, out=args.out,
        timeout_s=args.timeout,
    )
    if args.rank:
        return baseline.rank_main(opts)
    record = baseline.launch(opts)
    g = record["comm"]["gradient_bytes"]
    mark = nearest(record["comm"]["rows"], "allreduce", g)
    if mark:
        print(f"allreduce at the model's gradient size (~{g / 1e6:.2f} MB, nearest {mark['bytes']} B): "
              f"{mark['time_us']:.0f} us, busbw {mark['busbw_gb_s']:.3f} GB/s")
    print(f"record: {args.out}/record.json")
    return 0
