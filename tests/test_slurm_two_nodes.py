"""Emitted array tasks on a real two-node SLURM cluster (tests/slurm_two_nodes.py: each node a network + UTS
namespace of this machine): `--nodes=2 --ntasks-per-node=1`, one rank per node, started by srun for Horovod and
through TF_CONFIG built from SLURM's step variables for MWMS; and a rank killed inside node2 mid-run fails its
run (fast) while the array goes on.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import struct
import time
from pathlib import Path

import psutil
import pytest

from harness.launch import is_rank_process
from tests.conftest import proc_env
from tests.slurm_two_nodes import NODES, slurm_two_nodes  # noqa: F401 - the fixture
from tests.test_slurm import _index_status, _records

WAIT_S = 300
KILL_TO_FAILED_S = 60
BACKENDS = [pytest.param("horovod", marks=pytest.mark.horovod), pytest.param("mwms", marks=pytest.mark.mwms)]

SPEC = """
name: two-{backend}
axes:
  np: [2]
  backend: [{backend}]
fixed:
  model: {{base_filters: 4, depth: 2, modalities: [t1, t2]}}
  data: {{synthetic: true, crop: [16, 16, 16], synthetic_samples: 4, val_cases: 1}}
  train: {{batch_size: 1, benchmark: true, bench_warmup: 2, bench_steps: 3, threads: 1}}
timeout_s: 600
"""

# two seeds, one after the other (--limit 1); each trains for a budget of seconds, so the first is still
# training when its rank on node2 is killed, and the second ends by itself
KILL_SPEC = """
name: kill-{backend}
axes:
  np: [2]
  backend: [{backend}]
  seed: [0, 1]
fixed:
  model: {{base_filters: 4, depth: 2, modalities: [t1, t2]}}
  data: {{synthetic: true, crop: [16, 16, 16], synthetic_samples: 4, val_cases: 1}}
  train: {{batch_size: 1, epochs: 1, steps_per_epoch: 100000, budget_s: 10, threads: 1}}
timeout_s: 600
"""


def _emit(cli, tmp_path: Path, spec_text: str, *extra: str) -> tuple[Path, Path, list[list[str]]]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    jobs, results = tmp_path / "jobs", tmp_path / "results"
    code, out, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(jobs), "--results", str(results),
                         "--tasks-per-node", "1", "--time", "00:10:00", "--launcher", "srun", *extra)
    assert code == 0, err
    (script,) = jobs.glob("run-np2.sbatch")
    text = script.read_text().splitlines()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text, script.read_text()
    manifest = [line.split("\t") for line in (jobs / "manifest.tsv").read_text().splitlines()[1:]]
    return jobs, results, manifest


def _submit(cluster, jobs: Path) -> str:
    out = cluster.run(["bash", str(jobs / "submit.sh")], env=proc_env(SLURM_CONF=cluster.env["SLURM_CONF"])).stdout
    return out.rsplit("job ", 1)[1].split()[0]


def _wait_settled(results: Path, ids: list[str], timeout: float = WAIT_S) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        states = {rid: _index_status(results, rid) for rid in ids}
        if all(s in ("ok", "failed") for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def _context(cluster, jobs: Path, results: Path) -> str:
    parts = [f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((jobs / "logs").glob("*.out"))]
    parts += [f"== {p}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(results.glob("runs/*/logs/*.log"))]
    return "\n".join(parts) + "\n" + cluster.logs(15)


def _peers(pid: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Remote addresses of the TCP sockets in the network namespace of `pid` (/proc/PID/net is per netns); a
    listening socket's is the unspecified address."""
    peers = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            raw = line.split()[2].split(":")[0]  # 32-bit words in host byte order
            packed = b"".join(struct.pack("<I", int(raw[i : i + 8], 16)) for i in range(0, len(raw), 8))
            addr = ipaddress.ip_address(packed)
            peers.add(addr.ipv4_mapped or addr if addr.version == 6 else addr)
    return peers


def _assert_local(cluster, peers: set) -> None:
    stray = [p for p in peers if not (p.is_loopback or p.is_unspecified or p in cluster.subnet)]
    assert not stray, f"TCP peers {sorted(map(str, stray))} (only loopback and {cluster.subnet} are ours)"


def _is_rank(pid: int) -> bool:
    try:
        return is_rank_process(psutil.Process(pid))
    except psutil.Error:
        return False


def _rank_in(cluster, node: str) -> psutil.Process | None:
    for pid in cluster.node_pids(node):
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        if is_rank_process(proc):
            return proc
    return None


