"""Tests of `bratsbench synth`: BraTS layout and quirks, NIfTI geometry, determinism, realism of contrast."""

from __future__ import annotations

import filecmp
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.data import synth_anatomy
from harness.data.synth import ALIVE, case_seed, generate_case
from harness.modalities import MODALITIES

SHAPE = (48, 48, 32)
TRAIN_IDS = (354, 355, 356, 357)


def _synth(out: Path, *extra: str) -> int:
    return main(["synth", "--out", str(out), "--shape", *map(str, SHAPE), *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    assert _synth(out, "--cases", "4", "--seed", "7", "--first-id", "354", "--validation", "2", "--workers", "2") == 0
    return out


def _train_dir(out: Path) -> Path:
    return out / "MICCAI_BraTS2020_TrainingData"


def _seg_path(out: Path, cid: int) -> Path:
    folder = _train_dir(out) / f"BraTS20_Training_{cid:03d}"
    name = "W39_1998.09.19_Segm.nii.gz" if cid == 355 else f"BraTS20_Training_{cid:03d}_seg.nii.gz"
    return folder / name


def test_training_layout_and_case_355_quirk(dataset):
    train = _train_dir(dataset)
    assert sorted(p.name for p in train.iterdir() if p.is_dir()) == [f"BraTS20_Training_{i}" for i in TRAIN_IDS]
    for cid in TRAIN_IDS:
        folder = train / f"BraTS20_Training_{cid:03d}"
        expected = {f"BraTS20_Training_{cid:03d}_{m}.nii.gz" for m in MODALITIES} | {_seg_path(dataset, cid).name}
        assert {p.name for p in folder.iterdir()} == expected
    assert not (train / "BraTS20_Training_355" / "BraTS20_Training_355_seg.nii.gz").exists()


def test_csvs_match_real_columns_grades_and_alive(dataset):
    train = _train_dir(dataset)
    names = pd.read_csv(train / "name_mapping.csv", dtype=str, keep_default_na=False)
    assert list(names.columns) == ["Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID",
                                   "TCGA_TCIA_subject_ID", "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"]
    assert list(names["BraTS_2020_subject_ID"]) == [f"BraTS20_Training_{i}" for i in TRAIN_IDS]
    for cid, grade in zip(TRAIN_IDS, names["Grade"]):
        labels = set(np.unique(np.asarray(nib.load(_seg_path(dataset, cid)).dataobj)))
        assert grade == ("HGG" if 4 in labels else "LGG"), (cid, grade, labels)
    surv = pd.read_csv(train / "survival_info.csv", dtype=str, keep_default_na=False)
    assert list(surv.columns) == ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"]
    hgg = names.loc[names["Grade"] == "HGG", "BraTS_2020_subject_ID"]
    assert len(hgg) >= 1 and list(surv["Brats20ID"]) == list(hgg)
    assert (surv["Survival_days"] == ALIVE).sum() == 1
    others = surv.loc[surv["Survival_days"] != ALIVE, "Survival_days"]
    assert all(v.isdigit() for v in others)
    assert set(surv["Extent_of_Resection"]) <= {"GTR", "STR", "NA"}
    assert all(18 <= float(a) <= 90 for a in surv["Age"])


def test_validation_folder_has_no_labels(dataset):
    val = dataset / "MICCAI_BraTS2020_ValidationData"
    cases = sorted(p for p in val.iterdir() if p.is_dir())
    assert [p.name for p in cases] == ["BraTS20_Validation_001", "BraTS20_Validation_002"]
    for folder in cases:
        assert {p.name for p in folder.iterdir()} == {f"{folder.name}_{m}.nii.gz" for m in MODALITIES}
    names = pd.read_csv(val / "name_mapping_validation_data.csv", dtype=str)
    assert list(names.columns) == ["BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                                   "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"]
    assert list(names["BraTS_2020_subject_ID"]) == [p.name for p in cases]
    surv = pd.read_csv(val / "survival_evaluation.csv", dtype=str)
    assert list(surv.columns) == ["BraTS20ID", "Age", "ResectionStatus"]


def test_nifti_geometry_dtypes_labels_and_background(dataset):
    size = np.array([240 / SHAPE[0], 240 / SHAPE[1], 155 / SHAPE[2]])
    for cid in TRAIN_IDS:
        folder = _train_dir(dataset) / f"BraTS20_Training_{cid:03d}"
        seg_img = nib.load(_seg_path(dataset, cid))
        seg = np.asarray(seg_img.dataobj)
        assert seg_img.get_data_dtype() == np.uint8 and seg.shape == SHAPE
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg > 0).any()
        supports = []
        for mod in MODALITIES:
            img = nib.load(folder / f"BraTS20_Training_{cid:03d}_{mod}.nii.gz")
            assert img.get_data_dtype() == np.int16
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
            np.testing.assert_allclose(img.header.get_zooms(), size, rtol=1e-6)
            # The field of view stays 240x240x155 mm: outer voxel faces at -0.5 and 239.5 / 154.5 mm.
            corners = nib.affines.apply_affine(img.affine, [[-0.5, -0.5, -0.5], np.array(SHAPE) - 0.5])
            np.testing.assert_allclose(corners, [[0.5, 239.5, -0.5], [-239.5, -0.5, 154.5]], atol=1e-4)
            data = np.asarray(img.dataobj)
            assert data.min() >= 0
            supports.append(data > 0)
        brain = supports[0]
        assert all(np.array_equal(brain, s) for s in supports[1:])  # one brain mask, exactly 0 outside
        assert not brain[[0, -1]].any() and not brain[:, [0, -1]].any()  # x/y borders are background
        assert 0.15 < brain.mean() < 0.6
        assert not (seg > 0)[~brain].any()


def test_same_bytes_for_any_worker_count_and_cases_differ(dataset, tmp_path):
    again = tmp_path / "again"
    assert _synth(again, "--cases", "4", "--seed", "7", "--first-id", "354", "--validation", "2",
                  "--workers", "1") == 0
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all(filecmp.cmp(dataset / f, again / f, shallow=False) for f in files)
    a = np.asarray(nib.load(_train_dir(dataset) / "BraTS20_Training_354" / "BraTS20_Training_354_t1.nii.gz").dataobj)
    b = np.asarray(nib.load(_train_dir(dataset) / "BraTS20_Training_356" / "BraTS20_Training_356_t1.nii.gz").dataobj)
    assert not np.array_equal(a > 0, b > 0)
    assert not np.array_equal(np.asarray(nib.load(_seg_path(dataset, 354)).dataobj),
                              np.asarray(nib.load(_seg_path(dataset, 356)).dataobj))


def test_2021_layout_without_gzip(tmp_path):
    out = tmp_path / "b21"
    assert _synth(out, "--cases", "2", "--seed", "1", "--year", "2021", "--no-gzip", "--workers", "1") == 0
    root = out / "BraTS2021_Training_Data"
    assert sorted(p.name for p in root.iterdir()) == ["BraTS2021_00001", "BraTS2021_00002"]
    assert {p.name for p in (root / "BraTS2021_00002").iterdir()} == {
        f"BraTS2021_00002_{m}.nii" for m in (*MODALITIES, "seg")}
    assert not list(root.glob("*.csv"))


def test_refuses_foreign_folder_and_overwrites_own_output(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert _synth(foreign, "--cases", "1", "--workers", "1") == 2
    assert "not written by bratsbench synth" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    own = tmp_path / "own"
    assert _synth(own, "--cases", "3", "--seed", "2", "--workers", "1") == 0
    t1 = _train_dir(own) / "BraTS20_Training_002" / "BraTS20_Training_002_t1.nii.gz"
    kept = _train_dir(own) / "BraTS20_Training_003" / "BraTS20_Training_003_t1.nii.gz"
    before, before_kept = np.asarray(nib.load(t1).dataobj), kept.read_bytes()
    assert _synth(own, "--cases", "1", "--seed", "9", "--first-id", "2", "--no-gzip", "--workers", "1") == 0
    assert not t1.exists() and t1.with_suffix("").exists()  # replaced by the .nii of the new run
    assert kept.read_bytes() == before_kept
    assert not np.array_equal(before, np.asarray(nib.load(t1.with_suffix("")).dataobj))
    names = pd.read_csv(_train_dir(own) / "name_mapping.csv")
    assert len(names) == 3
    (_train_dir(own) / "BraTS20_Training_001" / "extra.nii.gz").write_bytes(b"x")
    assert _synth(own, "--cases", "1", "--workers", "1") == 2
    assert "extra.nii.gz" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--shape", "4", "4", "4"], ["--year", "2021", "--validation", "1"],
                                   ["--first-id", "999"], ["--cases", "0"], ["--workers", "0"]])
def test_bad_arguments_are_user_errors(tmp_path, capsys, extra):
    argv = ["synth", "--out", str(tmp_path / "x"), "--cases", "2", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bratsbench: error:") and "\n" not in err


@pytest.fixture(scope="module")
def full_case(monkeypatch_module):
    """One full-size case, with the templates reloaded while any network connection would fail."""

    def no_network(*args, **kwargs):
        raise AssertionError("synth tried to open a network connection")

    monkeypatch_module.setattr(socket.socket, "connect", no_network)
    monkeypatch_module.setattr(socket, "create_connection", no_network)
    synth_anatomy.shape_atlas.cache_clear()
    synth_anatomy.base_atlas.cache_clear()
    case = generate_case(case_seed(5, 1), composition="necrotic")
    monkeypatch_module.undo()
    return case


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_full_size_case(full_case):
    c = full_case
    assert c.seg.shape == c.tissue.shape == (240, 240, 155)
    np.testing.assert_array_equal(c.affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert all(img.dtype == np.int16 and img.shape == (240, 240, 155) for img in c.images.values())
    assert c.seg.dtype == np.uint8 and set(np.unique(c.seg)) == {0, 1, 2, 4} and c.grade == "HGG"
    brain = c.tissue > 0
    assert 1.0e6 < brain.sum() < 1.8e6  # an adult brain is ~1.1-1.6 litres
    for img in c.images.values():
        assert np.array_equal(img > 0, brain)
    top = np.flatnonzero(brain.any(axis=(0, 1))).max()
    assert top < 154  # the vertex is inside the field of view, as in real BraTS volumes
    whole = (c.seg > 0).sum() / 1000.0  # cm^3
    core = np.isin(c.seg, (1, 4)).sum() / 1000.0
    assert 8 < core < 60 and core < whole < 400


def _label_means(case) -> dict[str, dict[str, float]]:
    regions = {"ncr": case.seg == 1, "ed": case.seg == 2, "et": case.seg == 4}
    healthy = case.seg == 0
    regions.update({"csf": (case.tissue == 1) & healthy, "gm": (case.tissue == 2) & healthy,
                    "wm": (case.tissue == 3) & healthy})
    return {mod: {k: float(img[m].mean()) for k, m in regions.items()} for mod, img in case.images.items()}


def test_contrast_ordering_follows_mri_physics(full_case):
    reduced = generate_case(case_seed(5, 2), shape=(96, 96, 62), composition="necrotic")
    for case in (full_case, reduced):
        m = _label_means(case)
        assert m["flair"]["ed"] > m["flair"]["wm"] > m["flair"]["csf"]
        assert m["t1ce"]["et"] > m["t1ce"]["wm"] > m["t1ce"]["ncr"]
        assert m["t2"]["csf"] > m["t2"]["wm"]
        assert m["t1"]["wm"] > m["t1"]["gm"] > m["t1"]["csf"]


def test_composition_mix_includes_lgg_and_no_ncr_cases():
    cases = [generate_case(case_seed(0, i), shape=SHAPE) for i in range(1, 13)]
    labels = [set(np.unique(c.seg)) for c in cases]
    for case, lab in zip(cases, labels):
        assert (case.grade == "LGG") == (4 not in lab)
        assert 2 in lab
    assert any(c.grade == "LGG" for c in cases)
    assert any(c.grade == "HGG" and 1 not in lab for c, lab in zip(cases, labels))
    assert any(c.grade == "HGG" and 1 in lab for c, lab in zip(cases, labels))
