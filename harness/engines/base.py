"""What a distributed engine is: the world of ranks, gradient reduction inside the step, the broadcast of the
initial state, small gathers and means, timeline hooks and shutdown. Nothing outside `harness.engines` knows
which engine runs; the step math, the data shard, LR scaling, freezing, checkpoints and the record are shared.
"""

from __future__ import annotations

import abc
import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import tensorflow as tf

from harness.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    gpus: int
    threads: int
    device: str = "CPU"  # where this rank's step runs: "CPU" or "GPU:<index among the devices TensorFlow lists>"

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def cpu_bf16_instructions(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's bfloat16 instruction sets (AVX512_BF16, AMX_BF16), as the system probe reads them. Without them
    oneDNN emulates bfloat16 and `--amp` on CPU runs slower than float32 (measured: 6x slower on an AVX2-only AMD
    EPYC)."""
    from harness.system import cpu_info

    return sorted(f for f in cpu_info(cpuinfo)["isa"] if f in ("avx512_bf16", "amx_bf16"))


def physical_gpus() -> list[Any]:
    """The GPUs TensorFlow lists; the seam through which tests fake a GPU node."""
    return tf.config.list_physical_devices("GPU")


def _use_gpu(gpu: Any) -> None:
    """Make `gpu` this process's only GPU, memory growing as needed (before TensorFlow initialises devices)."""
    try:
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    except RuntimeError:  # devices already initialised in this process (a packed sweep's next point): keep them
        pass


def _hide_gpus() -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass


def pin_device(choice: str, local_rank: int, local_size: int, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """This rank's device, chosen before TensorFlow initialises any: one GPU per local rank, as Horovod's examples
    do (`gpus[local_rank]`), or the CPU. Returns (GPUs on the node, the device's name for the record).

    One-line errors where a run would otherwise go silently wrong: more ranks on a node than GPUs (two ranks on
    one GPU; NCCL fails with "Duplicate GPU detected"), and GPUs expected (`--device gpu`, or the environment
    naming devices) while TensorFlow sees none (a CPU-only wheel, or CUDA libraries it cannot load: it would
    train on the CPU and say so only in a log line TF_CPP_MIN_LOG_LEVEL hides)."""
    from harness.system import gpus_expected

    env = os.environ if env is None else env
    gpus = physical_gpus()
    if choice == "cpu":
        if gpus:
            _hide_gpus()
        return 0, "CPU"
    if not gpus:
        reason = "--device gpu" if choice == "gpu" else gpus_expected(env)
        if reason:
            raise UserError(f"{reason} asks for GPUs, but TensorFlow sees none: {why_no_gpu()}; `bratsbench env` "
                            f"checks the set-up, `--device cpu` runs on the CPU on purpose")
        return 0, "CPU"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    bound = len(gpus) == 1 and visible is not None and len(visible.split(",")) == 1  # one GPU given to this rank
    if len(gpus) < local_size and not bound:
        raise UserError(f"{local_size} ranks on this node but TensorFlow sees {len(gpus)} GPU(s)"
                        f"{f' (CUDA_VISIBLE_DEVICES={visible})' if visible is not None else ''}: ranks would share a "
                        f"GPU (NCCL: 'Duplicate GPU detected'); start at most {len(gpus)} rank(s) per node, or give "
                        f"each rank its own GPU (srun --gpus-per-task=1)")
    index = 0 if bound else local_rank
    _use_gpu(gpus[index])
    return len(gpus), f"GPU:{index}"


def why_no_gpu() -> str:
    """Why TensorFlow lists no GPU, from its build and the host's driver."""
    from harness.system import tensorflow_build

    build = tensorflow_build()
    version = build.get("version")
    fix = f"pip install 'tensorflow[and-cuda]=={version}'"
    if build.get("build") != "cuda":
        return f"TensorFlow {version} is a {build.get('build') or 'CPU-only'} build ({fix})"
    driver = "" if Path("/proc/driver/nvidia/version").exists() else " (this host has no NVIDIA driver loaded)"
    return (f"TensorFlow {version} is built for CUDA {build.get('cuda_version')} / cuDNN {build.get('cudnn_version')} "
            f"but could not load the CUDA libraries or the driver{driver} ({fix} brings the libraries; "
            f"TF_CPP_MIN_LOG_LEVEL=0 shows which one failed)")


def gpu_identity(device: str, env: Mapping[str, str] | None = None) -> str | None:
    """Which physical GPU `device` ("GPU:n" among the GPUs this process lists) is, for telling whether two ranks of
    a node share one: its UUID where nvidia-smi tells it, else its CUDA_VISIBLE_DEVICES entry or index."""
    if not device.startswith("GPU:"):
        return None
    env = os.environ if env is None else env
    index = int(device.split(":")[1])
    visible = [v.strip() for v in env["CUDA_VISIBLE_DEVICES"].split(",")] if env.get("CUDA_VISIBLE_DEVICES") else None
    entry = visible[index] if visible and index < len(visible) else str(index)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, env=dict(env)).stdout
    except (OSError, subprocess.SubprocessError):
        return entry
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.count(",") == 1]
    if len(rows) == 1:  # the node shows this process its own GPU only (cgroups): that is the one
        return rows[0][1]
    for smi_index, uuid in rows:
        if entry in (smi_index, uuid):
            return uuid
    return entry


