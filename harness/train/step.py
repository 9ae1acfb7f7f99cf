"""The training step, the same math on every engine: a GradientTape over the trainable variables, the
engine's mean of the gradients over ranks, one optimizer update.

Only `model.trainable_variables` get gradients, so frozen layers cost neither weight gradients nor
collective bytes. The step is traced once per freeze state; rebuild it after (un)freezing.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from harness.config import TrainConfig
from harness.engines import Engine


class WarmupScaledLR(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from the base rate to base x world size (Goyal et al.), then constant."""

    def __init__(self, base_lr: float, scale: float, warmup_steps: int):
        self.base_lr = float(base_lr)
        self.scale = float(scale)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        target = self.base_lr * self.scale
        if self.warmup_steps <= 0:
            return tf.constant(target, tf.float32)
        frac = tf.minimum(tf.cast(step, tf.float32) / float(self.warmup_steps), 1.0)
        return self.base_lr + (target - self.base_lr) * frac

    def get_config(self) -> dict:
        return {"base_lr": self.base_lr, "scale": self.scale, "warmup_steps": self.warmup_steps}


def make_optimizer(tcfg: "TrainConfig", world_size: int, loss_scaling: bool) -> tf.keras.optimizers.Optimizer:
    """Adam at the base rate x world size (when lr_scaling), reached by linear warm-up."""
    scale = world_size if tcfg.lr_scaling else 1
    opt = tf.keras.optimizers.Adam(WarmupScaledLR(tcfg.lr, scale, tcfg.warmup_steps if tcfg.lr_scaling else 0))
    if loss_scaling:
        opt = tf.keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


def optimizer_variables(opt: tf.keras.optimizers.Optimizer) -> list[tf.Variable]:
    variables = opt.variables
    return list(variables() if callable(variables) else variables)


def make_train_step(
    model: tf.keras.Model,
    opt: tf.keras.optimizers.Optimizer,
    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    engine: Engine,
    amp: bool = False,
    xla: bool = False,
    fused: bool | None = None,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """`step(x, y) -> loss`: each rank calls it with its own batch; the engine traces it and reduces.

    `xla`: the forward and backward pass are one function compiled by XLA (`jit_compile=True`: compiled, or an
    error, never a silent fall-back to TensorFlow ops); the gradients' collectives and the update stay outside it,
    where every engine's collectives run. `fused`: one collective for all gradients (None: the engine's default)."""
    variables = model.trainable_variables
    fused = engine.default_grad_reduction == "fused" if fused is None else fused

    def forward_backward(x: tf.Tensor, y: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = loss_fn(y, probs)
            scaled = opt.get_scaled_loss(loss) if amp else loss
        return tape.gradient(scaled, variables), loss

    compute = tf.function(forward_backward, jit_compile=True) if xla else forward_backward

    def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        grads, loss = compute(x, y)
        grads = engine.reduce_gradients(list(grads), fused=fused)
        if amp:
            grads = opt.get_unscaled_gradients(grads)
        engine.apply_gradients(opt, grads, variables)
        return loss

    return engine.compile_step(replica_step)
