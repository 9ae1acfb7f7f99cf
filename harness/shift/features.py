"""Features whose distributions are compared across modality pairs (same patients, same positions).

(i) intensity patches sampled inside the brain mask, per modality and per modality pair;
(ii) learned features: a pre-trained encoder's bottleneck activations, average-pooled per crop, for
     source-pair and target-pair inputs of the same crops.
Sampling positions depend only on the seed and the case, so both domains see the same anatomy and any
difference is the modalities' doing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.data.store import Store


def _positions(mask: np.ndarray, n: int, half: int, rng: np.random.Generator) -> np.ndarray:
    inner = np.zeros_like(mask, dtype=bool)
    sl = tuple(slice(half, s - half) for s in mask.shape)
    inner[sl] = mask[sl] > 0
    idx = np.argwhere(inner)
    if len(idx) == 0:
        return np.empty((0, 3), dtype=int)
    return idx[rng.choice(len(idx), size=min(n, len(idx)), replace=False)]


def sample_patches(
    store: Store, case_ids: Sequence[str], modalities: Sequence[str], *, patch: int = 3, per_case: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """Patches (n, patch^3) per modality, at the same brain positions for every modality."""
    half = patch // 2
    out: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    for i, case_id in enumerate(case_ids):
        rng = np.random.default_rng([seed, i])
        image, _ = store.load(case_id, modalities)
        pos = _positions(store.load_mask(case_id), per_case, half, rng)
        offsets = np.arange(-half, half + 1)
        grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
        coords = pos[:, None, :] + grid[None, :, :]  # (n, patch^3, 3)
        for c, m in enumerate(modalities):
            out[m].append(np.asarray(image[coords[..., 0], coords[..., 1], coords[..., 2], c], dtype=np.float32))
    return {m: np.concatenate(v) if v else np.empty((0, patch**3), np.float32) for m, v in out.items()}


def crops_for_features(
    store: Store, case_ids: Sequence[str], modalities_a: Sequence[str], modalities_b: Sequence[str],
    crop: Sequence[int], *, per_case: int = 2, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The same crops (centred on brain voxels) read in two modality sets: (n, *crop, C_a), (n, *crop, C_b)."""
    a_list, b_list = [], []
    crop = np.asarray(crop)
    for i, case_id in enumerate(case_ids):
        rng = np.random.default_rng([seed, i, 1])
        img_a, _ = store.load(case_id, modalities_a)
        img_b, _ = store.load(case_id, modalities_b)
        shape = np.asarray(img_a.shape[:3])
        for centre in _positions(store.load_mask(case_id), per_case, 0, rng):
            start = np.clip(centre - crop // 2, 0, np.maximum(shape - crop, 0))
            sl = tuple(slice(int(s), int(s + c)) for s, c in zip(start, crop))
            a_list.append(np.asarray(img_a[sl]))
            b_list.append(np.asarray(img_b[sl]))
    return np.stack(a_list), np.stack(b_list)


def bottleneck_features(model, crops: np.ndarray, batch: int = 4) -> np.ndarray:
    """Average-pooled bottleneck activations of a bratsbench U-Net, one vector per crop."""
    import tensorflow as tf

    encoder = tf.keras.Model(model.input, model.get_layer("bottleneck_relu2").output)
    feats = [tf.reduce_mean(encoder(crops[i : i + batch], training=False), axis=[1, 2, 3]).numpy() for i in range(0, len(crops), batch)]
    return np.concatenate(feats).astype(np.float64)
