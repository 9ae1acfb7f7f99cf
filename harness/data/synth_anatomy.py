"""Per-case brain anatomy for `bratsbench synth`: ICBM152 tissue maps on the BraTS grid, warped per case.

nilearn's wheel bundles the 1 mm ICBM152 2009a T1, GM and WM maps, so no download is needed. They are
flipped to LPS and padded onto the 240x240x155 BraTS grid once per process; each case then samples them
through a small random affine plus a smooth deformation. All geometry is computed in "BraTS mm", the
index space of the 1 mm BraTS grid, so reduced output shapes keep the same 240x240x155 mm field of view.
Coordinates are computed on a coarse grid (~4 mm) and upsampled linearly (one small matrix product per
axis), which is exact for the affine part, invisible for the smooth deformation, and much cheaper than
evaluating the deformation per voxel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
_FOV = np.array(BRATS_SHAPE, dtype=np.float64)
_COARSE_MM = 4.0  # spacing of the grid on which coordinates and smooth fields are computed
_PAD = 2  # zero voxels around the template block so linear sampling fades out cleanly


@dataclass(frozen=True)
class Atlas:
    """Brain fraction and GM/WM probability on a grid: voxel u lies at `origin + u * spacing` BraTS mm."""

    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    depth: np.ndarray  # distance to the brain surface (mm), on its own grid (`depth_origin`, 2 mm)
    depth_origin: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray


@dataclass
class Anatomy:
    """One case's warped tissue fractions, cropped to the brain's bounding box in the output grid."""

    offset: tuple[int, int, int]  # output voxel index of the crop's first voxel
    brain: np.ndarray  # brain fraction (0..1); the brain mask is brain > 0.5
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    coarse: "Coarse"

    @property
    def mask(self) -> np.ndarray:
        return self.brain > 0.5


@dataclass
class Coarse:
    """The coarse grid (every `step` output voxels) with what tumour placement and bias fields need."""

    step: np.ndarray  # (3,) int, output voxels between coarse points
    shape: tuple[int, int, int]  # coarse points over the whole output grid
    lo: np.ndarray  # coarse index range [lo, hi] covering the crop
    hi: np.ndarray
    crop_shape: tuple[int, int, int]
    wm: np.ndarray  # sampled at coarse points (whole output grid)
    depth: np.ndarray
    atlas_z: np.ndarray  # atlas BraTS-mm z of each coarse point (to keep tumours in the cerebrum)

    def upsample(self, field: np.ndarray) -> np.ndarray:
        """Linear upsampling of a coarse field (whole coarse grid) to the crop; exact at coarse points."""
        sub = field[self.lo[0] : self.hi[0] + 1, self.lo[1] : self.hi[1] + 1, self.lo[2] : self.hi[2] + 1]
        if np.all(self.step == 1):
            return np.ascontiguousarray(sub, dtype=np.float32)
        # (n-1)*step+1 samples put the coarse points exactly on every step-th voxel; then trim the end.
        out = np.asarray(sub, dtype=np.float32)
        for axis, (n, k, keep) in enumerate(zip(sub.shape, self.step, self.crop_shape)):
            op = _zoom_operator(n, int((n - 1) * k + 1), 1, False)[:keep]
            out = np.moveaxis(np.tensordot(op, out, axes=(1, axis)), 0, axis)
        return np.ascontiguousarray(out)


@functools.lru_cache(maxsize=256)
def _zoom_operator(n_in: int, n_out: int, order: int, grid_mode: bool) -> np.ndarray:
    """1-D ndimage.zoom from n_in to n_out samples as a matrix (zooming is separable along axes)."""
    mode = "reflect" if grid_mode else "nearest"
    return ndi.zoom(np.eye(n_in, dtype=np.float64), (n_out / n_in, 1.0), order=order, grid_mode=grid_mode,
                    mode=mode).astype(np.float32)


def separable_zoom(small: np.ndarray, shape: tuple[int, ...], order: int = 3, grid_mode: bool = True) -> np.ndarray:
    """ndimage.zoom(small, to `shape`) done as one small matrix product per axis: many times faster."""
    out = np.asarray(small, dtype=np.float32)
    for axis, n in enumerate(shape):
        op = _zoom_operator(out.shape[axis], int(n), order, grid_mode)
        out = np.moveaxis(np.tensordot(op, out, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(out)


def cubic_upsample(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth field from a few random control values (cell-aligned cubic spline, reflecting edges)."""
    return separable_zoom(small, shape, order=3, grid_mode=True)


