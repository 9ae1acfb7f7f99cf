"""Frozen levels stay put during fine-tuning, the rest moves; FLOPs and parameters follow the freeze."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from harness.config import ModelConfig, TrainConfig
from harness.data.synthetic_tensors import make_samples
from harness.engines import LocalEngine
from harness.errors import UserError
from harness.losses import make_loss
from harness.model import build_unet, count_params, freeze_encoder, level_of, set_seed, training_flops
from harness.model.freeze import freeze_all_but_head
from harness.train.step import make_optimizer, make_train_step

CROP = (16, 16, 16)
CFG = ModelConfig(modalities=("t1", "t2"), base_filters=4, depth=2)


def _model():
    set_seed(1)
    return build_unet(CFG, CROP)


def _levels_after_steps(model, steps=2):
    before = {w.name: w.numpy().copy() for w in model.weights}
    opt = make_optimizer(TrainConfig(lr=1e-2, lr_scaling=False), 1, False)
    opt.build(model.trainable_variables)
    step = make_train_step(model, opt, make_loss("dice_ce"), LocalEngine())  # one process: no collectives
    x, y = make_samples(2, CROP, 2, seed=0)
    for _ in range(steps):
        step(tf.constant(x), tf.constant(y))
    changed = {}
    for layer in model.layers:
        for w in layer.weights:
            changed.setdefault(level_of(layer.name), []).append(not np.array_equal(before[w.name], w.numpy()))
    return {level: any(flags) for level, flags in changed.items()}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_frozen_levels_do_not_change_and_others_do(k):
    model = _model()
    frozen = freeze_encoder(model, k, CFG.depth)
    changed = _levels_after_steps(model)
    assert frozen == ["enc1", "enc2", "bottleneck"][:k]
    for level, moved in changed.items():
        assert moved == (level not in frozen), level


def test_head_only_trains_only_the_head():
    model = _model()
    freeze_all_but_head(model)
    changed = _levels_after_steps(model)
    assert changed.pop("head") is True
    assert not any(changed.values())


def test_freezing_reduces_trainable_params_and_training_flops():
    model = _model()
    params, flops = [], []
    for k in range(CFG.depth + 2):
        freeze_encoder(model, k, CFG.depth)
        params.append(count_params(model)["trainable"])
        flops.append(training_flops(model))
    assert all(a > b for a, b in zip(params, params[1:]))
    assert all(a > b for a, b in zip(flops, flops[1:]))
    with pytest.raises(UserError, match="freeze depth 4 is beyond the model"):
        freeze_encoder(model, 4, CFG.depth)
