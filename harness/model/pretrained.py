"""Initialising a model from another run's checkpoint, including across modality sets.

When the source and target modalities differ, the first convolution's input channels mean different
things. `first_conv` says what happens to it, and the choice is recorded:
  copy     source channel i -> target channel i (only when the channel counts are equal)
  average  every target channel gets the mean of the source channels' kernels, scaled by C_src / C_tgt so
           that, for z-scored inputs, the first layer's activations keep their scale
  reinit   the first convolution keeps its fresh random initialisation
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from harness.config import FIRST_CONV, ModelConfig
from harness.errors import UserError
from harness.model.unet import build_unet
from harness.checkpoint import check_compatible, read_signature, resolve

INPUT_LAYER = "enc1_conv1"


def default_first_conv(src_channels: int, tgt_channels: int) -> str:
    return "copy" if src_channels == tgt_channels else "average"


def check_pretrained(path: str | Path, cfg: ModelConfig, first_conv: str | None) -> dict[str, Any]:
    """Validate before any work: the checkpoint exists and matches everything but the input channels.

    Returns the checkpoint's signature file (architecture and modalities)."""
    check_compatible(path, cfg, ignore=("in_channels",))
    info = read_signature(path)
    src_c = info["signature"]["in_channels"]
    if first_conv is not None and first_conv not in FIRST_CONV:
        raise UserError(f"first-conv '{first_conv}' is not one of {', '.join(FIRST_CONV)}")
    if first_conv == "copy" and src_c != cfg.in_channels:
        raise UserError(
            f"first-conv copy needs equal channel counts; checkpoint '{path}' has {src_c}, the model {cfg.in_channels}"
        )
    return info


def load_pretrained(
    model: tf.keras.Model, cfg: ModelConfig, path: str | Path, crop: tuple[int, int, int], first_conv: str | None = None
) -> dict[str, Any]:
    """Copy weights from a bratsbench checkpoint into `model`; returns what was done (for the run record)."""
    info = check_pretrained(path, cfg, first_conv)
    src_c = info["signature"]["in_channels"]
    src_mods = info.get("modalities")
    choice = first_conv or default_first_conv(src_c, cfg.in_channels)
    src_cfg = dataclasses.replace(cfg, modalities=tuple(src_mods) if src_mods else cfg.modalities[:1] * src_c)
    source = build_unet(src_cfg, crop)
    status = tf.train.Checkpoint(model=source).restore(resolve(path))
    status.expect_partial()
    status.assert_existing_objects_matched()
    for layer in model.layers:
        weights = source.get_layer(layer.name).get_weights()
        if not weights:
            continue
        if layer.name == INPUT_LAYER:
            weights = _adapt_first_conv(weights, layer.get_weights(), choice, src_c, cfg.in_channels)
        layer.set_weights(weights)
    return {
        "from": str(path),
        "source_modalities": src_mods,
        "target_modalities": list(cfg.modalities),
        "first_conv": choice,
    }


def _adapt_first_conv(src: list[np.ndarray], fresh: list[np.ndarray], choice: str, src_c: int, tgt_c: int) -> list[np.ndarray]:
    if choice == "reinit":
        return fresh
    if choice == "copy":
        return src
    kernel = src[0]  # (3, 3, 3, C_src, F)
    mean = kernel.mean(axis=3, keepdims=True) * (src_c / tgt_c)
    return [np.repeat(mean, tgt_c, axis=3).astype(kernel.dtype), *src[1:]]


def load_run_model(run_dir: str | Path) -> tuple[tf.keras.Model, "RunConfig"]:
    """Rebuild a finished run's model from its record and restore its latest weights (model only).

    UserError when the folder holds no record or no checkpoint."""
    from harness.config import RunConfig
    from harness.rundir import RunDir

    run = RunDir(run_dir)
    record = run.load_record()
    try:
        cfg = RunConfig.from_dict(record["config"])
    except (KeyError, TypeError) as exc:
        raise UserError(f"run '{run_dir}': record has no usable config ({exc})") from None
    check_compatible(run.checkpoints, cfg.model)
    model = build_unet(cfg.model, cfg.data.crop)
    tf.train.Checkpoint(model=model).restore(resolve(run.checkpoints)).expect_partial()
    return model, cfg
