"""Distributed engines behind one interface: `horovod` (horovodrun / mpirun / srun) and `mwms`
(TensorFlow's MultiWorkerMirroredStrategy). Choosing one is the only place that names them."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from harness.config import BACKENDS
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.engines.base import Engine, LocalEngine, World

__all__ = ["BACKENDS", "Engine", "LocalEngine", "World", "default_backend", "make_engine", "unavailable"]


def __getattr__(name: str) -> Any:
    """Engine, LocalEngine and World import TensorFlow: loaded on first use, so launchers and sweeps stay light."""
    if name in ("Engine", "LocalEngine", "World"):
        from harness.engines import base

        return getattr(base, name)
    raise AttributeError(name)


def unavailable(name: str) -> str | None:
    """Why engine `name` cannot run in this environment, or None when it can (no TensorFlow op is run)."""
    if name not in BACKENDS:
        return f"backend {name!r} is not one of {', '.join(BACKENDS)}"
    if name == "horovod" and importlib.util.find_spec("horovod") is None:
        return ("backend horovod: Horovod is not installed in this environment (it builds against TensorFlow <= 2.18, "
                "i.e. Python 3.11/3.12 here); use --backend mwms")
    return None


def default_backend() -> str:
    """MWMS when this process is an MWMS worker (TF_CONFIG set, e.g. by `bratsbench launch`); else Horovod where
    it is installed, else MWMS."""
    import os

    if os.environ.get("TF_CONFIG"):
        return "mwms"
    return "horovod" if unavailable("horovod") is None else "mwms"


def make_engine(name: str | None, **placement: Any) -> "Engine":
    """The engine for a run's backend (None: one process, no engine). `placement` (Horovod only): `comm`, an
    mpi4py communicator of some of the job's ranks, and `node_rank`/`node_size` among the job's ranks on this
    node (a packed sweep)."""
    if placement and name != "horovod":
        raise UserError(f"backend {name}: only Horovod runs on a given communicator (a packed sweep)")
    if name is None:
        from harness.engines.base import LocalEngine

        return LocalEngine()
    problem = unavailable(name)
    if problem:
        raise UserError(problem)
    if name == "horovod":
        from harness.engines.horovod import HorovodEngine

        return HorovodEngine(**placement)
    from harness.engines.mwms import MWMSEngine

    return MWMSEngine()
