"""tf.data training pipeline: shapes, sharding, determinism, tumour-centred crops, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.pipeline import (
    INTENSITY_SCALE, INTENSITY_SHIFT, PASS_STRIDE, BatchMemory, CropSampler, aligned_empty, epoch_order, epoch_shard, eval_cases,
    pass_epochs, steps_per_epoch, train_dataset,
)
from harness.data.store import open_store, prepare_store
from harness.errors import UserError
from tests.test_loader import training_set, write_case

tf = pytest.importorskip("tensorflow")

ROI = (16, 16, 16)
CROP = (8, 8, 8)
MODS = ("flair", "t1ce")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    training_set(root / "raw" / "MICCAI_BraTS2020_TrainingData", 7)
    write_case(root / "raw" / "MICCAI_BraTS2020_ValidationData", "BraTS20_Validation_001", seg=False)
    prepare_store(root / "raw", root / "store", roi=ROI, workers=1, progress=False)
    return open_store(root / "store")


def batches(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds]


def train_ids(store) -> list[str]:
    return store.labelled_ids


def test_shapes_dtypes_and_label_range(store):
    ds = train_dataset(store, train_ids(store), MODS, CROP, 2, seed=1)
    got = batches(ds)
    assert len(got) == steps_per_epoch(7, 2, 1) == 3
    for x, y in got:
        assert x.shape == (2, *CROP, 2) and x.dtype == np.float32
        assert y.shape == (2, *CROP) and y.dtype == np.int32
        assert y.min() >= 0 and y.max() <= 3 and np.isfinite(x).all()
    assert ds.element_spec[0].shape.as_list() == [2, *CROP, 2]


def test_rank_shards_are_disjoint_equal_and_inside_train_ids(store):
    ids = train_ids(store)[:5] + ["BraTS20_Training_007"]
    for size in (1, 2, 3, 4):
        for epoch in (0, 1):
            shards = [epoch_shard(ids, 3, epoch, r, size) for r in range(size)]
            assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(ids) // size
            flat = [c for s in shards for c in s]
            assert len(flat) == len(set(flat)) and set(flat) <= set(ids)
    # each epoch reshuffles; the order does not depend on the order ids were given in
    assert epoch_order(ids, 3, 0) != epoch_order(ids, 3, 1)
    assert epoch_order(ids, 3, 0) == epoch_order(list(reversed(ids)), 3, 0)
    # every rank's dataset takes the same number of steps
    lengths = [len(batches(train_dataset(store, ids, MODS, CROP, 1, rank=r, size=4, seed=3))) for r in range(4)]
    assert lengths == [steps_per_epoch(len(ids), 1, 4)] * 4 == [1, 1, 1, 1]


def test_same_batches_for_same_seed_epoch_rank_size_whatever_parallelism(store):
    ids = train_ids(store)
    kw = dict(rank=1, size=2, seed=11, epoch=2)
    first = batches(train_dataset(store, ids, MODS, CROP, 1, num_parallel=1, **kw))
    again = batches(train_dataset(store, ids, MODS, CROP, 1, num_parallel=1, **kw))
    wide = batches(train_dataset(store, ids, MODS, CROP, 1, num_parallel=4, **kw))
    auto = batches(train_dataset(store, ids, MODS, CROP, 1, **kw))
    for other in (again, wide, auto):
        assert len(other) == len(first) == 3
        for (x1, y1), (x2, y2) in zip(first, other):
            assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    other_epoch = batches(train_dataset(store, ids, MODS, CROP, 1, **{**kw, "epoch": 3}))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other_epoch))


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.mark.parametrize("rank,size", [(0, 1), (1, 2)])
def test_one_stream_of_epochs_is_the_epochs_one_after_another(store, rank, size):
    """The trainer reads the whole run from one stream: it must hold exactly what the epochs hold one by one."""
    ids = train_ids(store)
    kw = dict(rank=rank, size=size, seed=4)
    stream = batches(train_dataset(store, ids, MODS, CROP, 1, epoch=2, epochs=3, **kw))
    one_by_one = [b for e in (2, 3, 4) for b in batches(train_dataset(store, ids, MODS, CROP, 1, epoch=e, **kw))]
    assert len(stream) == 3 * steps_per_epoch(len(ids), 1, size)
    assert same(stream, one_by_one)


def test_an_epoch_longer_than_a_pass_chains_passes_with_their_own_seeds(store):
    ids = train_ids(store)
    per_pass = steps_per_epoch(len(ids), 2, 1)  # 3
    assert pass_epochs(5, 7, per_pass) == [5, 5 + PASS_STRIDE, 5 + 2 * PASS_STRIDE]
    long = batches(train_dataset(store, ids, MODS, CROP, 2, seed=1, epoch=5, steps=7))
    passes = [b for e in pass_epochs(5, 7, per_pass) for b in batches(train_dataset(store, ids, MODS, CROP, 2, seed=1, epoch=e))]
    assert len(long) == 7 and same(long, passes[:7])
    assert not same(long[:3], long[3:6])  # a fresh shuffle and fresh crops per pass
    with pytest.raises(UserError, match="epochs 0"):
        train_dataset(store, ids, MODS, CROP, 2, epochs=0)


def test_tumour_share_one_puts_tumour_in_every_crop(store):
    ids = train_ids(store)
    for seed in range(4):
        for x, y in batches(train_dataset(store, ids, MODS, (4, 4, 4), 1, seed=seed, tumour_share=1.0)):
            assert (y > 0).any()


def test_uniform_crops_cover_the_volume(store):
    """tumour_share=0: crop origins are spread (not always centred on the tumour or at one corner)."""
    ids = train_ids(store)
    tumour_free = 0
    for seed in range(6):
        for _, y in batches(train_dataset(store, ids, MODS, (4, 4, 4), 1, seed=seed, tumour_share=0.0)):
            tumour_free += int(not (y > 0).any())
    assert tumour_free > 0


def test_augmentation_is_flip_scale_and_shift_of_the_stored_volume(store):
    ids = train_ids(store)
    plain = batches(train_dataset(store, ids, MODS, ROI, 1, seed=5, augment=False))
    augmented = batches(train_dataset(store, ids, MODS, ROI, 1, seed=5, augment=True))
    volumes = {cid: store.load(cid, MODS) for cid in ids}
    flipped_any = False
    for (xp, yp), (xa, ya) in zip(plain, augmented):
        # a full-roi crop without augmentation is exactly a stored case
        cid = next(c for c, (im, lab) in volumes.items() if np.array_equal(im, xp[0]) and np.array_equal(lab, yp[0]))
        image, label = volumes[cid]
        match = None
        for flips in np.ndindex(2, 2, 2):
            axes = tuple(a for a in range(3) if flips[a])
            if np.array_equal(np.flip(label, axes) if axes else label, ya[0]):
                match = axes
                break
        assert match is not None
        flipped_any |= bool(match)
        base = np.flip(image, match) if match else image
        for c in range(len(MODS)):
            scale, shift = np.polyfit(base[..., c].ravel(), xa[0, ..., c].ravel(), 1)
            assert 0.9 <= scale <= 1.1 and -0.1 <= shift <= 0.1
            assert np.allclose(base[..., c] * scale + shift, xa[0, ..., c], atol=1e-4)
    assert flipped_any


def reference_sample(store, case_id, modalities, crop, seed, epoch, index, tumour_share, augment):
    """The training sample as first specified, the slow way: float32 volumes, a zero-padded window, flips, then
    x * scale + shift per channel; the random choices drawn in this order from (seed, epoch, index)."""
    image, label = store.load(case_id, modalities)
    rng = np.random.default_rng([seed, epoch, index])
    shape = label.shape
    lows = [min(0, d - c) for d, c in zip(shape, crop)]
    highs = [max(0, d - c) for d, c in zip(shape, crop)]
    tumour = np.flatnonzero(label)
    if rng.random() < tumour_share and tumour.size:
        centre = np.unravel_index(tumour[rng.integers(tumour.size)], shape)
        starts = [int(np.clip(v - c // 2, lo, hi)) for v, c, lo, hi in zip(centre, crop, lows, highs)]
    else:
        starts = [int(rng.integers(lo, hi + 1)) if hi > lo else (d - c) // 2 for lo, hi, d, c in zip(lows, highs, shape, crop)]
    x = np.zeros((*crop, len(modalities)), np.float32)
    y = np.zeros(crop, np.int32)
    src = tuple(slice(max(s, 0), min(s + c, d)) for s, c, d in zip(starts, crop, shape))
    dst = tuple(slice(max(s, 0) - s, min(s + c, d) - s) for s, c, d in zip(starts, crop, shape))
    x[dst], y[dst] = image[src], label[src]
    flips = rng.random(3) < 0.5
    scale = rng.uniform(*INTENSITY_SCALE, size=len(modalities)).astype(np.float32)
    shift = rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT, size=len(modalities)).astype(np.float32)
    if augment:
        axes = tuple(int(a) for a in np.flatnonzero(flips))
        x, y = (np.flip(x, axes), np.flip(y, axes)) if axes else (x, y)
        x = x * scale + shift
    return x, y


@pytest.mark.parametrize("modalities", [("flair", "t1", "t1ce", "t2"), ("t1ce", "flair"), ("t2",), ("t1", "t2", "t1ce")])
@pytest.mark.parametrize("crop, tumour_share, augment", [
    ((8, 8, 8), 0.5, True),
    ((16, 8, 4), 1.0, True),
    ((20, 12, 16), 0.0, True),  # wider than the roi in x: zero-padded before the intensity change
    ((16, 16, 16), 0.5, False),
])
def test_fused_sampler_gives_the_reference_sample(store, modalities, crop, tumour_share, augment):
    ids = train_ids(store)
    sampler = CropSampler(store, ids, modalities, crop, seed=9, tumour_share=tumour_share, augment=augment)
    flipped = set()
    for index in range(12):
        ci = index % len(ids)
        x, y = sampler.sample(3, ci, index)
        rx, ry = reference_sample(store, ids[ci], modalities, crop, 9, 3, index, tumour_share, augment)
        assert x.shape == rx.shape and x.dtype == np.float32 and y.dtype == np.int32
        assert np.array_equal(y, ry)
        assert np.allclose(x, rx, rtol=1e-6, atol=1e-6)
        if not augment:
            assert np.array_equal(x, rx)  # decoding alone is exact: code * scale, as the store reads it
        flipped |= {a for a in range(3) if sampler.draw(3, ci, index).flips[a]}
    assert flipped == ({0, 1, 2} if augment else set())


def test_tumour_centres_are_drawn_as_from_the_list_of_tumour_voxels(store):
    sampler = CropSampler(store, train_ids(store), MODS, CROP, seed=0, tumour_share=1.0, augment=True)
    for ci, case_id in enumerate(train_ids(store)):
        label = store.load(case_id, MODS)[1]
        case = sampler._case(case_id)
        tumour = np.flatnonzero(label)
        assert case.tumour_before[-1] == tumour.size > 0
        assert [sampler._tumour_voxel(case, k) for k in range(tumour.size)] == [np.unravel_index(t, label.shape) for t in tumour]


def test_batches_come_in_aligned_arrays_and_the_dataset_holds_them(store):
    ids = train_ids(store)
    a = aligned_empty((3, 5, 7), np.float32)
    assert a.ctypes.data % 64 == 0 and a.shape == (3, 5, 7) and a.flags.c_contiguous
    sampler = CropSampler(store, ids, MODS, CROP, seed=2, tumour_share=0.5, augment=True)
    x, y = sampler.batch([0, 0], [1, 4], [0, 1])
    assert x.ctypes.data % 64 == 0 and y.ctypes.data % 64 == 0 and x.shape == (2, *CROP, 2) and y.shape == (2, *CROP)
    for i, (ci, ix) in enumerate(((1, 0), (4, 1))):
        one_x, one_y = sampler.sample(0, ci, ix)
        assert np.array_equal(one_x, x[i]) and np.array_equal(one_y, y[i])


def test_batch_memory_is_reused_only_when_nothing_refers_to_it():
    memory = BatchMemory()
    first = memory.take(100)
    view = first[4:50].view(np.uint16)[::2]  # any array made from the block keeps it
    del first
    second = memory.take(100)
    assert len(memory) == 2 and second.base is None
    del view
    third = memory.take(100)
    assert len(memory) == 2 and third is not second  # the first block again
    assert memory.take(200) is not None and len(memory) == 3  # another size: another block
    del second, third
    assert len({id(memory.take(100)) for _ in range(5)}) == 1


def test_batches_tensorflow_still_holds_are_never_overwritten(store):
    """Memory comes back to the sampler only when TensorFlow has dropped a batch: tensors kept by the consumer
    keep their values while the pipeline runs on, and memory stays bounded by the batches alive at once."""
    ids = train_ids(store)
    kept, values = [], []
    ds = train_dataset(store, ids, MODS, ROI, 1, seed=6, epochs=6, num_parallel=2)
    for step, (x, y) in enumerate(ds):
        if step % 5 == 0:
            kept.append((x, y))
            values.append((x.numpy().copy(), y.numpy().copy()))
    again = batches(train_dataset(store, ids, MODS, ROI, 1, seed=6, epochs=6))
    assert len(again) == 6 * len(ids) and len(kept) == len(range(0, len(again), 5))
    for (x, y), (vx, vy), step in zip(kept, values, range(0, len(again), 5)):
        assert np.array_equal(x.numpy(), vx) and np.array_equal(y.numpy(), vy)
        assert np.array_equal(vx, again[step][0]) and np.array_equal(vy, again[step][1])


def test_sampler_memory_stays_bounded_over_many_batches(store):
    ids = train_ids(store)
    sampler = CropSampler(store, ids, MODS, CROP, seed=1, tumour_share=0.5, augment=True)
    for i in range(50):
        x, y = sampler.batch([0, 0], [i % len(ids), (i + 1) % len(ids)], [2 * i, 2 * i + 1])
    assert len(sampler.memory) == 2  # the batch held in x, y and the one being written


def test_eval_cases_yield_whole_volumes(store):
    ids = ["BraTS20_Training_002", "BraTS20_Validation_001"]
    got = list(eval_cases(store, ids, ("t2",)))
    assert [g[0] for g in got] == ids
    assert got[0][1].shape == ROI + (1,) and got[0][2].shape == ROI and got[1][2] is None
    codes, scale = store.image_codes("BraTS20_Training_002")
    t2 = store.modalities.index("t2")
    assert np.array_equal(got[0][1][..., 0], codes[..., t2] * scale[t2])


def test_bad_requests_are_user_errors(store):
    with pytest.raises(UserError, match="no label"):
        train_dataset(store, ["BraTS20_Validation_001", *train_ids(store)], MODS, CROP, 1)
    with pytest.raises(UserError, match="no training step"):
        train_dataset(store, train_ids(store)[:3], MODS, CROP, 2, size=2)
    with pytest.raises(UserError, match="not in the store"):
        train_dataset(store, ["nope"], MODS, CROP, 1)
    with pytest.raises(UserError, match="rank"):
        epoch_shard(train_ids(store), 0, 0, rank=2, size=2)
