"""`bratsbench shift`: domain shift between the source and target modality pairs, measured by MMD."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shift",
        help="MMD^2 and permutation p-values between source and target modality pairs, with PCA/t-SNE plots",
        description="Sample intensity patches inside the brain mask of the same patients and positions, and (with "
        "--run) a pre-trained encoder's bottleneck features, then compare source vs target with the unbiased MMD^2 "
        "and a permutation test. A control row compares the source features of two disjoint patient halves.",
    )
    p.add_argument("--store", required=True, help="prepared store")
    p.add_argument("--split", required=True, help="split file (patients are taken from --subset)")
    p.add_argument("--subset", choices=("train", "val", "test"), default="train", help="split subset (default train)")
    p.add_argument("--source", default="flair,t1ce", help="source modality pair (default flair,t1ce)")
    p.add_argument("--target", default="t1,t2", help="target modality pair (default t1,t2)")
    p.add_argument("--patch", type=int, default=3, help="patch edge in voxels (odd, default 3)")
    p.add_argument("--per-case", type=int, default=200, help="patches per case (default 200)")
    p.add_argument("--max-samples", type=int, default=2000, help="samples per domain for the test (default 2000)")
    p.add_argument("--kernel", choices=("rbf", "linear"), default="rbf", help="kernel (default rbf, median heuristic)")
    p.add_argument("--permutations", type=int, default=200, help="permutations for the p-value (default 200)")
    p.add_argument("--biased", action="store_true", help="biased V-statistic instead of the unbiased U-statistic")
    p.add_argument("--run", default=None, help="pre-trained run (on the source pair) for learned bottleneck features")
    p.add_argument("--seed", type=int, default=0, help="sampling and permutation seed")
    p.add_argument("--out", required=True, help="output folder (shift.json, shift.md, shift.csv, PNGs)")
    p.set_defaults(func=run)


def _subsample(x, n: int, seed: int):
    import numpy as np

    if len(x) <= n:
        return x
    return x[np.random.default_rng(seed).choice(len(x), n, replace=False)]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from harness.data.split import load_split
    from harness.data.store import open_store
    from harness.errors import UserError
    from harness.modalities import parse_modalities
    from harness.outdir import ensure_output_dir
    from harness.record import atomic_write_json
    from harness.shift import permutation_test
    from harness.shift.features import sample_patches
    from harness.shift.plots import embedding_pngs
    from harness.shift.report import write_tables

    source, target = parse_modalities(args.source), parse_modalities(args.target)
    if set(source) == set(target):
        raise UserError(f"source {','.join(source)} and target {','.join(target)} are the same modalities")
    if args.patch < 1 or args.patch % 2 == 0:
        raise UserError(f"--patch {args.patch} must be a positive odd number")
    out = ensure_output_dir(args.out)
    store = open_store(Path(args.store))
    store.check_modalities(source + target)
    ids = list(getattr(load_split(Path(args.split), store), args.subset))
    if len(ids) < 2:
        raise UserError(f"split subset '{args.subset}' has {len(ids)} case(s); need at least 2")
    mods = tuple(dict.fromkeys(source + target))
    patches = sample_patches(store, ids, mods, patch=args.patch, per_case=args.per_case, seed=args.seed)
    n_max = args.max_samples
    rows: list[dict[str, Any]] = []

    def test(features: str, pair: str, x, y) -> None:
        x, y = _subsample(x, n_max, args.seed), _subsample(y, n_max, args.seed + 1)
        res = permutation_test(x, y, kernel=args.kernel, n_permutations=args.permutations, seed=args.seed,
                               unbiased=not args.biased)
        rows.append({"features": features, "pair": pair, "mmd2": res.mmd2, "p_value": res.p_value, "sigma": res.sigma,
                     "kernel": res.kernel, "n": res.n, "m": res.m, "dim": int(x.shape[1]), "unbiased": res.unbiased})
        print(f"  {features:<16} {pair:<28} MMD^2 {res.mmd2:10.5f}  p {res.p_value:.4f}", flush=True)

    print(f"MMD between {','.join(source)} and {','.join(target)} on {len(ids)} {args.subset} cases:")
    for s, t in itertools.product(source, target):
        test(f"patch{args.patch}", f"{s} vs {t}", patches[s], patches[t])
    x_pair = np.concatenate([patches[m] for m in source], axis=1)
    y_pair = np.concatenate([patches[m] for m in target], axis=1)
    if len(source) == len(target):
        test(f"patch{args.patch}", f"{'+'.join(source)} vs {'+'.join(target)}", x_pair, y_pair)
        per_case = len(x_pair) // len(ids)
        half = (len(ids) // 2) * per_case
        test(f"patch{args.patch}", f"control: {'+'.join(source)} halves", x_pair[:half], x_pair[half:])
    embeddings = {f"patch{args.patch}": (x_pair, y_pair)} if len(source) == len(target) else {}

    if args.run:
        embeddings["bottleneck"] = _learned(args, store, ids, source, target, test)
    atomic_write_json(out / "shift.json", {"source": list(source), "target": list(target), "subset": args.subset,
                                            "cases": len(ids), "rows": rows})
    tables = write_tables(rows, out)
    pngs = []
    for name, (x, y) in embeddings.items():
        pngs += embedding_pngs(_subsample(x, 1000, 0), _subsample(y, 1000, 1), source, target, out / name, seed=args.seed)
    print("\n".join(["", *tables, *[str(p) for p in pngs]]))
    return 0


def _learned(args, store, ids, source, target, test):
    from harness.checkpoint import load_run_model
    from harness.errors import UserError
    from harness.shift.features import bottleneck_features, crops_for_features
    from harness.train import distributed

    distributed.init()
    model, cfg = load_run_model(args.run)
    if tuple(cfg.model.modalities) != tuple(source):
        raise UserError(f"run '{args.run}' was trained on {','.join(cfg.model.modalities)}, not the source {','.join(source)}")
    if len(target) != len(source):
        raise UserError("learned features need source and target pairs with the same number of modalities")
    xa, xb = crops_for_features(store, ids, source, target, cfg.data.crop, per_case=4, seed=args.seed)
    fa, fb = bottleneck_features(model, xa), bottleneck_features(model, xb)
    test("bottleneck", f"{'+'.join(source)} vs {'+'.join(target)}", fa, fb)
    half = (len(ids) // 2) * 4
    test("bottleneck", f"control: {'+'.join(source)} halves", fa[:half], fa[half:])
    return fa, fb
