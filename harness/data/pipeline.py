"""tf.data input pipeline over the preprocessed store.

Every random choice (epoch order, crop position, flips, intensity) is drawn from (seed, epoch, index), where
index is the sample's position in the epoch's global order. So a sample is the same whatever rank draws it
and however many map calls run in parallel, and `deterministic=True` only has to fix the output order.
Crops are read from the memory-mapped int16 image: only the crop's pages are touched, no NIfTI decoding, and
each map call writes a whole batch in one pass per crop (`CropSampler`).
TensorFlow is imported inside the functions that need it so the planning helpers stay light.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from harness.data.store import Store
from harness.errors import UserError

INTENSITY_SCALE = (0.9, 1.1)
INTENSITY_SHIFT = 0.1


def epoch_order(case_ids: Sequence[str], seed: int, epoch: int) -> list[str]:
    """The epoch's global case order; a hash order is the same on every rank, numpy version and input order."""
    return sorted(sorted(set(case_ids)), key=lambda c: hashlib.sha256(f"{seed}:{epoch}:{c}".encode()).digest())


def epoch_shard(case_ids: Sequence[str], seed: int, epoch: int, rank: int, size: int) -> list[str]:
    """Rank's cases for the epoch: disjoint contiguous slices of equal length; the remainder is dropped."""
    return [cid for _, cid in _plan(case_ids, seed, epoch, rank, size)]


def _plan(case_ids: Sequence[str], seed: int, epoch: int, rank: int, size: int) -> list[tuple[int, str]]:
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"rank {rank} / size {size}: need 0 <= rank < size")
    order = epoch_order(case_ids, seed, epoch)
    per_rank = len(order) // size
    first = rank * per_rank
    return [(first + i, order[first + i]) for i in range(per_rank)]


