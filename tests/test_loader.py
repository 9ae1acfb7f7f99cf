"""Case discovery, clinical CSVs and per-case validation on tiny NIfTI cases written here."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from harness.data.loader import find_cases, read_clinical
from harness.data.validate import read_case, validate_case
from harness.errors import UserError
from harness.modalities import MODALITIES
from tests.conftest import shown_lines

SHAPE = (24, 24, 16)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 23], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def brain_and_label(shape=SHAPE, seed: int = 0, tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid 'brain' and a nested tumour (NCR 1 inside ET 4 inside ED 2) away from the centre."""
    grid = np.indices(shape).astype(np.float64)
    centre = (np.array(shape) - 1) / 2
    radii = np.array(shape) * 0.4
    brain = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    label = np.zeros(shape, np.uint8)
    if tumour:
        rng = np.random.default_rng(seed)
        t_centre = centre + rng.uniform(-2, 2, 3) + np.array([3, 0, 0])
        dist = np.sqrt(((grid - t_centre[:, None, None, None]) ** 2).sum(0))
        label[(dist <= 4) & brain] = 2
        label[(dist <= 2.5) & brain] = 4
        label[(dist <= 1.2) & brain] = 1
    return brain, label


def write_case(
    folder: Path,
    case_id: str,
    *,
    ext: str = ".nii.gz",
    ext_for: dict[str, str] | None = None,
    seg: bool = True,
    seg_name: str | None = None,
    modalities=MODALITIES,
    shape=SHAPE,
    seed: int = 0,
    tumour: bool = True,
) -> Path:
    """Write one BraTS-style case (int16 images, uint8 label) and return its folder."""
    case_dir = folder / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    brain, label = brain_and_label(shape, seed, tumour)
    for i, mod in enumerate(modalities):
        image = np.where(brain, rng.normal(300 + 100 * i, 40, shape) + 80 * (label > 0), 0)
        image = np.clip(image, 1, None) * brain
        name = f"{case_id}_{mod}{(ext_for or {}).get(mod, ext)}"
        nib.save(nib.Nifti1Image(image.astype(np.int16), AFFINE), str(case_dir / name))
    if seg:
        name = seg_name or f"{case_id}_seg{ext}"
        nib.save(nib.Nifti1Image(label, AFFINE), str(case_dir / name))
    return case_dir


def training_set(root: Path, n: int = 3, prefix: str = "BraTS20_Training_") -> Path:
    for i in range(1, n + 1):
        write_case(root, f"{prefix}{i:03d}", seed=i)
    return root


def problems_by_case(root: Path) -> dict[str, list[str]]:
    return {case.case_id: validate_case(case, MODALITIES) for case in find_cases(root)}


def assert_only_bad(problems: dict[str, list[str]], bad: str, *needles: str) -> None:
    """Exactly `bad` has problems, each one line naming the case, and one of them mentions every needle."""
    assert {cid for cid, p in problems.items() if p} == {bad}
    for line in problems[bad]:
        assert "\n" not in line and bad in line
    assert any(all(n in line for n in needles) for line in problems[bad]), problems[bad]


# ---------------------------------------------------------------- layouts


def test_nii_and_niigz_mixed_in_one_set(tmp_path):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    write_case(root, "BraTS20_Training_001", ext=".nii")
    write_case(root, "BraTS20_Training_002", ext=".nii.gz")
    write_case(root, "BraTS20_Training_003", ext=".nii.gz", ext_for={"t1": ".nii", "flair": ".nii"})
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == [f"BraTS20_Training_00{i}" for i in (1, 2, 3)]
    assert cases[0].modalities["t1ce"].name.endswith("_t1ce.nii")
    assert cases[2].modalities["t1"].name.endswith("_t1.nii") and cases[2].seg.name.endswith("_seg.nii.gz")
    for case in cases:
        assert set(case.modalities) == set(MODALITIES) and not case.is_validation
        data, problems = read_case(case, MODALITIES)
        assert problems == [] and data.label.dtype == np.uint8
        assert data.images["flair"].dtype == np.float32 and data.images["flair"].shape == SHAPE


