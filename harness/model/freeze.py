"""Freezing by level: the 'frozen-layer depth' axis of the sweeps."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from harness.config import HEAD_ONLY, Freeze, parse_freeze
from harness.errors import UserError
from harness.model.unet import encoder_levels, level_of


def apply_freeze(model: tf.keras.Model, choice: Freeze, depth: int) -> list[str]:
    """Apply one freeze choice (k levels or head-only); returns the frozen level names for the record.

    Frozen variables leave `trainable_variables`, so they get no gradient and no allreduce."""
    choice = parse_freeze(choice)
    if choice == HEAD_ONLY:
        freeze_all_but_head(model)
        return ["all-but-head"]
    return freeze_encoder(model, int(choice), depth)


def freeze_encoder(model: tf.keras.Model, k: int, depth: int) -> list[str]:
    """Freeze the first k analysis-path levels (enc1..encD, then the bottleneck); unfreeze the rest.

    Returns the frozen level names. A tf.function step must be rebuilt after this call, because
    `trainable_variables` is read when the step is traced.
    """
    levels = encoder_levels(depth)
    if not 0 <= k <= len(levels):
        raise UserError(f"freeze depth {k} is beyond the model: choose 0..{len(levels)} ({', '.join(levels)})")
    frozen = set(levels[:k])
    for layer in model.layers:
        layer.trainable = level_of(layer.name) not in frozen
    return levels[:k]


def freeze_all_but_head(model: tf.keras.Model) -> None:
    for layer in model.layers:
        layer.trainable = level_of(layer.name) == "head"


def unfreeze_all(model: tf.keras.Model) -> None:
    for layer in model.layers:
        layer.trainable = True


def count_params(model: tf.keras.Model) -> dict[str, int]:
    total = int(sum(np.prod(v.shape) for v in model.weights))
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
