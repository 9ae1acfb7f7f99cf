"""bratsbench: a Horovod-parallel 3D U-Net benchmarking harness for BraTS segmentation."""

__version__ = "0.1.0"
