"""In-memory generated samples for `--synthetic` runs (NVIDIA's debug_train idea, but learnable).

Each sample is a few random ellipsoid 'lesions' with nested labels on a noisy background whose channel
intensities depend on the label, so a U-Net can actually learn it and Dice means something. Generated
with numpy from a seed so ranks and re-runs get exactly the data they expect.
"""

from __future__ import annotations

import numpy as np

# Channel intensity per class (background, NCR, ED, ET) for up to 4 channels; rows differ so that any
# modality subset separates the classes.
_CONTRAST = np.array(
    [
        [0.0, -0.6, 1.5, 1.0],
        [0.0, -0.8, 0.5, 0.3],
        [0.0, -1.0, 0.4, 1.8],
        [0.0, 1.3, 1.2, 0.6],
    ],
    dtype=np.float32,
)


def make_samples(n: int, crop: tuple[int, int, int], channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return images (n, X, Y, Z, C) float32 and labels (n, X, Y, Z) int32 in 0..3."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in crop], indexing="ij"), axis=-1)
    images = np.empty((n, *crop, channels), np.float32)
    labels = np.zeros((n, *crop), np.int32)
    for i in range(n):
        label = labels[i]
        for _ in range(rng.integers(1, 3)):
            centre = rng.uniform(0.25, 0.75, 3) * np.array(crop)
            radius = rng.uniform(0.12, 0.25, 3) * np.array(crop)
            dist = np.sqrt((((grid - centre) / radius) ** 2).sum(-1))
            label[dist < 1.0] = np.maximum(label[dist < 1.0], 2)  # oedema halo
            label[dist < 0.6] = 3  # enhancing rim
            if rng.random() < 0.7:
                label[dist < 0.35] = 1  # necrotic core
        contrast = _CONTRAST[:channels].T  # (4 classes, C)
        images[i] = contrast[label] + rng.normal(0.0, 0.35, (*crop, channels)).astype(np.float32)
    return images, labels
