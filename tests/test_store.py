"""The preprocessed store: normalisation, geometry, incremental and interrupted runs, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import harness.data.store as store_mod
from harness.cli import main
from harness.data.loader import find_cases
from harness.data.preprocess import decode, quantise
from harness.data.store import PrepParams, open_store, prepare_store, preprocess, to_original_geometry
from harness.metrics import to_brats_labels
from harness.data.validate import CaseData, read_case
from harness.errors import UserError
from harness.modalities import MODALITIES
from tests.test_loader import AFFINE, brain_and_label, training_set, write_case

ROI = (16, 16, 16)
OLD_STORE = Path(__file__).parent / "fixtures" / "store-v1"  # written by `prepare` before the int16 store (version 1)


def file_mtimes(store_dir: Path) -> dict[str, dict[str, int]]:
    out = {}
    for case_dir in sorted((store_dir / "cases").iterdir()):
        out[case_dir.name] = {f.name: f.stat().st_mtime_ns for f in case_dir.iterdir()}
    return out


@pytest.fixture
def data(tmp_path) -> Path:
    training_set(tmp_path / "raw" / "MICCAI_BraTS2020_TrainingData", 3)
    return tmp_path / "raw"


def prep(data: Path, out: Path, **kw):
    kw.setdefault("roi", ROI)
    kw.setdefault("workers", 1)
    return prepare_store(data, out, progress=False, **kw)


def test_zscore_inside_brain_roi_shape_and_labels(data, tmp_path):
    report = prep(data, tmp_path / "s")
    store = open_store(tmp_path / "s")
    assert report.prepared == store.case_ids == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    for case in find_cases(data):
        source, _ = read_case(case, MODALITIES)
        image, label = store.load(case.case_id, MODALITIES)
        mask = store.load_mask(case.case_id).astype(bool)
        assert image.shape == ROI + (4,) and image.dtype == np.float32
        assert label.shape == ROI and label.dtype == np.uint8 and mask.shape == ROI
        # the 24x24x16 brain box (20x20x12) is cropped to 16 in x,y, so check statistics over the whole source brain
        meta = store.meta(case.case_id)
        for c, mod in enumerate(MODALITIES):
            brain = source.images[mod] > 0
            assert meta["norm"][mod]["mean"] == pytest.approx(source.images[mod][brain].mean(), rel=1e-6)
            assert meta["norm"][mod]["std"] == pytest.approx(source.images[mod][brain].std(), rel=1e-6)
            stored = image[..., c][mask]
            assert abs(stored.mean()) < 0.15 and 0.85 < stored.std() < 1.15
            assert np.all(image[..., c][~mask] == 0)
        assert set(np.unique(label)) <= {0, 1, 2, 3} and 3 in label
        assert np.count_nonzero(label == 3) == np.count_nonzero(source.label == 4)
        assert np.count_nonzero(label) == np.count_nonzero(source.label)


def test_full_brain_inside_roi_has_mean_zero_sd_one(tmp_path):
    write_case(tmp_path / "raw", "BraTS20_Training_001")
    prep(tmp_path / "raw", tmp_path / "s", roi=(24, 24, 16))
    store = open_store(tmp_path / "s")
    image, _ = store.load("BraTS20_Training_001")
    mask = store.load_mask("BraTS20_Training_001").astype(bool)
    assert store.meta("BraTS20_Training_001")["brain_voxels"] == mask.sum()
    for c in range(4):
        assert image[..., c][mask].mean() == pytest.approx(0.0, abs=1e-5)
        assert image[..., c][mask].std() == pytest.approx(1.0, abs=1e-4)


def test_validation_case_has_no_label_file(tmp_path):
    write_case(tmp_path / "raw" / "MICCAI_BraTS2020_ValidationData", "BraTS20_Validation_001", seg=False)
    prep(tmp_path / "raw", tmp_path / "s")
    store = open_store(tmp_path / "s")
    meta = store.meta("BraTS20_Validation_001")
    assert meta["is_validation"] and not meta["has_label"]
    assert not (tmp_path / "s" / "cases" / "BraTS20_Validation_001" / "label.npy").exists()
    assert store.load("BraTS20_Validation_001")[1] is None and store.labelled_ids == []


def test_incremental_rerun_redoes_only_touched_case(data, tmp_path):
    prep(data, tmp_path / "s")
    before = file_mtimes(tmp_path / "s")
    source = data / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_002" / "BraTS20_Training_002_t1.nii.gz"
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report = prep(data, tmp_path / "s")
    after = file_mtimes(tmp_path / "s")
    assert report.prepared == ["BraTS20_Training_002"]
    assert sorted(report.reused) == ["BraTS20_Training_001", "BraTS20_Training_003"]
    for cid in ("BraTS20_Training_001", "BraTS20_Training_003"):
        assert after[cid] == before[cid]
    assert all(after["BraTS20_Training_002"][f] > before["BraTS20_Training_002"][f] for f in before["BraTS20_Training_002"])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["cases"]["BraTS20_Training_002"]["sources"]["t1"]["mtime_ns"] == st.st_mtime_ns + 5_000_000_000
    # nothing changed: nothing redone
    assert prep(data, tmp_path / "s").prepared == []


def test_parameter_change_redoes_all_and_removed_case_disappears(data, tmp_path):
    prep(data, tmp_path / "s")
    report = prep(data, tmp_path / "s", roi=(12, 12, 8))
    assert sorted(report.prepared) == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    store = open_store(tmp_path / "s")
    assert store.roi == (12, 12, 8) and store.load("BraTS20_Training_001")[0].shape == (12, 12, 8, 4)
    report = prep(data, tmp_path / "s", roi=(12, 12, 8), modalities=("flair", "t2"))
    assert len(report.prepared) == 3 and open_store(tmp_path / "s").modalities == ("flair", "t2")
    assert not (tmp_path / "s" / "cases" / "BraTS20_Training_001" / "t1.npy").exists()
    import shutil

    shutil.rmtree(data / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_003")
    report = prep(data, tmp_path / "s", roi=(12, 12, 8), modalities=("flair", "t2"))
    assert report.removed == ["BraTS20_Training_003"] and report.prepared == []
    assert open_store(tmp_path / "s").case_ids == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert not (tmp_path / "s" / "cases" / "BraTS20_Training_003").exists()


def test_interrupted_run_resumes_without_half_cases(data, tmp_path, monkeypatch):
    write_case(data / "MICCAI_BraTS2020_TrainingData", "BraTS20_Training_004", seed=4)
    real_save = np.save
    calls = {"n": 0}

    def failing_save(path, array, *a, **kw):  # dies while writing the third case's arrays (image, mask, label)
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 2:
            raise RuntimeError("simulated crash")
        return real_save(path, array, *a, **kw)

    monkeypatch.setattr(store_mod.np, "save", failing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prep(data, tmp_path / "s")
    monkeypatch.setattr(store_mod.np, "save", real_save)

    store = open_store(tmp_path / "s")
    assert store.case_ids == ["BraTS20_Training_001", "BraTS20_Training_002"]
    visible = sorted(p.name for p in (tmp_path / "s" / "cases").iterdir())
    assert visible == ["BraTS20_Training_001", "BraTS20_Training_002"]
    done = file_mtimes(tmp_path / "s")
    # a worker killed mid-write (SIGKILL: no cleanup) leaves its temporary folder behind
    stale = tmp_path / "s" / "cases" / ".tmp-BraTS20_Training_003-99999"
    stale.mkdir()
    (stale / "flair.npy").write_bytes(b"half")
    assert open_store(tmp_path / "s").case_ids == ["BraTS20_Training_001", "BraTS20_Training_002"]

    report = prep(data, tmp_path / "s")
    assert report.prepared == ["BraTS20_Training_003", "BraTS20_Training_004"]
    after = file_mtimes(tmp_path / "s")
    assert {k: after[k] for k in done} == done
    assert sorted(p.name for p in (tmp_path / "s" / "cases").iterdir()) == [f"BraTS20_Training_00{i}" for i in (1, 2, 3, 4)]
    assert not (tmp_path / "s" / ".prepare.lock").exists()


def test_parallel_workers_give_the_same_store(data, tmp_path):
    prep(data, tmp_path / "one", workers=1)
    prep(data, tmp_path / "two", workers=2)
    one, two = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    assert one.case_ids == two.case_ids
    for cid in one.case_ids:
        a, b = one.load(cid), two.load(cid)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _case_data(label: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> CaseData:
    rng = np.random.default_rng(0)
    brain = np.zeros(label.shape, bool)
    brain[2:-3, 4:-2, 1:-1] = True
    images = {m: (brain * rng.uniform(100, 200, label.shape)).astype(np.float32) for m in MODALITIES}
    return CaseData(images=images, label=(label * brain).astype(np.uint8), affine=AFFINE, zooms=zooms)


@pytest.mark.parametrize("roi", [(32, 32, 32), (16, 12, 20), (10, 30, 8)])
def test_inverse_geometry_round_trip_exact_without_resampling(roi):
    _, label = brain_and_label((28, 26, 18), seed=3)
    case = _case_data(label)
    arrays, meta = preprocess(case, PrepParams(roi=roi))
    back = to_original_geometry(arrays["label"], meta)
    assert back.shape == label.shape and back.dtype == np.uint8
    covered = to_original_geometry(np.ones(roi, np.uint8), meta).astype(bool)
    brain = case.images["flair"] > 0
    assert 3 in arrays["label"] and 4 not in arrays["label"]
    assert np.array_equal(to_brats_labels(back)[covered & brain], case.label[covered & brain])
    assert np.all(back[~covered] == 0)
    if all(r >= s for r, s in zip(roi, (28, 26, 18))):
        assert covered[brain].all() and np.array_equal(to_brats_labels(back), case.label)


def test_inverse_geometry_with_resampling_restores_shape_and_most_voxels():
    _, label = brain_and_label((30, 28, 20), seed=5)
    case = _case_data(label, zooms=(1.0, 1.0, 1.5))
    arrays, meta = preprocess(case, PrepParams(roi=(24, 24, 24), spacing=2.0))
    assert meta["resampled_shape"] == [15, 14, 15] and arrays["label"].shape == (24, 24, 24)
    back = to_brats_labels(to_original_geometry(arrays["label"], meta))
    assert back.shape == label.shape
    tumour = case.label > 0
    overlap = 2 * np.count_nonzero((back > 0) & tumour) / (np.count_nonzero(back > 0) + np.count_nonzero(tumour))
    assert overlap > 0.8


def test_resampled_store_from_anisotropic_files(tmp_path):
    case_dir = write_case(tmp_path / "raw", "BraTS20_Training_001")
    for path in case_dir.iterdir():  # declare 2 mm slices: resampling to 1 mm doubles z
        img = nib.load(str(path))
        img.header.set_zooms((1.0, 1.0, 2.0))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, img.header), str(path))
    prep(tmp_path / "raw", tmp_path / "s", spacing=1.0, roi=(24, 24, 32))
    meta = open_store(tmp_path / "s").meta("BraTS20_Training_001")
    assert meta["original_spacing"] == [1.0, 1.0, 2.0] and meta["resampled_shape"] == [24, 24, 32]
    assert meta["resample_factor"] == [1.0, 1.0, 2.0]


def test_open_store_rejects_other_folders(tmp_path):
    with pytest.raises(UserError, match="not a bratsbench store"):
        open_store(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match=str(tmp_path)):
        open_store(tmp_path)


def test_prepare_refuses_non_store_output_folder(data, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a bratsbench store"):
        prep(data, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_cli_prepare_skips_and_lists_bad_case(data, tmp_path, capsys):
    bad = data / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    argv = ["prepare", "--data", str(data), "--out", str(tmp_path / "s"), "--roi", "16", "16", "16", "--workers", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 prepared" in captured.out and "1 skipped" in captured.out and "BraTS20_Training_002" not in captured.out
    (skip_line,) = [line for line in captured.err.splitlines() if "skipped:" in line]
    assert "BraTS20_Training_002" in skip_line and "flair" in skip_line
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format"] == "bratsbench-store" and manifest["version"] == 2 and manifest["roi"] == [16, 16, 16]
    assert sorted(manifest["cases"]) == ["BraTS20_Training_001", "BraTS20_Training_003"]
    (reason,) = manifest["skipped"]["BraTS20_Training_002"]
    assert "BraTS20_Training_002" in reason and "flair" in reason
    # --strict stops at the bad case with a one-line error and exit code 2
    assert main(argv[:-2] + ["--out", str(tmp_path / "strict"), "--strict", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "BraTS20_Training_002" in err and "--strict" in err
    # a bad --modalities value is a user error too
    assert main(argv + ["--modalities", "flair", "dwi"]) == 2
    assert "dwi" in capsys.readouterr().err


def test_store_inside_the_data_folder_is_not_read_as_cases(data):
    prep(data, data / "store")
    report = prep(data, data / "store")
    assert report.prepared == [] and len(report.reused) == 3 and report.skipped == {}


def test_cli_prepare_that_prepares_nothing_fails_with_sorted_reasons_on_stderr(tmp_path, capsys):
    root = training_set(tmp_path / "raw" / "MICCAI_BraTS2020_TrainingData", 3)
    for i in (3, 1, 2):
        path = root / f"BraTS20_Training_00{i}" / f"BraTS20_Training_00{i}_seg.nii.gz"
        label = np.asarray(nib.load(str(path)).dataobj).copy()
        label[label == 2] = 5
        nib.save(nib.Nifti1Image(label, AFFINE), str(path))
    store = tmp_path / "s"
    code = main(["prepare", "--data", str(tmp_path / "raw"), "--out", str(store), "--roi", "16", "16", "16", "--workers", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.strip() == f"store {store}: 0 prepared, 0 unchanged, 3 skipped, 0 removed"  # the reasons are not here
    reasons = [line for line in err.splitlines() if "skipped:" in line]
    assert [r.split()[2].rstrip(":") for r in reasons] == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    assert all("label values [5]" in r for r in reasons)
    (summary,) = [line for line in err.splitlines() if line.startswith("bratsbench: error:")]
    assert "no case could be prepared" in summary and str(store / "manifest.json") in summary
    assert err.rstrip().endswith(summary)  # the last word, after the reasons
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["cases"] == {} and list(manifest["skipped"]) == sorted(manifest["skipped"])
    assert manifest["skipped"] == {r.split()[2].rstrip(":"): [r.split("skipped: ", 1)[1]] for r in reasons}
    # a re-run retries the skipped cases: still bad, still nothing prepared
    assert main(["prepare", "--data", str(tmp_path / "raw"), "--out", str(store), "--roi", "16", "16", "16", "--workers", "1"]) == 1


# ---------------------------------------------------------------- the int16 image and stores of other versions


@pytest.mark.parametrize("values", [
    np.linspace(-4.0, 25.0, 1001, dtype=np.float32),  # z-scores: a bright tail well above the brain's
    np.array([0.0, 1e-3, -1e-3, 3.5], np.float32),
    np.zeros(7, np.float32),  # a modality that is 0 everywhere in the roi
])
def test_quantise_keeps_every_value_within_half_a_step(values):
    codes, scale = quantise(values)
    assert codes.dtype == np.int16 and scale > 0
    back = decode(codes[:, None], [scale])[:, 0]
    assert np.abs(back - values).max() <= scale / 2 * (1 + 1e-6) + 1e-7
    assert np.array_equal(back[values == 0], values[values == 0])  # background stays exactly 0
    if values.any():
        assert np.abs(codes).max() == 32767  # the whole int16 range is used: the finest step for this case


def test_image_is_one_int16_array_of_the_modalities_interleaved(data, tmp_path):
    prep(data, tmp_path / "s", modalities=("t2", "flair"))
    store = open_store(tmp_path / "s")
    case = store.case_ids[0]
    files = sorted(p.name for p in (tmp_path / "s" / "cases" / case).iterdir())
    assert files == ["image.npy", "label.npy", "mask.npy", "meta.json"]
    codes, scale = store.image_codes(case)
    assert codes.dtype == np.int16 and codes.shape == (*ROI, 2) and scale.dtype == np.float32
    assert store.meta(case)["image_scale"] == pytest.approx(scale.tolist()) and store.meta(case)["image_dtype"] == "int16"
    both, _ = store.load(case)  # the store's order: t2, flair
    flair, _ = store.load(case, ("flair",))
    assert np.array_equal(both, codes * scale) and np.array_equal(flair[..., 0], both[..., 1])
    # each modality uses the whole int16 range: its step is max|z| / 32767, the finest for the case
    assert np.abs(codes).max(axis=(0, 1, 2)).tolist() == [32767, 32767]
    arrays, meta = preprocess(read_case(find_cases(data)[0], ("t2", "flair"))[0], PrepParams(roi=ROI, modalities=("t2", "flair")))
    assert np.array_equal(arrays["image"], codes) and meta["image_scale"] == pytest.approx(scale.tolist())


def _old_store(tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(OLD_STORE, tmp_path / "old-store"))


def test_a_store_of_version_1_is_refused_in_one_line_that_says_to_prepare_again(tmp_path, capsys):
    old = _old_store(tmp_path)
    assert json.loads((old / "manifest.json").read_text())["version"] == 1 and (old / "cases" / "BraTS20_Training_001" / "flair.npy").exists()
    with pytest.raises(UserError) as info:
        open_store(old)
    message = str(info.value)
    assert "\n" not in message and str(old) in message and "version 1" in message and "bratsbench prepare" in message
    # what a user sees: one error line, exit 2, no traceback, from any command that reads the store
    assert main(["split", "--store", str(old), "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bratsbench: error: ") and "run `bratsbench prepare" in err


def test_prepare_over_a_version_1_store_rewrites_it_in_place(tmp_path):
    old = _old_store(tmp_path)
    training_set(tmp_path / "raw" / "MICCAI_BraTS2020_TrainingData", 2)
    report = prep(tmp_path / "raw", old, roi=(8, 8, 8))
    assert report.prepared == ["BraTS20_Training_001", "BraTS20_Training_002"] and report.reused == []
    store = open_store(old)
    for case in store.case_ids:
        assert sorted(p.name for p in store.case_dir(case).iterdir()) == ["image.npy", "label.npy", "mask.npy", "meta.json"]
        image, label = store.load(case)
        assert image.shape == (8, 8, 8, 4) and label.shape == (8, 8, 8)
