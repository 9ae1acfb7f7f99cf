"""tf.data input pipeline over the preprocessed store.

Every random choice (epoch order, crop position, flips, intensity) is drawn from (seed, epoch, index), where
index is the sample's position in the epoch's global order. So a sample is the same whatever rank draws it
and however many map calls run in parallel, and `deterministic=True` only has to fix the output order.
Crops are read from memory-mapped .npy files: only the crop's pages are touched, no NIfTI decoding.
TensorFlow is imported inside the functions that need it so the planning helpers stay light.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, Iterator, Sequence

import numpy as np

from harness.data.store import Store
from harness.errors import UserError

INTENSITY_SCALE = (0.9, 1.1)
INTENSITY_SHIFT = 0.1
_CACHE_CASES = 32


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


def _read_window(array: np.ndarray, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """array[starts : starts+size] on the first three axes, zero where the window leaves the volume."""
    out = np.zeros(tuple(size) + array.shape[3:], dtype=array.dtype)
    src, dst = [], []
    for start, n, dim in zip(starts, size, array.shape):
        lo, hi = max(start, 0), min(start + n, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


class CropSampler:
    """Draws one augmented training crop per (epoch, case, index); thread-safe, with a small case cache that
    lives as long as the run's stream (each case's tumour voxels are found once, not once per epoch)."""

    def __init__(
        self, store: Store, case_ids: Sequence[str], modalities: Sequence[str], crop: Sequence[int], *,
        seed: int, tumour_share: float, augment: bool, cache_cases: int = _CACHE_CASES,
    ):
        self.store = store
        self.case_ids = list(case_ids)
        self.modalities = tuple(modalities)
        self.crop = tuple(int(c) for c in crop)
        self.seed = int(seed) % 2**63
        self.tumour_share = float(tumour_share)
        self.augment = augment
        self._cache: OrderedDict[str, tuple[list[np.ndarray], np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_cases = cache_cases
        self._lock = threading.Lock()

    def _case(self, case_id: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        with self._lock:
            if case_id in self._cache:
                self._cache.move_to_end(case_id)
                return self._cache[case_id]
        images = [np.load(self.store.array_path(case_id, m), mmap_mode="r") for m in self.modalities]
        label = np.load(self.store.array_path(case_id, "label"), mmap_mode="r")
        tumour = np.flatnonzero(np.asarray(label).ravel()).astype(np.int64)
        entry = (images, label, tumour)
        with self._lock:
            self._cache[case_id] = entry
            while len(self._cache) > self._cache_cases:
                self._cache.popitem(last=False)
        return entry

    def sample(self, epoch: int, case_index: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (cx,cy,cz,C), y int32 (cx,cy,cz)) for the case at `case_index`, sample number `index` of
        `epoch`'s global order."""
        images, label, tumour = self._case(self.case_ids[int(case_index)])
        shape = label.shape
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        lows = [min(0, d - c) for d, c in zip(shape, self.crop)]
        highs = [max(0, d - c) for d, c in zip(shape, self.crop)]
        if rng.random() < self.tumour_share and tumour.size:
            centre = np.unravel_index(tumour[rng.integers(tumour.size)], shape)
            starts = [int(np.clip(v - c // 2, lo, hi)) for v, c, lo, hi in zip(centre, self.crop, lows, highs)]
        else:
            starts = [int(rng.integers(lo, hi + 1)) if hi > lo else (d - c) // 2 for lo, hi, d, c in zip(lows, highs, shape, self.crop)]
        x = np.stack([_read_window(im, starts, self.crop) for im in images], axis=-1).astype(np.float32, copy=False)
        y = _read_window(label, starts, self.crop).astype(np.int32)
        flips = rng.random(3) < 0.5
        scale = rng.uniform(*INTENSITY_SCALE, size=len(images)).astype(np.float32)
        shift = rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT, size=len(images)).astype(np.float32)
        if self.augment:
            axes = tuple(int(a) for a in np.flatnonzero(flips))
            if axes:
                x = np.flip(x, axes)
                y = np.flip(y, axes)
            x = x * scale + shift
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int32)


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
        return tf.data.Dataset.from_tensor_slices(tuple(tf.reshape(c, [-1]) for c in cols))

    channels = len(mods)

    def load(seed_epoch, ci, ix):
        # stateful=False: the sample is a pure function of (epoch, case, index), so op determinism need not run the
        # map sequentially (it would: 3.5 ms per batch of input wait instead of 0.35 ms)
        x, y = tf.numpy_function(sampler.sample, [seed_epoch, ci, ix], [tf.float32, tf.int32], stateful=False,
                                 name="read_crop")
        x.set_shape(crop + (channels,))
        y.set_shape(crop)
        return x, y

    ds = tf.data.Dataset.range(epoch, epoch + epochs).flat_map(rows)
    ds = ds.map(load, num_parallel_calls=num_parallel or tf.data.AUTOTUNE, deterministic=deterministic)
    # batches never straddle two epochs: each epoch is a whole number of batches
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)


def eval_cases(store: Store, case_ids: Sequence[str], modalities: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """(case_id, image (X,Y,Z,C) float32, label (X,Y,Z) uint8 0..3 or None) for whole-volume evaluation."""
    mods = _check(store, case_ids, modalities, need_label=False)
    for case_id in case_ids:
        image, label = store.load(case_id, mods)
        yield case_id, image, label
