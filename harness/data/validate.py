"""Read one case and say, in one line per problem, what is wrong with it.

Reading and checking are one step so `prepare` decodes each NIfTI file once; `validate_case` is the
check-only view of the same work.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from harness.data.loader import CaseFiles

BRATS_LABELS = frozenset({0, 1, 2, 4})
AFFINE_ATOL = 1e-3
# what a damaged or truncated NIfTI raises inside nibabel / gzip / numpy
READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, struct.error)


@dataclass
class CaseData:
    """A case's decoded volumes on the source grid."""

    images: dict[str, np.ndarray]  # modality -> float32 (X,Y,Z)
    label: np.ndarray | None  # uint8 (X,Y,Z), BraTS values {0,1,2,4} (a float file must hold whole numbers)
    affine: np.ndarray
    zooms: tuple[float, float, float]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _load(path: Path, case_id: str, what: str, problems: list[str]) -> tuple[np.ndarray, np.ndarray, tuple] | None:
    """(data, affine, zooms) of one file, or None after appending why it could not be read."""
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path.name} is a directory")
        img = nib.load(str(path), mmap=False)
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except READ_ERRORS as exc:
        problems.append(f"case {case_id}: cannot read {what} file {path.name} ({_reason(exc)})")
        return None
    if data.ndim != 3:
        problems.append(f"case {case_id}: {what} file {path.name} is not 3-D (shape {tuple(data.shape)})")
        return None
    return data, affine, zooms


def _non_integer_values(raw: np.ndarray, shown: int = 3) -> str:
    """'' for an integer-valued (finite) volume, else its first distinct fractional values and their voxel count.

    A float label is only trusted when every value is whole: rounding 1.5 would invent a class.
    """
    if raw.dtype.kind != "f":
        return ""
    bad = raw[raw != np.floor(raw)]
    if bad.size == 0:
        return ""
    distinct = np.unique(bad)
    listed = ", ".join(f"{v:g}" for v in distinct[:shown]) + (f", ... ({len(distinct)} distinct)" if len(distinct) > shown else "")
    return f"[{listed}] in {bad.size} voxel{'s' if bad.size != 1 else ''}"


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def read_case(case: CaseFiles, modalities: Sequence[str], *, need_label: bool | None = None) -> tuple[CaseData | None, list[str]]:
    """Decode and check a case; returns (data, problems) with data None whenever problems is non-empty.

    The label is required unless the case is a validation case (`need_label` overrides that).
    """
    cid = case.case_id
    problems: list[str] = list(case.notes)
    if not (case.modalities or case.seg or case.extras or case.notes):
        return None, [f"case {cid}: empty case folder, no NIfTI files ({case.dir})"]
    for mod in modalities:
        if mod not in case.modalities:
            problems.append(f"case {cid}: modality '{mod}' missing (no *_{mod}.nii or *_{mod}.nii.gz in {case.dir})")
    if need_label is None:
        need_label = not case.is_validation
    if case.seg is None and need_label:
        if len(case.extras) > 1:
            names = ", ".join(p.name for p in case.extras)
            problems.append(f"case {cid}: no *_seg file and {len(case.extras)} other NIfTI files ({names}); cannot tell the label")
        else:
            problems.append(f"case {cid}: no label file (*_seg.nii[.gz]) in a training case")

    loaded: dict[str, tuple[np.ndarray, np.ndarray, tuple]] = {}
    for mod in modalities:
        if mod in case.modalities:
            got = _load(case.modalities[mod], cid, mod, problems)
            if got is not None:
                loaded[mod] = got
    if case.seg is not None:
        got = _load(case.seg, cid, "label", problems)
        if got is not None:
            loaded["label"] = got
    if not loaded:
        return None, problems

    ref_name = next(iter(loaded))
    ref_data, ref_affine, ref_zooms = loaded[ref_name]
    for name, (data, affine, _) in loaded.items():
        if data.shape != ref_data.shape:
            problems.append(
                f"case {cid}: shape mismatch: {ref_name} {_fmt_shape(ref_data.shape)} vs {name} {_fmt_shape(data.shape)}"
            )
        elif not np.allclose(affine, ref_affine, atol=AFFINE_ATOL):
            worst = float(np.max(np.abs(affine - ref_affine)))
            problems.append(f"case {cid}: affine mismatch between {ref_name} and {name} (max difference {worst:.4g})")

    images: dict[str, np.ndarray] = {}
    for mod in modalities:
        if mod not in loaded:
            continue
        image = np.asarray(loaded[mod][0], dtype=np.float32)
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        if bad:
            problems.append(f"case {cid}: {mod} has {bad} non-finite voxels (NaN or inf)")
        images[mod] = image

    label = None
    if "label" in loaded:
        raw = np.asarray(loaded["label"][0])
        if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
            problems.append(f"case {cid}: label has non-finite voxels (NaN or inf)")
        elif fractional := _non_integer_values(raw):
            problems.append(f"case {cid}: label file {case.seg.name} has non-integer values {fractional}; "
                            "labels must be whole numbers in {0,1,2,4}")
        else:
            values = raw  # whole numbers, whatever the dtype
            if values.size == 0 or (0 <= values.min() and values.max() <= 255):  # bincount: far faster than unique
                small = values.astype(np.uint8)
                present = np.flatnonzero(np.bincount(small.ravel(), minlength=256)).tolist()
            else:
                small, present = None, np.unique(values).astype(np.int64).tolist()
            extra = sorted(set(present) - BRATS_LABELS)
            if extra:
                problems.append(
                    f"case {cid}: label values {extra} not in {{0,1,2,4}} (file {case.seg.name if case.seg else '?'})"
                )
            else:
                label = small

    if problems:
        return None, problems
    return CaseData(images=images, label=label, affine=ref_affine, zooms=ref_zooms), []


def validate_case(case: CaseFiles, modalities: Sequence[str]) -> list[str]:
    """One-line problems of a case for the requested modalities (empty list: the case is usable)."""
    return read_case(case, modalities)[1]
