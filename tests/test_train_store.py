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


@pytest.mark.slow
def test_evaluate_in_original_geometry_beside_the_store_grid(store_run, small_store, cli):
    code, out, err = cli("evaluate", "--run", str(store_run), "--subset", "test", "--geometry", "original")
    assert code == 0, err
    assert "store grid" in out and "original geometry" in out
    record = json.loads((store_run / "record.json").read_text())
    test_ids = json.loads(small_store["split"].read_text())["test"]
    assert record["metrics"]["test_original"]["n"] == len(test_ids)
    rows = record["metrics"]["test_original_cases"]
    assert [r["case_id"] for r in rows] == sorted(test_ids)
    raw = next(small_store["raw"].rglob(f"{test_ids[0]}_seg.nii*"))
    assert rows[0]["spacing"] == pytest.approx([float(z) for z in nib.load(raw).header.get_zooms()[:3]])
    assert all(0.0 <= r["WT_dice"] <= 1.0 for r in rows)


def test_evaluate_original_geometry_needs_a_store_run(tmp_path, cli):
    out = tmp_path / "synthetic"
    code, _, err = cli("train", "--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2",
                       "--synthetic-samples", "2", "--epochs", "1", "--steps-per-epoch", "1", "--out", str(out))
    assert code == 0, err
    code, _, err = cli("evaluate", "--run", str(out), "--geometry", "original")
    assert code == 2 and "needs a run trained on a store" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_synthetic_input_times_the_same_step_on_in_memory_tensors(small_store, tmp_path, cli):
    """A store benchmark and the same point fed from memory: same shapes and steps, different IDs and sources."""
    from analysis.records import flatten
    from harness.config import RunConfig

    args = ["train", "--store", str(small_store["store"]), "--split", str(small_store["split"]), "--crop", "16", "16", "16",
            "--base-filters", "4", "--depth", "2", "--batch-size", "2", "--modalities", "t1,t2,flair", "--benchmark",
            "--warmup", "1", "--bench-steps", "3", "--threads", "1"]
    records = {}
    for name, extra in (("store", []), ("in-memory", ["--synthetic-input"])):
        code, _, err = cli(*args, *extra, "--out", str(tmp_path / name))
        assert code == 0, err
        records[name] = json.loads((tmp_path / name / "record.json").read_text())
    store, memory = records["store"], records["in-memory"]
    assert memory["config"]["data"]["synthetic_input"] is True and store["config"]["data"]["synthetic_input"] is False
    assert memory["timing"]["steps"] == store["timing"]["steps"] == 3
    assert 0.0 <= memory["timing"]["input_wait_share"] < 1.0
    assert (flatten(store)["source"], flatten(memory)["source"]) == ("store", "in-memory")
    # the field's default leaves a run's identity (and so its ID) as it was before the field existed
    from harness.record import run_id

    identities = {k: RunConfig.from_dict(r["config"]).identity() for k, r in records.items()}
    assert "synthetic_input" not in identities["store"]["data"] and identities["in-memory"]["data"]["synthetic_input"]
    assert run_id(identities["store"]) != run_id(identities["in-memory"])
