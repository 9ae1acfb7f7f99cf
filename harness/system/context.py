"""Where and how this run runs: each rank's cores, threads and device, whether the environment expects GPUs, the
scheduler's job, the environment variables that change performance, the git state of the code."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, Mapping

from harness.system.host import command_output

# environment variables recorded when set: a fixed list of prefixes and names that change performance or placement
# (TensorFlow's TF_* families only: Terraform's TF_VAR_*, TF_CLI_*, TF_TOKEN_* share the prefix)
ENV_PREFIXES = ("OMP_", "KMP_", "MKL_", "ONEDNN_", "DNNL_", "XLA_", "HOROVOD_", "NCCL_", "CUDA_", "OMPI_MCA_", "UCX_",
                "I_MPI_", "BRATSBENCH_", "TF_CPP_", "TF_ENABLE_", "TF_DISABLE_", "TF_XLA_", "TF_GPU_", "TF_CUDA_",
                "TF_CUDNN_", "TF_ONEDNN_", "TF_MKL_", "TF_NUM_", "TF_DETERMINISTIC", "TF_FORCE_", "TF_USE_",
                "TF_AUTOTUNE", "TF_SYNC_")
ENV_NAMES = ("TF_CONFIG", "NVIDIA_VISIBLE_DEVICES", "LD_PRELOAD", "MALLOC_ARENA_MAX", "SLURM_CPUS_PER_TASK", "SLURM_CPU_BIND",
             "SLURM_CPU_BIND_TYPE", "SLURM_CPU_BIND_LIST", "SLURM_DISTRIBUTION", "SLURM_HINT", "SLURM_NTASKS",
             "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS",
             "SLURM_GPUS_PER_TASK", "SLURM_MPI_TYPE", "SLURM_EXCLUSIVE", "PBS_NCPUS", "NCPUS")
_SECRET = re.compile(r"SECRET|TOKEN|PASSW|KEY|CREDENTIAL", re.I)
# a rank's identity and rendezvous, set by the launcher: not settings, and different on every rank
_IDENTITY = re.compile(r"HOROVOD_((LOCAL_|CROSS_)?(RANK|SIZE)|HOSTNAME|GLOO_RENDEZVOUS_(ADDR|PORT))")
ENV_VALUE_MAX = 400  # a longer value (TF_CONFIG of many workers) is kept as a summary
# GPUs named by the environment: CUDA's own variable first (set explicitly, even empty, it decides), then SLURM's
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def rank_probe(rank: int = 0, local_rank: int | None = 0, device: str | None = None) -> dict[str, Any]:
    """This process: its host, allowed cores, TensorFlow's thread pools (where TensorFlow is imported; 0 means
    TensorFlow's default), the device its step runs on, CUDA_VISIBLE_DEVICES."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    intra = inter = None
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "config"):
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        inter = tf.config.threading.get_inter_op_parallelism_threads()
    return {"rank": rank, "host": socket.gethostname(), "local_rank": local_rank, "cores": cores,
            "n_cores": len(cores), "intra_op_threads": intra, "inter_op_threads": inter, "device": device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def gpus_expected(env: Mapping[str, str]) -> str | None:
    """Why the environment says this process should have GPUs ("CUDA_VISIBLE_DEVICES=0,1"), or None.

    CUDA_VISIBLE_DEVICES, when set, decides alone: empty, "-1" (or any list starting with a negative index, where
    CUDA stops) and SLURM's "NoDevFiles" hide every GPU on purpose. Otherwise SLURM_STEP_GPUS (device ids) or
    SLURM_GPUS_ON_NODE (a count above 0) naming devices mean the scheduler gave this step GPUs."""
    for name in GPU_ENV:
        value = env.get(name)
        if value is None:
            continue
        value = value.strip()
        first = value.split(",")[0].strip()
        named = bool(first) and first != "NoDevFiles" and not re.fullmatch(r"-\d+", first)
        if name == "SLURM_GPUS_ON_NODE":
            named = first.isdigit() and int(first) > 0
        if named:
            return f"{name}={value}"
        if name == "CUDA_VISIBLE_DEVICES":
            return None
    return None


def scheduler(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The SLURM or PBS job this process runs in (values as the scheduler sets them), None outside one."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return {
            "kind": "slurm", "job_id": env.get("SLURM_JOB_ID"), "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
            "array_task_id": env.get("SLURM_ARRAY_TASK_ID"), "step_id": env.get("SLURM_STEP_ID"),
            "job_name": env.get("SLURM_JOB_NAME"), "cluster": env.get("SLURM_CLUSTER_NAME"),
            "partition": env.get("SLURM_JOB_PARTITION"),
            "nodelist": env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"),
            "cpus_per_task": env.get("SLURM_CPUS_PER_TASK"), "restart_count": env.get("SLURM_RESTART_COUNT"),
        }
    if env.get("PBS_JOBID"):
        return {
            "kind": "pbs", "job_id": env.get("PBS_JOBID"), "array_job_id": env.get("PBS_ARRAY_ID"),
            "array_task_id": env.get("PBS_ARRAY_INDEX") or env.get("PBS_ARRAYID"), "step_id": None,
            "job_name": env.get("PBS_JOBNAME"), "cluster": env.get("PBS_SERVER"), "partition": env.get("PBS_QUEUE"),
            "nodelist": _pbs_nodes(env.get("PBS_NODEFILE")), "cpus_per_task": env.get("NCPUS"),
            "restart_count": None,
        }
    return None


def _pbs_nodes(nodefile: str | None) -> str | None:
    if not nodefile:
        return None
    try:
        hosts = dict.fromkeys(line.strip() for line in Path(nodefile).read_text().splitlines() if line.strip())
    except OSError:
        return None
    return ",".join(hosts)


def env_vars(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The set variables of the fixed list, sorted; nothing whose name looks like a secret; a long value (TF_CONFIG
    of many workers) as a summary."""
    env = os.environ if env is None else env
    found = {}
    for name in sorted(env):
        if not (name.startswith(ENV_PREFIXES) or name in ENV_NAMES) or _SECRET.search(name) or _IDENTITY.fullmatch(name):
            continue
        value = env[name]
        if len(value) > ENV_VALUE_MAX:
            value = _summary(name, value)
        found[name] = value
    return found


def _summary(name: str, value: str) -> str:
    if name == "TF_CONFIG":
        import json

        try:
            config = json.loads(value)
            workers = config.get("cluster", {}).get("worker", [])
            task = config.get("task", {})
            return f"<{len(workers)} workers from {workers[0] if workers else '?'}, task {task.get('type')}:{task.get('index')}>"
        except (ValueError, AttributeError, TypeError):
            pass
    return f"{value[:ENV_VALUE_MAX]}... <{len(value)} chars>"


def git_state(root: Path | None = None) -> dict[str, Any]:
    """The package's git commit and whether its tracked files differ from it; None for both outside a checkout
    (a package installed into site-packages is not inside the checkout it came from, even in a venv within it)."""
    root = root or Path(__file__).resolve().parents[2]  # harness/system/context.py -> the checkout
    if not (root / ".git").exists():
        return {"commit": None, "modified": None}
    out = command_output(["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "--untracked-files=no"])
    if out is None:
        return {"commit": None, "modified": None}
    commit = next((line.split()[2] for line in out.splitlines() if line.startswith("# branch.oid ")), None)
    modified = any(line and not line.startswith("#") for line in out.splitlines())
    return {"commit": commit if commit and commit != "(initial)" else None, "modified": modified}
