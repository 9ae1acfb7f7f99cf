"""TensorFlow's MultiWorkerMirroredStrategy: one worker process per rank, TF_CONFIG names them all.

TF_CONFIG comes from the environment (our local launcher, `bratsbench launch --backend mwms`, writes it), or
is built from SLURM's step variables under `srun` (TF's SlurmClusterResolver fails on CPU-only nodes,
tensorflow#56894). The strategy must exist before any other TensorFlow op in the process. Collectives are
RING on CPUs and NCCL on GPUs, with a timeout, so a lost peer fails the run instead of hanging it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import socket
import subprocess
import time
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from harness.engines.base import Engine, World, pin_device, set_threads
from harness.errors import UserError

# Collective timeout; "0" turns it off. TensorFlow enforces it with a thread per collective call that sleeps for
# the timeout (measured: 2 threads per all-reduce per worker, 4 per all-gather, alive 60 s), which a training step
# rate never notices but thousands of calls a second (bratsbench comm) turn into tens of thousands of threads.
TIMEOUT_ENV = "BRATSBENCH_MWMS_TIMEOUT_S"
PEER_WAIT_ENV = "BRATSBENCH_MWMS_PEER_WAIT_S"  # how long a worker waits for the others to start
PORT_ENV = "BRATSBENCH_MWMS_PORT"  # first port of a SLURM step's workers on each node
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_PEER_WAIT_S = 180.0


def collective_timeout_s() -> float | None:
    """The collective timeout in seconds (TIMEOUT_ENV; default DEFAULT_TIMEOUT_S), None when set to 0 (off)."""
    if os.environ.get(TIMEOUT_ENV, "").strip() == "0":
        return None
    return _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{env}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UserError(f"{env}={raw!r} must be positive")
    return value


def tf_config(workers: Sequence[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}})


def _tasks_per_node(text: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE "2(x3),1" -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in text.split(","):
        if "(x" in part:
            n, times = part.rstrip(")").split("(x")
            counts += [int(n)] * int(times)
        else:
            counts.append(int(part))
    return counts


def slurm_tf_config(env: dict[str, str] | None = None) -> str | None:
    """TF_CONFIG of this task of a SLURM step (None outside one). Workers are listed node by node, as srun's
    block distribution numbers SLURM_PROCID; ports count up from a base derived from the job and step IDs."""
    env = dict(os.environ if env is None else env)
    if "SLURM_PROCID" not in env or "SLURM_STEP_NODELIST" not in env:
        return None
    try:
        nodes = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_STEP_NODELIST"]], capture_output=True,
                               text=True, check=True, timeout=30, env=env).stdout.split()
        counts = _tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", "1"))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise UserError(f"cannot build TF_CONFIG from SLURM_STEP_NODELIST={env['SLURM_STEP_NODELIST']!r}: {exc}") from None
    if len(counts) != len(nodes):
        raise UserError(f"SLURM_STEP_TASKS_PER_NODE={env.get('SLURM_STEP_TASKS_PER_NODE')!r} does not match {len(nodes)} node(s)")
    base = int(env[PORT_ENV]) if env.get(PORT_ENV) else 20000 + (int(env.get("SLURM_JOB_ID", 0)) * 7 + int(env.get("SLURM_STEP_ID", 0) or 0)) % 20000
    workers = [f"{node}:{base + i}" for node, n in zip(nodes, counts) for i in range(n)]
    return tf_config(workers, int(env["SLURM_PROCID"]))


def read_cluster(raw: str | None) -> tuple[list[str], int]:
    """(workers, this task's index) from a TF_CONFIG string; one local worker when there is none."""
    if not raw:
        return ["localhost:0"], 0
    try:
        config = json.loads(raw)
        workers = list(config["cluster"]["worker"])
        task = config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"TF_CONFIG is not a worker cluster with a task index ({exc}): {raw[:200]}") from None
    if task.get("type", "worker") != "worker" or not 0 <= index < len(workers):
        raise UserError(f"TF_CONFIG task {task} is not one of the {len(workers)} workers")
    for address in workers:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"TF_CONFIG worker address {address!r} is not HOST:PORT")
    return workers, index


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def wait_for_peers(workers: Sequence[str], index: int, deadline_s: float) -> None:
    """Every other worker's server answers on its port, or a one-line error naming the missing one."""
    start = time.monotonic()
    for i, address in enumerate(workers):
        if i == index:
            continue
        host, port = _split(address)
        while True:
            try:
                with socket.create_connection((host, port), timeout=2):
                    break
            except OSError:
                if time.monotonic() - start > deadline_s:
                    raise UserError(f"MWMS worker {i} at {address} did not answer within {deadline_s:g} s "
                                    f"(TF_CONFIG lists {len(workers)} workers; is every one started?)") from None
                time.sleep(0.2)


