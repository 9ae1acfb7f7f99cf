"""one_step.py with each rank's batch norm unsynchronised (statistics over its own samples only): the control
that shows the synchronised layer is what makes np=2 x b equal np=1 x 2b. Same arguments as one_step.py."""

import runpy
import sys

import harness  # noqa: F401 - picks tf-keras before TensorFlow is imported
import tensorflow as tf

from harness.engines.base import Engine

Engine.batch_norm = lambda self: tf.keras.layers.BatchNormalization  # every engine: plain Keras batch norm
for name in ("harness.engines.horovod", "harness.engines.mwms"):
    module = __import__(name, fromlist=["*"])
    for cls in vars(module).values():
        if isinstance(cls, type) and issubclass(cls, Engine) and "batch_norm" in vars(cls):
            cls.batch_norm = Engine.batch_norm
sys.argv = [sys.argv[0].replace("one_step_plain_bn", "one_step"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
