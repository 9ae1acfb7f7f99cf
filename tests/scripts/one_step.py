"""One training step with the real Horovod step function on a fixed global batch; used by the tests.

Usage: one_step.py OUT.npz GLOBAL_BATCH [horovod|mwms] [instance|batch] [fused|per_tensor]
(each of N ranks takes its contiguous GLOBAL_BATCH/N slice; batch norm is the engine's synchronised one).
OUT.npz: the weights after two steps; OUT.first.npz: the first step's gradients averaged over ranks, then the
non-trainable weights (batch norm's moving statistics) after it. Adam's first update is lr x sign(gradient), so
where float sums in another order flip the sign of a near-zero gradient the weights differ by up to 2 lr: the
gradients, not the weights, are what np=2 x b and np=1 x 2b must agree on exactly.
"""

import sys

import numpy as np

import harness  # noqa: F401 - picks tf-keras before TensorFlow is imported
import tensorflow as tf

from harness.config import ModelConfig, TrainConfig
from harness.data.synthetic_tensors import make_samples
from harness.losses import make_loss
from harness.model import build_unet, set_seed
from harness.engines import make_engine
from harness.train.step import make_optimizer, make_train_step, optimizer_variables

out, global_batch = sys.argv[1], int(sys.argv[2])
backend = sys.argv[3] if len(sys.argv) > 3 else "horovod"
norm = sys.argv[4] if len(sys.argv) > 4 else "instance"
fused = (sys.argv[5] == "fused") if len(sys.argv) > 5 else None
engine = make_engine(backend)
world = engine.init(threads=1)
set_seed(7)
tf.config.experimental.enable_op_determinism()
cfg = ModelConfig(modalities=("t1", "t2"), base_filters=4, depth=2, norm=norm)
crop = (16, 16, 16)
with engine.scope():
    model = build_unet(cfg, crop, batch_norm=engine.batch_norm())
    opt = make_optimizer(TrainConfig(lr=1e-2, lr_scaling=False), world.size, loss_scaling=False)
    opt.build(model.trainable_variables)
engine.broadcast(model.variables + optimizer_variables(opt))
x, y = make_samples(global_batch, crop, 2, seed=3)
b = global_batch // world.size
sl = slice(world.rank * b, (world.rank + 1) * b)
loss_fn = make_loss("dice_ce")


def first_gradients(xb: tf.Tensor, yb: tf.Tensor) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        loss = loss_fn(yb, model(xb, training=True))
    return engine.reduce_gradients(tape.gradient(loss, model.trainable_variables), fused=True)


grads = [g.numpy() for g in engine.compile_step(first_gradients)(tf.constant(x[sl]), tf.constant(y[sl]))]
stats = [w.numpy() for w in model.non_trainable_weights]  # every rank reads (sync-on-read under MWMS)
if world.is_root:
    np.savez(out.replace(".npz", ".first.npz"), *grads, *stats)
step = make_train_step(model, opt, loss_fn, engine, fused=fused)
for _ in range(2):
    step(tf.constant(x[sl]), tf.constant(y[sl]))
weights = [w.numpy() for w in model.weights]  # on every rank: batch norm's moving statistics under MWMS are
if world.is_root:                              # sync-on-read, and reading one is a collective
    np.savez(out, *weights)
