"""This host: OS, kernel, CPU model and topology, the ISA features that decide Conv3D speed, memory, and the GPUs
`nvidia-smi` lists (standard library only; probed once per process)."""

from __future__ import annotations

import csv
import functools
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Sequence

SUBPROCESS_TIMEOUT_S = 5.0
# the features that change what oneDNN/Eigen can use for Conv3D and (b)float16 on x86 and Arm, in this order
ISA_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm",
)
NVIDIA_SMI_FIELDS = ("index", "name", "memory.total", "compute_cap", "driver_version", "uuid")
_GPU_KEYS = {"index": "index", "name": "model", "memory.total": "memory_mib", "compute_cap": "compute_capability",
             "driver_version": "driver", "uuid": "uuid"}


@functools.lru_cache(maxsize=None)
def host_probe() -> dict[str, Any]:
    """This host: hostname, OS, kernel, CPU, memory, GPUs. Cached: a packed sweep runs many points per process."""
    cpu = cpu_info()
    gpus, smi, gpu_error = nvidia_gpus()
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        **cpu,
        "mem_gib": _mem_gib(),
        "gpus": gpus,
        "nvidia_smi": smi,
        "gpu_error": gpu_error,
    }


def _os_name(path: str = "/etc/os-release") -> str:
    try:
        with open(path) as fh:
            fields = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
    except OSError:
        return platform.platform()
    name = fields.get("PRETTY_NAME") or f"{fields.get('NAME', '')} {fields.get('VERSION_ID', '')}".strip()
    return name.strip('"') or platform.platform()


def cpu_info(cpuinfo: str = "/proc/cpuinfo", sysfs: str = "/sys/devices/system/cpu") -> dict[str, Any]:
    """CPU model, sockets, physical cores, hardware threads, NUMA nodes and ISA features, from /proc/cpuinfo
    (what a VM's hypervisor exposes), with sysfs topology where cpuinfo has no physical/core ids (Arm)."""
    model = None
    flags: set[str] = set()
    threads = 0
    packages: set[str] = set()
    cores: set[tuple[str, str]] = set()
    phys = core = None
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if not sep:
                    continue
                key, value = key.strip(), value.strip()
                if key == "processor":
                    if phys is not None and core is not None:
                        cores.add((phys, core))
                    threads += 1
                    phys = core = None
                elif key == "physical id":
                    phys = value
                    packages.add(value)
                elif key == "core id":
                    core = value
                elif model is None and key in ("model name", "Model Name", "cpu model", "Processor"):
                    model = value
                elif not flags and key in ("flags", "Features"):
                    flags = set(value.split())
        if phys is not None and core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    sockets, n_cores = len(packages) or None, len(cores) or None
    if sockets is None or n_cores is None:
        sockets, n_cores = _sysfs_topology(sysfs, sockets, n_cores)
    threads = threads or os.cpu_count()
    return {
        "cpu_model": model or _lscpu_model() or platform.processor() or None,
        "sockets": sockets or 1,
        "cores": n_cores or threads,
        "threads": threads,
        "numa_nodes": len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or None,
        "isa": [f for f in ISA_FEATURES if f in flags],
    }


def _sysfs_topology(sysfs: str, sockets: int | None, cores: int | None) -> tuple[int | None, int | None]:
    pkgs, pairs = set(), set()
    for topo in Path(sysfs).glob("cpu[0-9]*/topology"):
        try:
            pkg = (topo / "physical_package_id").read_text().strip()
            pairs.add((pkg, (topo / "core_id").read_text().strip()))
            pkgs.add(pkg)
        except OSError:
            continue
    return sockets or len(pkgs) or None, cores or len(pairs) or None


def _lscpu_model() -> str | None:
    """Arm's /proc/cpuinfo names no model; lscpu decodes the part number."""
    out = command_output(["lscpu"])
    for line in (out or "").splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip() or None
    return None


def _mem_gib(meminfo: str = "/proc/meminfo") -> float | None:
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def nvidia_gpus(fields: Sequence[str] = NVIDIA_SMI_FIELDS) -> tuple[list[dict[str, Any]], bool, str | None]:
    """(GPUs, whether nvidia-smi exists, its error). A driver too old for a field (compute_cap needs R510+)
    rejects the whole query: the fields it names as invalid are dropped and reported as None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], False, None
    asked = list(fields)
    while asked:
        try:
            out = subprocess.run([exe, f"--query-gpu={','.join(asked)}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            return [], True, f"nvidia-smi: {exc}"
        if out.returncode == 0:
            return parse_nvidia_smi(out.stdout, asked, fields), True, None
        text = (out.stdout + out.stderr).strip()
        invalid = re.findall(r'Field "([^"]+)" is not a valid field to query', text)
        if not invalid or not set(invalid) & set(asked):
            return [], True, f"nvidia-smi exit status {out.returncode}: {text.splitlines()[0] if text else 'no output'}"
        asked = [f for f in asked if f not in invalid]
    return [], True, "nvidia-smi knows none of the queried fields"


def parse_nvidia_smi(text: str, asked: Sequence[str], fields: Sequence[str] = NVIDIA_SMI_FIELDS) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=<asked> --format=csv,noheader,nounits` as the record's GPU entries; a field
    that was not asked for, or that the driver reports as [N/A] / [Not Supported], is None."""
    gpus = []
    for row in csv.reader(text.strip().splitlines(), skipinitialspace=True):
        if not row or len(row) != len(asked):
            continue
        values = dict(zip(asked, (v.strip() for v in row)))
        gpu: dict[str, Any] = {}
        for name in fields:
            value = values.get(name)
            if value is None or value.strip("[]").lower() in ("n/a", "not supported", "unknown error", ""):
                value = None
            elif name in ("index", "memory.total"):
                try:
                    value = int(float(value.split()[0]))
                except ValueError:
                    value = None
            gpu[_GPU_KEYS.get(name, name)] = value
        gpus.append(gpu)
    return gpus


def command_output(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None
