"""The transfer-vs-scratch numbers computed from run records (analysis.transfer, used by `transfer` and `analyze`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.transfer import comparison, display, reach, variant


def _record(role, k, seed, test_wt, val_curve, step, params, cases):
    return {
        "status": "ok",
        "extra": {"transfer": {"role": role, "freeze_depth": k, "seed": seed}},
        "metrics": {"test": {"mean": {"WT_dice": test_wt, "TC_dice": test_wt - 0.1, "ET_dice": test_wt - 0.2}},
                    "test_cases": [{"case_id": c, "WT_dice": d, "TC_dice": d - 0.1, "ET_dice": d - 0.2} for c, d in cases.items()]},
        "history": [{"epoch": i + 1, "step": 4 * (i + 1), "wall_s": 10.0, "train_s": 8.0, "val": {"WT": v}}
                    for i, v in enumerate(val_curve)],
        "timing": {"step_time_mean_s": step},
        "model": {"params_trainable": params},
    }


@pytest.fixture
def records():
    return [
        _record("scratch", 0, 0, 0.60, [0.2, 0.4, 0.6], 1.0, 1000, {"a": 0.5, "b": 0.7, "c": 0.6}),
        _record("scratch", 0, 1, 0.64, [0.3, 0.5, 0.6], 1.0, 1000, {"a": 0.6, "b": 0.7, "c": 0.62}),
        _record("finetune", 2, 0, 0.70, [0.5, 0.62, 0.7], 0.8, 400, {"a": 0.6, "b": 0.8, "c": 0.7}),
        _record("finetune", 2, 1, 0.74, [0.61, 0.7, 0.75], 0.7, 400, {"a": 0.7, "b": 0.8, "c": 0.72}),
        _record("pretrain", 0, 0, 0.9, [0.9], 1.0, 1000, {}),
    ]


def test_reach_counts_epochs_training_seconds_and_steps():
    rec = _record("scratch", 0, 0, 0.6, [0.2, 0.5, 0.7], 1.0, 1, {})
    assert reach(rec, 0.5) == (2, 16.0, 8)  # validation time (wall_s - train_s) does not count
    assert reach(rec, 0.9) == (None, None, None)
    for h in rec["history"]:  # a record from before train_s: the epoch's wall time
        del h["train_s"]
    assert reach(rec, 0.5).seconds == 20.0


def _rows(records, **kw):
    return {r["variant"]: r for r in comparison(records, **kw).to_dict("records")}


def test_comparison_rows(records):
    rows = _rows(records)
    assert set(rows) == {"k=2", "scratch"}  # the pre-training run is not a variant
    k2, sc = rows["k=2"], rows["scratch"]
    assert k2["test_WT"] == pytest.approx(0.72) and k2["test_WT_sd"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert sc["test_WT"] == pytest.approx(0.62)
    assert k2["val_WT"] == pytest.approx(0.725) and sc["val_WT"] == pytest.approx(0.6)
    # paired per case and seed: (0.1, 0.1, 0.1) and (0.1, 0.1, 0.1) -> mean diff 0.1 over 6 pairs
    assert k2["WT_diff"] == pytest.approx(0.1) and k2["paired_n"] == 6
    assert k2["WT_p"] < 0.05
    # target = scratch's final val WT (0.6); k=2 reaches it at epochs 2 and 1
    assert k2["target_WT"] == pytest.approx(0.6)
    assert k2["epochs_to_target"] == pytest.approx(1.5) and k2["seconds_to_target"] == pytest.approx(12.0)
    assert k2["steps_to_target"] == pytest.approx(6.0)
    assert (k2["seconds_to_target_ci_low"], k2["seconds_to_target_ci_high"]) == pytest.approx((8.0, 16.0))
    assert k2["step_time_rel"] == pytest.approx(0.75) and k2["trainable_rel"] == pytest.approx(0.4)
    assert sc["step_time_rel"] == pytest.approx(1.0) and sc["epochs_to_target"] == pytest.approx(3.0)
    # CIs: test Dice over seeds and patients together, the difference the same way
    from analysis.stats import two_way_mean_ci

    wt = two_way_mean_ci(np.array([[0.6, 0.8, 0.7], [0.7, 0.8, 0.72]]))
    assert (k2["test_WT_ci_low"], k2["test_WT_ci_high"]) == pytest.approx((wt.low, wt.high))
    assert k2["test_WT_ci_low"] < k2["test_WT"] < k2["test_WT_ci_high"]
    assert (k2["WT_diff_ci_low"], k2["WT_diff_ci_high"]) == pytest.approx((0.1, 0.1))  # every pair differs by 0.1
    shown = display(comparison(records)).set_index("variant")
    assert shown.loc["k=2", "WT Dice (test)"] == f"0.720 [{wt.low:.3f}, {wt.high:.3f}]"
    assert shown.loc["k=2", "ΔWT vs scratch"].startswith("+0.100 [0.100, 0.100] (d_z")
    assert shown.loc["scratch", "ΔWT vs scratch"] == "-"
    assert shown.loc["k=2", "steps to target"] == "6 [4, 8]"


def test_given_target_overrides_scratch_final(records):
    rows = _rows(records, target=0.7)
    assert rows["scratch"]["reached"] == "0/2" and math.isnan(rows["scratch"]["epochs_to_target"])
    assert rows["k=2"]["reached"] == "2/2"


@pytest.mark.parametrize("k, name", [(0, "k=0"), (3, "k=3"), ("head", "head-only"), ("head-only", "head-only"), (-1, "head-only")])
def test_every_spelling_of_the_freeze_choice_is_one_variant(k, name):
    assert variant(_record("finetune", k, 0, 0.5, [0.5], 1.0, 10, {})) == name


def test_head_only_sorts_after_the_depths_and_one_seed_has_no_sd(records):
    head = _record("finetune", "head", 0, 0.65, [0.4, 0.5, 0.55], 0.5, 10, {"a": 0.6, "b": 0.7, "c": 0.6})
    table = comparison([*records, head])
    assert list(table["variant"]) == ["k=2", "head-only", "scratch"]
    row = table.set_index("variant").loc["head-only"]
    assert row["seeds"] == 1 and math.isnan(row["test_WT_sd"])  # a sample sd of one value is undefined
    # one seed: the CI comes from the patients alone (0.6, 0.7, 0.6: resampled means span 0.6 to 0.7)
    assert display(table).set_index("variant").loc["head-only", "WT Dice (test)"] == "0.650 [0.600, 0.700]"
    assert display(table).set_index("variant").loc["head-only", "WT Dice (val)"] == "0.550"  # one value: no CI


def _as_sweep_record(record, benchmark=False):
    """The same run as a training sweep with `mode: [transfer, scratch]` records it (extra.sweep, no extra.transfer)."""
    info = record["extra"].pop("transfer")
    mode = {"scratch": "scratch", "finetune": "transfer", "pretrain": "pretrain"}[info["role"]]
    record["extra"]["sweep"] = {"sweep": "t", "kind": "pretrain" if mode == "pretrain" else "run", "mode": mode,
                                "seed": info["seed"], "freeze_depth": info["freeze_depth"]}
    record["config"] = {"train": {"freeze_depth": info["freeze_depth"], "seed": info["seed"], "benchmark": benchmark}}
    return record


def test_a_training_sweeps_transfer_and_scratch_runs_are_compared_alike(records):
    """On a GPU cluster the study runs as a sweep emitted as arrays: analyze compares its runs as transfer's."""
    expected = comparison(records)
    swept = [_as_sweep_record(r) for r in records]
    assert [variant(r) for r in swept] == ["scratch", "scratch", "k=2", "k=2", None]  # pre-training: no variant
    got = comparison(swept)
    assert list(got["variant"]) == list(expected["variant"])
    for col in ("test_WT", "val_WT", "WT_diff", "WT_p", "seconds_to_target", "step_time_rel"):
        assert got[col].tolist() == pytest.approx(expected[col].tolist(), nan_ok=True), col


def test_a_benchmark_sweeps_runs_are_no_study_variants(records):
    assert [variant(_as_sweep_record(r, benchmark=True)) for r in records] == [None] * 5
    assert variant({"extra": {"sweep": {"kind": "run", "mode": "scratch"}}, "config": {}}) == "scratch"
    assert variant({"extra": {}, "config": {"train": {}}}) is None
