"""A real two-node SLURM cluster on one machine for tests: each node is a network + UTS namespace.

Layout (after ../shared/recipes/two-node-slurm.sh, docs/dependencies.md "Two SLURM nodes on one machine"):

    root netns : munged, slurmctld (hostname "ctl" in its own UTS namespace), the test's clients;
                 a bridge of our own with the first address of a private /24
    netns 1    : slurmd -N node1, hostname node1, a veth on the bridge
    netns 2    : slurmd -N node2, hostname node2, a veth on the bridge

Network hygiene: IPv6 off on everything created, no default route in the node namespaces, and every slurm
process (daemons and clients: `run()` goes through the same wrapper) runs in a private mount namespace where
/etc/hosts holds our names and /etc/resolv.conf says "nameserver 127.0.0.1", so a name lookup never leaves the
machine. Nothing under /etc is edited (its sha256 is checked at teardown). The nodes share the filesystem, so
jobs run this checkout's .venv Python.

Teardown (also after a start that failed halfway): cancel jobs, stop the daemons by PID (TERM, wait, KILL),
SIGKILL whatever is left inside the node namespaces (`ip netns pids`: slurmstepd and job tasks outlive a
stopped slurmd), delete the namespaces, veths and bridge, remove the state folder.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.slurm_cluster import BINARIES, SlurmCluster, _free_ports, conf_lines

NODES = ("node1", "node2")
NET_BINARIES = ("ip", "nsenter", "unshare")
ETC_FILES = (Path("/etc/hosts"), Path("/etc/resolv.conf"))
STOP_WAIT_S = 15

# the mount-namespace wrapper every slurm process runs under: $0 is the state folder, then (with -u) the
# hostname, then the command; it execs all the way down, so the PID Popen returns is the command's
_MOUNTS = 'mount --bind "$0/hosts" /etc/hosts && mount --bind "$0/resolv.conf" /etc/resolv.conf'
_EXEC = _MOUNTS + ' && exec "$@"'
_EXEC_NAMED = _MOUNTS + ' && hostname "$1" && shift && exec "$@"'


def missing_binaries() -> list[str]:
    return [b for b in (*BINARIES, *NET_BINARIES, "scontrol") if shutil.which(b) is None]


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _etc_digest() -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in ETC_FILES if p.exists()}


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine already routes or has an address in (any routing table)."""
    nets = []
    for line in _sh("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        nets.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in _sh("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unicast", "multicast") and len(line.split()) > 1:
            word = line.split()[1]
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue  # "default" is everything: it does not make a private /24 clash
    return nets


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    used = _used_networks()
    for k in range(200):
        cand = ipaddress.ip_network(f"10.{200 + (seed + k) % 50}.{(seed * 7 + k) % 250 + 1}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError("no free private /24 in 10.200.0.0/13")


def _wait_reaped(pids: list[int], timeout: float = 10.0) -> None:
    """Until these PIDs are gone from the process table: slurmstepd's parent is init, which reaps its zombie a
    moment after it exits or is killed (so `ps` after the tests shows nothing of ours)."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


class NetnsUnavailable(RuntimeError):
    """This machine cannot make network namespaces (no CAP_NET_ADMIN, no netns support): the tests skip."""


class TwoNodeCluster(SlurmCluster):
    """`start()` / `stop()`; `run(cmd)` runs a client (sbatch, squeue, bash submit.sh) with our hosts/resolv.conf and
    SLURM_CONF; `run_in_node(node, cmd)` runs a command inside a node's namespaces; `node_pids(node)` lists the
    PIDs inside a node's network namespace."""

    def __init__(self, root: Path | None = None):
        super().__init__(root)
        tag = os.getpid() % 100000
        self.bridge = f"bbbr{tag}"
        self.netns = {n: f"bbns{tag}-{i}" for i, n in enumerate(NODES, 1)}
        self.veth = {n: (f"bbv{tag}h{i}", f"bbv{tag}n{i}") for i, n in enumerate(NODES, 1)}  # (root side, node side)
        self.subnet: ipaddress.IPv4Network | None = None
        self.addr: dict[str, str] = {}
        self.etc_digest: dict[str, str] = {}
        self.started_at = time.time()
        self._made_links: list[str] = []
        self._made_netns: list[str] = []

    # -- set-up ---------------------------------------------------------------------------------------
    def start(self) -> "TwoNodeCluster":
        self.etc_digest = _etc_digest()
        self.started_at = time.time()
        try:
            self._net_up()
            self._write_name_files()
            self._start_munge()
            self._write_conf()
            logs = self.root / "log"
            self.procs["slurmctld"] = self._spawn(["slurmctld", "-D", "-f", str(self.conf)], logs / "slurmctld.out",
                                                  hostname="ctl")
            for node in NODES:
                self.procs[f"slurmd.{node}"] = self._spawn(["slurmd", "-D", "-N", node, "-f", str(self.conf)],
                                                           logs / f"slurmd.{node}.out", node=node, hostname=node)
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _wrap(self, cmd: list[str], node: str | None = None, hostname: str | None = None) -> list[str]:
        """`cmd` in a private mount namespace (our hosts and resolv.conf), in `node`'s network namespace if
        given, with its own UTS namespace and `hostname` if given."""
        enter = ["nsenter", f"--net=/run/netns/{self.netns[node]}"] if node else []
        if hostname:
            return [*enter, "unshare", "-m", "-u", "sh", "-c", _EXEC_NAMED, str(self.root), hostname, *cmd]
        return [*enter, "unshare", "-m", "sh", "-c", _EXEC, str(self.root), *cmd]

    def _spawn(self, cmd: list[str], log: Path, node: str | None = None, hostname: str | None = None) -> subprocess.Popen:
        return super()._spawn(self._wrap(cmd, node, hostname), log)

    def _net_up(self) -> None:
        self.subnet = _free_subnet(os.getpid())
        hosts = list(self.subnet.hosts())
        ctl = str(hosts[0])
        self.addr = {"ctl": ctl, **{n: str(hosts[9 + i]) for i, n in enumerate(NODES, 1)}}
        prefix = self.subnet.prefixlen
        for name in (self.bridge, *(v[0] for v in self.veth.values())):
            if Path(f"/sys/class/net/{name}").exists():
                raise RuntimeError(f"interface {name} exists already (a leftover of another run?)")
        for ns in self.netns.values():
            if Path(f"/run/netns/{ns}").exists():
                raise RuntimeError(f"network namespace {ns} exists already (a leftover of another run?)")
        # the first namespace tells whether this machine can make them at all
        first = next(iter(self.netns.values()))
        made = _sh("ip", "netns", "add", first, check=False)
        if made.returncode:
            if Path(f"/run/netns/{first}").exists():  # a half-made one
                _sh("ip", "netns", "del", first, check=False)
            raise NetnsUnavailable(f"ip netns add failed: {made.stderr.strip()}")
        self._made_netns.append(first)
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        self._made_links.append(self.bridge)
        self._no_ipv6(None, self.bridge)
        _sh("ip", "addr", "add", f"{ctl}/{prefix}", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for node in NODES:
            ns, (host_side, node_side) = self.netns[node], self.veth[node]
            if ns not in self._made_netns:
                _sh("ip", "netns", "add", ns)
                self._made_netns.append(ns)
            self._no_ipv6(ns, "all")
            self._no_ipv6(ns, "default")
            _sh("ip", "link", "add", host_side, "type", "veth", "peer", "name", node_side)
            self._made_links.append(host_side)
            self._no_ipv6(None, host_side)
            _sh("ip", "link", "set", node_side, "netns", ns)
            _sh("ip", "link", "set", host_side, "master", self.bridge, "up")
            self._no_ipv6(ns, node_side)
            _sh("ip", "-n", ns, "addr", "add", f"{self.addr[node]}/{prefix}", "dev", node_side)
            _sh("ip", "-n", ns, "link", "set", node_side, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            routes = _sh("ip", "-n", ns, "-4", "route", "show").stdout
            assert "default" not in routes, f"{ns} has a default route: {routes}"

    @staticmethod
    def _no_ipv6(ns: str | None, dev: str) -> None:
        key = f"net.ipv6.conf.{dev}.disable_ipv6=1"
        cmd = ["sysctl", "-qw", key]
        if ns:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        probe = ["test", "-d", "/proc/sys/net/ipv6"]
        if _sh(*(["ip", "netns", "exec", ns] if ns else []), *probe, check=False).returncode:
            return  # no IPv6 in this kernel / namespace at all
        _sh(*cmd)

    def _write_name_files(self) -> None:
        """The hosts file (this machine's, plus ctl and the nodes) and resolv.conf every slurm process sees."""
        real_hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else "127.0.0.1 localhost\n"
        ours = "".join(f"{self.addr[name]} {name}\n" for name in ("ctl", *NODES))
        (self.root / "hosts").write_text(real_hosts.rstrip("\n") + "\n" + ours)
        (self.root / "resolv.conf").write_text("nameserver 127.0.0.1\n")

    def _write_conf(self) -> None:
        r = self.root
        for sub in ("state", "log", "tmp"):
            (r / sub).mkdir(exist_ok=True)
        (r / "tmp").chmod(0o1777)
        for node in NODES:  # SlurmdSpoolDir=.../%n and TmpFS=.../%n are not created by slurmd
            (r / "spool" / node).mkdir(parents=True, exist_ok=True)
            (r / "tmp" / node).mkdir(exist_ok=True)
            (r / "tmp" / node).chmod(0o1777)
        ctld_port, d_port = _free_ports(2)  # slurmd listens inside fresh namespaces: any port is free there
        lines = [
            *conf_lines(r, self.socket, "bratsbench-2nodes", f"ctl({self.addr['ctl']})", ctld_port, d_port, per_node=True),
            "SlurmdTimeout=10",
            "MessageTimeout=10",
            "KillWait=5",
            # pmix puts its client folder at TmpFS/spmix_appdir_<uid>_<job>.<step>: one shared /tmp collides
            f"TmpFS={r / 'tmp' / '%n'}",
            *(f"NodeName={n} NodeAddr={self.addr[n]} NodeHostname={n} CPUs=1 RealMemory=1000 State=UNKNOWN" for n in NODES),
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
        self.conf.write_text("\n".join(lines))

    def _wait_idle(self) -> None:
        want = " ".join(f"{n} idle" for n in NODES)

        def idle() -> bool:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split("\n")
            out = " ".join(sorted(line.strip() for line in out if line.strip()))
            if any(state.startswith(("drain", "down", "fail")) for state in out.split()[1::2]):
                raise RuntimeError(f"nodes are {out}: {self.run(['sinfo', '-R'], check=False).stdout.strip()}\n{self.logs()}")
            return out == want

        self._wait(idle, "both nodes did not become idle", None)

    # -- use ------------------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        """A client command with our hosts/resolv.conf (and SLURM_CONF from `env`, default self.env)."""
        return super().run(self._wrap(list(cmd)), check=check, env=env, **kw)

    def run_in_node(self, node: str, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        """`cmd` inside `node`'s network namespace, with our hosts/resolv.conf (what its slurmd's jobs see)."""
        return super().run(self._wrap(list(cmd), node=node), check=check, **kw)

    def node_pids(self, node: str) -> list[int]:
        """The PIDs inside `node`'s network namespace (its slurmd, slurmstepd and job tasks)."""
        out = _sh("ip", "netns", "pids", self.netns[node], check=False).stdout
        return [int(p) for p in out.split()]

    # -- teardown -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel jobs, stop the daemons by PID, kill what is left in the node namespaces, delete the network."""
        try:
            ctld = self.procs.get("slurmctld")
            if ctld is not None and ctld.poll() is None:
                self.run(["scancel", "--full", "--user", "root"], check=False)
                deadline = time.monotonic() + STOP_WAIT_S
                while time.monotonic() < deadline:
                    if not self.run(["squeue", "-h"], check=False).stdout.strip():
                        break
                    time.sleep(0.5)
            inside = [int(p) for ns in self._made_netns for p in _sh("ip", "netns", "pids", ns, check=False).stdout.split()]
            for node in NODES:
                self._stop_proc(f"slurmd.{node}")
            killed = []
            for ns in self._made_netns:  # slurmstepd and job tasks outlive slurmd: by PID, found through the netns
                for pid in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                        killed.append(int(pid))
                    except (ProcessLookupError, ValueError):
                        pass
            _wait_reaped(inside + killed + self._stepd_zombies())
            self._kill_job_leftovers()  # a job's processes in the root namespace, if any (they carry our SLURM_CONF)
            for name in ("slurmctld", "munged"):
                self._stop_proc(name)
        finally:
            self._net_down()
            shutil.rmtree(self.root, ignore_errors=True)
        if self.etc_digest:
            assert _etc_digest() == self.etc_digest, "/etc/hosts or /etc/resolv.conf changed while the cluster ran"

    def _stepd_zombies(self) -> list[int]:
        """slurmstepd processes that exited since we started, not yet reaped by init (a step that ended before
        teardown is no longer in its namespace's `ip netns pids`)."""
        found = []
        for proc in psutil.process_iter(["name", "ppid", "status", "create_time"]):
            info = proc.info
            if (info["name"] == "slurmstepd" and info["status"] == psutil.STATUS_ZOMBIE and info["ppid"] == 1
                    and (info["create_time"] or 0) >= self.started_at):
                found.append(proc.pid)
        return found

    def _stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_WAIT_S)

    def _net_down(self) -> None:
        for ns in reversed(self._made_netns):
            deadline = time.monotonic() + 10  # killed processes may take a moment to leave the namespace
            while _sh("ip", "netns", "pids", ns, check=False).stdout.split() and time.monotonic() < deadline:
                time.sleep(0.2)
            _sh("ip", "netns", "del", ns, check=False)
        self._made_netns.clear()
        for link in reversed(self._made_links):  # the veths went with their namespace's end; the bridge is ours
            if Path(f"/sys/class/net/{link}").exists():
                _sh("ip", "link", "del", link, check=False)
        self._made_links.clear()

    def leftovers(self) -> list[str]:
        """What of ours still exists: namespaces and links (empty after `stop()`)."""
        found = [f"netns {ns}" for ns in self.netns.values() if Path(f"/run/netns/{ns}").exists()]
        return found + [f"link {name}" for name in (self.bridge, *(v[0] for v in self.veth.values()))
                        if Path(f"/sys/class/net/{name}").exists()]


@pytest.fixture(scope="module")
def slurm_two_nodes():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM/munge/iproute2/util-linux binaries not installed ({', '.join(missing)}); "
                    "scripts/setup.sh installs them as root")
    if os.geteuid() != 0:
        pytest.skip("a two-node SLURM cluster needs root (network namespaces, slurmd runs jobs as their owner)")
    cluster = TwoNodeCluster()
    try:
        cluster.start()
    except NetnsUnavailable as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.leftovers(), f"left after teardown: {cluster.leftovers()}"
