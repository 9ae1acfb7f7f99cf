"""Horovod set-up: one process per GPU (or CPU core group), rank-0-only side effects.

Everything that must happen before TensorFlow's runtime starts (thread pools, visible GPUs, the timeline
mode) happens in `init`, so call it before building any model.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Sequence

import tensorflow as tf


CPU_CYCLE_TIME_MS = 5


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    gpus: int
    threads: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def init(threads: int | None = None, timeline: bool = False) -> World:
    if timeline:
        os.environ.setdefault("HOROVOD_TIMELINE", "DYNAMIC")  # start/stop_timeline bound it to a window
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        # Horovod's background thread wakes every cycle (default 1 ms). On a CPU-only node that steals time
        # from the compute threads (seen here: np=2 ran 1.5x faster than np=1 at 1 ms, 1.8-1.9x at 5-50 ms);
        # a step takes tens of milliseconds or more, so 5 ms adds no visible latency. An explicit setting wins.
        os.environ.setdefault("HOROVOD_CYCLE_TIME", str(CPU_CYCLE_TIME_MS))
    import horovod.tensorflow as hvd

    hvd.init()
    if gpus:
        gpu = gpus[hvd.local_rank() % len(gpus)]
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        except RuntimeError:  # devices already initialised in this process: keep them
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_threads = threads or max(1, cores // hvd.local_size())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n_threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, n_threads)))
    except RuntimeError:  # TensorFlow already ran in this process (library use): keep its thread pools
        n_threads = tf.config.threading.get_intra_op_parallelism_threads() or cores
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), len(gpus), n_threads)


def allgather_object(obj: Any) -> list[Any]:
    import horovod.tensorflow as hvd

    if hvd.size() == 1:
        return [obj]
    return list(hvd.allgather_object(obj))


def hostnames() -> list[str]:
    return allgather_object(socket.gethostname())


def mean_over_ranks(values: Sequence[float]) -> list[float]:
    """Average a few scalars over ranks (one small allreduce)."""
    import horovod.tensorflow as hvd

    tensor = tf.constant(list(values), dtype=tf.float64)
    if hvd.size() > 1:
        tensor = hvd.allreduce(tensor, op=hvd.Average, name="mean_over_ranks")
    return [float(v) for v in tensor.numpy()]


def broadcast_state(variables: Sequence[tf.Variable]) -> None:
    import horovod.tensorflow as hvd

    if hvd.size() > 1:
        hvd.broadcast_variables(list(variables), root_rank=0)
