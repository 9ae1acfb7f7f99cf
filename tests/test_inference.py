"""Sliding-window inference: exact on per-voxel models, full coverage, Gaussian blending, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import UserError
from harness.inference import gaussian_importance, sliding_window_predict, window_starts

RNG = np.random.default_rng(11)
W = RNG.standard_normal((2, 4)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)


def _per_voxel(x: np.ndarray) -> np.ndarray:
    """Softmax of a fixed linear map of the channels: a 'model' whose output at a voxel depends only on that voxel."""
    logits = x @ W + B
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape, roi, overlap, batch_size",
    [
        ((23, 17, 11), (8, 6, 4), 0.5, 1),
        ((19, 13, 9), (7, 5, 5), 0.25, 3),
        ((10, 21, 6), (10, 8, 3), 0.0, 2),
        ((15, 9, 5), (16, 4, 8), 0.6, 4),  # smaller than roi along x and z
        ((5, 4, 3), (8, 8, 8), 0.5, 1),  # smaller than roi along every axis
    ],
)
def test_per_voxel_model_gives_whole_volume_result(shape, roi, overlap, batch_size, blend):
    volume = np.random.default_rng(sum(shape)).standard_normal((*shape, 2)).astype(np.float32)
    out = sliding_window_predict(volume, roi, _per_voxel, overlap=overlap, batch_size=batch_size, blend=blend)
    assert out.shape == (*shape, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, _per_voxel(volume), rtol=1e-5, atol=1e-6)


def test_every_voxel_is_seen_and_batches_respect_batch_size():
    shape, roi = (21, 14, 9), (8, 6, 4)
    # the channel holds each voxel's index + 1, so the model can record what it was shown (0 is padding)
    volume = (np.arange(np.prod(shape), dtype=np.float32) + 1).reshape(*shape, 1)
    seen = np.zeros(np.prod(shape), dtype=int)
    batch_sizes = []

    def recorder(batch: np.ndarray) -> np.ndarray:
        batch_sizes.append(batch.shape[0])
        ids = batch[..., 0].astype(np.int64).ravel()
        np.add.at(seen, ids[ids > 0] - 1, 1)
        return np.ones((*batch.shape[:4], 2), np.float32) / 2

    out = sliding_window_predict(volume, roi, recorder, overlap=0.5, batch_size=4)
    assert seen.min() >= 1  # every voxel covered by at least one window
    n_windows = np.prod([len(window_starts(s, r, 0.5)) for s, r in zip(shape, roi)])
    assert sum(batch_sizes) == n_windows and max(batch_sizes) == 4
    np.testing.assert_allclose(out, 0.5)


@pytest.mark.parametrize("size, roi", [(10, 10), (11, 4), (23, 8), (128, 96), (155, 128), (7, 1)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_window_starts_cover_the_axis_and_end_flush(size, roi, overlap):
    starts = window_starts(size, roi, overlap)
    assert starts[0] == 0 and starts[-1] == size - roi
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(b - a <= roi for a, b in zip(starts, starts[1:]))  # no gap between consecutive windows
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + roi] = True
    assert covered.all()


def test_window_stride_follows_overlap():
    assert window_starts(256, 128, 0.5) == [0, 64, 128]
    assert window_starts(240, 128, 0.5) == [0, 64, 112]
    assert window_starts(155, 128, 0.0) == [0, 27]


def test_gaussian_importance_shape_and_sigma():
    roi = (16, 9, 8)
    w = gaussian_importance(roi)
    assert w.shape == roi and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)  # symmetric, even sizes included
    # along the odd axis through the centre: exp(-d^2 / (2 sigma^2)), sigma = 9 / 8
    centre_line = w[7, :, 3] / w[7, 4, 3]
    d = np.arange(9) - 4
    np.testing.assert_allclose(centre_line, np.exp(-(d**2) / (2 * (9 / 8) ** 2)), rtol=1e-5)


def test_gaussian_blend_favours_window_centres():
    # two windows along x (starts 0 and 4 for size 12, roi 8); a model whose output depends on which window it
    # sees: 1 for the first window, 0 for the second. Voxel x=4 sits 0.5 from the first window's centre (3.5) and
    # on the edge of the second, so Gaussian blending leans to 1 (x=7 mirrors it); constant blending gives 0.5.
    volume = np.zeros((12, 1, 1, 1), np.float32)
    volume[0] = 1.0

    def model(batch: np.ndarray) -> np.ndarray:
        p = np.where(batch[:, :1, :1, :1, :1] > 0, 1.0, 0.0) * np.ones((*batch.shape[:4], 1), np.float32)
        return np.concatenate([p, 1 - p], axis=-1)

    const = sliding_window_predict(volume, (8, 1, 1), model, overlap=0.5, blend="constant")
    gauss = sliding_window_predict(volume, (8, 1, 1), model, overlap=0.5, blend="gaussian")
    assert const[4:8, 0, 0, 0] == pytest.approx([0.5] * 4)
    assert gauss[4, 0, 0, 0] > 0.9 and gauss[7, 0, 0, 0] < 0.1
    assert gauss[4, 0, 0, 0] == pytest.approx(1 - gauss[7, 0, 0, 0])
    assert gauss[0, 0, 0, 0] == 1.0 and gauss[11, 0, 0, 0] == 0.0  # covered by one window only
    np.testing.assert_allclose(gauss.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"overlap": "half"}, "overlap"),
        ({"roi": (0, 4, 4)}, "roi"),
        ({"roi": (4, -2, 4)}, "roi"),
        ({"roi": (4, 4)}, "roi"),
        ({"roi": (4.0, 4, 4)}, "roi"),
        ({"blend": "linear"}, "blend"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_classes": 0}, "n_classes"),
        ({"volume": np.zeros((6, 6, 6), np.float32)}, "volume"),
    ],
)
def test_bad_arguments_raise_user_error(kwargs, match):
    args = {"volume": np.zeros((6, 6, 6, 2), np.float32), "roi": (4, 4, 4)}
    args.update(kwargs)
    volume, roi = args.pop("volume"), args.pop("roi")
    with pytest.raises(UserError, match=match):
        sliding_window_predict(volume, roi, _per_voxel, **args)


def test_model_output_mismatch_is_reported():
    volume = np.zeros((6, 6, 6, 2), np.float32)
    with pytest.raises(ValueError, match="classes"):
        sliding_window_predict(volume, (4, 4, 4), _per_voxel, n_classes=3)
    with pytest.raises(ValueError, match="shape"):
        sliding_window_predict(volume, (4, 4, 4), lambda b: _per_voxel(b)[:, :2])


def test_compiled_prediction_equals_eager_and_traces_once_per_model():
    import tensorflow as tf

    from harness.config import ModelConfig
    from harness.inference import predict_labels
    from harness.model import build_unet

    model = build_unet(ModelConfig(base_filters=4, depth=2, modalities=("t1", "t2")))
    vol = np.random.default_rng(0).normal(size=(20, 24, 16, 2)).astype(np.float32)

    def eager(batch):
        return model(tf.constant(batch, tf.float32), training=False).numpy()

    ref = np.argmax(sliding_window_predict(vol, (16, 16, 16), eager, overlap=0.25, batch_size=1, n_classes=4), -1)
    assert np.array_equal(predict_labels(model, vol, (16, 16, 16)), ref)
    assert np.array_equal(predict_labels(model, vol[:16], (16, 16, 16), batch_size=3), np.argmax(
        sliding_window_predict(vol[:16], (16, 16, 16), eager, overlap=0.25, n_classes=4), -1))
    from harness.inference import _COMPILED

    assert _COMPILED[model].experimental_get_tracing_count() == 1  # other batch and volume sizes: no retrace
