"""MWMS workers on this machine (`bratsbench launch --backend mwms`): TF_CONFIG on free loopback ports, per-rank
logs, and the other workers stopped as soon as one fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Sequence

from harness.launch.commands import launch_env
from harness.launch.supervise import KILL_WAIT_S
from harness.rundir import rank_log


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free TCP ports (held open together while chosen, so they differ)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _relay(stream: IO[bytes], rank: int, name: str, log: IO[bytes], out: IO[bytes]) -> None:
    """Copy a worker's stream into its own log file and, prefixed with its rank, into ours."""
    for line in iter(stream.readline, b""):
        log.write(line)
        log.flush()
        out.write(f"[{rank}]<{name}>:".encode() + line)
        out.flush()


def run_mwms_workers(np_: int, cmd: Sequence[str], logs: Path | None = None, host: str = "127.0.0.1",
                     poll_s: float = 0.2) -> int:
    """Start np_ workers of `cmd` with TF_CONFIG on free loopback ports; per-rank logs (RunDir layout under
    `logs`); when one worker fails, the others are stopped at once. Returns the first failure's exit code
    (128 + signal for a killed worker), else 0."""
    import threading

    from harness.engines.mwms import tf_config

    ports = free_ports(np_, host)
    workers = [f"{host}:{p}" for p in ports]
    logs = Path(logs) if logs else None
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    files: list[IO[bytes]] = []
    try:
        for rank in range(np_):
            env = launch_env(dict(os.environ, TF_CONFIG=tf_config(workers, rank)))
            proc = subprocess.Popen(list(cmd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(proc)
            for name, stream, out in (("stdout", proc.stdout, sys.stdout.buffer), ("stderr", proc.stderr, sys.stderr.buffer)):
                if logs is not None:
                    path = rank_log(logs, rank, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    log = open(path, "wb")
                else:
                    log = open(os.devnull, "wb")
                files.append(log)
                t = threading.Thread(target=_relay, args=(stream, rank, name, log, out), daemon=True)
                t.start()
                threads.append(t)
        while True:
            codes = [p.poll() for p in procs]
            failed = [(rank, c) for rank, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                print(f"bratsbench launch: worker {rank} {how}; stopping the other workers", file=sys.stderr, flush=True)
                return 128 - code if code < 0 else code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + KILL_WAIT_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in threads:
            t.join(timeout=5)
        for f in files:
            f.close()
