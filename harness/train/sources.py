"""Where a run's batches come from. Both sources give the trainer the same interface:
`steps_per_epoch` (one pass over this rank's data), `batches(epoch, epochs, steps)` (this rank's deterministic
batches of those epochs, as one stream) and `val_items()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import tensorflow as tf

from harness.config import RunConfig
from harness.data.synthetic_tensors import make_samples
from harness.errors import UserError
from harness.engines import World


@dataclass
class ValItem:
    case_id: str
    image: np.ndarray  # (X, Y, Z, C)
    label: np.ndarray  # (X, Y, Z) in 0..3
    spacing: tuple[float, float, float]


class Source(Protocol):
    steps_per_epoch: int

    def batches(self, epoch: int, epochs: int = 1, steps: int | None = None) -> tf.data.Dataset: ...

    def val_items(self, subset: str = "val") -> list[ValItem]: ...


_ORDER, _SAMPLES = 0, 1  # independent random streams


def _epoch_seed(seed: int, epoch: int, rank: int, stream: int = _ORDER) -> int:
    return int(np.random.SeedSequence([stream, seed, epoch, rank]).generate_state(1)[0])


class SyntheticSource:
    """Generated tensors in memory; each rank draws its own samples (distinct data seed per rank)."""

    def __init__(self, cfg: RunConfig, world: World):
        self.cfg = cfg
        self.world = world
        n = cfg.data.synthetic_samples
        self.x, self.y = make_samples(
            n, cfg.data.crop, cfg.model.in_channels, seed=_epoch_seed(cfg.train.seed, 0, world.rank, _SAMPLES)
        )
        self.steps_per_epoch = n // cfg.train.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"batch size {cfg.train.batch_size} is larger than the {n} synthetic samples per rank; "
                "raise --synthetic-samples or lower --batch-size"
            )

    def batches(self, epoch: int, epochs: int = 1, steps: int | None = None) -> tf.data.Dataset:
        from harness.data.pipeline import chain_passes

        batch, per_pass = self.cfg.train.batch_size, self.steps_per_epoch
        steps = steps or per_pass

        def one_pass(seed_epoch: int) -> np.ndarray:
            return np.random.default_rng(_epoch_seed(self.cfg.train.seed, seed_epoch, self.world.rank)).permutation(len(self.x))

        def order(e) -> np.ndarray:
            return chain_passes(int(e), steps, per_pass, batch, one_pass).astype(np.int64)

        x, y = tf.constant(self.x), tf.constant(self.y)
        ds = tf.data.Dataset.range(epoch, epoch + epochs).flat_map(
            lambda e: tf.data.Dataset.from_tensor_slices(tf.reshape(tf.numpy_function(order, [e], tf.int64, stateful=False), [-1])))
        ds = ds.map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
        return ds.batch(batch, drop_remainder=True).prefetch(2)

    def val_items(self, subset: str = "val") -> list[ValItem]:
        n = self.cfg.data.val_cases if self.cfg.data.val_cases is not None else 2
        stream = {"val": 2, "test": 3, "train": 4}[subset]
        x, y = make_samples(n, self.cfg.data.crop, self.cfg.model.in_channels, seed=_epoch_seed(self.cfg.train.seed, 0, 0, stream))
        return [ValItem(f"synthetic-{subset}-{i}", x[i], y[i], (1.0, 1.0, 1.0)) for i in range(n)]


class StoreSource:
    """A prepared store and a split file: this rank's shard of the train cases, every epoch reshuffled."""

    def __init__(self, cfg: RunConfig, world: World):
        from harness.data import pipeline
        from harness.data.split import load_split
        from harness.data.store import open_store

        self.cfg = cfg
        self.world = world
        self.store = open_store(cfg.data.store)
        self.split = load_split(cfg.data.split, self.store)
        roi = tuple(self.store.manifest["roi"])
        if any(c > r for c, r in zip(cfg.data.crop, roi)):
            raise UserError(f"crop {list(cfg.data.crop)} is larger than the store's roi {list(roi)}")
        missing = [m for m in cfg.model.modalities if m not in self.store.manifest["modalities"]]
        if missing:
            raise UserError(
                f"store '{cfg.data.store}' has no {','.join(missing)} (it holds {','.join(self.store.manifest['modalities'])})"
            )
        self._pipeline = pipeline
        self.steps_per_epoch = pipeline.steps_per_epoch(len(self.split.train), cfg.train.batch_size, world.size)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.split.train)} training cases cannot fill one step of batch {cfg.train.batch_size} "
                f"on {world.size} rank(s)"
            )

    def batches(self, epoch: int, epochs: int = 1, steps: int | None = None) -> tf.data.Dataset:
        d = self.cfg.data
        return self._pipeline.train_dataset(
            self.store,
            list(self.split.train),
            self.cfg.model.modalities,
            d.crop,
            self.cfg.train.batch_size,
            rank=self.world.rank,
            size=self.world.size,
            seed=self.cfg.train.seed,
            epoch=epoch,
            epochs=epochs,
            steps=steps,
            tumour_share=d.tumour_share,
            augment=d.augment,
            deterministic=d.deterministic,
        )

    def val_items(self, subset: str = "val") -> list[ValItem]:
        ids = list(getattr(self.split, subset))
        if self.cfg.data.val_cases is not None:
            ids = ids[: self.cfg.data.val_cases]
        items = []
        for case_id, image, label in self._pipeline.eval_cases(self.store, ids, self.cfg.model.modalities):
            items.append(ValItem(case_id, image, label, store_spacing(self.store.meta(case_id))))
        return items


def store_spacing(meta: dict) -> tuple[float, float, float]:
    """Voxel size (mm) of a case on the store grid: the resampling spacing, else the source's."""
    if meta.get("spacing"):
        return (float(meta["spacing"]),) * 3
    return tuple(float(z) for z in meta.get("original_spacing", (1.0, 1.0, 1.0)))  # type: ignore[return-value]


def make_source(cfg: RunConfig, world: World) -> Source:
    """The run's source; with `synthetic_input` the store is opened and checked as for a store run (crop, modalities,
    split), then in-memory tensors of the same shapes feed the step."""
    if cfg.data.synthetic:
        return SyntheticSource(cfg, world)
    store = StoreSource(cfg, world)
    return SyntheticSource(cfg, world) if cfg.data.synthetic_input else store


def iterate(ds: tf.data.Dataset, skip: int = 0) -> Iterator:
    return iter(ds.skip(skip) if skip else ds)
