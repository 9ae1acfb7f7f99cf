"""Find BraTS cases on disk and read the clinical CSVs.

Layouts differ between releases and mirrors (official 2020, the Kaggle wrapper, 2021, a bare folder of
cases), so discovery looks for folders that hold cases instead of trusting one fixed path.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import UserError
from harness.modalities import MODALITIES

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CASE_NAME = re.compile(r"^BraTS(20_(Training|Validation)_\d+|2021_\d+)$", re.IGNORECASE)
_MAX_DEPTH = 4  # root -> wrapper -> MICCAI folder -> cases; one spare level


@dataclass
class CaseFiles:
    """Where one case's files are; `notes` carries problems seen while listing the folder."""

    case_id: str
    dir: Path
    modalities: dict[str, Path]
    seg: Path | None
    is_validation: bool
    notes: list[str] = field(default_factory=list)
    extras: list[Path] = field(default_factory=list)  # NIfTI files that are neither a modality nor *_seg


def nifti_stem(name: str) -> str | None:
    """File name without .nii/.nii.gz, or None when it is not a NIfTI file."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if nifti_stem(p.name) is not None and not p.name.startswith("."))


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders worth a look: not hidden, and not a prepared store (which may sit inside the data folder)."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith((".", "__")) and not (p / "manifest.json").is_file()
    )


def _looks_like_case(folder: Path) -> bool:
    return bool(_CASE_NAME.match(folder.name)) or bool(_nifti_files(folder))


def _is_container(folder: Path) -> bool:
    """A folder whose sub-folders are cases (at least one of them recognisably so)."""
    return any(_looks_like_case(child) for child in _visible_dirs(folder))


def _case_containers(root: Path) -> list[Path]:
    found: list[Path] = []
    level = [root]
    for _ in range(_MAX_DEPTH):
        following: list[Path] = []
        for folder in level:
            if _is_container(folder):
                found.append(folder)
            else:
                following.extend(_visible_dirs(folder))
        level = following
        if not level:
            break
    return found


def _read_case_folder(folder: Path, is_validation: bool) -> CaseFiles:
    case_id = folder.name
    modality_files: dict[str, Path] = {}
    seg: Path | None = None
    extras: list[Path] = []
    notes: list[str] = []
    for path in _nifti_files(folder):
        stem = nifti_stem(path.name) or ""
        suffix = stem.rsplit("_", 1)[-1].lower() if "_" in stem else ""
        if suffix in MODALITIES or suffix == "seg":
            earlier = seg if suffix == "seg" else modality_files.get(suffix)
            if earlier is not None:
                notes.append(f"case {case_id}: two files for '{suffix}' ({earlier.name}, {path.name})")
                continue
            if suffix == "seg":
                seg = path
            else:
                modality_files[suffix] = path
        else:
            extras.append(path)
    if seg is None and len(extras) == 1:
        seg = extras[0]
        log.info("case %s: no *_seg file; using %s as the label file", case_id, seg.name)
    is_validation = is_validation or "validation" in case_id.lower()
    return CaseFiles(case_id, folder, modality_files, seg, is_validation, notes, extras)


def find_cases(root: Path) -> list[CaseFiles]:
    """All cases under `root` (any known BraTS layout), sorted by case id.

    Raises UserError when `root` is not a folder or holds no case folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    cases: dict[str, CaseFiles] = {}
    for container in _case_containers(root):
        in_validation = "validation" in container.name.lower()
        for folder in _visible_dirs(container):
            if _is_container(folder):  # a nested release folder, handled as its own container
                continue
            case = _read_case_folder(folder, in_validation)
            if case.case_id in cases:
                other = cases[case.case_id].dir
                raise UserError(f"{folder}: case id {case.case_id} also found at {other}")
            cases[case.case_id] = case
    if not cases:
        raise UserError(f"{root}: no BraTS case folders found (expected e.g. BraTS20_Training_001/ with *_flair.nii.gz)")
    return [cases[key] for key in sorted(cases)]


# ---------------------------------------------------------------- clinical CSVs

# file name -> (id column, {our column: csv column}); columns matched case-insensitively
_CSV_SPECS: dict[str, tuple[str, dict[str, str]]] = {
    "name_mapping.csv": ("BraTS_2020_subject_ID", {"grade": "Grade"}),
    "name_mapping_validation_data.csv": ("BraTS_2020_subject_ID", {}),
    "survival_info.csv": (
        "Brats20ID",
        {"age": "Age", "survival_days": "Survival_days", "extent_of_resection": "Extent_of_Resection"},
    ),
    "survival_evaluation.csv": ("BraTS20ID", {"age": "Age"}),
}
CLINICAL_COLUMNS = ("grade", "age", "survival_days", "alive", "extent_of_resection")


def _find_csvs(root: Path) -> list[Path]:
    found = []
    for depth in range(3):
        pattern = "/".join(["*"] * depth + ["*.csv"])
        found.extend(p for p in root.glob(pattern) if p.name.lower() in _CSV_SPECS)
    return sorted(found)


def _read_one_csv(path: Path) -> pd.DataFrame:
    id_col, wanted = _CSV_SPECS[path.name.lower()]
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot read CSV ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    by_lower = {c.strip().lower(): c for c in raw.columns}
    # the validation survival file spells its id column 'BraTS20ID', the training one 'Brats20ID'
    for needed in [id_col, *wanted.values()]:
        if needed.lower() not in by_lower:
            raise UserError(f"{path}: missing column '{needed}'")
    out = pd.DataFrame(index=raw[by_lower[id_col.lower()]].str.strip().rename("case_id"))
    for ours, theirs in wanted.items():
        values = raw[by_lower[theirs.lower()]].str.strip().to_numpy()
        if ours == "survival_days":
            alive = np.array([v.upper().startswith("ALIVE") for v in values])
            out["survival_days"] = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()
            out["alive"] = alive
        elif ours == "age":
            out["age"] = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()
        else:
            out[ours] = [v if v and v.upper() not in ("NA", "N/A", "NAN") else None for v in values]
    return out[~out.index.duplicated(keep="first")]


def read_clinical(root: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """Grade, age and survival per case id from the BraTS CSVs under `root` (empty frame when none).

    A bad CSV raises UserError naming the file and column, unless `problems` is given: then the message is
    appended there and that file is ignored, so one broken CSV does not stop preparing the images.
    """
    parts = []
    for path in _find_csvs(Path(root)):
        try:
            parts.append(_read_one_csv(path))
        except UserError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    # several files describe the same case (grade in one, age in another): first non-missing value wins
    frame = pd.concat(parts).groupby(level=0).first() if parts else pd.DataFrame(index=pd.Index([]))
    for column in CLINICAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    frame = frame[list(CLINICAL_COLUMNS)].copy()
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    frame["survival_days"] = pd.to_numeric(frame["survival_days"], errors="coerce")
    frame["alive"] = frame["alive"].eq(True)
    frame.index.name = "case_id"
    return frame.sort_index()
