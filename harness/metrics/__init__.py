"""Segmentation metrics: BraTS regions, per-case scores and summaries over cases."""

from harness.metrics.brats import (
    BG_METRICS,
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

__all__ = [
    "BG_METRICS",
    "HD95_EMPTY",
    "METRICS",
    "REGIONS",
    "binary_metrics",
    "dice",
    "evaluate_case",
    "hd95",
    "iou",
    "precision",
    "region_masks",
    "sensitivity",
    "specificity",
    "summarize",
    "to_brats_labels",
    "to_model_labels",
]
