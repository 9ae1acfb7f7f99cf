"""Launching one training run (`launch_train`) or a helper command (`run_logged`) supervised, and SIGTERM as Ctrl-C."""

from __future__ import annotations

import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from harness.launch.commands import bratsbench_command, launch_command, launch_env
from harness.launch.settle import RESUMED, settle
from harness.launch.supervise import RANK_GRACE_S, Outcome, supervise
from harness.record import utc_now
from harness.rundir import RunDir

if TYPE_CHECKING:
    from harness.launch.forward import Forwarder


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
    resume: bool = False,
    forward: "Forwarder | None" = None,
) -> dict[str, Any]:
    """Launch `bratsbench train` for `run` (its config file must exist), supervise it and settle its record.

    One log layout (RunDir): np=1 without a launcher writes rank 0's stdout and stderr; a launcher writes the
    launcher log (all ranks) and, where it can, per-rank files. KeyboardInterrupt: the run is killed,
    recorded 'interrupted' and the interrupt re-raised. `resume`: the config says train.resume; the record and
    the logs of the attempts before stay (the trainer keeps their history). `forward`: stop signals this process
    catches go to the ranks (a cluster array task), see `supervise`."""
    if resume:
        run.continue_logs()
    else:
        run.reset_logs()
        run.record.unlink(missing_ok=True)  # a new attempt: an old record's error must not be reported as this one's
    cmd = launch_command(np_, bratsbench_command() + train_args(run), launcher, run.logs,
                         allocation=allocation, srun_mpi=srun_mpi, hosts=hosts)
    env = launch_env(env)
    # how the ranks were started, with mpirun's binding (harness.launch.commands.MPIRUN_BINDING), for the record
    annotate = {**(annotate or {}), "launch": {"launcher": launcher if np_ > 1 or launcher == "srun" else None,
                                               "command": shlex.join(cmd)}}
    start = time.monotonic()
    try:
        if np_ == 1 and launcher != "srun":  # no launcher: the process's own streams are rank 0's
            run.rank_log(0).parent.mkdir(parents=True)
            with open(run.rank_log(0, "stdout"), "wb") as out, open(run.rank_log(0, "stderr"), "wb") as err:
                _mark_resumed(err, resume)
                outcome = supervise(cmd, stdout=out, stderr=err, timeout_s=timeout_s, grace_s=grace_s, env=env,
                                    cpus=cpus, stop=stop, forward=forward)
        else:
            with open(run.launcher_log, "ab" if resume else "wb") as out:
                _mark_resumed(out, resume)
                outcome = supervise(cmd, stdout=out, stderr=subprocess.STDOUT, timeout_s=timeout_s, grace_s=grace_s, env=env,
                                    cpus=cpus, stop=stop, forward=forward)
    except KeyboardInterrupt:
        settle(run, Outcome(130, time.monotonic() - start), np_=np_, annotate=annotate, status="interrupted")
        raise
    return settle(run, outcome, np_=np_, annotate=annotate)


def _mark_resumed(log: Any, resume: bool) -> None:
    if resume:
        log.write(f"--- {utc_now()}: {RESUMED} ---\n".encode())
        log.flush()


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
