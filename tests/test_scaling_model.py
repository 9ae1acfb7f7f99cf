"""The weak-scaling model: ring allreduce arithmetic (nccl-tests' bus-bandwidth convention), overlap, inputs
from a run's record and trace, and bad inputs refused with one line."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import scaling_model as sm
from harness.errors import UserError

LINK = sm.Interconnect("test", busbw_gb_s=1.0, latency_us=0.0)


@pytest.mark.parametrize("n", [2, 4, 8, 512])
def test_allreduce_time_matches_the_bus_bandwidth_convention(n):
    t = sm.allreduce_s(n, 1e9, LINK)
    algbw = 1e9 / t
    assert algbw * 2 * (n - 1) / n == pytest.approx(1e9)  # busbw = algbw * 2(n-1)/n


def test_allreduce_latency_counts_every_ring_step_of_every_message():
    link = sm.Interconnect("lat", busbw_gb_s=1e9, latency_us=10.0)  # bandwidth term ~0
    assert sm.allreduce_s(1, 1e6, link, messages=3) == 0.0
    assert sm.allreduce_s(4, 1e6, link, messages=3) == pytest.approx(3 * 6 * 10e-6, rel=1e-6)


def test_predict_weak_scaling_with_and_without_overlap():
    inputs = sm.StepInputs(compute_s=1.0, grad_bytes=1e9, per_rank_batch=2)
    p = sm.predict(inputs, LINK, nps=[1, 2, 4, 512])
    assert p["efficiency"].iloc[0] == 1.0 and p["throughput"].iloc[0] == 2.0
    assert list(p["step_ms"]) == pytest.approx([1000.0, 2000.0, 2500.0, 1000 + 2 * 511 / 512 * 1000])
    assert p["efficiency"].is_monotonic_decreasing
    hidden = sm.predict(sm.StepInputs(compute_s=1.0, grad_bytes=1e9, per_rank_batch=2, overlap=1.0), LINK, [1, 8])
    assert list(hidden["efficiency"]) == [1.0, 1.0] and list(hidden["throughput"]) == [2.0, 16.0]
    half = sm.predict(sm.StepInputs(compute_s=1.0, grad_bytes=1e9, per_rank_batch=1, overlap=0.5), LINK, [2])
    assert half["exposed_ms"].iloc[0] == pytest.approx(500.0) and half["step_ms"].iloc[0] == pytest.approx(1500.0)


def test_horovod_fuses_and_mwms_sends_one_pack():
    assert sm.messages_for("horovod", 1.0) == 1
    assert sm.messages_for("horovod", 3 * sm.HOROVOD_FUSION_BYTES + 1) == 4
    assert sm.messages_for("mwms", 10 * sm.HOROVOD_FUSION_BYTES) == 1


def test_inputs_from_a_record_and_its_breakdown():
    record = {"name": "r", "model": {"params_trainable": 250_000}, "config": {"train": {"batch_size": 2}},
              "engine": {"name": "horovod"}, "timing": {"step_time_mean_s": 1.8}}
    # a step = ops + exposed communication + input wait + the framework's gaps; all but communication is "compute"
    breakdown = pd.DataFrame({"rank": [0, 0, 1, 1], "step_ms": [1700.0, 1700.0, 1600.0, 1800.0],
                              "compute_ms": [1400.0, 1400.0, 1500.0, 1700.0],
                              "communication_ms": [220.0, 220.0, 20.0, 40.0],
                              "comm_inflight_ms": [240.0, 240.0, 100.0, 140.0]})
    got = sm.inputs_from_run(record, breakdown)  # rank 1 is the slowest: its local time and its link time
    assert got.compute_s == pytest.approx(1.67) and got.grad_bytes == 1e6 and got.per_rank_batch == 2
    assert got.overlap == pytest.approx(1 - 30 / 120) and got.messages == 1
    alone = sm.inputs_from_run(record)  # no trace: the record's step time, nothing hidden
    assert alone.compute_s == 1.8 and alone.overlap == 0.0


def test_against_measured_pairs_rank_counts():
    p = sm.predict(sm.StepInputs(compute_s=1.0, grad_bytes=0.0, per_rank_batch=1), LINK, [1, 2])
    t = sm.against_measured(p, [(2, 1.6), (4, 3.0)])
    assert list(t["np"]) == [2] and t["predicted / measured"].iloc[0] == pytest.approx(2.0 / 1.6)


@pytest.mark.parametrize("make, needle", [
    (lambda: sm.Interconnect("x", busbw_gb_s=0.0, latency_us=1.0), "busbw_gb_s must be > 0"),
    (lambda: sm.Interconnect("x", busbw_gb_s=-1.0, latency_us=1.0), "busbw_gb_s -1.0 must be a finite number"),
    (lambda: sm.Interconnect("x", busbw_gb_s=1.0, latency_us=float("nan")), "latency_us nan"),
    (lambda: sm.StepInputs(compute_s=0.0, grad_bytes=1.0, per_rank_batch=1), "compute time 0.0 s"),
    (lambda: sm.StepInputs(compute_s=1.0, grad_bytes=1.0, per_rank_batch=1, overlap=1.5), "overlap 1.5"),
    (lambda: sm.StepInputs(compute_s=1.0, grad_bytes=1.0, per_rank_batch=0), "per-rank batch 0"),
    (lambda: sm.allreduce_s(0, 1.0, LINK), "rank count 0"),
    (lambda: sm.inputs_from_run({"name": "r", "model": {}}), "no model.params_trainable"),
])
def test_bad_inputs_are_refused(make, needle):
    with pytest.raises(UserError, match=needle):
        make()


def _comm_record(link: sm.Interconnect, n: int, sizes, engine: str = "mpi", noise: float = 0.0,
                 transport: str | None = None) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for b in sizes:
        t = (sm.allreduce_s(n, b, link) or 1e-6) * (1 + noise * rng.uniform(-1, 1))
        rows.append({"op": "allreduce", "bytes": b, "time_us": t * 1e6, "busbw_gb_s": b / t * 2 * (n - 1) / n / 1e9})
    rows.append({"op": "broadcast", "bytes": 8, "time_us": 1e9, "busbw_gb_s": 1e-9})  # other ops are ignored
    return {"kind": "comm", "world_size": n, "engine": {"name": engine, "transport": transport}, "hosts": ["h"],
            "comm": {"rows": rows, "fusion_bytes": None, "tensors": 1}}


@pytest.mark.parametrize("n, busbw, latency, noise", [(2, 2.0, 30.0, 0.0), (4, 0.25, 5.0, 0.0), (2, 10.0, 100.0, 0.05)])
def test_measured_interconnect_recovers_the_ring_model_it_was_generated_from(n, busbw, latency, noise):
    link = sm.Interconnect("truth", busbw, latency)
    got = sm.measured_interconnect(_comm_record(link, n, [2**k for k in range(3, 29)], noise=noise))
    assert got.source == "bratsbench comm" and "mpi, np=" in got.name
    assert got.busbw_gb_s == pytest.approx(busbw, rel=0.1 if noise else 1e-6)
    assert got.latency_us == pytest.approx(latency, rel=0.1 if noise else 1e-6)


def test_measured_interconnect_needs_two_ranks_and_two_sizes():
    link = sm.Interconnect("truth", 1.0, 1.0)
    assert sm.measured_interconnect(_comm_record(link, 1, [8, 1024])) is None
    assert sm.measured_interconnect(_comm_record(link, 2, [1024])) is None


def test_the_report_predicts_a_run_on_the_baseline_of_its_engine_and_rank_count():
    from analysis.report import _baseline_for

    slow, fast = sm.Interconnect("slow", 0.5, 50.0), sm.Interconnect("fast", 5.0, 5.0)
    comm = [_comm_record(slow, 2, [8, 2**20, 2**26], "mpi"), _comm_record(fast, 2, [8, 2**20, 2**26], "horovod"),
            _comm_record(fast, 4, [8, 2**20], "mwms")]
    hvd = _baseline_for({"world_size": 2, "engine": {"name": "horovod"}}, comm)
    assert hvd.busbw_gb_s == pytest.approx(5.0) and "horovod" in hvd.name
    mwms = _baseline_for({"world_size": 2, "engine": {"name": "mwms"}}, comm)  # none of its own at np=2: raw MPI's
    assert mwms.busbw_gb_s == pytest.approx(0.5) and "mpi" in mwms.name
    assert _baseline_for({"world_size": 8, "engine": {"name": "horovod"}}, comm) is None


def test_a_run_is_predicted_on_the_baseline_of_its_own_transport():
    from analysis.report import _baseline_for

    gloo, mpi = sm.Interconnect("gloo", 0.4, 500.0), sm.Interconnect("mpi", 4.0, 40.0)
    sizes = [8, 2**20, 2**26]
    comm = [_comm_record(gloo, 2, sizes, "horovod", transport="gloo"), _comm_record(mpi, 2, sizes, "horovod", transport="mpi")]
    for transport, link in (("gloo", gloo), ("mpi", mpi)):
        got = _baseline_for({"world_size": 2, "engine": {"name": "horovod", "transport": transport}}, comm)
        assert got.busbw_gb_s == pytest.approx(link.busbw_gb_s) and f"horovod/{transport}" in got.name
    # a transport without a baseline of its own falls to raw MPI's, not to the other transport's
    nccl = _baseline_for({"world_size": 2, "engine": {"name": "horovod", "transport": "nccl"}},
                         [*comm, _comm_record(sm.Interconnect("raw", 8.0, 10.0), 2, sizes, "mpi", transport="mpi")])
    assert nccl.busbw_gb_s == pytest.approx(8.0)
    # an older record that does not say: its engine's first baseline
    assert _baseline_for({"world_size": 2, "engine": {"name": "horovod"}}, comm).busbw_gb_s == pytest.approx(0.4)


@pytest.mark.parametrize("record, label", [
    ({"engine": {"name": "horovod", "transport": "mpi"}}, "horovod/mpi"),
    ({"engine": {"name": "mwms", "transport": "ring"}}, "mwms/ring"),
    ({"engine": {"name": "horovod"}, "comm": {"launcher": "horovodrun"}}, "horovod/gloo"),  # before transport
    ({"engine": {"name": "horovod"}, "comm": {"launcher": "mpirun"}}, "horovod/mpi"),
    ({"engine": {"name": "horovod"}}, "horovod"),  # a training record from before: unknown
    ({}, "?"),
])
def test_engine_label(record, label):
    from analysis.records import engine_label

    assert engine_label(record) == label
