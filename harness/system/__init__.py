"""What a run ran on: the record's `system` section, from a probe run on every rank and gathered to rank 0.

Per host: OS, kernel, CPU model, sockets/cores/threads, the ISA features that decide Conv3D speed, memory, the GPUs
`nvidia-smi` lists. Per rank: its allowed cores, TensorFlow's thread pools, the device its step runs on. Once:
TensorFlow's build, Horovod's build flags, the MPI library, the scheduler's job, the performance-relevant
environment variables, the git commit, and a short `label` that names the system in tables.

Standard library only, and no TensorFlow import unless asked for: the probe also runs in launchers and in
`bratsbench env` on a node whose environment is still being set up. Each part reports what it could not find
(None, or an `error`) instead of failing the run it describes.
"""

from __future__ import annotations

import platform
import re
from typing import Any, Callable, Mapping, Protocol, Sequence

from harness.system.context import (ENV_NAMES, ENV_PREFIXES, GPU_ENV, env_vars, git_state, gpus_expected, rank_probe,
                                    scheduler)
from harness.system.host import (ISA_FEATURES, NVIDIA_SMI_FIELDS, command_output, cpu_info, host_probe, nvidia_gpus,
                                 parse_nvidia_smi)
from harness.system.software import (TF_DISTRIBUTIONS, horovod_build, mpi_library, parse_mpi_version,
                                     tensorflow_build)

__all__ = [
    "ENV_NAMES", "ENV_PREFIXES", "GPU_ENV", "ISA_FEATURES", "NVIDIA_SMI_FIELDS", "TF_DISTRIBUTIONS", "Place", "collect",
    "command_output", "cpu_info", "cpu_ranges", "env_vars", "git_state", "gpus_expected", "horovod_build",
    "host_probe", "label", "mpi_library", "nvidia_gpus", "parse_mpi_version", "parse_nvidia_smi", "rank_probe",
    "scheduler", "short_cpu_model", "tensorflow_build",
]


class Place(Protocol):
    """Where a rank is: harness.engines.World has these (the base layer knows no engine)."""

    rank: int
    local_rank: int
    device: str


def collect(place: Place | None, allgather: Callable[[Any], list[Any]] | None = None, *,
            import_tensorflow: bool = False, source: str = "ranks") -> dict[str, Any]:
    """The record's `system` section: every rank probes itself (and its host, when it is the host's first local
    rank) and `allgather`s it; the run-wide parts are probed on rank 0 only, so the section is complete on rank
    0 (the rank that writes the record). `place`: the rank's World (None: this process alone, e.g. a launcher).
    `source`: "ranks" (the run's own ranks), "launcher" (a launcher writing the record of a run that never
    did: its own host), or "env" (`bratsbench env`)."""
    rank = place.rank if place is not None else 0
    local_rank = place.local_rank if place is not None else None
    mine = {"rank": rank_probe(rank, local_rank, place.device if place is not None else None),
            "host": host_probe() if not local_rank else None}
    gathered = allgather(mine) if allgather is not None else [mine]
    ranks = [p["rank"] for p in gathered] if source != "launcher" else []
    hosts: dict[str, dict] = {}
    for p in gathered:
        if p["host"] is not None:
            hosts.setdefault(p["host"]["hostname"], p["host"])
    for r in ranks:  # a host whose first local rank sent nothing (not expected): named, not described
        hosts.setdefault(r["host"], {"hostname": r["host"]})
    section: dict[str, Any] = {"label": None, "source": source, "hosts": list(hosts.values()), "ranks": ranks}
    if rank != 0:
        return section
    section.update(
        python=platform.python_version(),
        tensorflow=tensorflow_build(import_tensorflow),
        horovod=horovod_build(import_tensorflow),
        mpi=mpi_library(),
        scheduler=scheduler(),
        env=env_vars(),
        git=git_state(),
    )
    section["label"] = label(section)
    return section


def label(section: Mapping[str, Any]) -> str:
    """A short name of the system for tables, stable across the runs of one machine and stack (it does not depend
    on a run's threads or rank count): "AMD EPYC 9B14 (AVX-512), 96 cores, TF 2.18.1 CPU",
    "4x NVIDIA H100 80GB HBM3, TF 2.18.1 CUDA 12.5", "2 nodes: ..."."""
    hosts = [h for h in section.get("hosts") or [] if "cpu_model" in h]
    described = list(dict.fromkeys(_host_label(h) for h in hosts)) or ["unknown machine"]
    machine = " + ".join(described)
    n_hosts = len(section.get("hosts") or [])
    if n_hosts > 1:
        machine = f"{n_hosts} nodes: {machine}"
    return f"{machine}, {_stack_label(section)}"


def _host_label(host: Mapping[str, Any]) -> str:
    gpus = host.get("gpus") or []
    if gpus:
        models = list(dict.fromkeys(g.get("model") or "GPU" for g in gpus))
        return " + ".join(f"{sum(1 for g in gpus if (g.get('model') or 'GPU') == m)}x {m}" for m in models)
    isa = set(host.get("isa") or [])
    tag = ("AMX" if "amx_bf16" in isa else "AVX-512" if "avx512f" in isa else "AVX2" if "avx2" in isa
           else "SVE" if "sve" in isa else "NEON" if "asimd" in isa else None)
    sockets = host.get("sockets") or 1
    name = short_cpu_model(host.get("cpu_model")) + (f" ({tag})" if tag else "")
    return f"{f'{sockets}x ' if sockets > 1 else ''}{name}, {host.get('cores')} cores"


def _stack_label(section: Mapping[str, Any]) -> str:
    tf = section.get("tensorflow") or {}
    if not tf.get("version"):
        return "no TensorFlow"
    on_gpu = any(str(r.get("device") or "").startswith("GPU") for r in section.get("ranks") or [])
    if not section.get("ranks"):
        on_gpu = bool(tf.get("gpus_seen"))
    if on_gpu and tf.get("build") == "cuda" and tf.get("cuda_version"):
        return f"TF {tf['version']} CUDA {'.'.join(str(tf['cuda_version']).split('.')[:2])}"
    if on_gpu:
        return f"TF {tf['version']} {'ROCm' if tf.get('build') == 'rocm' else 'GPU'}"
    return f"TF {tf['version']} CPU"


def short_cpu_model(model: str | None) -> str:
    """"Intel(R) Xeon(R) Platinum 8480+" -> "Intel Xeon Platinum 8480+"; "AMD EPYC 9B14 96-Core Processor" ->
    "AMD EPYC 9B14"."""
    if not model:
        return "unknown CPU"
    text = re.sub(r"\((R|TM|tm|r)\)", "", model)
    text = re.sub(r"\s+@\s*[\d.]+\s*GHz", "", text)
    text = re.sub(r"\b(\d+-Core|CPU|Processor)\b", "", text)
    return re.sub(r"\s+", " ", text).strip() or model


def cpu_ranges(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8", as taskset and SLURM write CPU lists."""
    parts: list[tuple[int, int]] = []
    for cpu in sorted(cpus):
        if parts and cpu == parts[-1][1] + 1:
            parts[-1] = (parts[-1][0], cpu)
        else:
            parts.append((cpu, cpu))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
