"""Whether this node can run bratsbench as it should, read from its `system` probe: each check says ok, warn or
FAIL, what it saw and the fix. `bratsbench env` prints them; a FAIL means a run would fail or silently measure
something else (a GPU node training on its CPU)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from harness.system import gpus_expected

OK, WARN, FAIL = "ok", "warn", "FAIL"
HOROVOD_VERSION = "0.28.1"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements"


@dataclass(frozen=True)
class Check:
    status: str  # ok | warn | FAIL
    name: str
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pinned(package: str, fallback: str | None = None) -> str | None:
    """The version of `package` pinned for this Python (requirements/*.txt of the checkout), else `fallback`."""
    name = "py313.txt" if sys.version_info >= (3, 13) else "py311-py312.txt"
    try:
        lines = (REQUIREMENTS / name).read_text().splitlines()
    except OSError:
        return fallback
    for line in lines:
        spec = line.split(";")[0].strip()
        if spec.lower().replace("_", "-").startswith(f"{package.lower()}=="):
            return spec.split("==", 1)[1].strip()
    return fallback


def horovod_rebuild(gpu: bool) -> str:
    """The command that rebuilds Horovod against the installed TensorFlow with MPI, Gloo (and NCCL on GPUs)."""
    nccl = "HOROVOD_GPU_OPERATIONS=NCCL " if gpu else ""
    return (f"{nccl}HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 "
            f"HOROVOD_WITHOUT_MXNET=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 pip install --no-cache-dir --no-build-isolation "
            f"--no-deps --force-reinstall horovod=={HOROVOD_VERSION}")


def checks(system: Mapping[str, Any], env: Mapping[str, str] | None = None, *, tf_log: list[str] | None = None,
           profile_plugin: Callable[[], str | None] | None = None,
           which: Callable[[str], str | None] = shutil.which) -> list[Check]:
    """The readiness checks of this host's `system` section (from `system.collect`, source "env").

    `tf_log`: what TensorFlow printed while it looked for GPUs (its dlopen errors); `profile_plugin`: returns why
    the profile plugin cannot be imported, or None."""
    env = os.environ if env is None else env
    host = (system.get("hosts") or [{}])[0]
    tf = system.get("tensorflow") or {}
    hvd = system.get("horovod")
    driver_gpus = host.get("gpus") or []
    # a GPU node, unless CUDA_VISIBLE_DEVICES hides its GPUs on purpose (then Horovod needs no NCCL)
    gpu_node = bool(driver_gpus) and (env.get("CUDA_VISIBLE_DEVICES") is None or gpus_expected(env) is not None)
    found = [_tensorflow(tf), _gpus(host, tf, env, tf_log or []), _horovod(hvd, gpu_node, which),
             _mpi(system.get("mpi"), which), _profiler(tf, profile_plugin)]
    if not driver_gpus:
        found.append(_cpu_bf16(host))
    return [c for c in found if c is not None]


def _tensorflow(tf: Mapping[str, Any]) -> Check:
    if not tf.get("version"):
        return Check(FAIL, "tensorflow", f"TensorFlow {tf.get('error') or 'not installed'}",
                     f"make setup (or: pip install -r requirements/py311-py312.txt; 3.13: requirements/py313.txt)")
    if tf.get("error"):
        return Check(FAIL, "tensorflow", f"TensorFlow {tf['version']} does not import: {tf['error']}",
                     f'pip install --force-reinstall "tensorflow=={tf["version"]}"')
    onednn = {True: "oneDNN on", False: "oneDNN off", None: "oneDNN unknown"}[tf.get("onednn")]
    return Check(OK, "tensorflow", f"TensorFlow {tf['version']}, {_build(tf)}, {onednn}")


def _build(tf: Mapping[str, Any]) -> str:
    if tf.get("build") == "cuda":
        return f"CUDA {tf.get('cuda_version')} / cuDNN {tf.get('cudnn_version')} build"
    return {"rocm": "ROCm build", "cpu": "CPU-only build"}.get(tf.get("build"), "unknown build")


def _gpus(host: Mapping[str, Any], tf: Mapping[str, Any], env: Mapping[str, str], tf_log: list[str]) -> Check:
    driver = host.get("gpus") or []
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    expected = gpus_expected(env)
    seen = tf.get("gpus_seen")
    cvd_text = "unset" if cvd is None else repr(cvd)
    version = tf.get("version") or pinned("tensorflow")
    cuda_fix = f'pip install "tensorflow[and-cuda]=={version}"'
    if host.get("gpu_error"):
        return Check(FAIL, "gpus", f"nvidia-smi is installed but fails: {host['gpu_error']}",
                     "the NVIDIA driver on this node is not working: ask the cluster's support, or run on another node")
    if not driver:
        if expected:
            return Check(FAIL, "gpus", f"{expected} names GPUs, but the driver lists none "
                         f"({'nvidia-smi lists no GPU' if host.get('nvidia_smi') else 'no nvidia-smi on PATH'})",
                         "run on a GPU node (e.g. sbatch --gres=gpu:N), or unset CUDA_VISIBLE_DEVICES to run on CPU")
        return Check(OK, "gpus", "no GPU (no nvidia-smi): runs on CPU" if not host.get("nvidia_smi")
                     else "nvidia-smi lists no GPU: runs on CPU")
    models = ", ".join(dict.fromkeys(str(g.get("model")) for g in driver))
    seen_text = "TensorFlow sees " + ("?" if seen is None else str(seen))
    detail = f"driver lists {len(driver)} ({models}, driver {driver[0].get('driver')}), {seen_text}, CUDA_VISIBLE_DEVICES {cvd_text}"
    if not tf.get("version") or tf.get("error"):
        return Check(WARN, "gpus", detail + ": TensorFlow does not import", None)
    if cvd is not None and not expected:
        return Check(WARN, "gpus", detail + ": CUDA_VISIBLE_DEVICES hides every GPU, runs on CPU",
                     "unset CUDA_VISIBLE_DEVICES (or ask the scheduler for GPUs: --gres=gpu:N) to use them")
    if tf.get("build") not in ("cuda", "rocm"):
        return Check(FAIL, "gpus", detail + f": TensorFlow is a {_build(tf)}, training would run on CPU",
                     f"pip uninstall -y tensorflow-cpu && {cuda_fix}")
    if not seen:
        log = ("; TensorFlow says: " + " | ".join(tf_log[:3])) if tf_log else ""
        return Check(FAIL, "gpus", detail + f": the CUDA libraries of its {_build(tf)} are missing or do not match "
                     f"the driver, training would run on CPU{log}",
                     f"{cuda_fix} (brings CUDA and cuDNN as pip packages); to see why: TF_CPP_MIN_LOG_LEVEL=0 "
                     "python -c \"import tensorflow as tf; print(tf.config.list_physical_devices('GPU'))\"")
    named = len([d for d in cvd.split(",") if d.strip()]) if cvd else len(driver)
    if seen < min(named, len(driver)):
        return Check(WARN, "gpus", detail + f": TensorFlow sees fewer than the {min(named, len(driver))} expected", None)
    cc = _compute_capability(driver, tf)
    if cc:
        return cc
    return Check(OK, "gpus", detail)


def _compute_capability(driver: list[Mapping[str, Any]], tf: Mapping[str, Any]) -> Check | None:
    """A GPU older than TensorFlow's oldest compiled architecture cannot run it; one newer than its newest runs
    kernels JIT-compiled from PTX (minutes at start-up, cached in ~/.nv/ComputeCache)."""
    archs = [a for a in tf.get("compute_capabilities") or [] if "_" in a]
    caps = {g.get("compute_capability") for g in driver} - {None}
    if not archs or not caps:
        return None
    numbers = sorted(int(a.split("_", 1)[1]) for a in archs if a.split("_", 1)[1].isdigit())
    for cap in sorted(caps):
        try:
            n = round(float(cap) * 10)
        except ValueError:
            continue
        if numbers and n < numbers[0]:
            return Check(FAIL, "gpus", f"compute capability {cap} is older than TensorFlow's oldest build target "
                         f"(sm_{numbers[0]})", "run on newer GPUs, or use a TensorFlow built for them")
        if numbers and n > numbers[-1]:
            return Check(WARN, "gpus", f"compute capability {cap} is newer than TensorFlow's newest build target "
                         f"({archs[-1]}): kernels are JIT-compiled from PTX at start-up",
                         "a newer TensorFlow (and Horovod built against it) targets these GPUs natively")
    return None


def _horovod(hvd: Mapping[str, Any] | None, gpus: bool, which: Callable[[str], str | None]) -> Check:
    if hvd is None:
        return Check(WARN, "horovod", "Horovod is not installed: --backend mwms only",
                     "scripts/setup.sh builds it on Python 3.11/3.12 (it does not build against TensorFlow >= 2.19)")
    if hvd.get("error"):
        return Check(FAIL, "horovod", f"Horovod {hvd.get('version')} does not import: {hvd['error']}",
                     horovod_rebuild(gpus))
    flags = ", ".join(f"{name} {'yes' if hvd.get(key) else 'no'}" for key, name in
                      (("mpi", "MPI"), ("gloo", "Gloo"), ("nccl", "NCCL")))
    detail = f"Horovod {hvd.get('version')}: {flags}"
    if hvd.get("mpi") is None:
        return Check(WARN, "horovod", detail + " (build flags unknown: TensorFlow did not import)", None)
    if gpus and not hvd.get("nccl"):
        return Check(FAIL, "horovod", detail + ": GPU gradients would go through host memory",
                     horovod_rebuild(True) + "  (with the CUDA toolkit and NCCL loaded)")
    if not hvd.get("mpi") and not hvd.get("gloo"):
        return Check(FAIL, "horovod", detail + ": no controller to start ranks with", horovod_rebuild(gpus))
    if which("mpirun") and not hvd.get("mpi"):
        return Check(WARN, "horovod", detail + ": mpirun is on PATH but Horovod has no MPI (mpirun launches and "
                     "packed sweeps need it)", horovod_rebuild(gpus))
    return Check(OK, "horovod", detail)


def _mpi(mpi: Mapping[str, Any] | None, which: Callable[[str], str | None]) -> Check:
    lib = f"{mpi.get('library')} {mpi.get('version') or ''}".strip() if mpi else None
    if importlib.util.find_spec("mpi4py") is None:
        return Check(WARN, "mpi", f"{lib or 'no MPI library found'}; mpi4py is not installed (packed sweeps "
                     "and `comm --backend mpi` need it)", f"pip install mpi4py=={pinned('mpi4py', '4.1.2')}")
    if not which("mpirun"):
        return Check(WARN if lib is None else OK, "mpi", f"{lib or 'no MPI library found'}; no mpirun on PATH "
                     "(launch with srun or horovodrun)", None)
    return Check(OK, "mpi", f"{lib or 'unknown MPI'} (mpirun), mpi4py")


def _profiler(tf: Mapping[str, Any], profile_plugin: Callable[[], str | None] | None) -> Check | None:
    if profile_plugin is None or not tf.get("version") or tf.get("error"):
        return None
    problem = profile_plugin()
    if problem:
        name = "xprof" if pinned("xprof") else "tensorboard-plugin-profile"
        return Check(WARN, "profiler", f"the profile plugin does not import ({problem}): --profile-steps traces "
                     "cannot be analysed", f"pip install {name}=={pinned(name, tf.get('version'))}")
    return Check(OK, "profiler", "profile plugin imports (--profile-steps traces can be analysed)")


def _cpu_bf16(host: Mapping[str, Any]) -> Check:
    native = [f for f in host.get("isa") or [] if f in ("avx512_bf16", "amx_bf16")]
    if native:
        return Check(OK, "cpu", f"bfloat16 instructions ({', '.join(native)}): --amp on CPU runs bfloat16 natively")
    return Check(WARN, "cpu", "no bfloat16 instructions (avx512_bf16, amx_bf16): --amp on CPU emulates bfloat16 "
                 "and runs slower than float32", "leave --amp off on this CPU")