def check_distinct_gpus(identities: Sequence[tuple[str, str | None]]) -> None:
    """(host, GPU identity) of every rank: a one-line error when two ranks of a node use one GPU."""
    seen: dict[tuple[str, str], int] = {}
    for rank, (host, gpu) in enumerate(identities):
        if gpu is None:
            continue
        if (host, gpu) in seen:
            raise UserError(f"ranks {seen[host, gpu]} and {rank} on {host} both use GPU {gpu}: give each rank its own "
                            f"GPU (one rank per GPU; srun --gpus-per-task=1), or NCCL fails with 'Duplicate GPU detected'")
        seen[host, gpu] = rank


def set_threads(threads: int | None, local_size: int) -> int:
    """CPU threads per rank: given, or from the cores this rank may use (harness.engines.cores). Must run before
    TensorFlow starts."""
    from harness.engines.cores import allowed_cores, cpus_per_task, threads_per_rank

    cores = len(allowed_cores())
    n_threads = threads or threads_per_rank(cores, local_size, cpus_per_task())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n_threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, n_threads)))
    except RuntimeError:  # TensorFlow already ran in this process (library use): keep its thread pools
        n_threads = tf.config.threading.get_intra_op_parallelism_threads() or cores
    return n_threads


class Engine(abc.ABC):
    """The interface; the defaults are those of one process (size 1, no collectives)."""

    name = "local"
    has_timeline = False  # an engine-level trace of its collectives (Horovod's timeline)
    # how gradients cross ranks unless a run says otherwise: what this engine's references do
    default_grad_reduction = "per_tensor"
    world: World

    @abc.abstractmethod
    def init(self, threads: int | None = None, timeline: bool = False, device: str = "auto") -> World:
        """Start the engine (before any other TensorFlow op) and pin this rank's device (`pin_device`: auto, cpu
        or gpu) and threads."""

    def version(self) -> str | None:
        return None

    def transport(self) -> str | None:
        """What carries this engine's collectives (after init): e.g. "mpi", "gloo", "nccl", "ring"; None alone."""
        return None

    def describe(self) -> dict[str, Any]:
        """The record's `engine` field: which engine, which release, over what (a baseline must match all three)."""
        return {"name": self.name, "version": self.version(), "transport": self.transport()}

    def scope(self) -> ContextManager[Any]:
        """Where the model and optimizer variables must be created."""
        return contextlib.nullcontext()

    def reduce_gradients(self, grads: list[tf.Tensor], fused: bool = False) -> list[tf.Tensor]:
        """Mean of each gradient over ranks; called inside the step, per replica. `fused`: one collective for all
        of them after the backward pass; else one per gradient, each free to start as soon as its gradient exists
        (communication overlaps the rest of the backward pass)."""
        return grads

    def batch_norm(self) -> Callable[..., Any]:
        """The batch normalisation layer class: statistics over the whole global batch, synchronised over ranks,
        so every replica normalises alike and keeps identical moving statistics."""
        return tf.keras.layers.BatchNormalization

    def local_fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (a model call) where each rank reads its own copy of every variable, with no collective: for
        inference on shards that differ in size between ranks (validation)."""
        return fn

    def apply_gradients(self, opt: Any, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        opt.apply_gradients(zip(grads, variables))

    def compile_step(self, replica_step: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """The traced step that every rank calls with its own batch; returns this rank's loss."""
        return tf.function(replica_step, reduce_retracing=True)

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        """Rank 0's values into every rank's variables."""

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def mean(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def hostnames(self) -> list[str]:
        return self.allgather_object(socket.gethostname())

    def start_timeline(self, path: str) -> None:
        """An engine-level trace of the collectives (Horovod's timeline); others have none."""

    def stop_timeline(self) -> None:
        pass

    def saves_on_every_rank(self) -> bool:
        """Whether every rank must take part in writing a checkpoint (MWMS); else rank 0 writes alone."""
        return False

    def collective(self, op: str, nbytes: int, tensors: int = 1) -> Callable[[], None] | None:
        """For `bratsbench comm`: a prepared call of this engine's own collective `op` (allreduce, broadcast,
        allgather) on `nbytes` of float32 in `tensors` tensors, returning once it is done; None where the engine
        has no such collective."""
        return None

    def shutdown(self) -> None:
        pass


class LocalEngine(Engine):
    """One process, no engine: evaluation, prediction and features."""

    def init(self, threads: int | None = None, timeline: bool = False, device: str = "auto") -> World:
        gpus, name = pin_device(device, 0, 1)
        self.world = World(0, 1, 0, 1, gpus, set_threads(threads, 1), name)
        return self.world
