"""`bratsbench predict`: label NIfTI files in the input's own geometry, BraTS labels {0,1,2,4}."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment raw BraTS cases with a trained run; writes <case_id>.nii.gz label maps",
        description="Preprocess each case exactly as the run's store was prepared, run sliding-window inference with "
        "overlap at the training crop, map the result back to the case's original shape and affine, and write "
        "OUT/<case_id>.nii.gz with labels {0,1,2,4} (the BraTS submission format).",
    )
    p.add_argument("--run", required=True, help="trained run folder")
    p.add_argument("--data", required=True, help="BraTS folder (any layout `prepare` accepts)")
    p.add_argument("--case", action="append", default=None, help="case id to predict (repeatable; default all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np
    from tqdm import tqdm

    from harness.data.loader import find_cases
    from harness.data.store import PrepParams, decode, open_store, preprocess, to_original_geometry
    from harness.data.validate import read_case
    from harness.errors import UserError
    from harness.inference import predict_labels
    from harness.metrics import to_brats_labels
    from harness.model.pretrained import load_run_model

    from harness.engines import LocalEngine
    from harness.outdir import ensure_output_dir

    out = ensure_output_dir(args.out)
    LocalEngine().init()  # thread pools before any TensorFlow work
    model, cfg = load_run_model(args.run)
    if cfg.data.store is None:
        raise UserError(f"run '{args.run}' was trained on synthetic tensors; predict needs a run trained on a store")
    manifest = open_store(Path(cfg.data.store)).manifest
    params = PrepParams(roi=tuple(manifest["roi"]), spacing=manifest.get("spacing"), modalities=tuple(cfg.model.modalities))
    cases = find_cases(Path(args.data))
    if args.case:
        wanted = set(args.case)
        unknown = sorted(wanted - {c.case_id for c in cases})
        if unknown:
            raise UserError(f"case(s) {', '.join(unknown)} not found under '{args.data}'")
        cases = [c for c in cases if c.case_id in wanted]
    if not cases:
        raise UserError(f"no BraTS cases found under '{args.data}'")
    failed = 0
    for case in tqdm(cases, desc="predict", unit="case"):
        data, problems = read_case(case, cfg.model.modalities, need_label=False)
        if data is None:
            print(f"skipped: {problems[0]}")
            failed += 1
            continue
        arrays, meta = preprocess(data, params)
        image = decode(arrays["image"], meta["image_scale"])  # the model's modalities, in its order (params)
        labels = predict_labels(model, image, cfg.data.crop, overlap=args.overlap)
        labels = to_brats_labels(to_original_geometry(labels, meta))
        img = nib.Nifti1Image(labels.astype(np.uint8), data.affine)
        img.set_data_dtype(np.uint8)
        nib.save(img, out / f"{case.case_id}.nii.gz")
    print(f"wrote {len(cases) - failed} label map(s) to {out}" + (f"; {failed} case(s) skipped" if failed else ""))
    return 1 if failed == len(cases) else 0
