"""How a run's step executes: device, op determinism, precision, XLA and gradient reduction, set per run.

A packed sweep runs many points in one process, so every setting is made explicitly, whatever an earlier run left,
and the choices go to the record's `execution` section, where a GPU run can be checked afterwards.
"""

from __future__ import annotations

import tensorflow as tf

from harness.config import RunConfig
from harness.engines import Engine
from harness.engines.base import cpu_bf16_instructions
from harness.errors import UserError
from harness.train.writer import RunWriter


def configure_execution(cfg: RunConfig, engine: Engine, record: dict, writer: RunWriter) -> tuple[bool, bool]:
    """How this run's step executes, set whatever an earlier run in this process left (a packed sweep runs many):
    op determinism, the precision policy, XLA and the gradient reduction, all under record["execution"] with the
    device. Returns (loss scaling, one fused gradient collective).

    --amp: float16 with loss scaling on GPUs; bfloat16 on CPUs (float16 has no CPU MaxPool3D kernel, and bfloat16
    keeps float32's range, so it needs no loss scaling)."""
    tcfg, world = cfg.train, engine.world
    on_gpu = world.device.startswith("GPU")
    determinism = tcfg.op_determinism
    if determinism is None:  # a GPU benchmark measures the fast kernels; XLA has no deterministic MaxPool3D gradient
        determinism = cfg.data.deterministic and not (on_gpu and (tcfg.benchmark or tcfg.xla))
    if tcfg.xla and on_gpu and determinism:
        raise UserError("--xla with --op-determinism on a GPU: XLA has no deterministic GPU kernel for the MaxPool3D "
                        "gradient (SelectAndScatter) and refuses to compile it; drop --op-determinism")
    if tcfg.xla and cfg.model.norm == "batch" and world.size > 1:
        raise UserError("--xla with --norm batch at np > 1: the compiled forward pass cannot hold batch norm's "
                        "collectives over ranks; use --norm instance, or drop --xla")
    if determinism:
        tf.config.experimental.enable_op_determinism()
    else:
        tf.config.experimental.disable_op_determinism()
    loss_scaling = tcfg.amp and on_gpu
    policy = ("mixed_float16" if loss_scaling else "mixed_bfloat16") if tcfg.amp else "float32"
    tf.keras.mixed_precision.set_global_policy(policy)
    tf.config.optimizer.set_jit(False)  # no auto-clustering: --xla compiles the step explicitly (make_train_step)
    reduction = tcfg.grad_reduction or engine.default_grad_reduction
    record["execution"] = {
        "device": world.device, "op_determinism": determinism, "precision": policy, "loss_scaling": loss_scaling,
        "xla": {"requested": tcfg.xla, "how": "jit_compile of the forward and backward pass" if tcfg.xla else None,
                "compiled": None},
        "grad_reduction": reduction if world.size > 1 else None,
    }
    if tcfg.amp:
        record["extra"]["precision"] = policy
    if tcfg.amp and not loss_scaling:
        native = cpu_bf16_instructions()
        record["extra"]["cpu_bf16_instructions"] = native
        if not native:
            writer.note("--amp: this CPU has no bfloat16 instructions (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): "
                        "bfloat16 is emulated and training runs slower than float32")
    if tcfg.xla:
        writer.note(f"--xla: the forward and backward pass are compiled by XLA (jit_compile) for the {world.device}; "
                    f"the gradients' collectives and the update run outside it")
    return loss_scaling, reduction == "fused"
