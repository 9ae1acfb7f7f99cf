"""The shift study: MMD^2 between the source and target modality pairs of the same patients and positions.

Intensity patches inside the brain mask, and (with a pre-trained run) its encoder's bottleneck features, are
compared source vs target with the unbiased MMD^2 and a permutation test; a control row compares the source
features of two disjoint patient halves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.data.split import load_split
from harness.data.store import open_store
from harness.errors import UserError
from harness.modalities import parse_modalities
from harness.outdir import ensure_output_dir
from harness.record import atomic_write_json
from harness.shift.mmd import bootstrap_ci, permutation_test
from harness.shift.features import sample_patches
from harness.shift.plots import embedding_pngs
from harness.shift.report import write_tables

RESULT = "shift.json"


@dataclass
class ShiftOptions:
    store: str
    split: str
    out: str
    subset: str = "train"
    source: str = "flair,t1ce"
    target: str = "t1,t2"
    patch: int = 3
    per_case: int = 200
    max_samples: int = 2000
    kernel: str = "rbf"
    permutations: int = 200
    biased: bool = False
    run: str | None = None
    seed: int = 0


def _subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.random.default_rng(seed).choice(len(x), n, replace=False)]


def run_shift(opts: ShiftOptions, report: Callable[[str], None] = print) -> list[Path]:
    """Run the study; writes OUT/shift.json, the tables and PNGs, and returns the files written."""
    source, target = parse_modalities(opts.source), parse_modalities(opts.target)
    if set(source) == set(target):
        raise UserError(f"source {','.join(source)} and target {','.join(target)} are the same modalities")
    if opts.patch < 1 or opts.patch % 2 == 0:
        raise UserError(f"--patch {opts.patch} must be a positive odd number")
    store = open_store(Path(opts.store))
    store.check_modalities(source + target)
    ids = list(getattr(load_split(Path(opts.split), store), opts.subset))
    if len(ids) < 2:
        raise UserError(f"split subset '{opts.subset}' has {len(ids)} case(s); need at least 2")
    out = ensure_output_dir(opts.out)
    mods = tuple(dict.fromkeys(source + target))
    patches = sample_patches(store, ids, mods, patch=opts.patch, per_case=opts.per_case, seed=opts.seed)
    rows: list[dict[str, Any]] = []

    def test(features: str, pair: str, x: np.ndarray, y: np.ndarray) -> None:
        x, y = _subsample(x, opts.max_samples, opts.seed), _subsample(y, opts.max_samples, opts.seed + 1)
        res = permutation_test(x, y, kernel=opts.kernel, n_permutations=opts.permutations, seed=opts.seed,
                               unbiased=not opts.biased)
        low = high = float("nan")
        if res.unbiased:  # the CI's resamples recompute the U-statistic
            low, high = bootstrap_ci(x, y, kernel=opts.kernel, sigma=res.sigma, n_boot=opts.permutations, seed=opts.seed)
        rows.append({"features": features, "pair": pair, "mmd2": res.mmd2, "mmd2_ci_low": low, "mmd2_ci_high": high,
                     "p_value": res.p_value, "sigma": res.sigma, "kernel": res.kernel, "n": res.n, "m": res.m,
                     "dim": int(x.shape[1]), "unbiased": res.unbiased})
        report(f"  {features:<16} {pair:<28} MMD^2 {res.mmd2:10.5f} [{low:.5f}, {high:.5f}]  p {res.p_value:.4f}")

    report(f"MMD between {','.join(source)} and {','.join(target)} on {len(ids)} {opts.subset} cases:")
    for s, t in itertools.product(source, target):
        test(f"patch{opts.patch}", f"{s} vs {t}", patches[s], patches[t])
    x_pair = np.concatenate([patches[m] for m in source], axis=1)
    y_pair = np.concatenate([patches[m] for m in target], axis=1)
    if len(source) == len(target):
        test(f"patch{opts.patch}", f"{'+'.join(source)} vs {'+'.join(target)}", x_pair, y_pair)
        per_case = len(x_pair) // len(ids)
        half = (len(ids) // 2) * per_case
        test(f"patch{opts.patch}", f"control: {'+'.join(source)} halves", x_pair[:half], x_pair[half:])
    embeddings = {f"patch{opts.patch}": (x_pair, y_pair)} if len(source) == len(target) else {}
    if opts.run:
        embeddings["bottleneck"] = _learned(opts, store, ids, source, target, test)
    written = [atomic_write_json(out / RESULT, {"source": list(source), "target": list(target), "subset": opts.subset,
                                                "cases": len(ids), "rows": rows})]
    table, *paths = write_tables(rows, out)
    report("\n" + table)
    written += [Path(p) for p in paths]
    for name, (x, y) in embeddings.items():
        written += embedding_pngs(_subsample(x, 1000, 0), _subsample(y, 1000, 1), source, target, out / name, seed=opts.seed)
    return written


def _learned(opts: ShiftOptions, store, ids, source, target, test) -> tuple[np.ndarray, np.ndarray]:
    from harness.model.pretrained import load_run_model
    from harness.shift.features import bottleneck_features, crops_for_features
    from harness.engines import LocalEngine

    LocalEngine().init()  # thread pools before any TensorFlow work
    model, cfg = load_run_model(opts.run)
    if tuple(cfg.model.modalities) != tuple(source):
        raise UserError(f"run '{opts.run}' was trained on {','.join(cfg.model.modalities)}, not the source {','.join(source)}")
    if len(target) != len(source):
        raise UserError("learned features need source and target pairs with the same number of modalities")
    xa, xb = crops_for_features(store, ids, source, target, cfg.data.crop, per_case=4, seed=opts.seed)
    fa, fb = bottleneck_features(model, xa), bottleneck_features(model, xb)
    test("bottleneck", f"{'+'.join(source)} vs {'+'.join(target)}", fa, fb)
    half = (len(ids) // 2) * 4
    test("bottleneck", f"control: {'+'.join(source)} halves", fa[:half], fa[half:])
    return fa, fb
