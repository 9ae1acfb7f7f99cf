"""FLOPs per sample from the layer shapes, so throughput can be turned into achieved FLOP/s.

Convention: one multiply-add = 2 FLOPs; only convolutions count (norms, activations, pooling and the
softmax are < 2% of a U-Net's work). Training = forward + input gradients + weight gradients, each the
size of the forward convolution; frozen layers skip their weight gradients, and layers below the first
trainable layer skip their input gradients too.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _conv_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    return [l for l in model.layers if isinstance(l, (tf.keras.layers.Conv3D, tf.keras.layers.Conv3DTranspose))]


def layer_forward_flops(layer: tf.keras.layers.Layer) -> int:
    kernel = layer.kernel.shape  # (kx, ky, kz, in, out) for Conv3D; (kx, ky, kz, out, in) for transposed
    macs_per_position = int(np.prod(kernel))
    if isinstance(layer, tf.keras.layers.Conv3DTranspose):
        positions = int(np.prod(layer.input.shape[1:4]))  # each input voxel scatters one kernel
    else:
        positions = int(np.prod(layer.output.shape[1:4]))
    return 2 * macs_per_position * positions


def forward_flops(model: tf.keras.Model) -> int:
    """Forward FLOPs per sample; the model must have been built with a fixed crop."""
    return sum(layer_forward_flops(l) for l in _conv_layers(model))


def training_flops(model: tf.keras.Model) -> int:
    """FLOPs of one training sample given which layers are trainable (see module docstring).

    A layer needs its input gradient only when some trainable layer lies upstream of it; for a U-Net frozen by
    level prefix, "upstream" is "earlier in topological order", which is the order of `model.layers`.
    """
    total = 0
    upstream_trainable = False
    for layer in _conv_layers(model):
        fwd = layer_forward_flops(layer)
        total += fwd
        if layer.trainable:
            total += fwd  # weight gradient
        if upstream_trainable:
            total += fwd  # input gradient
        upstream_trainable = upstream_trainable or layer.trainable
    return total
