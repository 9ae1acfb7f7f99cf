"""Past one machine, on paper: weak-scaling step time from compute, gradient bytes, overlap and an interconnect.

A data-parallel step is its compute plus the part of the gradient allreduce that back-propagation does not hide.
The allreduce is costed as a ring (the alpha-beta model behind nccl-tests' bus bandwidth): for B bytes in one
fused message over n ranks, 2(n-1) steps each move B/n bytes, so

    t_allreduce(n) = 2(n-1)/n * B / busbw + 2(n-1) * latency          (per fused message; 0 at n = 1)

and the step is t(n) = compute + (1 - overlap) * t_allreduce(n), with the overlap (the share of the in-flight
communication that compute hides) read from the run's own profiler trace. Weak scaling: throughput(n) =
n * per-rank batch / t(n), efficiency(n) = t(1) / t(n). What the model leaves out is named where it is used:
input pipelines, stragglers, shared memory bandwidth between ranks on one host, and a changing overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pandas as pd

from harness.errors import UserError

NPS = tuple(2**k for k in range(10))  # 1 .. 512
GRADIENT_BYTES_PER_PARAM = 4  # float32 gradients (mixed precision keeps float32 master weights and gradients)
HOROVOD_FUSION_BYTES = 128 * 1024 * 1024  # Horovod's default HOROVOD_FUSION_THRESHOLD


@dataclass(frozen=True)
class Interconnect:
    """An allreduce baseline: large-message bus bandwidth and the latency of one ring step."""

    name: str
    busbw_gb_s: float  # GB/s (1e9 bytes), nccl-tests' busbw convention
    latency_us: float
    source: str = "given"

    def __post_init__(self) -> None:
        for field, value in (("busbw_gb_s", self.busbw_gb_s), ("latency_us", self.latency_us)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"interconnect '{self.name}': {field} {value!r} must be a finite number >= 0")
        if self.busbw_gb_s == 0:
            raise UserError(f"interconnect '{self.name}': busbw_gb_s must be > 0")


# Two stated interconnects for the curves in docs/profiling.md (assumed inputs, not measurements): an 8-GPU NVLink/NVSwitch
# node as nccl-tests reports it for A100 (~230 GB/s allreduce busbw), and a cluster of such nodes over one
# InfiniBand HDR 200 Gb/s NIC per node (~24 GB/s busbw across nodes). Latencies are typical small-message figures.
INTERCONNECTS = {
    "nvlink-a100": Interconnect("NVLink/NVSwitch, 8x A100 (nccl-tests)", 230.0, 10.0),
    "ib-hdr200": Interconnect("InfiniBand HDR 200 Gb/s, 1 NIC per node", 24.0, 5.0),
}


@dataclass(frozen=True)
class StepInputs:
    """What one step costs on one rank, from a run's record and trace."""

    compute_s: float  # per step, the time some op computes (no communication)
    grad_bytes: float  # bytes allreduced per step
    per_rank_batch: int
    overlap: float = 0.0  # share of the allreduce hidden behind compute, 0..1
    messages: int = 1  # fused allreduce messages per step

    def __post_init__(self) -> None:
        if not (self.compute_s > 0 and math.isfinite(self.compute_s)):
            raise UserError(f"compute time {self.compute_s!r} s must be a positive number")
        if not (self.grad_bytes >= 0 and math.isfinite(self.grad_bytes)):
            raise UserError(f"gradient bytes {self.grad_bytes!r} must be >= 0")
        if not 0.0 <= self.overlap <= 1.0:
            raise UserError(f"overlap {self.overlap!r} must be between 0 and 1")
        if self.per_rank_batch < 1 or self.messages < 1:
            raise UserError(f"per-rank batch {self.per_rank_batch} and messages {self.messages} must be >= 1")


def allreduce_s(n: int, nbytes: float, link: Interconnect, messages: int = 1) -> float:
    """Ring allreduce time of `nbytes` split into `messages` fused messages over n ranks."""
    if n < 1:
        raise UserError(f"rank count {n} must be >= 1")
    if n == 1:
        return 0.0
    steps = 2 * (n - 1)
    return steps / n * nbytes / (link.busbw_gb_s * 1e9) + messages * steps * link.latency_us * 1e-6


def predict(inputs: StepInputs, link: Interconnect, nps: Iterable[int] = NPS) -> pd.DataFrame:
    """Predicted step time, throughput and weak-scaling efficiency per rank count."""
    rows = []
    for n in nps:
        comm = allreduce_s(n, inputs.grad_bytes, link, inputs.messages)
        step = inputs.compute_s + (1.0 - inputs.overlap) * comm
        rows.append({"interconnect": link.name, "np": n, "allreduce_ms": comm * 1e3,
                     "exposed_ms": (1.0 - inputs.overlap) * comm * 1e3, "step_ms": step * 1e3,
                     "throughput": n * inputs.per_rank_batch / step, "efficiency": inputs.compute_s / step})
    return pd.DataFrame(rows)


