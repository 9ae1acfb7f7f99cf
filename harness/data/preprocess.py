"""Per-case preprocessing on the way into the store, and its inverse on the way out.

z-score each modality inside the brain mask, crop to the brain's bounding box, optional isotropic resampling,
centre pad/crop to the roi, labels 4 -> 3, and the modalities interleaved into one int16 image with a scale per
modality (`quantise`); `to_original_geometry` undoes the geometry for predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from harness.data.validate import CaseData
from harness.errors import UserError
from harness.modalities import MODALITIES

VERSION = 2  # of the preprocessing and the stored arrays; a change re-prepares every case (1: float32 per modality)
DEFAULT_ROI = (128, 128, 128)
IMAGE_DTYPE = np.dtype(np.int16)
_CODE_MAX = float(np.iinfo(IMAGE_DTYPE).max)


class CaseProblem(Exception):
    """A case that reads fine but cannot be preprocessed (e.g. no brain voxels)."""


@dataclass(frozen=True)
class PrepParams:
    roi: tuple[int, int, int] = DEFAULT_ROI
    spacing: float | None = None
    modalities: tuple[str, ...] = MODALITIES

    def __post_init__(self) -> None:
        if len(self.roi) != 3 or any(int(r) < 1 for r in self.roi):
            raise UserError(f"--roi {' '.join(map(str, self.roi))}: need three positive sizes")
        if self.spacing is not None and not (math.isfinite(self.spacing) and self.spacing > 0):
            raise UserError(f"--spacing {self.spacing}: need a positive number of mm")

    def as_dict(self) -> dict[str, Any]:
        return {"roi": [int(r) for r in self.roi], "spacing": self.spacing, "modalities": list(self.modalities), "version": VERSION}


def quantise(z: np.ndarray) -> tuple[np.ndarray, float]:
    """(int16 codes, scale) with z ~= codes * scale, scale = max|z| / 32767: every value within scale / 2 of z.

    Why int16: half the bytes of float32 to store, cache and read, and a training crop is decoded in the same
    ufunc pass that applies the intensity augmentation. At z-scored MRI's range (|z| up to ~10-30) the step is
    ~1e-3 of a standard deviation, far below the images' noise; float16 would keep 11 significant bits too, but
    numpy converts it ~3x slower than int16 (see docs/data.md).
    """
    peak = float(np.max(np.abs(z))) if z.size else 0.0
    scale = peak / _CODE_MAX if peak > 0 else 1.0
    codes = np.rint(np.asarray(z, np.float64) / scale)
    return np.clip(codes, -_CODE_MAX, _CODE_MAX).astype(IMAGE_DTYPE), scale


def decode(codes: np.ndarray, scale: Sequence[float], channels: Sequence[int] | None = None) -> np.ndarray:
    """float32 z-scores (X,Y,Z,C) from an image's codes: code * scale, per channel (those of `channels`, in that
    order; default all)."""
    scale = np.asarray(scale, np.float32)
    if channels is not None:
        codes, scale = codes[..., list(channels)], scale[list(channels)]
    return np.multiply(codes, scale, dtype=np.float32)


# ---------------------------------------------------------------- geometry


def _resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample the first three axes to `shape` (voxel extents aligned, so the inverse maps back)."""
    factors = [t / s for t, s in zip(shape, array.shape[:3])] + [1.0] * (array.ndim - 3)
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape[:3] == tuple(shape), (out.shape, shape)
    return out


def _fit(size: int, target: int) -> tuple[int, int]:
    """(crop_start, pad_before) that centres `size` voxels in `target`."""
    if size >= target:
        return (size - target) // 2, 0
    return 0, (target - size) // 2


def _centre(array: np.ndarray, roi: Sequence[int], starts: Sequence[int], pads: Sequence[int]) -> np.ndarray:
    out = np.zeros(tuple(roi), dtype=array.dtype)
    src, dst = [], []
    for size, target, start, pad in zip(array.shape, roi, starts, pads):
        n = min(size, target)
        src.append(slice(start, start + n))
        dst.append(slice(pad, pad + n))
    out[tuple(dst)] = array[tuple(src)]
    return out


