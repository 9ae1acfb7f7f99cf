"""Timing collectives over message sizes, reported with nccl-tests' conventions.

A size is the whole buffer in bytes (for allgather: the gathered result, each rank sending size/n). Per size:
warm-up calls, a barrier, then `iters` timed calls; a rank's time is the mean per call and the size's time is the
slowest rank's. algbw = size / time; busbw = algbw x 2(n-1)/n for allreduce, x (n-1)/n for allgather, x 1 for
broadcast, so bus bandwidths compare across rank counts and with the link's own bandwidth.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from harness.errors import UserError

OPS = ("allreduce", "broadcast", "allgather")
BACKENDS = ("mpi", "horovod", "mwms")
ELEMENT_BYTES = 4  # float32 buffers, as gradients are
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}


def parse_bytes(text: str) -> int:
    """'8', '64K', '256M', '1G' (powers of 1024) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise UserError(f"message size '{text}': expected a number of bytes such as 8, 64K, 256M")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


SMALLEST, LARGEST = 8, 256 * 1024**2  # the range a baseline sweeps: 8 B to 256 MiB


def sizes(min_bytes: int, max_bytes: int) -> list[int]:
    """Powers of two from min_bytes to max_bytes (both rounded inwards to a power of two), within 8 B..256 MiB."""
    if not SMALLEST <= min_bytes <= max_bytes <= LARGEST:
        raise UserError(f"message sizes {min_bytes}..{max_bytes} bytes: need {SMALLEST} <= min <= max <= {LARGEST} "
                        "(8 B to 256 MiB)")
    lo, hi = (min_bytes - 1).bit_length(), max_bytes.bit_length() - 1
    return [2**k for k in range(lo, hi + 1)]


def bus_factor(op: str, n: int) -> float:
    if op == "allreduce":
        return 2.0 * (n - 1) / n
    if op == "allgather":
        return (n - 1) / n
    if op == "broadcast":
        return 1.0
    raise UserError(f"collective '{op}' is not one of {', '.join(OPS)}")


def auto_iters(nbytes: int, budget_bytes: int = 1 << 28, lo: int = 5, hi: int = 200) -> int:
    """Enough calls to time a size well, few enough that 256 MiB does not take minutes."""
    return max(lo, min(hi, budget_bytes // max(1, nbytes)))


class Collectives(Protocol):
    """One backend's view: its world, a barrier, a max over ranks, and a prepared collective per op and size."""

    rank: int
    size: int

    def barrier(self) -> None: ...

    def max(self, value: float) -> float: ...

    def prepare(self, op: str, nbytes: int, tensors: int) -> Callable[[], None] | None: ...


@dataclass
class Row:
    op: str
    bytes: int
    iters: int
    time_us: float
    algbw_gb_s: float
    busbw_gb_s: float


def run(backend: Collectives, ops: Iterable[str], byte_sizes: Iterable[int], *, warmup: int = 5,
        iters: int | None = None, tensors: int = 1, progress: Callable[[str], None] | None = None) -> list[Row]:
    """Time every op at every size on every rank (all ranks must call this with the same arguments)."""
    rows: list[Row] = []
    for op in ops:
        for nbytes in byte_sizes:
            if nbytes < ELEMENT_BYTES * tensors * (backend.size if op == "allgather" else 1):
                continue  # too small to split into the tensors (and, for allgather, over the ranks)
            call = backend.prepare(op, nbytes, tensors)
            if call is None:
                break  # this backend has no such collective
            n_iter = iters or auto_iters(nbytes)
            for _ in range(warmup):
                call()
            backend.barrier()
            t0 = time.perf_counter()
            for _ in range(n_iter):
                call()
            mine = (time.perf_counter() - t0) / n_iter
            seconds = backend.max(mine)
            algbw = nbytes / seconds / 1e9
            rows.append(Row(op, nbytes, n_iter, seconds * 1e6, algbw, algbw * bus_factor(op, backend.size)))
            if progress:
                progress(f"{op:9s} {nbytes:>11d} B  {seconds * 1e6:11.1f} us  busbw {rows[-1].busbw_gb_s:8.3f} GB/s")
    return rows
