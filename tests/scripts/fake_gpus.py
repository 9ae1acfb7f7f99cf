"""`bratsbench ARGS` with the engine's seams replaced, for tests of what only a GPU node or an old bug would show.

Usage: fake_gpus.py N ARGS...                 TensorFlow lists N fake GPUs (harness.engines.base.physical_gpus)
       fake_gpus.py plain-batch-norm ARGS...  Horovod's batch norm left unsynchronised (replicas must diverge)
"""

import sys
from collections import namedtuple

import harness  # noqa: F401 - picks tf-keras before TensorFlow is imported
from harness.engines import base

what, args = sys.argv[1], sys.argv[2:]
if what == "plain-batch-norm":
    import tensorflow as tf

    from harness.engines.horovod import HorovodEngine

    HorovodEngine.batch_norm = lambda self: tf.keras.layers.BatchNormalization
else:
    FakeGpu = namedtuple("FakeGpu", "name device_type")
    base.physical_gpus = lambda: [FakeGpu(f"/physical_device:GPU:{i}", "GPU") for i in range(int(what))]
    base._use_gpu = lambda gpu: None

from harness.cli import main  # noqa: E402

sys.exit(main(args))
