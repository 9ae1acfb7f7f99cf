"""The one home for starting runs: the launch command, its supervision, per-rank logs, and the record of a
run that died.

Launchers: none (np=1), horovodrun (Gloo), mpirun, srun (inside a SLURM allocation). Sweeps, the transfer
study, the demo and the cluster array tasks all start `bratsbench train` through `launch_train`, so they share
one log layout (RunDir.logs) and one settling rule: a run is "ok" only when its process exited 0 AND its record
says ok; anything else is recorded "failed" (or "interrupted") with the exit code, a reason and the log tail.

Supervision: the launcher runs in its own session; its whole process tree dies on timeout, on a lost rank
(a rank gone while the job still runs RANK_GRACE_S: a rank killed with -9 leaves the others blocked in a
collective), or on Ctrl-C. Horovod's ranks sit in other sessions than the launcher, so the tree is walked with
psutil as well as the process group killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import psutil

from harness.errors import UserError
from harness.record import utc_now
from harness.rundir import RunDir, rank_log

LOCAL_LAUNCHERS = ("horovodrun", "mpirun", "mwms")  # start ranks on this machine (mwms: `bratsbench launch`)
LAUNCHERS = (*LOCAL_LAUNCHERS, "srun")  # srun only inside a SLURM allocation
TAIL_LINES = 40


# --- commands -------------------------------------------------------------------------------------------


def bratsbench_command() -> list[str]:
    """The bratsbench executable of this Python environment (falls back to `python -m harness`)."""
    exe = Path(sys.executable).parent / "bratsbench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "harness"]


def _horovodrun() -> str:
    exe = Path(sys.executable).parent / "horovodrun"
    return str(exe) if exe.exists() else "horovodrun"


def allocation_hosts(tasks_per_node: int) -> str:
    """horovodrun's -H for the nodes of the current SLURM or PBS allocation ("node1:2,node2:2")."""
    nodelist, nodefile = os.environ.get("SLURM_JOB_NODELIST"), os.environ.get("PBS_NODEFILE")
    if nodelist:
        try:
            names = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                   check=True, timeout=30).stdout.split()
        except (OSError, subprocess.SubprocessError) as exc:
            raise UserError(f"cannot expand SLURM_JOB_NODELIST {nodelist!r} with scontrol: {exc}") from None
    elif nodefile:
        try:
            names = list(dict.fromkeys(Path(nodefile).read_text().split()))
        except OSError as exc:
            raise UserError(f"PBS_NODEFILE {nodefile}: {exc.strerror}") from None
    else:
        raise UserError("horovodrun inside an allocation needs SLURM_JOB_NODELIST or PBS_NODEFILE (run it from a job script)")
    return ",".join(f"{name}:{tasks_per_node}" for name in names)


