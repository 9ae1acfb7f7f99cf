"""Analysis tables, figures and `bratsbench analyze`, from run records written as dicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis import plots, tables, transfer
from analysis.records import load_records
from analysis.report import build_report
from harness.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_record(np_: int = 1, batch: int = 2, throughput: float | None = None, step_s: float | None = None,
                crop: int = 32, freeze: int = 0, params: int = 1000, extra: dict | None = None,
                history: list | None = None, metrics: dict | None = None, benchmark: bool = True,
                repeat: int = 0) -> dict:
    """A run record as the trainer writes it (only the fields the analysis reads are meaningful)."""
    global_batch = batch * np_
    if throughput is None:
        throughput = global_batch / step_s
    if step_s is None:
        step_s = global_batch / throughput
    return {
        "schema_version": 1, "kind": "train", "run_id": "x", "name": None, "status": "ok",
        "config": {
            "model": {"modalities": ["flair", "t1ce"], "base_filters": 8, "depth": 3, "norm": "instance"},
            "data": {"synthetic": True, "crop": [crop] * 3},
            "train": {"batch_size": batch, "freeze_depth": freeze, "amp": False, "xla": False, "loss": "dice_ce",
                      "threads": None, "benchmark": benchmark},
            "out": "ignored",
            "repeat": repeat,
        },
        "world_size": np_,
        "model": {"params_trainable": params, "params_total": 1000},
        "timing": {"global_batch": global_batch, "throughput_samples_s": throughput, "step_time_mean_s": step_s,
                   "steps": 10},
        "history": history or [],
        "metrics": metrics or {},
        "extra": extra or {},
    }


def write_results(root: Path, records: dict[str, dict]) -> Path:
    for name, record in records.items():
        folder = root / "runs" / name
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(record))
    return root


def assert_png(path: Path, min_bytes: int = 8000) -> None:
    import matplotlib.image as mpimg

    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    image = mpimg.imread(str(path))
    assert image.shape[0] >= 300 and image.shape[1] >= 400
    assert image[..., :3].std() > 0.05  # not a blank canvas


# ---------------------------------------------------------------- scaling


def scaling_records() -> list[dict]:
    return [
        make_record(np_=1, batch=2, throughput=9.0),   # two repeats of np=1, b=2: averaged to 10
        make_record(np_=1, batch=2, throughput=11.0),
        make_record(np_=2, batch=2, throughput=18.0),
        make_record(np_=4, batch=2, throughput=30.0),  # also the np=4 point of the strong series (global 8)
        make_record(np_=1, batch=8, throughput=12.0),
        make_record(np_=2, batch=4, throughput=20.0),
        make_record(np_=2, batch=2, throughput=50.0, crop=64),  # other settings: must not join any series
        make_record(np_=1, batch=4, throughput=11.0, extra={"sweep": {"scaling": "strong", "label": "s", "mode": "gloo", "np": 1}}),
        make_record(np_=2, batch=4, throughput=20.0, extra={"sweep": {"scaling": "strong", "label": "s", "mode": "gloo", "np": 2}}),
    ]


def test_scaling_weak_and_strong_speedup_and_efficiency():
    t = tables.scaling_table(scaling_records())
    weak = t[(t["scaling"] == "weak") & (t["batch_size"] == 2)].set_index("np")
    assert list(weak.index) == [1, 2, 4]
    assert weak.loc[1, "runs"] == 2 and weak.loc[1, "throughput"] == pytest.approx(10.0)
    assert weak.loc[2, "throughput"] == pytest.approx(18.0)  # the crop-64 run did not leak in
    for np_, thr in ((2, 18.0), (4, 30.0)):
        assert weak.loc[np_, "speedup"] == pytest.approx(thr / 10.0)
        assert weak.loc[np_, "efficiency"] == pytest.approx(thr / 10.0 / np_)
        assert weak.loc[np_, "ideal"] == pytest.approx(10.0 * np_)

    strong = t[(t["scaling"] == "strong") & (t["global_batch"] == 8)].set_index("np")
    assert list(strong.index) == [1, 2, 4]
    assert list(strong["batch_size"]) == [8, 4, 2]
    assert strong.loc[4, "speedup"] == pytest.approx(30.0 / 12.0)
    assert strong.loc[4, "efficiency"] == pytest.approx(30.0 / 12.0 / 4)
    assert strong.loc[2, "step_time_ms"] == pytest.approx(8 / 20.0 * 1e3)

    # the sweep-marked strong runs (global batch 4 at np=1, 8 at np=2) are no weak series of batch 4
    assert t[(t["scaling"] == "weak") & (t["batch_size"] == 4)].empty
    assert set(t["np"][t["group"].str.contains("crop 64")]) == set()


def test_scaling_repeats_give_medians_and_paired_speedups_with_cis():
    from analysis.stats import median_ci, ratio_ci

    np1 = [10.0, 10.4, 6.0, 9.8, 10.1]  # round 2 was a slow phase of the machine, for both points
    np2 = [18.2, 18.6, 10.9, 17.5, 18.3]
    records = [make_record(np_=n, batch=2, throughput=t, repeat=r)
               for r, (a, b) in enumerate(zip(np1, np2)) for n, t in ((1, a), (2, b))]
    t = tables.scaling_table(records).set_index("np")
    assert list(t["runs"]) == [5, 5]
    ref = median_ci(np2)
    assert (t.loc[2, "throughput"], t.loc[2, "throughput_ci_low"], t.loc[2, "throughput_ci_high"]) == pytest.approx(
        (ref.value, ref.low, ref.high))
    speed = ratio_ci(np2, np1)  # paired round by round, not median / median
    assert (t.loc[2, "speedup"], t.loc[2, "speedup_ci_low"], t.loc[2, "speedup_ci_high"]) == pytest.approx(
        (speed.value, speed.low, speed.high))
    assert t.loc[2, "efficiency_ci_high"] == pytest.approx(speed.high / 2)
    assert t.loc[2, "speedup_ci_high"] - t.loc[2, "speedup_ci_low"] < 0.1  # pairing cancels the slow round
    assert t.loc[2, "noisy"] and t.loc[2, "throughput_cv"] > 0.1  # ... which each point alone shows as spread
    assert t.loc[1, "speedup"] == 1.0


def test_scaling_single_runs_have_no_ci_and_are_not_flagged():
    t = tables.scaling_table([make_record(np_=1, throughput=10.0), make_record(np_=2, throughput=17.0)]).set_index("np")
    assert t.loc[2, "speedup"] == pytest.approx(1.7)
    assert math.isnan(t.loc[2, "speedup_ci_low"]) and math.isnan(t.loc[2, "throughput_ci_high"])
    assert not t["noisy"].any()


@pytest.mark.parametrize("waits, bound", [((0.02, 0.04), (False, False)), ((0.03, 0.45), (False, True)), ((None, None), (False, False))])
def test_scaling_table_flags_points_that_wait_for_input(waits, bound):
    records = []
    for n, wait in zip((1, 2), waits):
        for r in range(3):
            rec = make_record(np_=n, throughput=10.0 * n, repeat=r)
            if wait is not None:
                rec["timing"]["input_wait_share"] = wait + 0.01 * (r - 1)
            records.append(rec)
    t = tables.scaling_table(records).set_index("np")
    assert tuple(t["input_bound"]) == bound
    if waits[0] is None:
        assert t["input_wait_share"].isna().all()
    else:
        assert tuple(t["input_wait_share"]) == pytest.approx(waits)  # the median of the repeats
    view = tables.scaling_view(t.reset_index())
    assert list(view["input-bound"]) == ["yes" if b else "" for b in bound]


def test_phases_table_and_training_share(tmp_path, cli):
    recs = {}
    # two training runs, and a benchmark point that is mostly start-up: never summarised together
    for i, (first, steps, wall, bench) in enumerate(((12.0, 80.0, 100.0, False), (20.0, 60.0, 100.0, False),
                                                     (9.0, 0.5, 10.0, True))):
        r = make_record(throughput=10.0, benchmark=bench)
        r["name"] = f"run{i}"
        r["phases"] = {"wall_s": wall, "to_first_step_s": first, "steps_s": steps, "validation_s": 0.0 if bench else 5.0,
                       "checkpoint_s": 0.0 if bench else 1.0, "train_share": steps / wall}
        r["phases"]["other_s"] = wall - first - steps - r["phases"]["validation_s"] - r["phases"]["checkpoint_s"]
        recs[f"r{i}"] = r
    recs["old"] = make_record(throughput=10.0)  # a record from before phases: left out, not an error
    t = tables.phases_table(recs.values())
    assert list(t["run"]) == ["run0", "run1", "run2"] and list(t["train_share"]) == [0.8, 0.6, 0.05]
    assert list(t["kind"]) == ["training", "training", "benchmark"]
    code, out, err = cli("analyze", str(write_results(tmp_path / "res", recs)))
    assert code == 0, err
    assert ("training runs: training steps take a median 70% of the wall time (min 60%, max 80%, 2 runs); start-up a "
            "median 16.0 s") in out
    assert "benchmark runs: training steps take a median 5% of the wall time (min 5%, max 5%, 1 run)" in out
    assert (tmp_path / "res" / "analysis" / "phases.csv").is_file()


def test_scaling_png_is_a_real_figure(tmp_path):
    t = tables.scaling_table(scaling_records())
    for kind in ("weak", "strong"):
        assert_png(plots.scaling_png(t, kind, tmp_path / f"{kind}.png"))


# ---------------------------------------------------------------- batch and freeze


def test_batch_table_step_time_per_sample_and_relative(tmp_path):
    recs = [make_record(np_=1, batch=b, step_s=s) for b, s in ((1, 0.10), (2, 0.15), (4, 0.25))]
    recs.append(make_record(np_=2, batch=1, step_s=0.12))  # alone at np=2: no series
    t = tables.batch_table(recs)
    assert list(t["batch_size"]) == [1, 2, 4] and set(t["np"]) == {1}
    assert list(t["ms_per_sample"]) == pytest.approx([100.0, 75.0, 62.5])
    assert list(t["step_time_rel"]) == pytest.approx([1.0, 1.5, 2.5])
    assert_png(plots.batch_png(t, tmp_path / "b.png"))


def test_freeze_table_relative_to_depth_zero(tmp_path):
    times = {0: 1.00, 1: 0.87, 2: 0.82, 3: 0.79}
    params = {0: 1000, 1: 990, 2: 950, 3: 800}
    recs = [make_record(batch=2, step_s=times[k], freeze=k, params=params[k]) for k in times]
    recs.append(make_record(batch=4, step_s=2.0, freeze=1, params=990))  # other batch, alone: no series
    t = tables.freeze_table(recs).set_index("freeze_depth")
    assert list(t.index) == [0, 1, 2, 3]
    for k in times:
        assert t.loc[k, "step_time_rel"] == pytest.approx(times[k] / times[0])
        assert t.loc[k, "params_rel"] == pytest.approx(params[k] / params[0])
        assert t.loc[k, "step_time_ms"] == pytest.approx(times[k] * 1e3)
    assert_png(plots.freeze_png(t.reset_index(), tmp_path / "f.png"))


# ---------------------------------------------------------------- transfer


def transfer_records() -> list[dict]:
    final = {  # (condition, seed) -> final val Dice ET, TC, WT
        ("finetune", 0, 0): (0.60, 0.70, 0.80), ("finetune", 0, 1): (0.64, 0.74, 0.84),
        ("finetune", 2, 0): (0.50, 0.60, 0.70), ("finetune", 2, 1): (0.56, 0.62, 0.76),
        ("scratch", 0, 0): (0.40, 0.50, 0.60), ("scratch", 0, 1): (0.44, 0.52, 0.66),
    }
    recs = []
    for (role, k, seed), (et, tc, wt) in final.items():
        history = [
            {"epoch": e, "loss": 1.0 / e, "val": {"ET": et * e / 3, "TC": tc * e / 3, "WT": wt * e / 3}} for e in (1, 2, 3)
        ]
        metrics = {"test": {"n": 5, "mean": {"ET_dice": et - 0.1, "TC_dice": tc - 0.1, "WT_dice": wt - 0.1}}}
        recs.append(make_record(freeze=k, step_s=1.0, history=history, metrics=metrics, benchmark=False,
                                extra={"transfer": {"role": role, "freeze_depth": k, "seed": seed}}))
    recs.append(make_record(step_s=1.0, benchmark=False, history=[{"epoch": 1, "val": {"ET": 0.9, "TC": 0.9, "WT": 0.9}}],
                            extra={"transfer": {"role": "pretrain", "freeze_depth": 0, "seed": 0}}))
    return recs


def test_transfer_table_mean_and_sd_over_seeds():
    t = transfer.comparison(transfer_records()).set_index("variant")
    assert list(t.index) == ["k=0", "k=2", "scratch"]  # the pretrain run is no variant
    assert list(t["seeds"]) == [2, 2, 2]
    assert t.loc["k=0", "val_WT"] == pytest.approx(0.82)
    assert t.loc["k=0", "val_WT_sd"] == pytest.approx(0.04 / math.sqrt(2))  # sample sd of two values
    assert t.loc["k=2", "val_ET"] == pytest.approx(0.53)
    assert t.loc["k=2", "val_ET_sd"] == pytest.approx(0.06 / math.sqrt(2))
    assert t.loc["scratch", "val_TC"] == pytest.approx(0.51)
    assert t.loc["scratch", "test_WT"] == pytest.approx(0.63 - 0.1)
    view = transfer.display(t.reset_index())
    assert view.loc[0, "WT Dice (val)"] == "0.820 [0.800, 0.840]"  # bootstrap over the two seeds


def test_learning_curves_png(tmp_path):
    curves = transfer.curves(transfer_records())
    assert list(curves["scratch"]["epoch"]) == [1, 2, 3]
    assert curves["scratch"]["mean"].iloc[-1] == pytest.approx(0.63)
    assert_png(plots.learning_curves_png(curves, tmp_path / "curves.png"))
    with pytest.raises(ValueError):
        plots.learning_curves_png(transfer.curves([make_record(step_s=1.0)]), tmp_path / "none.png")


# ---------------------------------------------------------------- records, report and CLI


def test_markdown_table_is_aligned_and_escaped():
    import pandas as pd

    md = tables.markdown(pd.DataFrame({"name": ["a|b", "c"], "x": [1.23456, float("nan")], "n": [3, 4]}))
    lines = md.splitlines()
    assert lines[0] == "| name | x | n |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a\\|b | 1.235 | 3 |"
    assert lines[3] == "| c | - | 4 |"


def test_load_records_skips_unreadable_with_one_warning(tmp_path):
    write_results(tmp_path, {"good": make_record(step_s=1.0)})
    (tmp_path / "runs" / "torn").mkdir()
    (tmp_path / "runs" / "torn" / "record.json").write_text('{"schema_version": 1, "con')
    (tmp_path / "deep" / "x").mkdir(parents=True)
    (tmp_path / "deep" / "x" / "record.json").write_text(json.dumps({**make_record(step_s=1.0), "schema_version": 99}))
    (tmp_path / "other" / "y").mkdir(parents=True)
    (tmp_path / "other" / "y" / "record.json").write_text(json.dumps(make_record(step_s=2.0)))
    warnings: list[str] = []
    recs = load_records(tmp_path, warn=warnings.append)
    assert sorted(r["timing"]["step_time_mean_s"] for r in recs) == [1.0, 2.0]
    assert len(warnings) == 2 and all(w.startswith("warning: skipping ") and "\n" not in w for w in warnings)
    assert any("torn" in w for w in warnings) and any("schema_version" in w for w in warnings)


def test_analyze_writes_tables_figures_and_report(tmp_path, cli):
    recs = {f"s{i}": r for i, r in enumerate(scaling_records() + transfer_records())}
    recs.update({f"f{k}": make_record(batch=3, step_s=1.0 - 0.1 * k, freeze=k, params=1000 - 100 * k) for k in range(3)})
    results = write_results(tmp_path / "results", recs)
    (results / "shift").mkdir()
    (results / "shift" / "t1t2.json").write_text(json.dumps({"rows": [
        {"features": "intensity", "pair": "flair-t1ce", "mmd2": 0.25, "p_value": 0.001, "n": 50, "m": 60}]}))
    (results / "runs" / "junk").mkdir()
    (results / "runs" / "junk" / "record.json").write_text("not json")

    code, out, err = cli("analyze", str(results))
    assert code == 0, err
    analysis = results / "analysis"
    for stem in ("scaling", "batch", "freeze", "transfer", "mmd"):
        assert (analysis / f"{stem}.md").is_file() and (analysis / f"{stem}.csv").is_file(), stem
    for png in ("scaling_weak", "scaling_strong", "batch", "freeze", "learning_curves"):
        assert_png(analysis / f"{png}.png")
        assert f"figure: {analysis / png}.png" in out
    assert "skipped profile:" in out and "junk" in err
    report = (analysis / "report.md").read_text()
    for link in ("(scaling.md)", "(transfer.csv)", "(scaling_weak.png)", "(learning_curves.png)", "(mmd.md)"):
        assert link in report
    assert "flair-t1ce" in (analysis / "mmd.md").read_text()
    transfer_md = (analysis / "transfer.md").read_text()
    assert "0.820 [0.800, 0.840]" in transfer_md
    # the CSV holds the numbers the Markdown rounds
    import pandas as pd

    scaling = pd.read_csv(analysis / "scaling.csv")
    row = scaling[(scaling["scaling"] == "weak") & (scaling["np"] == 4) & (scaling["batch_size"] == 2)]
    assert row["efficiency"].iloc[0] == pytest.approx(0.75)


def test_analyze_missing_inputs_skip_with_one_line(tmp_path, cli):
    results = write_results(tmp_path / "r", {"only": make_record(step_s=1.0)})
    code, out, err = cli("analyze", str(results), "--out", str(tmp_path / "o"))
    assert code == 0, err
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert {line.split(":")[0] for line in skipped} == {
        "skipped scaling", "skipped phases", "skipped batch", "skipped freeze", "skipped transfer", "skipped mmd",
        "skipped profile", "skipped model", "skipped comm"}
    assert (tmp_path / "o" / "report.md").is_file()


def test_analyze_without_records_is_a_user_error(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no readable run records"):
        build_report(tmp_path / "empty")
    code, out, err = cli("analyze", str(tmp_path / "empty"))
    assert code == 2
    assert err.startswith("bratsbench: error: ") and len(err.strip().splitlines()) == 1
    code, _, err = cli("analyze", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err