def test_kaggle_wrapper_and_validation_folder_without_seg(tmp_path):
    train = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    valid = tmp_path / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    training_set(train, 2)
    write_case(valid, "BraTS20_Validation_001", seg=False)
    cases = {c.case_id: c for c in find_cases(tmp_path)}
    assert set(cases) == {"BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Validation_001"}
    v = cases["BraTS20_Validation_001"]
    assert v.is_validation and v.seg is None
    assert validate_case(v, MODALITIES) == []
    data, _ = read_case(v, MODALITIES)
    assert data.label is None
    # the same cases are found when the training folder itself is the root
    assert [c.case_id for c in find_cases(train)] == ["BraTS20_Training_001", "BraTS20_Training_002"]


def test_brats2021_names_and_generic_folder_of_cases(tmp_path):
    write_case(tmp_path / "b21", "BraTS2021_00000")
    write_case(tmp_path / "b21", "BraTS2021_00002")
    assert [c.case_id for c in find_cases(tmp_path / "b21")] == ["BraTS2021_00000", "BraTS2021_00002"]
    write_case(tmp_path / "mine", "patient_a")
    (found,) = find_cases(tmp_path / "mine")
    assert found.case_id == "patient_a" and found.seg is not None


def test_no_cases_is_a_user_error(tmp_path):
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    with pytest.raises(UserError, match="no BraTS case folders"):
        find_cases(tmp_path / "nothing")


def test_case_355_label_under_another_name_is_used_and_logged(tmp_path, caplog):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    training_set(root, 1)
    write_case(root, "BraTS20_Training_355", ext=".nii", seg_name="W39_1998.09.19_Segm.nii")
    with caplog.at_level(logging.INFO, logger="harness.data.loader"):
        cases = {c.case_id: c for c in find_cases(root)}
    assert cases["BraTS20_Training_355"].seg.name == "W39_1998.09.19_Segm.nii"
    assert any("BraTS20_Training_355" in r.message and "W39_1998.09.19_Segm.nii" in r.message for r in caplog.records)
    assert validate_case(cases["BraTS20_Training_355"], MODALITIES) == []


def test_two_unknown_niftis_and_no_seg_is_a_problem(tmp_path):
    case_dir = write_case(tmp_path / "d", "BraTS20_Training_010", seg=False)
    brain, label = brain_and_label()
    for name in ("a.nii.gz", "b.nii.gz"):
        nib.save(nib.Nifti1Image(label, AFFINE), str(case_dir / name))
    (case,) = find_cases(tmp_path / "d")
    (problem,) = validate_case(case, MODALITIES)
    assert "BraTS20_Training_010" in problem and "a.nii.gz" in problem and "b.nii.gz" in problem


def test_nibabel_example_4d_is_a_clear_problem(tmp_path):
    case_dir = tmp_path / "d" / "BraTS20_Training_001"
    case_dir.mkdir(parents=True)
    for mod in MODALITIES:
        shutil.copy(Path(NIBABEL_DATA) / "example4d.nii.gz", case_dir / f"BraTS20_Training_001_{mod}.nii.gz")
    (case,) = find_cases(tmp_path / "d")
    problems = validate_case(case, MODALITIES)
    # one line per modality file saying it is 4-D, plus the missing label; each names the case
    assert all("BraTS20_Training_001" in p and "\n" not in p for p in problems)
    four_d = [p for p in problems if "is not 3-D (shape (128, 96, 24, 2))" in p]
    assert sorted(p.split()[2] for p in four_d) == sorted(MODALITIES)
    assert len(problems) == 5 and any("no label file" in p for p in problems)


def test_nibabel_example_anatomical_is_handled_as_unlabelled_case(tmp_path):
    case_dir = tmp_path / "MICCAI_BraTS2020_ValidationData" / "BraTS20_Validation_007"
    case_dir.mkdir(parents=True)
    for mod in MODALITIES:
        shutil.copy(Path(NIBABEL_DATA) / "anatomical.nii", case_dir / f"BraTS20_Validation_007_{mod}.nii")
    (case,) = find_cases(tmp_path)
    data, problems = read_case(case, MODALITIES)
    assert problems == []
    assert data.images["t1"].shape == (33, 41, 25) and data.zooms == (2.0, 2.0, 2.0) and data.label is None


# ---------------------------------------------------------------- malformed inputs: one bad case, the others fine


def test_truncated_gzip(tmp_path):
    root = training_set(tmp_path / "d", 3)
    path = root / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    assert_only_bad(problems_by_case(root), "BraTS20_Training_002", "cannot read", "t2")