def launch_command(
    np_: int,
    cmd: Sequence[str],
    launcher: str = "horovodrun",
    logs: str | Path | None = None,
    *,
    allocation: bool = False,
    srun_mpi: str = "pmix",
    hosts: str | None = None,
) -> list[str]:
    """`cmd` on np_ ranks. Locally (allocation=False): as is for one rank, else horovodrun (Gloo) or mpirun on
    localhost. In a scheduler allocation: srun (always, so the step is accounted), or horovodrun / mpirun over
    the allocation's nodes. `logs` gets horovodrun's / mpirun's per-rank output files."""
    cmd = list(cmd)
    if launcher not in LAUNCHERS:
        raise UserError(f"launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if launcher == "mwms" and allocation:
        raise UserError("MWMS workers in an allocation start with srun (TF_CONFIG comes from SLURM's variables)")
    if launcher == "srun":
        if not allocation:
            raise UserError("launcher srun runs inside a SLURM allocation (bratsbench sweep emit); use horovodrun or mpirun here")
        return ["srun", f"--ntasks={np_}", f"--mpi={srun_mpi}", "--kill-on-bad-exit=1", "--label", *cmd]
    if np_ == 1:
        return cmd
    n = str(np_)
    if launcher == "mwms":
        return [*bratsbench_command(), "launch", "--backend", "mwms", "-np", n, *(["--logs", str(logs)] if logs else []),
                "--", *cmd]
    out = ["--output-filename", str(logs)] if logs else []
    if launcher == "mpirun":
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        local = [] if allocation else ["--oversubscribe", *out]
        return ["mpirun", "-np", n, *root, *local, *cmd]
    return [_horovodrun(), "-np", n, "-H", hosts or f"localhost:{n}", "--gloo", *out, *cmd]


def launch_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"  # logs stay current, so a killed run still has a useful tail
    return env


def launcher_for(backend: str | None, launcher: str) -> str:
    """The local launcher of a run: MWMS runs need ours; Horovod runs take the sweep's (horovodrun or mpirun).
    A run that leaves the backend open gets this environment's default engine."""
    from harness.engines import default_backend

    return "mwms" if (backend or default_backend()) == "mwms" else launcher


# --- MWMS workers on this machine (bratsbench launch --backend mwms) ------------------------------------


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


# --- supervision ----------------------------------------------------------------------------------------


RANK_GRACE_S = 30.0  # a rank gone while the job still runs this long -> the job is killed
KILL_WAIT_S = 5.0  # SIGTERM, then SIGKILL after this long


@dataclass
class Outcome:
    """How a launched run ended, as seen from outside it."""

    exit_code: int | None
    seconds: float
    reason: str | None = None  # None, or why the runner killed it


def is_rank_process(proc: psutil.Process, command: str = "train") -> bool:
    """A rank: `bratsbench COMMAND ...` or `python -m harness COMMAND ...` (not a launcher or shell)."""
    try:
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return False
    for i in range(min(2, len(argv))):
        if Path(argv[i]).name == "bratsbench" and argv[i + 1 : i + 2] == [command]:
            return True
        if argv[i : i + 3] == ["-m", "harness", command]:
            return True
    return False


def supervise(
    cmd: Sequence[str],
    *,
    stdout: IO | int | None = None,
    stderr: IO | int | None = None,
    timeout_s: float | None = None,
    grace_s: float = RANK_GRACE_S,
    env: dict[str, str] | None = None,
    poll_s: float = 0.5,
    is_rank: Callable[[psutil.Process], bool] = is_rank_process,
    cpus: Sequence[int] | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Run `cmd` in a new session; kill its whole tree on timeout, on a lost rank, or on Ctrl-C (re-raised).

    `cpus`: the cores the command (and every process it starts) may use, for runs side by side. `stop`: set by
    another thread to kill the command as Ctrl-C would (a new session does not see the terminal's Ctrl-C)."""
    start = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    ranks: dict[int, psutil.Process] = {}
    lost_at: float | None = None
    try:
        if cpus:  # set before the child gets past its imports; its ranks and threads inherit it
            os.sched_setaffinity(proc.pid, set(cpus))
        while True:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            try:
                code = proc.wait(timeout=poll_s)
                return Outcome(code, time.monotonic() - start)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if timeout_s and now - start > timeout_s:
                kill_tree(proc)
                return Outcome(proc.returncode, now - start, f"timed out after {timeout_s:g} s; killed")
            if lost_at is None and _rank_lost(proc, ranks, is_rank):
                lost_at = now
            if lost_at is not None and now - lost_at > grace_s:
                kill_tree(proc)
                return Outcome(proc.returncode, now - start, f"a rank exited but the job kept running for {grace_s:g} s; killed")
    except BaseException:
        kill_tree(proc)
        raise


def _rank_lost(proc: subprocess.Popen, ranks: dict[int, psutil.Process], is_rank: Callable) -> bool:
    """Track rank processes under `proc`; True once one of them has exited (or is a zombie)."""
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            if child.pid not in ranks and is_rank(child):
                ranks[child.pid] = child
    except psutil.Error:
        return False
    for rank in ranks.values():
        try:
            if not rank.is_running() or rank.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            continue
    return False


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL the launcher's process group and every descendant (ranks may sit in other sessions)."""
    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.Error:
        tree = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in tree:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        if _wait_gone(tree, KILL_WAIT_S):
            break
    try:
        proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL failed; nothing more to do
        pass


def _wait_gone(procs: list[psutil.Process], timeout: float) -> bool:
    """True once every process has exited or is a zombie (orphaned zombies may never be reaped in a container)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.05)


# --- logs and records -----------------------------------------------------------------------------------


def log_tail(run: RunDir, lines: int = TAIL_LINES) -> list[str]:
    """Last log lines of a run: the launcher's log (all ranks), else rank 0's stderr, else its stdout."""
    for path in (run.launcher_log, run.rank_log(0, "stderr"), run.rank_log(0, "stdout")):
        tail = file_tail(path, lines)
        if tail:
            return tail
    return []


def file_tail(path: Path, lines: int = TAIL_LINES, limit: int = 64 * 1024) -> list[str]:
    """The last non-blank lines of a log, as a terminal would show them (a tqdm bar's carriage-return redraws
    collapsed to the last state); only its last `limit` bytes are read (a huge log costs nothing), and the line they cut
    into is left out. [] if unreadable."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit - 1))
            data = fh.read()
    except OSError:
        return []
    if size > limit:  # the byte before the window says whether its first line is whole
        before, data = data[:1], data[1:]
        if before != b"\n":
            data = data.partition(b"\n")[2]
    text = data.decode("utf-8", "replace")
    out = []
    for line in text.split("\n"):
        states = [s.rstrip() for s in line.split("\r") if s.strip()]
        if states:
            out.append(states[-1])
    return out[-lines:]


_HVD_FIRST = re.compile(r"first process to do so was:\s*Process name: (\S+)\s*Exit code: (-?\d+)", re.S)
_MWMS_FIRST = re.compile(r"bratsbench launch: worker (\d+) (killed by SIG\w+|exited with code -?\d+)")
_SRUN_TASK = re.compile(r"srun: error: (\S+): tasks? ([\d,-]+): (.+)")


def describe(outcome: Outcome, record: dict | None, tail: list[str]) -> str:
    """Why a run did not end ok, in one line."""
    code = outcome.exit_code
    if outcome.reason:
        return outcome.reason
    found = _MWMS_FIRST.search("\n".join(tail))
    if found:  # our MWMS launcher names the worker that failed first (the others only saw a broken collective)
        return f"MWMS worker {found.group(1)} {found.group(2)}; the launcher stopped the others (exit code {code})"
    if record and record.get("error"):
        return str(record["error"])
    found = _SRUN_TASK.search("\n".join(tail))
    if found:  # srun names the node and task (rank) that failed first; --kill-on-bad-exit stopped the others
        node, task, what = found.groups()
        return f"{'rank' if task.isdigit() else 'ranks'} {task} on {node}: {what.strip()}; srun stopped the step (exit code {code})"
    found = _HVD_FIRST.search("\n".join(tail))
    if found:  # horovodrun names the rank that failed first
        rank, rank_code = found.group(1), int(found.group(2))
        how = f" ({signal.Signals(rank_code - 128).name})" if 128 < rank_code < 128 + 32 else ""
        return f"rank {rank} exited with code {rank_code}{how}; horovodrun stopped the job (exit code {code})"
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if record is None:
        return f"exit code {code} and no run record written"
    if record.get("status") == "running":
        return f"exit code {code} with the run record still 'running' (a rank died or the run was killed)"
    return f"exit code {code}"


def blank_record(run: RunDir, np_: int) -> dict[str, Any]:
    """A schema-1 record for a run that never wrote one, from its config file (no TensorFlow import)."""
    from harness.record import new_record

    try:
        import json

        config = json.loads(run.config.read_text())
    except (OSError, ValueError):
        config = {"out": str(run.path)}
    record = new_record(config, probe=False)
    record.update(status="failed", world_size=np_)
    record["extra"].update(config.get("tags") or {})
    return record


def settle(run: RunDir, outcome: Outcome, *, np_: int = 1, annotate: dict[str, Any] | None = None,
           status: str | None = None) -> dict[str, Any]:
    """Make the run record tell the truth about how the run ended; returns {status, exit_code, seconds, error}.

    ok only when the process exited 0 AND the trainer recorded "ok"; anything else becomes "failed" (or
    `status`, e.g. "interrupted") with exit_code, error and log_tail. `annotate` is merged into record.extra."""
    record = run.read_record()
    seconds = round(outcome.seconds, 2)
    if status is None and outcome.exit_code == 0 and outcome.reason is None and record and record.get("status") == "ok":
        if annotate:
            record.setdefault("extra", {}).update(annotate)
            run.write_record(record)
        return {"status": "ok", "exit_code": 0, "seconds": seconds, "error": None}
    tail = log_tail(run)
    error = "interrupted by the user" if status == "interrupted" else describe(outcome, record, tail)
    if record is None:
        record = blank_record(run, np_)
    record.update(status=status or "failed", exit_code=130 if status == "interrupted" else outcome.exit_code,
                  error=error, log_tail=tail)
    if not record.get("finished_at"):
        record["finished_at"] = utc_now()
    if record.get("wall_s") is None:
        record["wall_s"] = outcome.seconds
    record.setdefault("extra", {}).update(annotate or {})
    run.write_record(record)
    return {"status": record["status"], "exit_code": record["exit_code"], "seconds": seconds, "error": error}


def fail_unstarted(run: RunDir, error: str, *, np_: int = 1, annotate: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a run that was never launched (e.g. its pre-training failed) as failed."""
    run.create()
    record = blank_record(run, np_)
    record.update(error=error, finished_at=utc_now(), wall_s=0.0, log_tail=[])
    record["extra"].update(annotate or {})
    run.write_record(record)
    return {"status": "failed", "exit_code": None, "seconds": 0.0, "error": error}


# --- launching a run ------------------------------------------------------------------------------------


def train_args(run: RunDir) -> list[str]:
    """`bratsbench train` of a run folder whose config file holds the whole RunConfig."""
    return ["train", "--config", str(run.config), "--out", str(run.path)]


def launch_train(
    run: RunDir,
    np_: int,
    *,
    launcher: str = "horovodrun",
    allocation: bool = False,
    srun_mpi: str = "pmix",
    hosts: str | None = None,
    timeout_s: float | None = None,
    grace_s: float = RANK_GRACE_S,
    annotate: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    cpus: Sequence[int] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Launch `bratsbench train` for `run` (its config file must exist), supervise it and settle its record.

    One log layout (RunDir): np=1 without a launcher writes rank 0's stdout and stderr; a launcher writes the
    launcher log (all ranks) and, where it can, per-rank files. KeyboardInterrupt: the run is killed,
    recorded 'interrupted' and the interrupt re-raised."""
    run.reset_logs()
    run.record.unlink(missing_ok=True)  # a new attempt: an old record's error must not be reported as this one's
    cmd = launch_command(np_, bratsbench_command() + train_args(run), launcher, run.logs,
                         allocation=allocation, srun_mpi=srun_mpi, hosts=hosts)
    env = launch_env(env)
    start = time.monotonic()
    try:
        if np_ == 1 and launcher != "srun":  # no launcher: the process's own streams are rank 0's
            run.rank_log(0).parent.mkdir(parents=True)
            with open(run.rank_log(0, "stdout"), "wb") as out, open(run.rank_log(0, "stderr"), "wb") as err:
                outcome = supervise(cmd, stdout=out, stderr=err, timeout_s=timeout_s, grace_s=grace_s, env=env,
                                    cpus=cpus, stop=stop)
        else:
            with open(run.launcher_log, "wb") as out:
                outcome = supervise(cmd, stdout=out, stderr=subprocess.STDOUT, timeout_s=timeout_s, grace_s=grace_s, env=env,
                                    cpus=cpus, stop=stop)
    except KeyboardInterrupt:
        settle(run, Outcome(130, time.monotonic() - start), np_=np_, annotate=annotate, status="interrupted")
        raise
    return settle(run, outcome, np_=np_, annotate=annotate)


def run_logged(cmd: Sequence[str], log: Path, timeout_s: float | None = None, env: dict[str, str] | None = None,
               cpus: Sequence[int] | None = None, stop: threading.Event | None = None) -> int | None:
    """Run a helper command (not a training run) supervised, stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return supervise(cmd, stdout=fh, stderr=fh, timeout_s=timeout_s, env=launch_env(env), cpus=cpus,
                         stop=stop).exit_code


def sigterm_as_interrupt() -> Callable[[], None]:
    """SIGTERM (scancel, kill) is handled like Ctrl-C: the current run is killed and recorded 'interrupted'.
    Returns the function that restores the previous handler."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)
