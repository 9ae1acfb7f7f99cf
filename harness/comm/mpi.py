"""Raw MPI through mpi4py on numpy buffers: the baseline the engines' collectives are judged against."""

from __future__ import annotations

from typing import Callable

import numpy as np

from harness.errors import UserError


class MPICollectives:
    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise UserError(f"the mpi backend needs mpi4py ({exc}); it is pinned in requirements/") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def version(self) -> str:
        import mpi4py

        return f"mpi4py {mpi4py.__version__}, {self.MPI.Get_library_version().splitlines()[0].strip()}"

    def barrier(self) -> None:
        self.comm.Barrier()

    def max(self, value: float) -> float:
        return float(self.comm.allreduce(value, op=self.MPI.MAX))

    def prepare(self, op: str, nbytes: int, tensors: int) -> Callable[[], None] | None:
        n = nbytes // 4 // tensors
        comm, MPI = self.comm, self.MPI
        if op == "allreduce":
            pairs = [(np.ones(n, np.float32), np.empty(n, np.float32)) for _ in range(tensors)]

            def call() -> None:
                for send, recv in pairs:
                    comm.Allreduce(send, recv, op=MPI.SUM)
        elif op == "broadcast":
            bufs = [np.ones(n, np.float32) for _ in range(tensors)]

            def call() -> None:
                for buf in bufs:
                    comm.Bcast(buf, root=0)
        elif op == "allgather":
            part = n // self.size
            pairs = [(np.ones(part, np.float32), np.empty(part * self.size, np.float32)) for _ in range(tensors)]

            def call() -> None:
                for send, recv in pairs:
                    comm.Allgather(send, recv)
        else:
            return None
        return call