def steps_per_epoch(n_cases: int, batch_size: int, size: int) -> int:
    """Steps each rank takes per epoch (one crop per case; partial shards and batches are dropped)."""
    if batch_size < 1 or size < 1:
        raise UserError(f"batch size {batch_size} / size {size}: need both >= 1")
    return (n_cases // size) // batch_size


_ALIGN = 64  # bytes: TensorFlow adopts an ndarray this aligned without a copy (EIGEN_MAX_ALIGN_BYTES)
_STAGE_BYTES = 1 << 18  # a slab of the crop staged at a time: stays in L2 between the ufunc passes


def _aligned(owner: np.ndarray, shape: Sequence[int], dtype, offset: int = 0) -> np.ndarray:
    """A C-contiguous `dtype` array of `shape` at the first 64-byte boundary at or after `offset` bytes of `owner`."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    start = offset + (-(owner.ctypes.data + offset) % _ALIGN)
    return owner[start:start + nbytes].view(dtype).reshape(tuple(shape))


def aligned_empty(shape: Sequence[int], dtype) -> np.ndarray:
    """np.empty, 64-byte aligned. numpy's large arrays sit 16 bytes past a page, and `numpy_function` copies an
    output that is not aligned for Eigen: 3 ms a sample at 4x128^3 float32 (docs/benchmarks.md)."""
    return _aligned(np.empty(int(np.prod(shape)) * np.dtype(dtype).itemsize + _ALIGN, np.uint8), shape, dtype)


def _idle_references() -> int:
    """What sys.getrefcount says of a BatchMemory block nothing else refers to (same code path as the scan)."""
    for block in [np.empty(1, np.uint8)]:
        return sys.getrefcount(block)
    raise AssertionError


class BatchMemory:
    """Blocks of memory for batches, each reused once no array made from it is alive any more.

    TensorFlow adopts an aligned batch from `numpy_function` without a copy and holds it until it drops the tensor,
    so when to reuse a block is told by its reference count: every view of it (numpy collapses view chains onto
    the block) holds one reference. Fresh memory per batch cost a page fault per 4 KiB, the kernel zeroing every
    page, and an munmap that stalls the process's other map calls: a quarter of a sample's time on one core and
    the second core's gain (docs/benchmarks.md). The pool grows to the number of batches alive at once.
    """

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._idle = _idle_references()

    def __len__(self) -> int:
        return len(self._blocks)

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 block of at least `nbytes` + alignment slack that nothing else refers to."""
        size = nbytes + _ALIGN
        with self._lock:
            for block in self._blocks:
                if block.nbytes == size and sys.getrefcount(block) <= self._idle:
                    return block
            block = np.empty(size, np.uint8)
            self._blocks.append(block)
            return block


def _window(array: np.ndarray, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """array[starts : starts+size] on the first three axes: a view when inside the volume, else a zero-padded copy."""
    src, dst = [], []
    for start, n, dim in zip(starts, size, array.shape):
        lo, hi = max(start, 0), min(start + n, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    if all(d.start == 0 and d.stop == n for d, n in zip(dst, size)):
        return array[tuple(src)]
    out = np.zeros(tuple(size) + array.shape[3:], dtype=array.dtype)
    out[tuple(dst)] = array[tuple(src)]
    return out


def _flipped(array: np.ndarray, flips: Sequence[bool]) -> np.ndarray:
    return array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def _voxel_dtype(nbytes: int) -> np.dtype:
    """A dtype of `nbytes` that numpy copies without the GIL: an integer or complex one where the size has one
    (a void copy holds the GIL, which kept two map calls to one core's rate)."""
    return np.dtype({2: np.int16, 4: np.int32, 8: np.int64, 16: np.complex128}.get(nbytes, (np.void, nbytes)))


@dataclass(frozen=True)
class _Case:
    voxels: np.ndarray  # (X,Y,Z) memmap, one element = a voxel's C int16 codes (so a z-flip moves whole voxels)
    scale: np.ndarray  # (C_used,) float32: z = code * scale, for the channels used
    label: np.ndarray  # (X,Y,Z) uint8 memmap
    tumour_before: np.ndarray  # (X+1,) int64: tumour voxels in the x-planes before each plane


@dataclass(frozen=True)
class Draw:
    """The random choices of one training sample."""

    starts: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    scale: np.ndarray  # (C,) float32 intensity gain per channel
    shift: np.ndarray  # (C,) float32


class CropSampler:
    """Writes augmented training crops straight from the store's int16 image into the batch that TensorFlow gets.

    One fused pass per crop, staged a slab at a time so each slab stays in cache: flips as strided views of whole
    voxels, int16 -> float32 with the store scale and the intensity gain in one multiply, the shift in one add;
    no stack, no per-sample copy, no batching copy. numpy releases the GIL for these loops, so parallel map calls
    run on as many cores as they are given. Thread-safe; each case is opened once per sampler (memory maps and a
    per-plane tumour count, not the tumour's voxel list).
    """

    def __init__(
        self, store: Store, case_ids: Sequence[str], modalities: Sequence[str], crop: Sequence[int], *,
        seed: int, tumour_share: float, augment: bool,
    ):
        self.store = store
        self.case_ids = list(case_ids)
        self.modalities = tuple(modalities)
        self.channels = store.channels(self.modalities)
        self.crop = tuple(int(c) for c in crop)
        self.seed = int(seed) % 2**63
        self.tumour_share = float(tumour_share)
        self.augment = augment
        self._all_channels = self.channels == list(range(len(store.modalities)))
        self._cases: dict[str, _Case] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.memory = BatchMemory()

    def _case(self, case_id: str) -> _Case:
        case = self._cases.get(case_id)
        if case is not None:
            return case
        codes, scale = self.store.image_codes(case_id)
        voxels = codes.view(_voxel_dtype(codes.dtype.itemsize * codes.shape[-1]))[..., 0]
        label = np.load(self.store.array_path(case_id, "label"), mmap_mode="r")
        per_plane = np.count_nonzero(label.reshape(label.shape[0], -1), axis=1)
        case = _Case(voxels, scale[self.channels], label, np.concatenate([[0], np.cumsum(per_plane)]))
        with self._lock:
            return self._cases.setdefault(case_id, case)

    def _tumour_voxel(self, case: _Case, k: int) -> tuple[int, ...]:
        """The k-th tumour voxel in C order (what np.flatnonzero(label)[k] gives), scanning one x-plane only."""
        plane = int(np.searchsorted(case.tumour_before, k, side="right")) - 1
        flat = np.flatnonzero(case.label[plane])[k - int(case.tumour_before[plane])]
        return (plane, *np.unravel_index(flat, case.label.shape[1:]))

    def draw(self, epoch: int, case_index: int, index: int) -> Draw:
        """The crop, flips and intensity change of sample `index` of `epoch` (case at `case_index`)."""
        case = self._case(self.case_ids[int(case_index)])
        shape = case.label.shape
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        lows = [min(0, d - c) for d, c in zip(shape, self.crop)]
        highs = [max(0, d - c) for d, c in zip(shape, self.crop)]
        n_tumour = int(case.tumour_before[-1])
        if rng.random() < self.tumour_share and n_tumour:
            centre = self._tumour_voxel(case, int(rng.integers(n_tumour)))
            starts = [int(np.clip(v - c // 2, lo, hi)) for v, c, lo, hi in zip(centre, self.crop, lows, highs)]
        else:
            starts = [int(rng.integers(lo, hi + 1)) if hi > lo else (d - c) // 2 for lo, hi, d, c in zip(lows, highs, shape, self.crop)]
        flips = rng.random(3) < 0.5
        channels = len(self.channels)
        scale = rng.uniform(*INTENSITY_SCALE, size=channels).astype(np.float32)
        shift = rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT, size=channels).astype(np.float32)
        if not self.augment:
            flips, scale, shift = np.zeros(3, bool), np.ones(channels, np.float32), np.zeros(channels, np.float32)
        return Draw(tuple(starts), tuple(bool(f) for f in flips), scale, shift)  # type: ignore[arg-type]

    def fill(self, x: np.ndarray, y: np.ndarray, epoch: int, case_index: int, index: int) -> None:
        """Write sample `index` of `epoch` into x (cx,cy,cz,C) float32 and y (cx,cy,cz) int32, both C-contiguous."""
        case = self._case(self.case_ids[int(case_index)])
        d = self.draw(epoch, case_index, index)
        np.copyto(y, _flipped(_window(case.label, d.starts, self.crop), d.flips), casting="unsafe")
        voxels = _flipped(_window(case.voxels, d.starts, self.crop), d.flips)
        cx, cy, cz = self.crop
        n_codes = case.voxels.dtype.itemsize // 2
        gain = np.tile(case.scale * d.scale, cz)  # (cz*C,): one multiply decodes and scales, per channel
        offset = np.tile(d.shift, cz)
        slab = max(1, _STAGE_BYTES // (cy * cz * case.voxels.dtype.itemsize))
        stage = self._stage(slab, case.voxels.dtype)
        out = x.reshape(cx, cy, cz * len(self.channels))
        for a in range(0, cx, slab):
            n = min(slab, cx - a)
            np.copyto(stage[:n], voxels[a:a + n])  # the flipped, strided window -> contiguous voxels
            codes = stage[:n].view(np.int16).reshape(n, cy, cz, n_codes)
            if not self._all_channels:
                codes = codes[..., self.channels]
            dst = out[a:a + n]
            np.multiply(codes.reshape(n, cy, -1), gain, out=dst, casting="unsafe")
            if self.augment:
                np.add(dst, offset, out=dst)

    def _stage(self, slab: int, dtype: np.dtype) -> np.ndarray:
        stage = getattr(self._local, "stage", None)
        shape = (slab, *self.crop[1:])
        if stage is None or stage.shape != shape or stage.dtype != dtype:
            stage = self._local.stage = np.empty(shape, dtype)
        return stage

    def sample(self, epoch: int, case_index: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (cx,cy,cz,C), y int32 (cx,cy,cz)) for the case at `case_index`, sample number `index` of
        `epoch`'s global order."""
        x, y = self.batch([epoch], [case_index], [index])
        return x[0], y[0]

    def batch(self, epochs: Sequence[int], case_indices: Sequence[int], indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(x (B,cx,cy,cz,C) float32, y (B,cx,cy,cz) int32) of the given samples, in aligned arrays that TensorFlow
        takes over without a copy, on memory of a batch nothing refers to any more (`BatchMemory`)."""
        n = len(indices)
        x_shape, y_shape = (n, *self.crop, len(self.channels)), (n, *self.crop)
        x_bytes = int(np.prod(x_shape)) * 4
        block = self.memory.take(x_bytes + _ALIGN + int(np.prod(y_shape)) * 4)
        x = _aligned(block, x_shape, np.float32)
        y = _aligned(block, y_shape, np.int32, offset=x.ctypes.data - block.ctypes.data + x_bytes)
        del block
        for i, (e, ci, ix) in enumerate(zip(epochs, case_indices, indices)):
            self.fill(x[i], y[i], e, ci, ix)
        return x, y


def _check(store: Store, case_ids: Sequence[str], modalities: Sequence[str], need_label: bool) -> tuple[str, ...]:
    mods = store.check_modalities(modalities)
    known = set(store.case_ids)
    missing = [c for c in case_ids if c not in known]
    if missing:
        raise UserError(f"{store.path}: {len(missing)} case(s) not in the store, e.g. {missing[0]}")
    if need_label:
        unlabelled = [c for c in case_ids if not store.entry(c).get("has_label")]
        if unlabelled:
            raise UserError(f"{store.path}: case {unlabelled[0]} has no label and cannot be used for training")
    return mods


PASS_STRIDE = 1_000_003  # an epoch longer than one pass draws pass p with the seeds of epoch + p * PASS_STRIDE


def pass_epochs(epoch: int, steps: int, steps_per_pass: int) -> list[int]:
    """The seed epochs of the passes an epoch of `steps` steps chains (the last one cut short): fresh shuffles and
    crops per pass, still a pure function of (seed, epoch), so `--resume` can skip into them."""
    return [epoch + PASS_STRIDE * p for p in range(-(-steps // steps_per_pass))]


def chain_passes(epoch: int, steps: int, steps_per_pass: int, batch_size: int, one_pass: Callable[[int], np.ndarray]) -> np.ndarray:
    """The rows of an epoch of `steps` batches: `one_pass(seed_epoch)` (rows along axis 0, at least one pass of
    samples) for each of `pass_epochs`, each cut to a whole pass, joined and cut to `steps` batches."""
    rows = [one_pass(e)[: steps_per_pass * batch_size] for e in pass_epochs(epoch, steps, steps_per_pass)]
    return np.concatenate(rows)[: steps * batch_size]


def train_dataset(
    store: Store,
    case_ids: Sequence[str],
    modalities: Sequence[str],
    crop: tuple[int, int, int],
    batch_size: int,
    *,
    rank: int = 0,
    size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    epochs: int = 1,
    steps: int | None = None,
    tumour_share: float = 0.5,
    augment: bool = True,
    deterministic: bool = True,
    num_parallel: int | None = None,
):
    """Epochs `epoch` .. `epoch + epochs - 1` of (x float32 (B,cx,cy,cz,C), y int32 (B,cx,cy,cz) in 0..3) for
    this rank, each `steps` batches (default: one pass over the rank's shard), as one stream.

    One stream for the whole run, not one pipeline per epoch: tearing a pipeline down costs ~0.5 s of a
    single-core run's wall time, which at the demo's short epochs was a fifth of the run. Every rank gets the same
    number of steps (`steps_per_epoch`), as Horovod's allreduce requires.
    """
    import tensorflow as tf

    mods = _check(store, case_ids, modalities, need_label=True)
    crop = tuple(int(c) for c in crop)
    if len(crop) != 3 or min(crop) < 1:
        raise UserError(f"crop {crop}: need three positive sizes")
    if not 0.0 <= tumour_share <= 1.0:
        raise UserError(f"tumour share {tumour_share}: need a value in [0, 1]")
    per_pass = steps_per_epoch(len(set(case_ids)), batch_size, size)
    if per_pass < 1:
        raise UserError(f"{len(set(case_ids))} cases over {size} rank(s) at batch size {batch_size} give no training step")
    if epochs < 1 or (steps is not None and steps < 1):
        raise UserError(f"epochs {epochs} / steps {steps}: need at least one of each")
    steps = steps or per_pass
    ordered = sorted(set(case_ids))
    position = {cid: i for i, cid in enumerate(ordered)}
    sampler = CropSampler(store, ordered, mods, crop, seed=seed, tumour_share=tumour_share, augment=augment)

    def one_pass(seed_epoch: int) -> np.ndarray:
        return np.array([(seed_epoch, position[cid], i) for i, cid in _plan(case_ids, seed, seed_epoch, rank, size)],
                        dtype=np.int64).reshape(-1, 3)

    def plan(e) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seed epoch, case index, sample index) of every sample of epoch `e`, in order."""
        cols = chain_passes(int(e), steps, per_pass, batch_size, one_pass).T
        return cols[0], cols[1], cols[2]

    def rows(e):
        cols = tf.numpy_function(plan, [e], [tf.int64] * 3, stateful=False, name="epoch_plan")
        return tf.data.Dataset.from_tensor_slices(tuple(tf.reshape(c, [-1, batch_size]) for c in cols))

    channels = len(mods)

    def load(seed_epochs, cis, ixs):
        # stateful=False: a batch is a pure function of its rows, so op determinism need not run the map
        # sequentially (it would: 3.5 ms per batch of input wait instead of 0.35 ms)
        x, y = tf.numpy_function(sampler.batch, [seed_epochs, cis, ixs], [tf.float32, tf.int32], stateful=False,
                                 name="read_batch")
        x.set_shape((batch_size, *crop, channels))
        y.set_shape((batch_size, *crop))
        return x, y

    # one map call writes a whole batch (batches never straddle two epochs: each epoch is a whole number of them)
    ds = tf.data.Dataset.range(epoch, epoch + epochs).flat_map(rows)
    ds = ds.map(load, num_parallel_calls=num_parallel or tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)


def eval_cases(store: Store, case_ids: Sequence[str], modalities: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """(case_id, image (X,Y,Z,C) float32, label (X,Y,Z) uint8 0..3 or None) for whole-volume evaluation."""
    mods = _check(store, case_ids, modalities, need_label=False)
    for case_id in case_ids:
        image, label = store.load(case_id, mods)
        yield case_id, image, label
