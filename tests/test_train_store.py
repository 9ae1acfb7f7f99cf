"""Training on prepared generated data under horovodrun, and predicting back into the raw geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest


@pytest.mark.slow
def test_np2_store_run_records_per_region_validation_dice(store_run, small_store):
    record = json.loads((store_run / "record.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    split = json.loads(small_store["split"].read_text())
    val = record["metrics"]["val"]
    assert val["n"] == len(split["val"])
    for region in ("ET", "TC", "WT"):
        dice = record["history"][-1]["val"][region]
        assert 0.0 <= dice <= 1.0
        assert f"{region}_hd95" in val["mean"]
    assert {c["case_id"] for c in record["metrics"]["val_cases"]} == set(split["val"])
    assert record["timing"]["input_wait_share"] < 0.5
    assert record["phases"]["validation_s"] > 0 and record["phases"]["checkpoint_s"] > 0  # timed apart from the steps


@pytest.mark.slow
def test_evaluate_and_predict_back_to_original_geometry(store_run, small_store, tmp_path, cli):
    code, out, _ = cli("evaluate", "--run", str(store_run), "--subset", "test")
    assert code == 0 and "WT" in out
    record = json.loads((store_run / "record.json").read_text())
    assert record["metrics"]["test"]["n"] == len(json.loads(small_store["split"].read_text())["test"])

    case = json.loads(small_store["split"].read_text())["test"][0]
    code, out, err = cli("predict", "--run", str(store_run), "--data", str(small_store["raw"]), "--case", case,
                         "--out", str(tmp_path / "pred"))
    assert code == 0, err
    pred = nib.load(tmp_path / "pred" / f"{case}.nii.gz")
    src = next(small_store["raw"].rglob(f"{case}_flair.nii*"))
    ref = nib.load(src)
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}
    assert pred.get_data_dtype() == np.uint8
