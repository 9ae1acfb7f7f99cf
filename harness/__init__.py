"""bratsbench: a distributed (Horovod or tf.distribute) 3D U-Net benchmarking harness for BraTS segmentation."""

import os

# The one place that picks Keras: tf-keras (Keras 2) behind tf.keras, as Horovod and our custom step need. It must
# be set before TensorFlow is first imported, which every module of the package does after importing this one.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.2.0"
