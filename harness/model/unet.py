"""The seed project's 3D U-Net, built with Keras functional layers whose names carry their level.

Every layer name starts with its level (`enc1_`, ..., `bottleneck_`, `dec1_`, ..., `head_`), so freezing,
parameter counts and FLOPs can be computed per level without a second description of the network.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from harness.config import ModelConfig


def set_seed(seed: int) -> None:
    """Python, numpy and TensorFlow seeds: the same initial weights on every rank. (tf-keras 2.18's
    set_random_seed draws `randint(1, 1e9)`, a TypeError on Python 3.12; unseeded layers draw from `random`.)"""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def encoder_levels(depth: int) -> list[str]:
    """Analysis-path levels in input-to-bottleneck order; freezing k means the first k of these."""
    return [f"enc{i}" for i in range(1, depth + 1)] + ["bottleneck"]


def level_of(layer_name: str) -> str:
    return layer_name.split("_", 1)[0]


def _norm(x: tf.Tensor, kind: str, name: str, batch_norm: Callable[..., Any]) -> tf.Tensor:
    if kind == "instance":
        # GroupNormalization with one group per channel is instance normalisation (per sample, per channel).
        return tf.keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)(x)
    if kind == "batch":
        return batch_norm(name=name)(x)
    return x


def _double_conv(x: tf.Tensor, filters: int, level: str, cfg: ModelConfig, batch_norm: Callable[..., Any]) -> tf.Tensor:
    for i in (1, 2):
        x = tf.keras.layers.Conv3D(
            filters, 3, padding="same", use_bias=cfg.norm == "none", name=f"{level}_conv{i}"
        )(x)
        x = _norm(x, cfg.norm, f"{level}_norm{i}", batch_norm)
        x = tf.keras.layers.ReLU(name=f"{level}_relu{i}")(x)
    if cfg.dropout > 0:
        x = tf.keras.layers.SpatialDropout3D(cfg.dropout, name=f"{level}_dropout")(x)
    return x


def build_unet(cfg: ModelConfig, crop: tuple[int, int, int] | None = None,
               batch_norm: Callable[..., Any] | None = None) -> tf.keras.Model:
    """Channels-last 3D U-Net: (B, X, Y, Z, C) -> per-voxel softmax over 4 classes (float32 even under AMP).

    `batch_norm`: the layer class of `norm: batch` (a training engine's synchronised one: `Engine.batch_norm`);
    the weights are the same whichever class built them."""
    batch_norm = batch_norm or tf.keras.layers.BatchNormalization
    shape = (*(crop or (None, None, None)), cfg.in_channels)
    inputs = tf.keras.Input(shape=shape, name="image")
    x = inputs
    skips = []
    for level in range(cfg.depth):
        name = f"enc{level + 1}"
        x = _double_conv(x, cfg.filters(level), name, cfg, batch_norm)
        skips.append(x)
        x = tf.keras.layers.MaxPool3D(2, strides=2, name=f"{name}_pool")(x)
    x = _double_conv(x, cfg.filters(cfg.depth), "bottleneck", cfg, batch_norm)
    for level in reversed(range(cfg.depth)):
        name = f"dec{level + 1}"
        x = tf.keras.layers.Conv3DTranspose(
            cfg.filters(level), 2, strides=2, padding="same", name=f"{name}_up"
        )(x)
        x = tf.keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([x, skips[level]])
        x = _double_conv(x, cfg.filters(level), name, cfg, batch_norm)
    logits = tf.keras.layers.Conv3D(cfg.n_classes, 1, name="head_conv")(x)
    probs = tf.keras.layers.Activation("softmax", dtype="float32", name="head_softmax")(logits)
    return tf.keras.Model(inputs, probs, name="unet3d")
