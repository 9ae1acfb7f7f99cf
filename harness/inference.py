"""Whole-volume inference by overlapping sliding windows, blended with importance weights.

A 3D U-Net trained on crops predicts best near a crop's centre; Gaussian weights (sigma = roi/8, as in nnU-Net
and MONAI) let the centre of each window dominate where windows overlap. Framework-free: `predict_fn` may wrap
a Keras model, and anything array-like it returns is converted with `np.asarray`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from harness.errors import UserError

PredictFn = Callable[[np.ndarray], "np.ndarray"]
BLENDS: tuple[str, ...] = ("gaussian", "constant")


def _check_roi(roi: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(roi)
    except TypeError:
        raise UserError(f"roi {roi!r}: expected three positive integers") from None
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise UserError(f"roi {roi!r}: expected three positive integers")
    if any(v <= 0 for v in values):
        raise UserError(f"roi {roi!r}: every entry must be positive")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _check_overlap(overlap: float) -> float:
    if not isinstance(overlap, (int, float, np.floating)) or not (0.0 <= float(overlap) < 1.0):
        raise UserError(f"overlap {overlap!r}: must be in [0, 1)")
    return float(overlap)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start offsets along one axis: stride floor(roi*(1-overlap)) (at least 1), last window flush with the end.

    `size` must be >= `roi` (the caller pads smaller volumes).
    """
    if size < roi:
        raise ValueError(f"axis of size {size} is smaller than the window {roi}; pad first")
    stride = max(1, math.floor(roi * (1.0 - overlap) + 1e-9))
    starts = list(range(0, size - roi + 1, stride))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def gaussian_importance(roi: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weights over a window, sigma = roi * sigma_scale, centred at (roi-1)/2, max 1.

    Centred exactly (not at roi//2 as nnU-Net/MONAI do), so the map is symmetric for even sizes too.
    """
    axes = []
    for r in roi:
        sigma = max(r * sigma_scale, 1e-6)
        x = np.arange(r, dtype=np.float64) - (r - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    weights = np.einsum("i,j,k->ijk", *axes)
    weights /= weights.max()
    tiny = np.finfo(np.float32).tiny
    return np.maximum(weights, tiny).astype(np.float32)  # never zero: every covered voxel keeps a weight


def _windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> Iterator[tuple[slice, slice, slice]]:
    for x in window_starts(shape[0], roi[0], overlap):
        for y in window_starts(shape[1], roi[1], overlap):
            for z in window_starts(shape[2], roi[2], overlap):
                yield slice(x, x + roi[0]), slice(y, y + roi[1]), slice(z, z + roi[2])


def sliding_window_predict(
    volume: np.ndarray,
    roi: tuple[int, int, int],
    predict_fn: PredictFn,
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    blend: str = "gaussian",
    n_classes: int | None = None,
) -> np.ndarray:
    """Blend `predict_fn` over overlapping `roi` windows of a channels-last (X,Y,Z,C) volume -> (X,Y,Z,K) float32.

    `predict_fn` maps (B,rx,ry,rz,C) to (B,rx,ry,rz,K) probabilities. Axes shorter than `roi` are zero-padded
    (centred) and cropped back; K is taken from the first prediction unless `n_classes` is given.
    """
    roi = _check_roi(roi)
    overlap = _check_overlap(overlap)
    if blend not in BLENDS:
        raise UserError(f"blend {blend!r}: choose from {', '.join(BLENDS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"batch_size {batch_size!r}: must be a positive integer")
    if n_classes is not None and (not isinstance(n_classes, (int, np.integer)) or n_classes < 1):
        raise UserError(f"n_classes {n_classes!r}: must be a positive integer")
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 4 or min(volume.shape) < 1:
        raise UserError(f"volume of shape {volume.shape}: expected a non-empty channels-last (X, Y, Z, C) array")

    shape = volume.shape[:3]
    pad = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(shape, roi)]
    if any(before or after for before, after in pad):
        volume = np.pad(volume, pad + [(0, 0)], mode="constant")
    padded = volume.shape[:3]

    weights = gaussian_importance(roi) if blend == "gaussian" else np.ones(roi, dtype=np.float32)
    weight_sum = np.zeros(padded, dtype=np.float32)
    accum: np.ndarray | None = None

    def flush(batch: list[tuple[slice, slice, slice]]) -> None:
        nonlocal accum, n_classes
        probs = np.asarray(predict_fn(np.stack([volume[w] for w in batch])))
        if probs.ndim != 5 or probs.shape[0] != len(batch) or tuple(probs.shape[1:4]) != roi:
            raise ValueError(f"predict_fn returned shape {probs.shape}; expected ({len(batch)}, {roi[0]}, "
                             f"{roi[1]}, {roi[2]}, K)")
        if n_classes is None:
            n_classes = int(probs.shape[4])
        if probs.shape[4] != n_classes:
            raise ValueError(f"predict_fn returned {probs.shape[4]} classes; expected {n_classes}")
        if accum is None:
            accum = np.zeros((*padded, n_classes), dtype=np.float32)
        for w, p in zip(batch, probs):
            accum[w] += p * weights[..., None]
            weight_sum[w] += weights

    batch: list[tuple[slice, slice, slice]] = []
    for window in _windows(padded, roi, overlap):
        batch.append(window)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)

    assert accum is not None  # at least one window always exists
    accum /= weight_sum[..., None]
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pad, shape))
    return np.ascontiguousarray(accum[crop])


_COMPILED: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def compiled_predict(model: Any, local: Callable[[Callable], Callable] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The model's forward pass as one traced function per model (any batch and window size: one trace), so
    whole-volume inference does not run eagerly op by op. The function reads the live weights. `local`: how a
    training engine runs it on this rank's own copy of the variables (`Engine.local_fn`), fixed at the first call
    for a model."""
    import tensorflow as tf

    fn = _COMPILED.get(model)
    if fn is None:
        channels = int(model.input_shape[-1])
        spec = tf.TensorSpec([None, None, None, None, channels], tf.float32)
        forward = lambda x: model(x, training=False)  # noqa: E731
        fn = tf.function(local(forward) if local else forward, input_signature=[spec])
        _COMPILED[model] = fn
    return lambda batch: fn(tf.constant(batch, tf.float32)).numpy()


def predict_labels(model: Any, image: np.ndarray, crop: Sequence[int], overlap: float = 0.25, batch_size: int = 4,
                   local: Callable[[Callable], Callable] | None = None) -> np.ndarray:
    """Model labels (0..3) of one (X, Y, Z, C) volume from a Keras model, by sliding windows at the training crop."""
    probs = sliding_window_predict(image, tuple(crop), compiled_predict(model, local), overlap=overlap,
                                   batch_size=batch_size, n_classes=4)
    return np.argmax(probs, axis=-1).astype(np.uint8)
