"""The run record: one JSON file per run, the only thing later stages (sweeps, analysis) read.

Schema (version 1), top-level keys:
  schema_version  int, 1
  kind            "train" (a training or benchmark run)
  name            string|null (RunConfig.name); a sweep's run ID is in extra.sweep.run_id
  status          "ok" | "failed" | "interrupted"; exit_code int; error str|null
  started_at, finished_at  ISO-8601 UTC; wall_s float
  config          the whole RunConfig as a dict
  versions        python, tensorflow, horovod, numpy, bratsbench
  git_commit      str|null; hosts [str per rank]; world_size int
  engine          name (horovod | mwms | local | mpi), version, transport (mpi | gloo | nccl | ring | null):
                  what carried the collectives, which a communication baseline must match
  model           params_total, params_trainable, frozen_levels, forward_gflops_per_sample,
                  train_gflops_per_sample, first_conv (how input weights were initialised)
  timing          steps, warmup_steps, step_time_mean_s, p50/p90/p99, input_wait_share, throughput_samples_s,
                  global_batch, peak_host_mem_mb (max over ranks), peak_gpu_mem_mb|null, achieved_gflops_per_rank
  history         per epoch: epoch, loss, val {ET,TC,WT dice}, wall_s, step_time_mean_s, params_trainable
  metrics         final validation metrics (per region mean Dice and HD95) when validation ran
  extra           free-form, for commands built on top (transfer, sweeps)
  system          what the run ran on (harness/system/; train and comm records, and the launcher-written record
                  of a run that never wrote its own): every rank probes itself, rank 0 gathers.
                  label      short name of the system for tables ("AMD EPYC 9B14 (AVX-512), 96 cores, TF 2.18.1 CPU",
                             "4x NVIDIA H100 80GB HBM3, TF 2.18.1 CUDA 12.5", "2 nodes: ..."), stable across the runs
                             of one machine and stack
                  source     "ranks" (the run's ranks), "launcher" (the launcher's host: the ranks never wrote), "env"
                  hosts      per host, in order of first rank: hostname, os, kernel, arch, cpu_model, sockets, cores,
                             threads, numa_nodes, isa [avx2, avx512f, avx512_bf16, amx_bf16, ...], mem_gib,
                             gpus [{index, model, memory_mib, compute_capability, driver, uuid}] (nvidia-smi),
                             nvidia_smi (bool: on PATH), gpu_error (str|null: nvidia-smi failed)
                  ranks      per rank: rank, host, local_rank, cores [allowed CPU ids], n_cores, intra_op_threads,
                             inter_op_threads, device ("CPU" | "GPU:<n>"), cuda_visible_devices
                  python     version; tensorflow {version, build (cuda|rocm|cpu), cuda_version, cudnn_version,
                             compute_capabilities, onednn, gpus_seen} or {version: null, error}
                  horovod    {version, mpi, gloo, nccl} (flags null where the run did not load Horovod) | null
                  mpi        {library, version, source (mpi4py|mpirun)} | null
                  scheduler  {kind (slurm|pbs), job_id, array_job_id, array_task_id, step_id, job_name, cluster,
                             partition, nodelist, cpus_per_task, restart_count} (strings as set) | null
                  env        the set variables of a fixed list (OMP_*, KMP_*, MKL_*, TensorFlow's TF_*, XLA_*,
                             HOROVOD_*, NCCL_*, CUDA_*, OMPI_MCA_*, SLURM_CPUS_PER_TASK, ...); git {commit, modified}
                  versions, git_commit and hosts above stay for older readers.
Writes are atomic (temp file in the same folder, then os.replace) so concurrent readers never see a torn file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def utc_from(timestamp: float | None) -> str | None:
    """A time.time() value in the records' ISO-8601 UTC form (None stays None)."""
    if timestamp is None:
        return None
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON so that readers see either the old file or the whole new one, never part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _json_default(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_id(config: dict[str, Any]) -> str:
    """A short stable id derived from a config dict (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def git_commit() -> str | None:
    """The package checkout's commit (None when installed outside one); system.git_state also says if modified."""
    from harness.system import git_state

    return git_state()["commit"]


def versions() -> dict[str, str | None]:
    from harness import __version__

    found: dict[str, str | None] = {"python": platform.python_version(), "bratsbench": __version__}
    for module in ("tensorflow", "horovod", "numpy"):
        try:
            found[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is recorded as None
            found[module] = None
    return found


def read_record(path: str | Path) -> dict[str, Any]:
    """A record file, strictly: OSError, or ValueError when it is not JSON or not of this schema."""
    with open(path) as fh:
        record = json.load(fh)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {record.get('schema_version')} is not {SCHEMA_VERSION}")
    return record


def new_record(config: dict[str, Any], kind: str = "train", *, probe: bool = True) -> dict[str, Any]:
    """A fresh record for `config`; probe=False skips the version/git/host probes (no TensorFlow import)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "name": config.get("name"),
        "status": "running",
        "exit_code": None,
        "error": None,
        "started_at": utc_now(),
        "finished_at": None,
        "wall_s": None,
        "config": config,
        "versions": versions() if probe else {},
        "git_commit": git_commit() if probe else None,
        "hosts": [platform.node()] if probe else [],
        "world_size": 1,
        "model": {},
        "timing": {},
        "history": [],
        "metrics": {},
        "extra": {},
    }
