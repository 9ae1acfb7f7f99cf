"""BraTS metrics: medpy agreement on non-empty masks, the empty-mask convention, regions, counts, summaries."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy.ndimage import gaussian_filter

from harness.errors import UserError
from harness.metrics import (
    HD95_EMPTY,
    METRICS,
    REGIONS,
    binary_metrics,
    dice,
    evaluate_case,
    hd95,
    iou,
    precision,
    region_masks,
    sensitivity,
    specificity,
    summarize,
    to_brats_labels,
    to_model_labels,
)


def _blob(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, quantile: float) -> np.ndarray:
    """Irregular, possibly multi-component blob: thresholded smoothed noise."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    mask = field > np.quantile(field, quantile)
    assert mask.any()
    return mask


@functools.lru_cache(maxsize=1)
def _blob_pairs():
    rng = np.random.default_rng(2020)
    pairs = []
    for shape, sigma, q in [((30, 28, 20), 3.0, 0.9), ((24, 32, 18), 2.0, 0.8), ((20, 20, 16), 1.5, 0.95)]:
        pairs.append((_blob(rng, shape, sigma, q), _blob(rng, shape, sigma, q)))
    # blobs well inside a larger array (the cropping path) and a pair touching the array faces
    inner = np.zeros((48, 44, 36), bool)
    other = np.zeros_like(inner)
    inner[10:22, 12:30, 8:16] = _blob(rng, (12, 18, 8), 2.0, 0.5)
    other[14:26, 15:27, 9:20] = _blob(rng, (12, 12, 11), 2.0, 0.5)
    pairs.append((inner, other))
    edge = np.zeros((16, 16, 12), bool)
    edge[:6, :, :5] = True
    edge2 = np.zeros_like(edge)
    edge2[2:10, 3:16, 7:] = True
    pairs.append((edge, edge2))
    one = np.zeros((9, 9, 9), bool)
    one[4, 4, 4] = True
    pairs.append((one, _blob(rng, (9, 9, 9), 1.0, 0.85)))
    return pairs


SPACINGS = [(1.0, 1.0, 1.0), (0.5, 1.0, 2.5), (1.2, 0.9, 3.0)]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("pair_index", range(6))
def test_dice_and_hd95_match_medpy_on_nonempty_masks(pair_index, spacing):
    pred, gt = _blob_pairs()[pair_index]
    assert dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt), abs=1e-12)
    expected = medpy_binary.hd95(pred, gt, voxelspacing=spacing)
    assert hd95(pred, gt, spacing) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert hd95(gt, pred, spacing) == pytest.approx(expected, rel=1e-9, abs=1e-9)  # symmetric


def test_hd95_follows_spacing_like_medpy():
    rng = np.random.default_rng(7)
    pred, gt = _blob(rng, (26, 26, 18), 2.5, 0.85), _blob(rng, (26, 26, 18), 2.5, 0.85)
    iso = hd95(pred, gt, (1, 1, 1))
    thick = hd95(pred, gt, (1, 1, 3))
    assert iso == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=(1, 1, 1)))
    assert thick == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=(1, 1, 3)))
    assert thick > iso  # stretching one axis lengthens surface distances
    # two single voxels 3 slices apart along z: every surface distance is 3 * z-spacing
    a = np.zeros((5, 5, 8), bool)
    b = np.zeros_like(a)
    a[2, 2, 1] = True
    b[2, 2, 4] = True
    assert hd95(a, b, (1, 1, 2)) == pytest.approx(6.0)
    assert hd95(a, b, (0.5, 0.7, 1.5)) == pytest.approx(4.5)


def test_hd95_rejects_bad_spacing_and_shapes():
    a = np.ones((3, 3, 3), bool)
    with pytest.raises(UserError, match="spacing"):
        hd95(a, a, (1, 0, 1))
    with pytest.raises(UserError, match="spacing"):
        hd95(a, a, (1, 1))
    with pytest.raises(UserError, match="shape"):
        hd95(a, np.ones((3, 3, 4), bool))


def test_hd95_empty_constant_is_the_brats_diagonal():
    assert HD95_EMPTY == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)


# ---------------------------------------------------------------------------------------- empty-mask convention
# For each region: a gt volume where that region is empty, and a label that puts a voxel in that region only
# beyond the regions nested inside it (ET: 4; TC: 1; WT: 2). ET-empty is the LGG-like case.
_EMPTY_GT = {
    "ET": {"labels": (1, 2), "add": 4},
    "TC": {"labels": (2,), "add": 1},
    "WT": {"labels": (), "add": 2},
}