@pytest.mark.slow
def test_nodes_have_their_names_addresses_and_only_local_lookups(slurm_two_nodes):  # noqa: F811
    cluster = slurm_two_nodes
    for node in NODES:
        found = cluster.run_in_node(node, ["getent", "hosts", "node1", "node2", "ctl"]).stdout.split("\n")
        got = {line.split()[1]: line.split()[0] for line in found if line.strip()}
        assert got == {n: cluster.addr[n] for n in ("node1", "node2", "ctl")}
        assert cluster.run_in_node(node, ["cat", "/etc/resolv.conf"]).stdout.split() == ["nameserver", "127.0.0.1"]
        routes = cluster.run_in_node(node, ["ip", "-4", "route", "show"]).stdout
        assert "default" not in routes and str(cluster.subnet) in routes, routes
        links = cluster.run_in_node(node, ["ip", "-o", "link", "show"]).stdout.splitlines()
        assert [line.split(":")[1].strip().split("@")[0] for line in links] == ["lo", cluster.veth[node][1]]
    assert cluster.run(["getent", "hosts", "ctl"]).stdout.split() == [cluster.addr["ctl"], "ctl"]
    names = cluster.run(["srun", "-N2", "-n2", "--label", "hostname"]).stdout.split()
    assert sorted(names) == ["0:", "1:", "node1", "node2"], names
    assert socket.gethostname() not in NODES  # our own UTS namespace is untouched


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_emitted_two_node_task_runs_one_rank_per_node(slurm_two_nodes, tmp_path, cli, backend):  # noqa: F811
    cluster = slurm_two_nodes
    t0 = time.monotonic()
    jobs, results, manifest = _emit(cli, tmp_path, SPEC.format(backend=backend))
    (row,) = manifest
    rid = row[2]
    _submit(cluster, jobs)
    states = _wait_settled(results, [rid])
    record = _records(results, [rid]).get(rid, {})
    assert states[rid] == "ok" and record.get("status") == "ok", _context(cluster, jobs, results)
    assert record["engine"]["name"] == backend
    assert record["engine"]["transport"] == {"horovod": "mpi", "mwms": "ring"}[backend]  # srun --mpi=pmix; gRPC ring
    assert record["world_size"] == 2
    assert record["hosts"] == ["node1", "node2"]
    checksums = record["model"]["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    print(f"\n[two-node {backend}] ok in {time.monotonic() - t0:.1f} s, hosts {record['hosts']}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_rank_on_node2_fails_its_run_and_the_array_goes_on(slurm_two_nodes, tmp_path, cli, backend):  # noqa: F811
    cluster = slurm_two_nodes
    t0 = time.monotonic()
    jobs, results, manifest = _emit(cli, tmp_path, KILL_SPEC.format(backend=backend), "--limit", "1")
    assert [(row[0], row[1]) for row in manifest] == [("run-np2", "0"), ("run-np2", "1")]
    first, second = manifest[0][2], manifest[1][2]
    _submit(cluster, jobs)

    # the first run is training: its record says "running" (the ranks met) and its rank sits in node2's netns
    deadline = time.monotonic() + WAIT_S
    victim = None
    while time.monotonic() < deadline:
        if _records(results, [first]).get(first, {}).get("status") == "running":
            victim = _rank_in(cluster, "node2")
            if victim is not None:
                break
        assert _index_status(results, first) not in ("ok", "failed"), _context(cluster, jobs, results)
        time.sleep(0.5)
    assert victim is not None, "no rank of the first run showed up in node2\n" + _context(cluster, jobs, results)
    time.sleep(2)  # into the training steps
    assert victim.is_running(), _context(cluster, jobs, results)
    for node in NODES:  # every TCP socket in both node namespaces: loopback or our bridge's subnet only
        _assert_local(cluster, _peers(cluster.procs[f"slurmd.{node}"].pid))
    assert f"--out {results / 'runs' / first}" in " ".join(victim.cmdline())
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    # failed twice over: the record (the surviving rank's trainer may write it first) and sweep.json, which the
    # array task sets only once srun has returned and the runner settled the run - then the array moves on
    record: dict = {}
    record_s = settled_s = None
    while time.monotonic() - killed < KILL_TO_FAILED_S + 30 and settled_s is None:
        now = time.monotonic() - killed
        record = _records(results, [first]).get(first, {})
        if record_s is None and record.get("status") == "failed":
            record_s = now
        if record_s is not None and _index_status(results, first) == "failed":
            settled_s = now
        time.sleep(0.2)
    record = _records(results, [first]).get(first, {})
    error = str(record.get("error") or "").strip().splitlines()
    print(f"\n[two-node {backend}] killed rank pid {victim.pid} in node2: record failed after "
          f"{record_s if record_s is None else round(record_s, 1)} s, settled failed in sweep.json after "
          f"{settled_s if settled_s is None else round(settled_s, 1)} s; error: {error[0] if error else None}")
    assert record.get("status") == "failed" and settled_s is not None, _context(cluster, jobs, results)
    assert settled_s < KILL_TO_FAILED_S, _context(cluster, jobs, results)
    assert error and record.get("exit_code") not in (None, 0)
    if backend == "horovod":  # srun names the rank and node that died (MWMS's survivor records its own error)
        assert error[0].startswith("rank 1 on node2: "), error

    states = _wait_settled(results, [first, second])
    assert states == {first: "failed", second: "ok"}, _context(cluster, jobs, results)
    rec2 = _records(results, [second])[second]
    assert rec2["status"] == "ok" and rec2["hosts"] == ["node1", "node2"] and rec2["world_size"] == 2
    assert rec2["extra"]["stopped"]["reason"] == "budget"
    sums = rec2["model"]["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    slurmds = {p.pid for name, p in cluster.procs.items() if name.startswith("slurmd.")}
    left = [p for n in NODES for p in cluster.node_pids(n) if p not in slurmds]
    assert not [p for p in left if _is_rank(p)], "a rank outlived its job"
    print(f"[two-node {backend}] kill case done in {time.monotonic() - t0:.1f} s")
