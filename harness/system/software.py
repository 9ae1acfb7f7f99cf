"""The software stack: TensorFlow's build (read without importing it where asked), Horovod's build flags, the MPI
library."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from harness.system.host import command_output

TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-aarch64",
                    "tf-nightly", "tf-nightly-cpu")


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
        text, source = (command_output([exe, "--version"]) if exe else None), "mpirun"
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
