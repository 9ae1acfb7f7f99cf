"""What a distributed engine is: the world of ranks, gradient reduction inside the step, the broadcast of the
initial state, small gathers and means, timeline hooks and shutdown. Nothing outside `harness.engines` knows
which engine runs; the step math, the data shard, LR scaling, freezing, checkpoints and the record are shared.
"""

from __future__ import annotations

import abc
import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import tensorflow as tf


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    gpus: int
    threads: int
    device: str = "CPU"  # where this rank's step runs: "CPU" or "GPU:<index among the devices TensorFlow lists>"

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def cpu_bf16_instructions(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's bfloat16 instruction sets (AVX512_BF16, AMX_BF16). Without them oneDNN emulates bfloat16 and
    `--amp` on CPU runs slower than float32 (measured: 6x slower on an AVX2-only AMD EPYC)."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return sorted({f for f in line.split() if f in ("avx512_bf16", "amx_bf16")})
    except OSError:
        pass
    return []


def visible_gpus(local_rank: int) -> int:
    """One GPU per process, chosen by local rank (memory growth on); returns how many the machine has."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[local_rank % len(gpus)]
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        except RuntimeError:  # devices already initialised in this process: keep them
            pass
    return len(gpus)


def device_name(local_rank: int, gpus: int) -> str:
    """The record's name of the device a rank's step runs on."""
    return f"GPU:{local_rank % gpus}" if gpus else "CPU"


def set_threads(threads: int | None, local_size: int) -> int:
    """CPU threads per rank: given, or this process's cores / local ranks. Must run before TensorFlow starts."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_threads = threads or max(1, cores // max(1, local_size))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n_threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, n_threads)))
    except RuntimeError:  # TensorFlow already ran in this process (library use): keep its thread pools
        n_threads = tf.config.threading.get_intra_op_parallelism_threads() or cores
    return n_threads


class Engine(abc.ABC):
    """The interface; the defaults are those of one process (size 1, no collectives)."""

    name = "local"
    has_timeline = False  # an engine-level trace of its collectives (Horovod's timeline)
    world: World

    @abc.abstractmethod
    def init(self, threads: int | None = None, timeline: bool = False) -> World:
        """Start the engine (before any other TensorFlow op) and pin this rank's devices and threads."""

    def version(self) -> str | None:
        return None

    def transport(self) -> str | None:
        """What carries this engine's collectives (after init): e.g. "mpi", "gloo", "nccl", "ring"; None alone."""
        return None

    def describe(self) -> dict[str, Any]:
        """The record's `engine` field: which engine, which release, over what (a baseline must match all three)."""
        return {"name": self.name, "version": self.version(), "transport": self.transport()}

    def scope(self) -> ContextManager[Any]:
        """Where the model and optimizer variables must be created."""
        return contextlib.nullcontext()

    def reduce_gradients(self, grads: list[tf.Tensor]) -> list[tf.Tensor]:
        """Mean of each gradient over ranks; called inside the step, per replica."""
        return grads

    def apply_gradients(self, opt: Any, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        opt.apply_gradients(zip(grads, variables))

    def compile_step(self, replica_step: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """The traced step that every rank calls with its own batch; returns this rank's loss."""
        return tf.function(replica_step, reduce_retracing=True)

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        """Rank 0's values into every rank's variables."""

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def mean(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def hostnames(self) -> list[str]:
        return self.allgather_object(socket.gethostname())

    def start_timeline(self, path: str) -> None:
        """An engine-level trace of the collectives (Horovod's timeline); others have none."""

    def stop_timeline(self) -> None:
        pass

    def saves_on_every_rank(self) -> bool:
        """Whether every rank must take part in writing a checkpoint (MWMS); else rank 0 writes alone."""
        return False

    def collective(self, op: str, nbytes: int, tensors: int = 1) -> Callable[[], None] | None:
        """For `bratsbench comm`: a prepared call of this engine's own collective `op` (allreduce, broadcast,
        allgather) on `nbytes` of float32 in `tensors` tensors, returning once it is done; None where the engine
        has no such collective."""
        return None

    def shutdown(self) -> None:
        pass


class LocalEngine(Engine):
    """One process, no engine: evaluation, prediction and features."""

    def init(self, threads: int | None = None, timeline: bool = False) -> World:
        gpus = visible_gpus(0)
        self.world = World(0, 1, 0, 1, gpus, set_threads(threads, 1), device_name(0, gpus))
        return self.world
