"""Whole-volume validation, sharded over ranks and gathered on every rank."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from harness.inference import predict_labels
from harness.metrics import REGIONS
from harness.engines import Engine
from harness.train.sources import ValItem


OriginalLabel = Callable[[str], "tuple[np.ndarray, tuple[float, float, float], dict]"]


def evaluate_items(
    model: tf.keras.Model, items: Sequence[ValItem], crop: tuple[int, int, int], engine: Engine,
    original: OriginalLabel | None = None,
) -> dict[str, Any]:
    """Per-case BraTS metrics of this rank's shard, gathered and summarised (mean/median over cases).

    With `original` (case id -> raw label in BraTS labels, its voxel size, the case's store meta, e.g.
    `Store.raw_label`), each prediction is also mapped back onto the case's original grid and scored against the
    raw label file at its own spacing, as BraTS scores: result["original"] holds those cases and their summary."""
    from harness.data.preprocess import to_original_geometry
    from harness.metrics import evaluate_case, summarize, to_brats_labels

    rows, rows_original = [], []
    world = engine.world
    for item in items[world.rank :: world.size]:
        pred = predict_labels(model, item.image, crop, local=engine.local_fn)  # shards differ in size
        row = evaluate_case(pred, item.label, spacing=item.spacing, et_label=3)
        rows.append({**row, "case_id": item.case_id})
        if original is not None:
            label, spacing, meta = original(item.case_id)
            back = to_brats_labels(to_original_geometry(pred, meta))
            rows_original.append({**evaluate_case(back, label, spacing=spacing, et_label=4), "case_id": item.case_id,
                                  "spacing": list(spacing)})
    result = _gathered(rows, engine, summarize)
    if original is not None:
        result["original"] = _gathered(rows_original, engine, summarize)
    return result


def _gathered(rows: list[dict[str, Any]], engine: Engine, summarize: Callable) -> dict[str, Any]:
    all_rows = [row for part in engine.allgather_object(rows) for row in part]
    all_rows.sort(key=lambda r: r["case_id"])
    numeric = [{k: v for k, v in r.items() if k not in ("case_id", "spacing")} for r in all_rows]
    summary = summarize(numeric) if all_rows else {}
    return {"cases": all_rows, "summary": summary, "dice": region_means(summary)}


def region_means(summary: dict[str, Any], metric: str = "dice") -> dict[str, float]:
    """Mean of one metric per region from `harness.metrics.summarize` output."""
    means = summary.get("mean", {})
    return {region: float(means[f"{region}_{metric}"]) for region in REGIONS if f"{region}_{metric}" in means}