def test_missing_modality(tmp_path):
    root = training_set(tmp_path / "d", 3)
    (root / "BraTS20_Training_003" / "BraTS20_Training_003_t1ce.nii.gz").unlink()
    assert_only_bad(problems_by_case(root), "BraTS20_Training_003", "'t1ce' missing")
    # asking only for the modalities that exist makes the case usable again
    case = find_cases(root)[2]
    assert validate_case(case, ("flair", "t2")) == []


def test_shape_mismatch(tmp_path):
    root = training_set(tmp_path / "d", 3)
    write_case(root, "BraTS20_Training_001", modalities=("t1",), shape=(24, 24, 15), seg=False)
    assert_only_bad(problems_by_case(root), "BraTS20_Training_001", "shape mismatch", "24x24x15", "t1")


def test_affine_mismatch(tmp_path):
    root = training_set(tmp_path / "d", 3)
    path = root / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
    img = nib.load(str(path))
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted), str(path))
    assert_only_bad(problems_by_case(root), "BraTS20_Training_002", "affine mismatch", "flair")


def test_tiny_affine_difference_is_tolerated(tmp_path):
    root = training_set(tmp_path / "d", 1)
    path = root / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz"
    img = nib.load(str(path))
    nudged = AFFINE.copy()
    nudged[0, 3] += 1e-5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), nudged), str(path))
    assert problems_by_case(root) == {"BraTS20_Training_001": []}


@pytest.mark.parametrize("bad_value", [3, 5])
def test_label_value_outside_brats_set(tmp_path, bad_value):
    root = training_set(tmp_path / "d", 3)
    path = root / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz"
    label = np.asarray(nib.load(str(path)).dataobj).copy()
    label[label == 2] = bad_value
    nib.save(nib.Nifti1Image(label, AFFINE), str(path))
    assert_only_bad(problems_by_case(root), "BraTS20_Training_001", f"[{bad_value}]", "label values")


def _float_label(root: Path, case_id: str, change) -> Path:
    """Rewrite a case's label as float32 after `change(label)`; returns the label file."""
    path = root / case_id / f"{case_id}_seg.nii.gz"
    label = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
    change(label)
    nib.save(nib.Nifti1Image(label, AFFINE), str(path))
    return path


@pytest.mark.parametrize("bad, shown", [([1.5], "[1.5]"), ([0.25, 3.999], "[0.25, 3.999]"),
                                        ([0.5, 1.5, 2.5, 3.5], "[0.5, 1.5, 2.5, ... (4 distinct)]")])
def test_non_integer_float_label_is_a_problem_not_rounded(tmp_path, bad, shown):
    root = training_set(tmp_path / "d", 3)

    def change(label):
        tumour = np.flatnonzero(label)
        label.flat[tumour[: len(bad)]] = bad

    path = _float_label(root, "BraTS20_Training_002", change)
    problems = problems_by_case(root)
    assert_only_bad(problems, "BraTS20_Training_002", f"label file {path.name} has non-integer values {shown}",
                    f"in {len(bad)} voxel")


def test_integral_float_label_is_accepted(tmp_path):
    root = training_set(tmp_path / "d", 1)
    _float_label(root, "BraTS20_Training_001", lambda label: None)
    (case,) = find_cases(root)
    data, problems = read_case(case, MODALITIES)
    assert problems == [] and data.label.dtype == np.uint8 and set(np.unique(data.label)) == {0, 1, 2, 4}


def test_prepare_strict_stops_at_non_integer_label_with_one_line(tmp_path, cli):
    root = training_set(tmp_path / "MICCAI_BraTS2020_TrainingData", 2)
    _float_label(root, "BraTS20_Training_001", lambda label: label.__setitem__(label == 2, 1.5))
    code, out, err = cli("prepare", "--data", str(tmp_path), "--out", str(tmp_path / "store"), "--roi", "16", "16", "16",
                         "--workers", "1", "--strict")
    assert code == 2 and out == "" and "Traceback" not in err
    (line,) = shown_lines(err)
    assert line.startswith("bratsbench: error: case BraTS20_Training_001: label file BraTS20_Training_001_seg.nii.gz "
                           "has non-integer values [1.5]") and line.endswith("stopped by --strict")


