"""One training step with the real Horovod step function on a fixed global batch; used by the tests.

Usage: one_step.py OUT.npz GLOBAL_BATCH [horovod|mwms] [instance|batch] [fused|per_tensor]
(each of N ranks takes its contiguous GLOBAL_BATCH/N slice; batch norm is the engine's synchronised one)
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
step = make_train_step(model, opt, make_loss("dice_ce"), engine, fused=fused)
for _ in range(2):
    step(tf.constant(x[sl]), tf.constant(y[sl]))
if world.is_root:
    np.savez(out, *[w.numpy() for w in model.weights])
