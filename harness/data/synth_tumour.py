"""Synthetic glioma labels for `bratsbench synth`: an irregular core with an oedema halo in white matter.

The core is the inside of an anisotropic distance field perturbed by smooth noise (so the border is
lumpy); necrosis (NCR, label 1) fills its inner part and enhancing tumour (ET, label 4) the rim; oedema
(ED, label 2) is a wider, noisier halo that spreads preferentially along white matter and stays out of
CSF. Compositions vary like real data: HGG with necrosis, solid enhancing HGG (no NCR), LGG (no ET).
Noise fields are made on a >= 2 mm grid and upsampled linearly; everything else is exact per voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from harness.data.synth_anatomy import Anatomy, separable_zoom, voxel_mm

NCR, ED, ET = 1, 2, 4
# Probabilities of each composition; about a quarter LGG-like (BraTS 2020: 76 of 369 training cases).
COMPOSITIONS: dict[str, float] = {"necrotic": 0.55, "solid": 0.20, "lgg": 0.25}


@dataclass
class Tumour:
    """Labels in a box of the anatomy crop, plus the smooth field used for tumour texture."""

    box: tuple[slice, slice, slice]  # inside the anatomy crop
    labels: np.ndarray  # uint8 in {0, 1, 2, 4}
    texture: np.ndarray  # unit-variance smooth noise over the box
    composition: str
    centre_mm: np.ndarray
    radius_mm: float

    @property
    def grade(self) -> str:
        return "LGG" if self.composition == "lgg" else "HGG"


def _noise(rng: np.random.Generator, shape: tuple[int, ...], size: np.ndarray, corr_mm: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~corr_mm, clipped to +-2.5."""
    grid = np.maximum(size, 2.0)  # coarse spacing in mm
    cshape = tuple(int(np.ceil(n * s / g)) + 1 for n, s, g in zip(shape, size, grid))
    field = ndi.gaussian_filter(rng.standard_normal(cshape, dtype=np.float32), corr_mm / grid / 2.0,
                                mode="reflect")
    field /= max(float(field.std()), 1e-6)
    if cshape != tuple(shape):
        field = separable_zoom(field, shape, order=1, grid_mode=False)
    return np.clip(field, -2.5, 2.5)


def _pick_centre(rng: np.random.Generator, anatomy: Anatomy, size: np.ndarray) -> np.ndarray:
    """A point in deep cerebral white matter (output BraTS mm), from the coarse grid plus jitter."""
    c = anatomy.coarse
    good = (c.wm > 0.8) & (c.depth > 15.0) & (c.atlas_z > 60.0)
    if not good.any():
        good = c.wm * c.depth >= (c.wm * c.depth).max() * 0.8
    picks = np.argwhere(good)
    point = picks[rng.integers(len(picks))] * c.step
    return voxel_mm(point.astype(np.float64), size) + rng.uniform(-1.5, 1.5, 3)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def grow_tumour(rng: np.random.Generator, anatomy: Anatomy, size: np.ndarray,
                composition: str | None = None) -> Tumour:
    """Draw a tumour for one case; `composition` forces one of COMPOSITIONS (else drawn at random)."""
    names = list(COMPOSITIONS)
    if composition is None:
        composition = names[int(rng.choice(len(names), p=list(COMPOSITIONS.values())))]
    elif composition not in COMPOSITIONS:
        raise ValueError(f"composition '{composition}' is not one of {names}")
    centre = _pick_centre(rng, anatomy, size)
    radius = rng.uniform(12.0, 22.0)
    axes = rng.uniform(0.8, 1.25, 3)
    axes /= np.cbrt(axes.prod())
    core_shape = _rotation(rng).T / axes[:, None]  # maps a mm offset to units of the core radius
    ed_factor = rng.uniform(1.45, 2.1) * (0.85 if composition == "lgg" else 1.0)
    ed_axes = axes * rng.uniform(0.85, 1.15, 3)
    ed_shape = _rotation(rng).T / ed_axes[:, None]
    core_amp, ed_amp, wm_pull = rng.uniform(0.08, 0.2), rng.uniform(0.12, 0.25), rng.uniform(0.25, 0.45)
    # A rim at least ~one voxel thick so that ET survives on coarse grids.
    rim_mm = max(rng.uniform(2.5, 6.0), 1.2 * float(size.max()))

    # Box that surely holds the oedema, clipped to the anatomy crop.
    reach = radius * ed_factor * max(ed_axes.max(), axes.max()) * (1.0 + 2.5 * ed_amp) + wm_pull * radius + 3.0
    crop_lo = np.array(anatomy.offset)
    centre_vox = (centre + 0.5) / size - 0.5
    lo = np.maximum(np.floor(centre_vox - reach / size).astype(int) - crop_lo, 0)
    hi = np.minimum(np.ceil(centre_vox + reach / size).astype(int) + 1 - crop_lo, anatomy.brain.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shape = tuple(int(b - a) for a, b in zip(lo, hi))

    offs = [voxel_mm(np.arange(a, b, dtype=np.float64) + o, s) - c
            for a, b, o, s, c in zip(lo, hi, crop_lo, size, centre)]
    rel = [o.reshape([-1 if k == a else 1 for k in range(3)]) for a, o in enumerate(offs)]

    def distance(mat: np.ndarray) -> np.ndarray:
        return np.sqrt(sum((mat[r, 0] * rel[0] + mat[r, 1] * rel[1] + mat[r, 2] * rel[2]) ** 2
                           for r in range(3))).astype(np.float32)

    texture = _noise(rng, shape, size, 2.5)
    core_field = distance(core_shape) / radius + core_amp * _noise(rng, shape, size, 8.0) + 0.04 * texture
    rim_noise = _noise(rng, shape, size, 6.0)
    ed_field = (distance(ed_shape) / (radius * ed_factor) + ed_amp * _noise(rng, shape, size, 10.0)
                + 0.4 * ed_amp * _noise(rng, shape, size, 3.5))

    brain = anatomy.brain[box]
    wm, csf = anatomy.wm[box], anatomy.csf[box]
    wm_frac = wm / np.maximum(brain, 1e-3)
    mask = brain > 0.5
    core = (core_field < 1.0) & mask
    ed_field = ed_field - wm_pull * (wm_frac - 0.5) + 1.5 * csf
    oedema = (ed_field < 1.0) & mask & (csf < 0.5) & ~core
    whole, n = ndi.label(core | oedema)
    if n > 1:  # drop oedema islands not attached to the core
        keep = np.zeros(n + 1, bool)
        keep[np.unique(whole[core])] = True
        keep[0] = False
        oedema &= keep[whole]

    labels = np.zeros(shape, np.uint8)
    labels[oedema] = ED
    if composition == "necrotic":
        inner = core_field < 1.0 - (rim_mm / radius) * (1.0 + 0.35 * rim_noise)
        labels[core & inner] = NCR
        labels[core & ~inner] = ET
    elif composition == "solid":
        labels[core] = ET
    else:
        labels[core] = NCR
    return Tumour(box, labels, texture, composition, centre, float(radius))
