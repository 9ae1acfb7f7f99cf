"""Whole-volume validation, sharded over ranks and gathered on every rank."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from harness.inference import predict_labels
from harness.metrics import REGIONS
from harness.engines import Engine
from harness.train.sources import ValItem


def evaluate_items(
    model: tf.keras.Model, items: Sequence[ValItem], crop: tuple[int, int, int], engine: Engine
) -> dict[str, Any]:
    """Per-case BraTS metrics of this rank's shard, gathered and summarised (mean/median over cases)."""
    from harness.metrics import evaluate_case, summarize

    rows = []
    world = engine.world
    for item in items[world.rank :: world.size]:
        pred = predict_labels(model, item.image, crop)
        row = evaluate_case(pred, item.label, spacing=item.spacing, et_label=3)
        row["case_id"] = item.case_id
        rows.append(row)
    all_rows = [row for part in engine.allgather_object(rows) for row in part]
    all_rows.sort(key=lambda r: r["case_id"])
    summary = summarize([{k: v for k, v in r.items() if k != "case_id"} for r in all_rows]) if all_rows else {}
    return {"cases": all_rows, "summary": summary, "dice": region_means(summary)}


def region_means(summary: dict[str, Any], metric: str = "dice") -> dict[str, float]:
    """Mean of one metric per region from `harness.metrics.summarize` output."""
    means = summary.get("mean", {})
    return {region: float(means[f"{region}_{metric}"]) for region in REGIONS if f"{region}_{metric}" in means}
