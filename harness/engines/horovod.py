"""Horovod: one process per rank under horovodrun / mpirun / srun, allreduce over Gloo, MPI or NCCL."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import tensorflow as tf

from harness.engines.base import Engine, World, physical_gpus, pin_device, set_threads

CPU_CYCLE_TIME_MS = 5


class HorovodEngine(Engine):
    """`comm`: an mpi4py communicator to run on instead of the whole job (a packed sweep's group of ranks);
    `node_rank`, `node_size`: this process's place among all the job's processes on its node, which pins its
    GPU and sizes its thread pools when the communicator holds only some of them."""

    name = "horovod"
    has_timeline = True

    def __init__(self, comm: Any = None, node_rank: int | None = None, node_size: int | None = None):
        self.comm = comm
        self.node_rank, self.node_size = node_rank, node_size

    def init(self, threads: int | None = None, timeline: bool = False, device: str = "auto") -> World:
        if timeline:
            os.environ.setdefault("HOROVOD_TIMELINE", "DYNAMIC")  # start/stop_timeline bound it to a window
        if device == "cpu" or not physical_gpus():
            # Horovod's background thread wakes every cycle (default 1 ms). On a CPU-only node that steals time
            # from the compute threads (seen here: np=2 ran 1.5x faster than np=1 at 1 ms, 1.8-1.9x at 5-50 ms);
            # a step takes tens of milliseconds or more, so 5 ms adds no visible latency. An explicit setting wins.
            os.environ.setdefault("HOROVOD_CYCLE_TIME", str(CPU_CYCLE_TIME_MS))
        import horovod.tensorflow as hvd

        if self.comm is None:
            hvd.init()
        else:
            if not hvd.mpi_built():
                raise RuntimeError("Horovod was built without MPI: it cannot run on an mpi4py communicator")
            hvd.init(comm=self.comm)
        self.hvd = hvd
        node_rank = hvd.local_rank() if self.node_rank is None else self.node_rank
        node_size = hvd.local_size() if self.node_size is None else self.node_size
        gpus, name = pin_device(device, node_rank, node_size)
        self.world = World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), gpus,
                           set_threads(threads, node_size), name)
        return self.world

    def version(self) -> str | None:
        import horovod

        return horovod.__version__

    def transport(self) -> str | None:
        # GPU tensors go over NCCL where Horovod has it; CPU tensors over the controller's own transport
        if self.world.gpus and self.hvd.nccl_built():
            return "nccl"
        return "gloo" if self.hvd.gloo_enabled() else "mpi" if self.hvd.mpi_enabled() else None

    def reduce_gradients(self, grads: list[tf.Tensor], fused: bool = False) -> list[tf.Tensor]:
        if self.world.size == 1:
            return grads
        # frozen variables have no gradient and no allreduce
        if fused:  # one group, negotiated and reduced together once the whole backward pass is done
            return list(self.hvd.grouped_allreduce(grads, op=self.hvd.Average))
        # one allreduce per gradient, as DistributedGradientTape does by default (NVIDIA's nnU-Net, Horovod's
        # examples): each starts when its gradient exists; Horovod's cycle still fuses what is ready together
        return [self.hvd.allreduce(g, op=self.hvd.Average) for g in grads]

    def batch_norm(self) -> Callable[..., Any]:
        from horovod.tensorflow.sync_batch_norm import SyncBatchNormalization

        return SyncBatchNormalization  # mean and variance allreduced over the ranks of this engine

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        if self.world.size > 1:
            self.hvd.broadcast_variables(list(variables), root_rank=0)

    def allgather_object(self, obj: Any) -> list[Any]:
        if self.world.size == 1:
            return [obj]
        return list(self.hvd.allgather_object(obj))

    def mean(self, values: Sequence[float]) -> list[float]:
        tensor = tf.constant(list(values), dtype=tf.float64)
        if self.world.size > 1:
            tensor = self.hvd.allreduce(tensor, op=self.hvd.Average, name="mean_over_ranks")
        return [float(v) for v in tensor.numpy()]

    def collective(self, op: str, nbytes: int, tensors: int = 1) -> Callable[[], None] | None:
        hvd = self.hvd
        n = nbytes // 4 // tensors // (self.world.size if op == "allgather" else 1)
        xs = [tf.ones([n], tf.float32) for _ in range(tensors)]
        # one op per tensor, all in one traced call, as the gradients of a step: Horovod fuses what one cycle
        # sees into its fusion buffer (HOROVOD_FUSION_THRESHOLD=0 turns that off)
        if op == "allreduce":
            def body() -> list[tf.Tensor]:
                return [hvd.allreduce(x, op=hvd.Sum, name=f"comm_allreduce_{nbytes}_{i}") for i, x in enumerate(xs)]
        elif op == "broadcast":
            def body() -> list[tf.Tensor]:
                return [hvd.broadcast(x, root_rank=0, name=f"comm_broadcast_{nbytes}_{i}") for i, x in enumerate(xs)]
        elif op == "allgather":
            def body() -> list[tf.Tensor]:
                return [hvd.allgather(x, name=f"comm_allgather_{nbytes}_{i}") for i, x in enumerate(xs)]
        else:
            return None
        fn = tf.function(lambda: tf.stack([out[0] for out in body()]))  # one element each: the wait, no copy

        def call() -> None:
            fn().numpy()

        return call

    def start_timeline(self, path: str) -> None:
        self.hvd.start_timeline(path, mark_cycles=False)

    def stop_timeline(self) -> None:
        self.hvd.stop_timeline()

    def shutdown(self) -> None:
        """Ends Horovod in this process (a packed sweep starts it again on the next communicator). A rank still
        waiting in a collective with this one gets an error instead of waiting for ever."""
        hvd = getattr(self, "hvd", None)
        if hvd is not None and hvd.is_initialized():
            hvd.shutdown()