def test_nan_voxels(tmp_path):
    root = training_set(tmp_path / "d", 3)
    path = root / "BraTS20_Training_003" / "BraTS20_Training_003_t1.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
    data[3:5, 3:5, 3] = np.nan
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    assert_only_bad(problems_by_case(root), "BraTS20_Training_003", "t1 has 4 non-finite voxels")


def test_empty_case_folder(tmp_path):
    root = training_set(tmp_path / "d", 2)
    (root / "BraTS20_Training_009").mkdir()
    (root / "BraTS20_Training_010").mkdir()
    (root / "BraTS20_Training_010" / "readme.txt").write_text("no images here")
    problems = problems_by_case(root)
    assert {cid for cid, p in problems.items() if p} == {"BraTS20_Training_009", "BraTS20_Training_010"}
    for cid in ("BraTS20_Training_009", "BraTS20_Training_010"):
        (line,) = problems[cid]
        assert cid in line and "empty case folder" in line


def test_unreadable_file_directory_named_like_the_file(tmp_path):
    root = training_set(tmp_path / "d", 3)
    path = root / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
    path.unlink()
    path.mkdir()
    assert_only_bad(problems_by_case(root), "BraTS20_Training_002", "cannot read", "flair", "directory")


def test_unreadable_file_garbage_bytes(tmp_path):
    root = training_set(tmp_path / "d", 3)
    (root / "BraTS20_Training_001" / "BraTS20_Training_001_t2.nii.gz").write_bytes(b"not a nifti" * 50)
    (root / "BraTS20_Training_001" / "BraTS20_Training_001_t1.nii.gz").unlink()
    (root / "BraTS20_Training_001" / "BraTS20_Training_001_t1.nii").write_bytes(b"\x00\x01" * 100)
    problems = problems_by_case(root)
    assert_only_bad(problems, "BraTS20_Training_001", "cannot read", "t2")
    assert_only_bad(problems, "BraTS20_Training_001", "cannot read", "t1 file")


# ---------------------------------------------------------------- clinical CSVs


NAME_MAPPING = (
    "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
    "HGG,x,x,x,x,BraTS20_Training_001\nLGG,x,x,x,x,BraTS20_Training_002\nHGG,x,x,x,x,BraTS20_Training_003\n"
)
SURVIVAL = (
    "Brats20ID,Age,Survival_days,Extent_of_Resection\n"
    "BraTS20_Training_001,60.463,289,GTR\nBraTS20_Training_003,52.0,ALIVE (361 days later),NA\n"
)


def test_read_clinical(tmp_path):
    root = training_set(tmp_path / "MICCAI_BraTS2020_TrainingData", 3)
    (root / "name_mapping.csv").write_text(NAME_MAPPING)
    (root / "survival_info.csv").write_text(SURVIVAL)
    frame = read_clinical(tmp_path)
    assert list(frame.index) == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    assert list(frame["grade"]) == ["HGG", "LGG", "HGG"]
    assert frame.loc["BraTS20_Training_001", "survival_days"] == 289
    assert frame.loc["BraTS20_Training_001", "age"] == pytest.approx(60.463)
    assert frame.loc["BraTS20_Training_001", "extent_of_resection"] == "GTR"
    assert np.isnan(frame.loc["BraTS20_Training_003", "survival_days"])
    assert frame["alive"].tolist() == [False, False, True]
    assert np.isnan(frame.loc["BraTS20_Training_002", "age"])


def test_csv_with_missing_column(tmp_path):
    root = training_set(tmp_path / "MICCAI_BraTS2020_TrainingData", 2)
    (root / "name_mapping.csv").write_text(NAME_MAPPING)
    (root / "survival_info.csv").write_text("Brats20ID,Age,Extent_of_Resection\nBraTS20_Training_001,60,GTR\n")
    with pytest.raises(UserError) as info:
        read_clinical(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "survival_info.csv" in message and "'Survival_days'" in message
    # collecting problems instead keeps the good CSV and the cases
    problems: list[str] = []
    frame = read_clinical(tmp_path, problems)
    assert len(problems) == 1 and "Survival_days" in problems[0]
    assert frame.loc["BraTS20_Training_002", "grade"] == "LGG"
    assert all(validate_case(c, MODALITIES) == [] for c in find_cases(tmp_path))
