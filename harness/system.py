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

import ast
import csv
import functools
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

SUBPROCESS_TIMEOUT_S = 5.0
# the features that change what oneDNN/Eigen can use for Conv3D and (b)float16 on x86 and Arm, in this order
ISA_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm",
)
NVIDIA_SMI_FIELDS = ("index", "name", "memory.total", "compute_cap", "driver_version", "uuid")
_GPU_KEYS = {"index": "index", "name": "model", "memory.total": "memory_mib", "compute_cap": "compute_capability",
             "driver_version": "driver", "uuid": "uuid"}
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
TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-aarch64",
                    "tf-nightly", "tf-nightly-cpu")


class Place(Protocol):
    """Where a rank is: harness.engines.World has these (the base layer knows no engine)."""

    rank: int
    local_rank: int
    device: str


# --- per host ---------------------------------------------------------------------------------------------


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
    out = _run(["lscpu"])
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


# --- per rank ---------------------------------------------------------------------------------------------


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


# --- once per run -----------------------------------------------------------------------------------------


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


def tensorflow_build(import_tensorflow: bool = True) -> dict[str, Any]:
    """TensorFlow's version and build: "cuda" / "rocm" / "cpu", its CUDA and cuDNN versions and the compute
    capabilities it was compiled for (tf.sysconfig.get_build_info()), oneDNN on or off, and how many GPUs it lists.

    import_tensorflow=False (launchers) imports nothing: the build is read from TensorFlow's build_info.py and
    gpus_seen is None unless TensorFlow is already imported. Not installed: {"version": None, "error": ...}."""
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError) as exc:
        spec, error = None, f"{type(exc).__name__}: {exc}"
    else:
        error = "not installed"
    if spec is None:
        return {"version": None, "error": error}
    tf = sys.modules.get("tensorflow")
    if tf is None and import_tensorflow:
        try:
            import tensorflow as tf  # noqa: F811
        except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
            return {"version": _dist_version(TF_DISTRIBUTIONS), "error": f"{type(exc).__name__}: {exc}"}
    if tf is not None:
        info = dict(tf.sysconfig.get_build_info())
        version = tf.__version__
    else:
        info = _static_build_info(spec)
        version = _dist_version(TF_DISTRIBUTIONS)
    build = "cuda" if info.get("is_cuda_build") else "rocm" if info.get("is_rocm_build") else "cpu"
    return {
        "version": version,
        "build": build if info else None,
        "cuda_version": info.get("cuda_version"),
        "cudnn_version": info.get("cudnn_version"),
        "compute_capabilities": info.get("cuda_compute_capabilities"),
        "onednn": _onednn(tf),
        "gpus_seen": len(tf.config.list_physical_devices("GPU")) if tf is not None else None,
    }


def _static_build_info(spec: Any) -> dict[str, Any]:
    """tensorflow/python/platform/build_info.py read without importing TensorFlow (a literal dict)."""
    roots = list(spec.submodule_search_locations or [])
    for root in roots:
        path = Path(root) / "python" / "platform" / "build_info.py"
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "build_info" for t in node.targets):
                value = node.value
                try:
                    if isinstance(value, ast.Call) and value.args:  # collections.OrderedDict([...])
                        return dict(ast.literal_eval(value.args[0]))
                    return dict(ast.literal_eval(value))
                except (ValueError, TypeError, SyntaxError):
                    return {}
    return {}


def _onednn(tf: Any) -> bool | None:
    """Whether oneDNN's optimisations are on: TensorFlow's own answer once imported (the build and
    TF_ENABLE_ONEDNN_OPTS), else the variable, else TensorFlow's default (on for x86-64 Linux builds)."""
    if tf is not None:
        try:
            from tensorflow.python.util import _pywrap_util_port

            return bool(_pywrap_util_port.IsMklEnabled())
        except (ImportError, AttributeError):
            pass
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if value is not None:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return True if platform.machine() in ("x86_64", "AMD64") else None


def _dist_version(names: Sequence[str]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def horovod_build(import_horovod: bool = False) -> dict[str, Any] | None:
    """Horovod's version and build flags (MPI, Gloo, NCCL), None when it is not installed. The flags need
    horovod.tensorflow, which imports TensorFlow (0.2 s on a CPU node): read where a Horovod run already imported
    it, or when asked (`bratsbench env`); else None (an MWMS run's record)."""
    if importlib.util.find_spec("horovod") is None:
        return None
    found: dict[str, Any] = {"version": _dist_version(("horovod",)), "mpi": None, "gloo": None, "nccl": None}
    if not (import_horovod or "horovod.tensorflow" in sys.modules):
        return found
    if importlib.util.find_spec("tensorflow") is None:
        found["error"] = "TensorFlow is not installed (horovod.tensorflow needs it)"
        return found
    try:
        import horovod.tensorflow as hvd
    except Exception as exc:  # noqa: BLE001 - e.g. built against another TensorFlow: reported, not raised
        found["error"] = f"{type(exc).__name__}: {exc}"
        return found
    found.update(mpi=bool(hvd.mpi_built()), gloo=bool(hvd.gloo_built()), nccl=bool(hvd.nccl_built()))
    return found


@functools.lru_cache(maxsize=None)
def mpi_library() -> dict[str, Any] | None:
    """The MPI library: mpi4py's, where this process already imported mpi4py.MPI (importing it here would
    initialise MPI), else what `mpirun --version` says; None without either."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        text, source = mpi.Get_library_version(), "mpi4py"
    else:
        exe = shutil.which("mpirun")
        text, source = (_run([exe, "--version"]) if exe else None), "mpirun"
    if not text:
        return None
    library, version = parse_mpi_version(text)
    return {"library": library, "version": version, "source": source}


def parse_mpi_version(text: str) -> tuple[str | None, str | None]:
    """(library, version) from MPI_Get_library_version or `mpirun --version` text of Open MPI, MPICH, MVAPICH,
    Intel MPI; (first line, None) when the text is of none of them."""
    patterns = (
        ("Open MPI", r"Open MPI\)? v?(\d[\w.]*)"),
        ("Intel MPI", r"Intel\(R\) MPI Library[^\d]*?(\d[\w.]*)"),
        ("MVAPICH", r"MVAPICH2? Version\s*:?\s*(\d[\w.]*)"),
        ("MPICH", r"(?:MPICH Version\s*:|HYDRA build details:\s*Version:)\s*(\d[\w.]*)"),
    )
    for library, pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return library, found.group(1)
    first = text.strip().splitlines()[0].strip() if text.strip() else None
    return first, None


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
    root = root or Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return {"commit": None, "modified": None}
    out = _run(["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "--untracked-files=no"])
    if out is None:
        return {"commit": None, "modified": None}
    commit = next((line.split()[2] for line in out.splitlines() if line.startswith("# branch.oid ")), None)
    modified = any(line and not line.startswith("#") for line in out.splitlines())
    return {"commit": commit if commit and commit != "(initial)" else None, "modified": modified}


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


# --- the section ------------------------------------------------------------------------------------------


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
