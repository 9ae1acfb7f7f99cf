"""Launch commands: `bratsbench train` (or any command) on np ranks with horovodrun, mpirun, srun or our MWMS
launcher, locally or over a scheduler allocation's nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from harness.errors import UserError
from harness.native_log import filtered_command


LOCAL_LAUNCHERS = ("horovodrun", "mpirun", "mwms")  # start ranks on this machine (mwms: `bratsbench launch`)
LAUNCHERS = (*LOCAL_LAUNCHERS, "srun")  # srun only inside a SLURM allocation
# Open MPI binds each rank to one core when np <= 2 (to a socket above): a rank's TensorFlow threads would then
# share that one core. Unbound, each rank sizes its thread pools from the cores the process may use divided by the
# ranks on its node (harness.engines.cores), which is what a scheduler's allocation gives the job; srun binds per
# task by itself (--cpus-per-task), so its ranks need no division.
MPIRUN_BINDING = ("--bind-to", "none")


def bratsbench_command() -> list[str]:
    """The bratsbench executable of this Python environment (falls back to `python -m harness`)."""
    exe = Path(sys.executable).parent / "bratsbench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "harness"]


def _horovodrun() -> list[str]:
    """horovodrun imports TensorFlow, so its own CUDA-probe lines are filtered out of the launcher log too."""
    exe = Path(sys.executable).parent / "horovodrun"
    return filtered_command([str(exe) if exe.exists() else "horovodrun"])


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
        return ["mpirun", "-np", n, *root, *local, *MPIRUN_BINDING, *cmd]
    return [*_horovodrun(), "-np", n, "-H", hosts or f"localhost:{n}", "--gloo", *out, *cmd]


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
