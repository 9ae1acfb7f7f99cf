"""`bratsbench comm` as a study: launch N ranks (mpirun, horovodrun or our MWMS launcher, through
`harness.launch`), each times the collectives with one backend, and rank 0 writes one run record (kind "comm")."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from harness.comm import measure
from harness.errors import UserError

COMM_CYCLE_TIME_MS = 0.05
LAUNCHERS = {"mpi": ("mpirun",), "horovod": ("horovodrun", "mpirun"), "mwms": ("mwms",)}


@dataclass
class CommOptions:
    backend: str = "mpi"
    np: int = 2
    launcher: str | None = None  # default: mpirun for mpi, horovodrun for horovod, ours for mwms
    ops: tuple[str, ...] = measure.OPS
    min_bytes: int = 8
    max_bytes: int = 256 * 1024**2
    warmup: int = 5
    iters: int | None = None  # default: by size (measure.auto_iters)
    tensors: int = 1
    fusion: bool = True  # Horovod's tensor fusion (HOROVOD_FUSION_THRESHOLD=0 when off)
    gradient_bytes: int | None = None  # marked in the table; default: the default model's gradients
    out: str = "comm"
    timeout_s: float = 1800.0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "CommOptions":
        if self.backend not in measure.BACKENDS:
            raise UserError(f"--backend {self.backend!r} is not one of {', '.join(measure.BACKENDS)}")
        self.launcher = self.launcher or LAUNCHERS[self.backend][0]
        if self.launcher not in LAUNCHERS[self.backend]:
            raise UserError(f"--launcher {self.launcher} cannot start the {self.backend} backend "
                            f"(use {' or '.join(LAUNCHERS[self.backend])})")
        if self.np < 2:
            raise UserError(f"-np {self.np}: a collective needs at least 2 ranks")
        bad = [op for op in self.ops if op not in measure.OPS]
        if bad or not self.ops:
            raise UserError(f"--ops {','.join(self.ops)}: each must be one of {', '.join(measure.OPS)}")
        measure.sizes(self.min_bytes, self.max_bytes)
        for name in ("warmup", "tensors"):
            if getattr(self, name) < (0 if name == "warmup" else 1):
                raise UserError(f"--{name} {getattr(self, name)} is too small")
        if self.iters is not None and self.iters < 1:
            raise UserError(f"--iters {self.iters} must be at least 1")
        if self.backend != "horovod" and not self.fusion:
            raise UserError("--no-fusion is Horovod's tensor fusion; the mpi and mwms backends have none")
        from harness.engines import unavailable

        if self.backend in ("horovod", "mwms") and unavailable(self.backend):
            raise UserError(f"--backend {self.backend}: {unavailable(self.backend)}")
        if self.backend == "mpi":
            try:
                import mpi4py  # noqa: F401
            except ImportError:
                raise UserError("--backend mpi needs mpi4py, which this environment lacks (scripts/setup.sh installs it)") from None
        return self


def default_gradient_bytes() -> int:
    """float32 gradient bytes of the default model (RunConfig's defaults): what one training step allreduces."""
    from harness.config import ModelConfig
    from harness.model.freeze import count_params
    from harness.model.unet import build_unet

    return 4 * count_params(build_unet(ModelConfig()))["trainable"]


def rank_args(opts: CommOptions) -> list[str]:
    """The `bratsbench comm` arguments of one rank process (--rank: measure, do not launch)."""
    args = ["comm", "--backend", opts.backend, "-np", str(opts.np), "--ops", ",".join(opts.ops),
            "--min-bytes", str(opts.min_bytes), "--max-bytes", str(opts.max_bytes), "--warmup", str(opts.warmup),
            "--tensors", str(opts.tensors), "--gradient-bytes", str(opts.gradient_bytes), "--out", str(opts.out),
            "--launcher", str(opts.launcher), "--rank"]
    if opts.iters:
        args += ["--iters", str(opts.iters)]
    if not opts.fusion:
        args += ["--no-fusion"]
    return args


def launch(opts: CommOptions) -> dict[str, Any]:
    """Start the ranks and wait; returns rank 0's record (or raises UserError naming the log)."""
    from harness import launch as launching
    from harness.rundir import RunDir

    opts.validate()
    if opts.gradient_bytes is None:
        opts.gradient_bytes = default_gradient_bytes()
    run = RunDir(opts.out)
    run.create()
    run.record.unlink(missing_ok=True)
    cmd = launching.launch_command(opts.np, launching.bratsbench_command() + rank_args(opts), opts.launcher)
    outcome = launching.supervise(cmd, timeout_s=opts.timeout_s, env=launching.launch_env(), is_rank=_is_rank)
    record = run.read_record()
    if outcome.exit_code != 0 or record is None or record.get("status") != "ok":
        why = outcome.reason or f"exit status {outcome.exit_code}"
        raise UserError(f"comm run in '{run.path}' failed ({why}); its ranks' output is above")
    return record


def _is_rank(proc: Any) -> bool:
    """A comm rank process, for the watchdog (one gone while the others wait in a collective)."""
    from harness.launch import is_rank_process

    return is_rank_process(proc, "comm")


def _collectives(opts: CommOptions):
    if opts.backend == "mpi":
        from harness.comm.mpi import MPICollectives

        backend = MPICollectives()
        return backend, backend.version(), None
    if not opts.fusion:
        os.environ["HOROVOD_FUSION_THRESHOLD"] = "0"
    # The trainer's 5 ms background cycle on CPU (engines/horovod.py) would add up to 5 ms to every call and hide
    # the link; a baseline of the link wants a short cycle. An explicit HOROVOD_CYCLE_TIME wins, and is recorded.
    os.environ.setdefault("HOROVOD_CYCLE_TIME", str(COMM_CYCLE_TIME_MS))
    # MWMS's collective timeout costs a thread per call (engines/mwms.py): off here unless set (a stuck rank is
    # still killed by --timeout); recorded
    os.environ.setdefault("BRATSBENCH_MWMS_TIMEOUT_S", "0")
    from harness.engines import make_engine

    engine = make_engine(opts.backend)
    engine.init()
    return _EngineCollectives(engine), engine.version(), engine


class _EngineCollectives:
    def __init__(self, engine: Any) -> None:
        self.engine, self.rank, self.size = engine, engine.world.rank, engine.world.size

    def barrier(self) -> None:
        self.engine.mean([0.0])

    def max(self, value: float) -> float:
        return max(float(v) for v in self.engine.allgather_object(float(value)))

    def prepare(self, op: str, nbytes: int, tensors: int):
        return self.engine.collective(op, nbytes, tensors)


def fusion_bytes(opts: CommOptions) -> int | None:
    if opts.backend != "horovod":
        return None
    if not opts.fusion:
        return 0
    return int(os.environ.get("HOROVOD_FUSION_THRESHOLD", 128 * 1024**2))


def rank_main(opts: CommOptions) -> int:
    """One rank: time every op and size; rank 0 writes the record."""
    from harness.record import new_record, utc_now
    from harness.rundir import RunDir

    backend, version, engine = _collectives(opts)
    rank0 = backend.rank == 0
    say = (lambda line: print(line, flush=True)) if rank0 else None
    if rank0:
        print(f"{opts.backend} ({version}): {backend.size} ranks, {','.join(opts.ops)}, "
              f"{opts.min_bytes}..{opts.max_bytes} bytes in {opts.tensors} tensor(s)", flush=True)
    rows = measure.run(backend, opts.ops, measure.sizes(opts.min_bytes, opts.max_bytes), warmup=opts.warmup,
                       iters=opts.iters, tensors=opts.tensors, progress=say)
    hosts = sorted(set(_hostnames(backend, engine)))
    system = _system(backend, engine)
    if rank0:
        record = new_record({"comm": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()}},
                            kind="comm")
        record.update(status="ok", exit_code=0, finished_at=utc_now(), world_size=backend.size,
                      engine=engine.describe() if engine is not None else
                      {"name": opts.backend, "version": version, "transport": "mpi"}, hosts=hosts)
        record["system"] = system
        record["comm"] = {"rows": [asdict(r) for r in rows], "gradient_bytes": opts.gradient_bytes,
                          "fusion_bytes": fusion_bytes(opts), "tensors": opts.tensors, "launcher": opts.launcher,
                          "horovod_cycle_time_ms": float(os.environ["HOROVOD_CYCLE_TIME"]) if opts.backend == "horovod" else None,
                          "mwms_collective_timeout_s": _mwms_timeout() if opts.backend == "mwms" else None}
        RunDir(opts.out).write_record(record)
    if engine is not None:
        engine.shutdown()
    return 0


def _mwms_timeout() -> float | None:
    """The collective timeout MWMS ran with (None: off)."""
    value = float(os.environ.get("BRATSBENCH_MWMS_TIMEOUT_S", "60"))
    return value or None


def _system(backend: Any, engine: Any) -> dict[str, Any]:
    """The record's system section, probed on every rank (raw MPI: each rank describes its host)."""
    from harness.system import collect

    if engine is not None:
        return collect(engine.world, engine.allgather_object)
    return collect(SimpleNamespace(rank=backend.rank, local_rank=None, device="CPU"), backend.comm.allgather)


def _hostnames(backend: Any, engine: Any) -> list[str]:
    if engine is not None:
        return engine.hostnames()
    return list(backend.comm.allgather(socket.gethostname()))