def rendezvous(workers: Sequence[str], index: int, deadline_s: float) -> None:
    """Before the strategy: hold this worker's port with a plain listener (a taken port is a clear error now)
    until every other worker answers on its own, then free it for the strategy's server.

    The strategy's constructor waits (for an hour, inside TensorFlow, no Python running) until every worker has
    joined; meeting first makes a missing worker a one-line error instead of a hang."""
    host, port = _split(workers[index])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            listener.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"MWMS worker {index}: port {port} of {workers[index]} is taken by another process") from None
            raise UserError(f"MWMS worker {index}: cannot listen on {workers[index]}: {exc.strerror}") from None
        listener.listen(64)
        wait_for_peers(workers, index, deadline_s)
    finally:
        listener.close()


def _local_position(workers: Sequence[str], index: int) -> tuple[int, int]:
    host = _split(workers[index])[0]
    same = [i for i, w in enumerate(workers) if _split(w)[0] == host]
    return same.index(index), len(same)


class _QuietRetracing(logging.Filter):
    """TensorFlow warns that eager collectives are slow and that it retraces the tf.function it wraps each in; for
    the few small gathers of a run (hostnames, checksums, validation rows) that is expected, not a problem (the
    training step itself is one tf.function)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "triggered tf.function retracing" not in message and "CollectiveAllReduceStrategy eagerly" not in message


class MWMSEngine(Engine):
    name = "mwms"
    default_grad_reduction = "fused"  # what the strategy's own apply_gradients does: one batched all-reduce

    def init(self, threads: int | None = None, timeline: bool = False, device: str = "auto") -> World:
        raw = os.environ.get("TF_CONFIG") or slurm_tf_config()
        workers, index = read_cluster(raw)
        size = len(workers) if raw else 1
        local_rank, local_size = _local_position(workers, index) if raw else (0, 1)
        if raw:
            os.environ["TF_CONFIG"] = raw
        gpus, name = pin_device(device, local_rank, local_size)
        n_threads = set_threads(threads, local_size)
        tf.get_logger().addFilter(_QuietRetracing())
        ring = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=ring.NCCL if gpus else ring.RING, timeout_seconds=collective_timeout_s())
        if size > 1:
            rendezvous(workers, index, _seconds(PEER_WAIT_ENV, DEFAULT_PEER_WAIT_S))
        try:
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"MultiWorkerMirroredStrategy could not start: {str(exc).splitlines()[0]}") from None
        self.world = World(index, size, local_rank, local_size, gpus, n_threads, name)
        return self.world

    def version(self) -> str | None:
        return tf.__version__

    def transport(self) -> str | None:
        return "nccl" if self.world.gpus else "ring"  # the CommunicationImplementation init chose

    def scope(self) -> Any:
        return self.strategy.scope()

    def reduce_gradients(self, grads: list[tf.Tensor], fused: bool = True) -> list[tf.Tensor]:
        ctx = tf.distribute.get_replica_context()
        if fused:  # packed into one collective after the backward pass
            return list(ctx.all_reduce(tf.distribute.ReduceOp.MEAN, list(grads)))
        return [ctx.all_reduce(tf.distribute.ReduceOp.MEAN, g) for g in grads]

    def batch_norm(self) -> Callable[..., Any]:
        import functools

        # Keras's own cross-replica batch statistics (an all-reduce of the moments in the replica context)
        return functools.partial(tf.keras.layers.BatchNormalization, synchronized=True)

    def local_fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        # Batch norm's moving statistics are sync-on-read variables: read outside a replica context, each read is
        # an all-reduce, and ranks validating different numbers of cases would enter different collectives
        strategy = self.strategy

        def local(*args: Any) -> Any:
            return strategy.experimental_local_results(strategy.run(fn, args=args))[0]

        return local

    def apply_gradients(self, opt: Any, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        # the gradients are already the mean over ranks: the optimizer must not sum them again
        opt.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)

    def compile_step(self, replica_step: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        strategy = self.strategy

        @tf.function(reduce_retracing=True)
        def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return strategy.experimental_local_results(strategy.run(replica_step, args=(x, y)))[0]

        return step

    def _collective(self, kind: str, value: Any) -> Any:
        """A small eager collective on this rank's value: "gather" (axis 0), "sum" or "mean" over ranks."""
        def replica(t: Any) -> Any:
            ctx = tf.distribute.get_replica_context()
            if kind == "gather":
                return ctx.all_gather(t, axis=0)
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM if kind == "sum" else tf.distribute.ReduceOp.MEAN, t)

        return self.strategy.experimental_local_results(self.strategy.run(replica, args=(value,)))[0]

    def _all_gather(self, array: np.ndarray) -> np.ndarray:
        return self._collective("gather", tf.constant(array)).numpy()

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        if self.world.size == 1:
            return
        # every rank reads every variable (a sync-on-read variable's read is itself a collective: rank 0 alone
        # reading would leave the others in another collective), then only rank 0's values count
        keep = 1.0 if self.world.rank == 0 else 0.0
        values = [tf.cast(v.read_value(), tf.float64) * keep for v in variables]
        summed = self._collective("sum", values)
        for var, value in zip(variables, summed):
            var.assign(tf.cast(value, var.dtype))

    def allgather_object(self, obj: Any) -> list[Any]:
        if self.world.size == 1:
            return [obj]
        data = pickle.dumps(obj)
        sizes = self._all_gather(np.array([len(data)], dtype=np.int64))
        width = -(-int(sizes.max()) // 8)  # collectives carry no uint8: the bytes travel as int64 words
        padded = np.zeros(width * 8, dtype=np.uint8)
        padded[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        everything = self._all_gather(padded.view(np.int64)).reshape(self.world.size, width)
        return [pickle.loads(row.tobytes()[: int(n)]) for row, n in zip(everything, sizes)]

    def mean(self, values: Sequence[float]) -> list[float]:
        tensor = tf.constant(list(values), dtype=tf.float64)
        if self.world.size > 1:
            tensor = self._collective("mean", tensor)
        return [float(v) for v in tensor.numpy()]

    def collective(self, op: str, nbytes: int, tensors: int = 1) -> Callable[[], None] | None:
        if op not in ("allreduce", "allgather"):
            return None  # MWMS offers no broadcast collective (its variables start equal by seeding or a sum)
        n = nbytes // 4 // tensors // (self.world.size if op == "allgather" else 1)
        xs = [tf.ones([n], tf.float32) for _ in range(tensors)]
        strategy = self.strategy

        def replica() -> tf.Tensor:
            ctx = tf.distribute.get_replica_context()
            if op == "allreduce":  # the step's call: every tensor in one all_reduce, packed into one collective
                outs = ctx.all_reduce(tf.distribute.ReduceOp.SUM, xs)
            else:
                outs = [ctx.all_gather(x, axis=0) for x in xs]
            return tf.stack([out[0] for out in outs])

        fn = tf.function(lambda: strategy.experimental_local_results(strategy.run(replica))[0])

        def call() -> None:
            fn().numpy()

        return call

    def saves_on_every_rank(self) -> bool:
        # reading a variable for a checkpoint may be a collective (sync-on-read variables): all workers save,
        # the chief into the run folder and the others into a scratch folder that is removed
        return self.world.size > 1