def _case_volumes(region: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt with `region` empty, pred with `region` empty, pred with `region` non-empty); other regions may be set."""
    gt = np.zeros((12, 12, 10), np.uint8)
    labels = _EMPTY_GT[region]["labels"]
    if 2 in labels:
        gt[2:10, 2:10, 2:8] = 2
    if 1 in labels:
        gt[4:8, 4:8, 3:7] = 1
    pred_empty = gt.copy()
    pred_full = gt.copy()
    pred_full[5:7, 5:7, 4:6] = _EMPTY_GT[region]["add"]
    return gt, pred_empty, pred_full


@pytest.mark.parametrize("region", REGIONS)
def test_empty_gt_empty_pred_scores_perfect(region):
    gt, pred, _ = _case_volumes(region)
    row = evaluate_case(pred, gt)
    assert row[f"{region}_dice"] == 1.0
    assert row[f"{region}_hd95"] == 0.0
    assert row[f"{region}_iou"] == 1.0
    assert math.isnan(row[f"{region}_sensitivity"])  # nothing to detect
    assert math.isnan(row[f"{region}_precision"])  # nothing predicted
    assert row[f"{region}_specificity"] == 1.0


@pytest.mark.parametrize("region", REGIONS)
def test_empty_gt_nonempty_pred_is_a_false_positive(region):
    gt, _, pred = _case_volumes(region)
    row = evaluate_case(pred, gt)
    assert row[f"{region}_dice"] == 0.0
    assert row[f"{region}_hd95"] == HD95_EMPTY
    assert row[f"{region}_iou"] == 0.0
    assert math.isnan(row[f"{region}_sensitivity"])
    assert row[f"{region}_precision"] == 0.0
    assert row[f"{region}_specificity"] == pytest.approx(1 - 8 / (12 * 12 * 10 - 0))


@pytest.mark.parametrize("region", REGIONS)
def test_nonempty_gt_empty_pred_is_a_miss(region):
    # roles swapped: the volume with the region present is the ground truth
    _, pred, gt = _case_volumes(region)
    row = evaluate_case(pred, gt)
    assert row[f"{region}_dice"] == 0.0
    assert row[f"{region}_hd95"] == HD95_EMPTY
    assert row[f"{region}_iou"] == 0.0
    assert row[f"{region}_sensitivity"] == 0.0
    assert math.isnan(row[f"{region}_precision"])
    assert row[f"{region}_specificity"] == 1.0


def test_lgg_like_case_scores_other_regions_normally():
    gt, pred_ok, pred_fp = _case_volumes("ET")
    assert evaluate_case(pred_ok, gt)["WT_dice"] == 1.0
    row = evaluate_case(pred_fp, gt)  # the ET voxels replace NCR voxels, so TC and WT stay the same
    assert row["ET_dice"] == 0.0 and row["TC_dice"] == 1.0 and row["WT_dice"] == 1.0 and row["WT_hd95"] == 0.0


def test_evaluate_case_keys_and_model_label_space():
    gt, _, pred = _case_volumes("ET")
    row = evaluate_case(pred, gt)
    expected = [f"{r}_{m}" for r in REGIONS for m in METRICS] + ["bg_voxel_accuracy", "bg_mean_dice_4class"]
    assert list(row) == expected
    model_row = evaluate_case(to_model_labels(pred), to_model_labels(gt), et_label=3)
    for key in expected:
        assert model_row[key] == pytest.approx(row[key], nan_ok=True)
    with pytest.raises(UserError, match="to_brats_labels"):
        evaluate_case(to_model_labels(pred), gt)  # label 3 in BraTS label space
    with pytest.raises(UserError, match="shape"):
        evaluate_case(pred[:-1], gt)


def test_background_inclusive_metrics_by_hand():
    gt = np.array([0, 0, 0, 0, 1, 1, 2, 2, 4, 4], np.uint8).reshape(10, 1, 1)
    pred = np.array([0, 0, 0, 2, 1, 0, 2, 2, 4, 1], np.uint8).reshape(10, 1, 1)
    row = evaluate_case(pred, gt)
    assert row["bg_voxel_accuracy"] == pytest.approx(7 / 10)
    # per-class Dice: bg 2*3/(4+4), NCR 2*1/(2+2), ED 2*2/(2+3), ET 2*1/(2+1)
    assert row["bg_mean_dice_4class"] == pytest.approx((6 / 8 + 2 / 4 + 4 / 5 + 2 / 3) / 4)
    # when label 1 is absent from both, its Dice counts as 1 (BraTS empty rule)
    row = evaluate_case(np.where(pred == 1, 0, pred), np.where(gt == 1, 0, gt))
    assert row["bg_mean_dice_4class"] == pytest.approx((2 * 5 / (6 + 6) + 1 + 4 / 5 + 2 / 3) / 4)


# ------------------------------------------------------------------------------------------------------- regions
def test_region_masks_from_brats_labels():
    labels = np.array([0, 1, 2, 4, 0, 4, 2, 1], np.uint8).reshape(2, 2, 2)
    masks = region_masks(labels)
    flat = {k: v.ravel().tolist() for k, v in masks.items()}
    assert flat["ET"] == [False, False, False, True, False, True, False, False]
    assert flat["TC"] == [False, True, False, True, False, True, False, True]
    assert flat["WT"] == [False, True, True, True, False, True, True, True]
    assert all(m.dtype == bool and m.shape == labels.shape for m in masks.values())
    model = region_masks(to_model_labels(labels), et_label=3)
    for key in REGIONS:
        np.testing.assert_array_equal(model[key], masks[key])


def test_region_masks_reject_foreign_labels():
    with pytest.raises(UserError, match=r"\[3\]"):
        region_masks(np.array([0, 1, 3], np.int16))
    with pytest.raises(UserError, match=r"\[4\]"):
        region_masks(np.array([0, 2, 4]), et_label=3)
    with pytest.raises(UserError, match=r"\[-1, 7\]"):
        region_masks(np.array([0, -1, 7]))
    with pytest.raises(UserError, match="dtype"):
        region_masks(np.array([0.0, 1.0]))
    with pytest.raises(UserError, match="et_label"):
        region_masks(np.array([0, 1]), et_label=2)


def test_label_space_conversions():
    brats = np.array([[0, 1], [2, 4]], np.uint8)
    model = to_model_labels(brats)
    assert model.tolist() == [[0, 1], [2, 3]] and model.dtype == np.uint8
    assert brats.tolist() == [[0, 1], [2, 4]]  # input untouched
    assert to_brats_labels(model).tolist() == brats.tolist()
    with pytest.raises(UserError):
        to_model_labels(model)  # already model labels: 3 is not a BraTS label
    with pytest.raises(UserError):
        to_brats_labels(brats)


# -------------------------------------------------------------------------------------------- hand-counted ratios
def test_ratio_metrics_against_hand_counts():
    pred = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool).reshape(2, 2, 2)
    gt = np.array([1, 0, 1, 0, 1, 1, 0, 0], bool).reshape(2, 2, 2)
    # TP = 2 (idx 0, 4), FP = 1 (idx 1), FN = 2 (idx 2, 5), TN = 3 (idx 3, 6, 7)
    assert sensitivity(pred, gt) == pytest.approx(2 / 4)
    assert specificity(pred, gt) == pytest.approx(3 / 4)
    assert precision(pred, gt) == pytest.approx(2 / 3)
    assert iou(pred, gt) == pytest.approx(2 / 5)
    assert dice(pred, gt) == pytest.approx(4 / 7)
    row = binary_metrics(pred, gt)
    assert (row["sensitivity"], row["specificity"], row["precision"], row["iou"], row["dice"]) == pytest.approx(
        (2 / 4, 3 / 4, 2 / 3, 2 / 5, 4 / 7)
    )


def test_specificity_undefined_when_gt_fills_volume():
    full = np.ones((2, 2, 2), bool)
    assert math.isnan(specificity(full, full))
    assert sensitivity(full, full) == 1.0


# ---------------------------------------------------------------------------------------------------- summarize
def test_summarize_is_nan_aware_and_counts_defined_values():
    rows = [
        {"case": "a", "ET_dice": 1.0, "ET_sensitivity": math.nan, "WT_dice": 0.8},
        {"case": "b", "ET_dice": 0.0, "ET_sensitivity": 0.5, "WT_dice": 0.6},
        {"case": "c", "ET_dice": 0.5, "ET_sensitivity": 0.9, "WT_dice": 0.9},
        {"case": "d", "ET_dice": 0.3, "ET_sensitivity": math.nan},  # WT_dice missing: undefined
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = summarize(rows + [{"case": "e", "only_nan": math.nan}])
    assert out["n"] == 5
    assert "case" not in out["mean"]
    assert out["n_defined"] == {"ET_dice": 4, "ET_sensitivity": 2, "WT_dice": 3, "only_nan": 0}
    assert out["mean"]["ET_dice"] == pytest.approx(1.8 / 4)
    assert out["median"]["ET_dice"] == pytest.approx(0.4)
    assert out["mean"]["ET_sensitivity"] == pytest.approx(0.7)
    assert out["median"]["WT_dice"] == pytest.approx(0.8)
    assert math.isnan(out["mean"]["only_nan"]) and math.isnan(out["median"]["only_nan"])


def test_summarize_of_evaluated_cases():
    gt, pred_ok, pred_fp = _case_volumes("ET")
    out = summarize([evaluate_case(pred_ok, gt), evaluate_case(pred_fp, gt)])
    assert out["n"] == 2
    assert out["mean"]["ET_dice"] == pytest.approx(0.5)
    assert out["median"]["ET_hd95"] == pytest.approx(HD95_EMPTY / 2)
    assert out["n_defined"]["ET_sensitivity"] == 0 and out["n_defined"]["ET_precision"] == 1
