"""Segmentation losses. Each is a mean over samples of a per-sample loss, so the gradient averaged over
Horovod ranks equals the gradient of the same loss over the global batch (data parallelism is exact)."""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

_EPS = 1e-6


def _per_sample_ce(y_true: tf.Tensor, probs: tf.Tensor, class_weights: Sequence[float] | None) -> tf.Tensor:
    probs = tf.clip_by_value(tf.cast(probs, tf.float32), _EPS, 1.0)
    ce = -tf.reduce_sum(y_true * tf.math.log(probs), axis=-1)  # (B, X, Y, Z)
    if class_weights is not None:
        ce *= tf.reduce_sum(y_true * tf.constant(class_weights, tf.float32), axis=-1)
    return tf.reduce_mean(ce, axis=[1, 2, 3])


def _per_sample_dice_loss(y_true: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
    """1 - mean soft Dice over the foreground classes (background would dominate and say little)."""
    probs = tf.cast(probs, tf.float32)[..., 1:]
    y_true = y_true[..., 1:]
    axes = [1, 2, 3]
    inter = tf.reduce_sum(y_true * probs, axis=axes)
    denom = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(probs, axis=axes)
    dice = (2.0 * inter + 1.0) / (denom + 1.0)  # +1 smoothing: an absent class predicted absent scores 1
    return 1.0 - tf.reduce_mean(dice, axis=-1)


def make_loss(name: str, class_weights: Sequence[float] | None = None) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Return loss(labels int (B,X,Y,Z), probs (B,X,Y,Z,K)) -> scalar."""

    def loss(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
        y_true = tf.one_hot(tf.cast(labels, tf.int32), depth=probs.shape[-1], dtype=tf.float32)
        per_sample = _per_sample_ce(y_true, probs, class_weights)
        if name == "dice_ce":
            per_sample = per_sample + _per_sample_dice_loss(y_true, probs)
        return tf.reduce_mean(per_sample)

    return loss
