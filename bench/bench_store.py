"""Read speed of a prepared store case vs decoding the same case's .nii.gz files with nibabel.

Writes a few full-size (240x240x155) cases of random int16 values inside a brain-shaped ellipsoid, prepares
a store at the default 128^3 roi, then times, per case, (a) nibabel decoding the 4 modalities + label and
(b) reading the store's image (the 4 modalities, int16) decoded to float32 z-scores + label. Both read from a warm
page cache, so the figure is decode cost, not disk speed. Goal: store >= 20x faster.

    PYTHONPATH=. python bench/bench_store.py [--cases 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.loader import find_cases  # noqa: E402
from harness.data.store import open_store, prepare_store  # noqa: E402
from harness.modalities import MODALITIES  # noqa: E402

SHAPE = (240, 240, 155)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
GOAL = 20.0


def write_cases(root: Path, n: int) -> None:
    grid = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    centre, radii = (120, 120, 77), (75, 90, 70)
    brain = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    tumour = sum(((g - c) / 18) ** 2 for g, c in zip(grid, (140, 110, 80))) <= 1
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        case_id = f"BraTS20_Training_{i:03d}"
        folder = root / case_id
        folder.mkdir(parents=True)
        for mod in MODALITIES:
            image = (rng.integers(1, 1200, SHAPE, dtype=np.int16) * brain).astype(np.int16)
            nib.save(nib.Nifti1Image(image, AFFINE), str(folder / f"{case_id}_{mod}.nii.gz"))
        label = (tumour * rng.choice(np.array([1, 2, 4], np.uint8), SHAPE)).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, AFFINE), str(folder / f"{case_id}_seg.nii.gz"))


def decode_nifti(case) -> float:
    total = 0.0
    for mod in MODALITIES:
        total += float(nib.load(str(case.modalities[mod])).get_fdata(dtype=np.float32)[120, 120, 77])
    total += float(np.asarray(nib.load(str(case.seg)).dataobj)[120, 120, 77])
    return total


def read_store(store, case_id: str) -> float:
    image, label = store.load(case_id, MODALITIES)
    return float(image[64, 64, 64].sum()) + float(label[64, 64, 64])


def per_case_seconds(fn, items, repeat: int) -> float:
    for item in items:  # warm the page cache for both readers alike
        fn(item)
    times = []
    for _ in range(repeat):
        for item in items:
            start = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="full-size cases to generate (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="timed reads of each case (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        data, out = Path(tmp) / "MICCAI_BraTS2020_TrainingData", Path(tmp) / "store"
        start = time.perf_counter()
        write_cases(data, args.cases)
        print(f"wrote {args.cases} cases of {SHAPE} int16 .nii.gz in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        prepare_store(data, out, workers=2, progress=False)
        print(f"prepared store (roi 128^3) in {time.perf_counter() - start:.1f} s")
        cases = find_cases(data)
        store = open_store(out)
        nifti = per_case_seconds(decode_nifti, cases, args.repeat)
        stored = per_case_seconds(lambda c: read_store(store, c.case_id), cases, args.repeat)
    ratio = nifti / stored
    print(f"nibabel .nii.gz decode (4 modalities + label): {nifti:.4f} s/case")
    print(f"store read (4 modalities decoded to float32 + label): {stored:.4f} s/case")
    print(f"ratio: {ratio:.1f}x faster (goal >= {GOAL:.0f}x): {'met' if ratio >= GOAL else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
