"""A real one-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd in a temp folder.

Needs root and Debian's slurm-wlm + munge (scripts/setup.sh installs them). Everything (key, sockets, state,
spool, logs, pid files) lives under one temp folder, ports are picked free, and every daemon is stopped by
its PID at teardown, after cancelling whatever jobs are left - also when the test failed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "srun")
START_TIMEOUT_S = 60


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def conf_lines(root: Path, socket: Path, cluster: str, ctld_host: str, ctld_port: int, d_port: int,
               per_node: bool = False) -> list[str]:
    """The slurm.conf lines both test clusters share (everything under `root`); `per_node`: one spool folder, pid
    file and log per node (%n), for several slurmd on one machine."""
    n = ".%n" if per_node else ""
    return [
        f"ClusterName={cluster}",
        f"SlurmctldHost={ctld_host}",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={d_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool' / '%n' if per_node else root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / f'slurmd{n}.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / f'slurmd{n}.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerParameters=sched_interval=1",
    ]


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env` is what sbatch/squeue/sinfo need (SLURM_CONF). `conf`:
    slurm.conf settings that replace (or add to) the shared ones, e.g. {"TaskPlugin": "task/affinity"}."""

    def __init__(self, root: Path | None = None, conf: dict[str, str] | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="bb-slurm-"))
        self.overrides = dict(conf or {})
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.sock"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- set-up ---------------------------------------------------------------------------------------
    def start(self) -> "SlurmCluster":
        try:
            self._start_munge()
            self._write_conf()
            logs = self.root / "log"
            self.procs["slurmctld"] = self._spawn(["slurmctld", "-D", "-f", str(self.conf)], logs / "slurmctld.out")
            self.procs["slurmd"] = self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"], logs / "slurmd.out")
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as fh:
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                    start_new_session=True)

    def _start_munge(self) -> None:
        munge_dir = self.socket.parent
        munge_dir.mkdir(parents=True)
        self.root.chmod(0o755)  # munged wants its socket's folders searchable by everyone
        munge_dir.chmod(0o755)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        try:
            user = pwd.getpwnam("munge")
            os.chown(key, user.pw_uid, user.pw_gid)
        except KeyError:
            pass  # no munge user: root owns the key, which munged accepts when it runs as root
        key.chmod(0o400)
        cmd = [
            "munged", "--force", "--foreground", "-S", str(self.socket), f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ]
        self.procs["munged"] = self._spawn(cmd, munge_dir / "munged.out")
        self._wait(lambda: self.socket.exists(), "munged did not create its socket", self.procs["munged"])

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        ctld_port, d_port = _free_ports(2)
        cpus = min(2, os.cpu_count() or 1)
        mem_mb = min(20000, int(psutil.virtual_memory().total / 2**20 * 0.9))
        r = self.root
        lines = conf_lines(r, self.socket, "bratsbench-test", "localhost", ctld_port, d_port)
        for key, value in self.overrides.items():
            lines = [line for line in lines if not line.startswith(f"{key}=")] + [f"{key}={value}"]
        self.conf.write_text(
            "\n".join(
                [
                    *lines,
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _wait_idle(self) -> None:
        def idle() -> bool:
            out = self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
            if out.startswith(("drain", "down", "fail")):
                raise RuntimeError(f"node is {out}: {self.run(['sinfo', '-R'], check=False).stdout.strip()}\n{self.logs()}")
            return out == "idle"

        self._wait(idle, "the node did not become idle", None)

    def _wait(self, ready, what: str, proc: subprocess.Popen | None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready():
                return
            if proc is not None and proc.poll() is not None:
                break
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}\n{self.logs()}")
            time.sleep(0.3)
        raise RuntimeError(f"{what} within {START_TIMEOUT_S} s\n{self.logs()}")

    # -- use ------------------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, env=env or self.env, capture_output=True, text=True, timeout=60, **kw)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def logs(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.root.rglob("*.log")) + sorted(self.root.rglob("*.out")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"== {path}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- teardown -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel leftover jobs, stop the daemons by PID (TERM, then KILL), remove the temp folder."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                out = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True, timeout=30).stdout
                if not out.strip():
                    break
                time.sleep(0.5)
        self._kill_job_leftovers()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_job_leftovers(self) -> None:
        """Processes of our jobs that outlived scancel: they carry our SLURM_CONF in their environment."""
        mine = str(self.conf)
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get("SLURM_CONF") == mine and proc.pid not in {
                    p.pid for p in self.procs.values()
                } and proc.ppid() != os.getpid():
                    proc.kill()
            except psutil.Error:
                continue


def running_cluster(conf: Callable[[SlurmCluster], dict[str, str]] | None = None) -> Iterator[SlurmCluster]:
    """A started cluster for a fixture (skipped where it cannot run), stopped afterwards; `conf(cluster)` gives
    slurm.conf settings of its own (it may name the cluster's folders)."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM/munge binaries not installed ({', '.join(missing)}); scripts/setup.sh installs them as root")
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (slurmd runs jobs as their owner)")
    cluster = SlurmCluster()
    cluster.overrides = conf(cluster) if conf else {}
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm_cluster():
    yield from running_cluster()