def preprocess(data: CaseData, params: PrepParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays to store ({'image' (X,Y,Z,C) int16 in `params.modalities` order, 'mask', 'label'?}) and the meta
    that reads the image (`image_scale`, one per modality: value = code * scale) and inverts the geometry."""
    original_shape = next(iter(data.images.values())).shape
    zooms = np.asarray(data.zooms, dtype=np.float64)
    if params.spacing is not None:
        target = [max(1, int(round(s * z / params.spacing))) for s, z in zip(original_shape, zooms)]
    else:
        target = list(original_shape)
    resampled = tuple(target) != tuple(original_shape)
    images = {m: (_resize(a, target, 1) if resampled else a) for m, a in data.images.items()}
    label = data.label
    if label is not None and resampled:
        label = _resize(label, target, 0)

    # "!= 0" is "> 0" on BraTS (background exactly 0) and still right for copies with negative values
    mask = np.zeros(target, dtype=bool)
    for image in images.values():
        mask |= image != 0
    if not mask.any():
        raise CaseProblem("no brain voxels (every modality is 0 everywhere)")
    bbox = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        bbox.append([int(idx[0]), int(idx[-1]) + 1])
    box = tuple(slice(lo, hi) for lo, hi in bbox)
    fits = [_fit(hi - lo, r) for (lo, hi), r in zip(bbox, params.roi)]
    starts = [f[0] for f in fits]
    pads = [f[1] for f in fits]

    arrays: dict[str, np.ndarray] = {}
    norm = {}
    codes = np.empty((*params.roi, len(params.modalities)), IMAGE_DTYPE)
    image_scale = []
    for c, mod in enumerate(params.modalities):
        image = images[mod]
        inside = image[mask].astype(np.float64)
        mean = float(inside.mean())
        std = float(inside.std())
        scale = std if std > 1e-8 else 1.0
        z = np.where(mask, (image - mean) / scale, 0.0).astype(np.float32)
        codes[..., c], step = quantise(_centre(z[box], params.roi, starts, pads))
        image_scale.append(step)
        norm[mod] = {"mean": mean, "std": std}
    arrays["image"] = codes
    box_mask = mask[box]
    arrays["mask"] = _centre(box_mask.astype(np.uint8), params.roi, starts, pads)
    meta: dict[str, Any] = {
        "original_shape": [int(s) for s in original_shape],
        "original_affine": np.asarray(data.affine).tolist(),
        "original_spacing": [float(z) for z in zooms],
        "spacing": params.spacing,
        "resample_factor": [t / s for t, s in zip(target, original_shape)],
        "resampled_shape": [int(t) for t in target],
        "bbox": bbox,
        "crop_start": [int(s) for s in starts],
        "pad_before": [int(p) for p in pads],
        "roi": [int(r) for r in params.roi],
        "norm": norm,
        "image_dtype": IMAGE_DTYPE.name,
        "image_scale": image_scale,
        "brain_voxels": int(mask.sum()),
        "brain_voxels_outside_roi": int(box_mask.sum() - arrays["mask"].sum()),
    }
    if label is not None:
        stored = label.copy()
        stored[stored == 4] = 3
        arrays["label"] = _centre(stored[box], params.roi, starts, pads)
        meta["tumour_voxels_outside_roi"] = int(np.count_nonzero(label) - np.count_nonzero(arrays["label"]))
        meta["label_counts"] = {str(k): int(v) for k, v in zip(*np.unique(arrays["label"], return_counts=True))}
    return arrays, meta


def to_original_geometry(pred_store_grid: np.ndarray, meta: dict, order: int = 0) -> np.ndarray:
    """Map a prediction on the store grid back onto the case's original voxel grid.

    Undoes pad/crop, places the result in the brain bounding box (background elsewhere) and resamples to the
    original shape. Trailing axes beyond the first three (e.g. class scores) are carried along. Label values are
    unchanged: use `to_brats_labels` to turn class 3 back into BraTS label 4.
    """
    pred = np.asarray(pred_store_grid)
    roi = tuple(meta["roi"])
    if pred.shape[:3] != roi:
        raise ValueError(f"prediction shape {pred.shape[:3]} is not the store roi {roi}")
    out = np.zeros(tuple(meta["resampled_shape"]) + pred.shape[3:], dtype=pred.dtype)
    src, dst = [], []
    for (lo, hi), start, pad, target in zip(meta["bbox"], meta["crop_start"], meta["pad_before"], roi):
        n = min(hi - lo, target)
        src.append(slice(pad, pad + n))
        dst.append(slice(lo + start, lo + start + n))
    out[tuple(dst)] = pred[tuple(src)]
    if tuple(meta["resampled_shape"]) != tuple(meta["original_shape"]):
        out = _resize(out, meta["original_shape"], order)
    return out
