"""`evaluate --geometry original`: predictions mapped back onto each case's raw grid and scored against the raw
label file at its own spacing (as BraTS scores), next to the store-grid metrics."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from harness.config import ModelConfig
from harness.data.preprocess import to_original_geometry
from harness.data.store import open_store, prepare_store
from harness.engines import LocalEngine
from harness.errors import UserError
from harness.inference import predict_labels
from harness.metrics import evaluate_case, to_brats_labels
from harness.model import build_unet
from harness.train.sources import ValItem, store_spacing
from harness.train.validation import evaluate_items

SHAPE = (32, 32, 16)
ZOOMS = (1.5, 1.0, 2.0)  # anisotropic, as raw scans often are: HD95 must use these


def _write_case(root, case_id: str, fill_brain: bool) -> None:
    rng = np.random.default_rng(abs(hash(case_id)) % 2**32)
    folder = root / case_id
    folder.mkdir(parents=True)
    affine = np.diag([*ZOOMS, 1.0])
    brain = np.ones(SHAPE, bool)
    if not fill_brain:  # background around the brain: the store crops to it
        brain[:4], brain[-3:], brain[:, :5] = False, False, False
    label = np.zeros(SHAPE, np.uint8)
    label[10:22, 12:24, 4:12] = 2
    label[13:19, 15:21, 6:10] = 1
    label[15:18, 16:19, 7:9] = 4
    for mod in ("t1", "t2"):
        image = np.where(brain, rng.normal(100 + 40 * (label > 0), 10), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), folder / f"{case_id}_{mod}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{case_id}_seg.nii.gz")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("orig")
    raw = root / "raw" / "MICCAI_BraTS2020_TrainingData"
    _write_case(raw, "BraTS20_Training_001", fill_brain=True)
    _write_case(raw, "BraTS20_Training_002", fill_brain=False)
    identity = prepare_store(root / "raw", root / "identity", roi=SHAPE, modalities=("t1", "t2"), workers=1, progress=False)
    resampled = prepare_store(root / "raw", root / "resampled", roi=(24, 32, 16), spacing=2.0, modalities=("t1", "t2"),
                              workers=1, progress=False)
    assert len(identity.prepared) == len(resampled.prepared) == 2
    engine = LocalEngine()
    engine.init()
    model = build_unet(ModelConfig(base_filters=4, depth=2, modalities=("t1", "t2")))
    return {"identity": open_store(root / "identity"), "resampled": open_store(root / "resampled"), "model": model,
            "engine": engine, "raw": raw}


def _items(store):
    out = []
    for case_id in store.case_ids:
        image, label = store.load(case_id, ("t1", "t2"))
        out.append(ValItem(case_id, image, label, store_spacing(store.meta(case_id))))
    return out


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


def test_identity_store_transform_gives_the_store_grid_result(cases):
    store = cases["identity"]
    meta = store.meta("BraTS20_Training_001")
    assert meta["bbox"] == [[0, s] for s in SHAPE] and meta["resampled_shape"] == list(SHAPE)  # the identity
    result = evaluate_items(cases["model"], _items(store)[:1], (16, 16, 16), cases["engine"], original=store.raw_label)
    store_row, original_row = result["cases"][0], result["original"]["cases"][0]
    keys = [k for k in store_row if k not in ("case_id",)]
    assert keys and all(_same(store_row[k], original_row[k]) for k in keys), {
        k: (store_row[k], original_row[k]) for k in keys if not _same(store_row[k], original_row[k])}
    assert original_row["spacing"] == list(ZOOMS)


def test_resampled_store_is_scored_on_the_raw_grid_at_its_spacing(cases):
    store, model = cases["resampled"], cases["model"]
    result = evaluate_items(model, _items(store), (16, 16, 16), cases["engine"], original=store.raw_label)
    for item, row in zip(_items(store), result["original"]["cases"]):
        meta = store.meta(item.case_id)
        assert meta["resampled_shape"] != list(SHAPE)  # 2 mm store grid, cropped: not the raw grid
        raw = np.asarray(nib.load(store.entry(item.case_id)["sources"]["seg"]["path"]).dataobj).astype(np.uint8)
        back = to_brats_labels(to_original_geometry(predict_labels(model, item.image, (16, 16, 16)), meta))
        assert back.shape == SHAPE
        expected = evaluate_case(back, raw, spacing=ZOOMS, et_label=4)
        assert all(_same(row[k], expected[k]) for k in expected)
        on_1mm = evaluate_case(back, raw, spacing=(1.0, 1.0, 1.0), et_label=4)
        finite = [k for k in expected if k.endswith("hd95") and math.isfinite(expected[k]) and expected[k] > 0]
        assert not finite or any(row[k] != pytest.approx(on_1mm[k]) for k in finite)  # the spacing is the raw one
    assert set(result["original"]["summary"]["mean"]) == set(result["summary"]["mean"])


def test_a_changed_or_missing_raw_label_is_one_line(cases, tmp_path):
    store = cases["resampled"]
    case_id = store.case_ids[0]
    seg = store.entry(case_id)["sources"]["seg"]["path"]
    data = open(seg, "rb").read()
    try:
        with open(seg, "ab") as fh:
            fh.write(b"\0")
        with pytest.raises(UserError, match=f"case {case_id}: raw label file .* changed since the store was prepared"):
            store.raw_label(case_id)
        import os

        os.remove(seg)
        with pytest.raises(UserError, match="is gone"):
            store.raw_label(case_id)
    finally:
        with open(seg, "wb") as fh:
            fh.write(data)