def messages_for(engine: str, grad_bytes: float, fusion_bytes: int = HOROVOD_FUSION_BYTES) -> int:
    """Fused messages per step. Horovod packs gradients into fusion buffers of `fusion_bytes`; MWMS with its
    default communication options (bytes_per_pack 0) concatenates every gradient into one pack, one
    CollectiveReduceV2 per step (as its traces show: one per profiled step)."""
    if engine == "horovod":
        return max(1, math.ceil(grad_bytes / fusion_bytes))
    return 1


def inputs_from_run(record: dict[str, Any], breakdown: pd.DataFrame | None = None) -> StepInputs:
    """StepInputs of a run: compute and overlap from its profiler breakdown when given, else the record's step
    time (right for np = 1, where nothing is communicated); gradient bytes from its trainable parameters.
    "Compute" is everything in a step but its exposed communication: the ops, the input wait and the framework's
    time between ops (on a small model that is most of the step: 64% of an 85 ms step here), since all of it is
    there at any rank count. It is the slowest rank's mean over its profiled steps: a synchronous step waits for
    the last rank, and the others' wait shows up in their traces as communication (on this CPU, rank 0
    "communicates" for as long as rank 1 computes longer)."""
    model = record.get("model") or {}
    timing = record.get("timing") or {}
    params = model.get("params_trainable")
    if not params:
        raise UserError(f"run '{record.get('name')}': its record has no model.params_trainable")
    cfg = (record.get("config") or {}).get("train") or {}
    grad_bytes = float(params) * GRADIENT_BYTES_PER_PARAM
    engine = (record.get("engine") or {}).get("name") or "horovod"
    if breakdown is not None and not breakdown.empty:
        per_rank = breakdown.groupby("rank") if "rank" in breakdown else [(0, breakdown)]
        means = pd.DataFrame([g[["step_ms", "communication_ms", "comm_inflight_ms"]].mean() for _, g in per_rank])
        means["local_ms"] = means["step_ms"] - means["communication_ms"]
        slowest = means["local_ms"].idxmax()
        compute = float(means.loc[slowest, "local_ms"]) / 1e3
        inflight = float(means.loc[slowest, "comm_inflight_ms"])  # the slowest rank waits least: its comm is the link's
        exposed = float(means.loc[slowest, "communication_ms"])
        overlap = 1.0 - exposed / inflight if inflight > 0 else 0.0
    elif timing.get("step_time_mean_s"):
        compute, overlap = float(timing["step_time_mean_s"]), 0.0
    else:
        raise UserError(f"run '{record.get('name')}': no step time in its record and no profiler breakdown")
    return StepInputs(compute_s=compute, grad_bytes=grad_bytes, per_rank_batch=int(cfg.get("batch_size") or 1),
                      overlap=min(1.0, max(0.0, overlap)),
                      messages=messages_for(engine, grad_bytes))


def measured_interconnect(record: dict[str, Any]) -> Interconnect | None:
    """The allreduce baseline a `bratsbench comm` record measured: latency and busbw of the ring model fitted to its
    allreduce times over all sizes (least squares on relative error, so 8 B and 256 MiB weigh alike). None for a
    record with fewer than two ranks or two sizes."""
    import numpy as np

    n = int(record.get("world_size") or 1)
    rows = [r for r in (record.get("comm") or {}).get("rows", []) if r.get("op") == "allreduce" and r.get("time_us")]
    if n < 2 or len({r["bytes"] for r in rows}) < 2:
        return None
    t = np.array([r["time_us"] * 1e-6 for r in rows])
    b = np.array([float(r["bytes"]) for r in rows])
    steps = 2 * (n - 1)
    a = np.stack([np.full_like(t, steps), steps / n * b], axis=1) / t[:, None]  # unknowns: latency, 1 / busbw
    (lat, inv_bw), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    if inv_bw <= 0:  # no bandwidth term left: take the best bus bandwidth measured
        inv_bw = 1.0 / max(r["busbw_gb_s"] * 1e9 for r in rows)
    from analysis.records import engine_label

    engine = engine_label(record)
    hosts = ", ".join(record.get("hosts") or []) or "?"
    return Interconnect(f"measured: {engine}, np={n} on {hosts}", float(1.0 / inv_bw / 1e9), float(max(0.0, lat) * 1e6),
                        source="bratsbench comm")


def against_measured(predicted: pd.DataFrame, measured: Sequence[tuple[int, float]]) -> pd.DataFrame:
    """Predicted beside measured throughput where both exist: ratio predicted / measured."""
    rows = []
    by_np = predicted.set_index("np")
    for n, throughput in measured:
        if n in by_np.index:
            p = float(by_np.loc[n, "throughput"])
            rows.append({"np": n, "predicted": p, "measured": throughput, "predicted / measured": p / throughput})
    return pd.DataFrame(rows)