def voxel_size(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel size (mm) that keeps the 240x240x155 mm field of view for an output grid of `shape`."""
    return _FOV / np.asarray(shape, dtype=np.float64)


def voxel_mm(index: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Centre of output voxel `index` in BraTS mm (the 1 mm grid's index space)."""
    return (index + 0.5) * size - 0.5


@functools.lru_cache(maxsize=1)
def base_atlas() -> Atlas:
    """Load the bundled templates once per process and place them on the 1 mm BraTS grid (LPS)."""
    from nilearn import datasets  # local files in the wheel; imported lazily because it is slow

    t1 = np.asarray(datasets.load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    mask = t1 > 0.05
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    lo[2] = max(lo[2], hi[2] - BRATS_SHAPE[2])  # keep the top of the brain if it is taller than 155 mm
    box = tuple(slice(a, b) for a, b in zip(lo, hi))

    def place(vol: np.ndarray) -> np.ndarray:  # RAS -> LPS: flip x and y
        return np.pad(np.ascontiguousarray(vol[box][::-1, ::-1, :]), _PAD).astype(np.float32)

    brain = place(mask.astype(np.float32))
    gm_b, wm_b = place(gm) * brain, place(wm) * brain
    size = hi - lo
    origin = np.array([(BRATS_SHAPE[0] - size[0]) // 2, (BRATS_SHAPE[1] - size[1]) // 2,
                       BRATS_SHAPE[2] - size[2]], dtype=np.float64) - _PAD
    depth = ndi.distance_transform_edt(brain[::2, ::2, ::2] > 0.5, sampling=2.0).astype(np.float32)
    return Atlas(brain, gm_b, wm_b, depth, origin, origin, np.ones(3))


@functools.lru_cache(maxsize=4)
def shape_atlas(shape: tuple[int, int, int]) -> Atlas:
    """The base atlas resampled (with anti-aliasing) onto an output grid of `shape`; cached per shape."""
    base = base_atlas()
    size = voxel_size(shape)
    if np.allclose(size, 1.0):
        return base
    sigma = 0.4 * np.sqrt(np.maximum(size**2 - 1.0, 0.0))
    grids = np.meshgrid(*[voxel_mm(np.arange(n, dtype=np.float64), s) - o
                          for n, s, o in zip(shape, size, base.origin)], indexing="ij")
    coords = np.stack(grids).astype(np.float32)

    def resample(vol: np.ndarray) -> np.ndarray:
        smooth = ndi.gaussian_filter(vol, sigma, truncate=3.0) if sigma.max() > 0.3 else vol
        return ndi.map_coordinates(smooth, coords, order=1, mode="constant", cval=0.0, output=np.float32)

    origin = voxel_mm(np.zeros(3), size)
    return Atlas(resample(base.brain), resample(base.gm), resample(base.wm), base.depth, base.depth_origin,
                 origin, size)


def _random_affine(rng: np.random.Generator, atlas_centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matrix B and output centre so that atlas_mm = centre + B @ (out_mm - out_centre)."""
    angles = np.deg2rad(rng.uniform(-5.0, 5.0, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    # ICBM152 brains are larger than most single subjects; shrink a little so the brain fits 155 slices.
    scale = np.array([rng.uniform(0.90, 1.04), rng.uniform(0.90, 1.04), rng.uniform(0.88, 0.97)])
    out_centre = atlas_centre + np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), 0.0])
    top = BRATS_SHAPE[2] - 1
    out_centre[2] = top - rng.uniform(1.0, 8.0) - scale[2] * (top - atlas_centre[2])
    return rot @ np.diag(1.0 / scale), out_centre


def warp_anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> Anatomy:
    """Sample one case's anatomy: random affine + smooth deformation applied to the cached atlas."""
    atlas = shape_atlas(shape)
    base = base_atlas()
    size = voxel_size(shape)
    step = np.maximum(1, np.round(_COARSE_MM / size)).astype(int)
    cshape = tuple(int(np.ceil((n - 1) / k)) + 1 for n, k in zip(shape, step))

    centre = base.origin + (np.array(base.brain.shape) - 1) / 2.0
    mat, out_centre = _random_affine(rng, centre)
    axes = [voxel_mm(np.arange(n) * k, s) - c for n, k, s, c in zip(cshape, step, size, out_centre)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))  # output mm relative to the output centre
    atlas_mm = np.einsum("ij,j...->i...", mat, grid) + centre[:, None, None, None]
    # Smooth deformation: a 5x5x4 lattice of random displacements, cubic-interpolated over the grid.
    lattice = rng.normal(0.0, rng.uniform(1.5, 3.0), (3, 5, 5, 4))
    atlas_mm += np.stack([cubic_upsample(c, cshape) for c in lattice])
    coords = ((atlas_mm - atlas.origin[:, None, None, None]) / atlas.spacing[:, None, None, None])

    def sample(vol: np.ndarray, pts: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(vol, pts, order=1, mode="constant", cval=0.0, output=np.float32)

    brain_c = sample(atlas.brain, coords)
    inside = np.argwhere(brain_c > 0.01)
    lo = np.maximum(inside.min(0) - 1, 0)
    hi = np.minimum(inside.max(0) + 1, np.array(cshape) - 1)
    lo_vox = lo * step
    hi_vox = np.minimum(hi * step, np.array(shape) - 1)
    depth_pts = (atlas_mm - base.depth_origin[:, None, None, None]) / 2.0
    coarse = Coarse(step, cshape, lo, hi, tuple(int(n) for n in hi_vox - lo_vox + 1),
                    wm=sample(atlas.wm, coords), depth=sample(base.depth, depth_pts), atlas_z=atlas_mm[2])
    fine = np.empty((3,) + coarse.crop_shape, np.float32)
    for axis in range(3):
        fine[axis] = coarse.upsample(coords[axis])
    brain = sample(atlas.brain, fine)
    gm = np.minimum(sample(atlas.gm, fine), brain)
    wm = np.minimum(sample(atlas.wm, fine), brain - gm)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return Anatomy(tuple(int(v) for v in lo_vox), brain, csf, gm, wm, coarse)
