"""`bratsbench compare`, references with tolerances and systems kept apart in `analyze`, on fixed run records with
known differences; the statistics checked against scipy.stats on fixed data."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from analysis import compare, points, reference, stats, tables
from harness.config import RunConfig

EPYC = "AMD EPYC 9B14 (AVX-512), 2 cores, TF 2.18.1 CPU"
H100 = "4x NVIDIA H100 80GB HBM3, TF 2.18.1 CUDA 12.5"


def record(np_: int = 1, batch: int = 2, throughput: float = 10.0, repeat: int = 0, system: str | None = EPYC,
           crop: int = 32, out: str = "runs/x", backend: str = "horovod", engine: str = "horovod/gloo",
           started: str = "2025-01-01T00:00:00+00:00", extra: dict | None = None, metrics: dict | None = None,
           history: list | None = None, seed: int = 0, name: str | None = None) -> dict:
    """A run record as the trainer writes it (only the fields compare and analyze read are meaningful)."""
    cfg = RunConfig.from_dict({"model": {"modalities": ["t1", "t2"]},
                               "data": {"synthetic": True, "crop": [crop] * 3},
                               "train": {"batch_size": batch, "benchmark": True, "backend": backend, "seed": seed,
                                         "threads": 1}})
    cfg.out, cfg.repeat = out, repeat
    cfg.name = name or f"np{np_}-b{batch}-k0-scratch-s{seed}" + (f"-r{repeat}" if repeat is not None else "")
    step = np_ * batch / throughput
    rec = {
        "schema_version": 1, "kind": "train", "name": cfg.name, "status": "ok", "started_at": started,
        "config": cfg.to_dict(), "world_size": np_,
        "versions": {"python": "3.11.2", "tensorflow": "2.18.1", "horovod": "0.28.1"},
        "engine": {"name": engine.split("/")[0], "transport": engine.split("/")[1]},
        "model": {"params_trainable": 1000, "params_total": 1000},
        "timing": {"global_batch": np_ * batch, "throughput_samples_s": throughput, "step_time_mean_s": step,
                   "step_time_p50_s": step, "step_time_p90_s": step * 1.05, "step_time_p99_s": step * 1.1,
                   "peak_host_mem_mb": 900.0, "peak_gpu_mem_mb": None, "steps": 10},
        "phases": {"wall_s": 10.0, "to_first_step_s": 7.0, "steps_s": 3.0, "train_share": 0.3},
        "history": history or [], "metrics": metrics or {},
        "extra": {"sweep": {"np": np_, "label": cfg.name, "scaling": "weak"}, **(extra or {})},
    }
    if system is not None:
        rec["system"] = {"label": system}
    return rec


def write(root: Path, records: list[dict]) -> Path:
    for i, r in enumerate(records):
        folder = root / "runs" / f"run{i:04d}"
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(r))
    return root


def series(np_: int, values: list[float], **kw) -> list[dict]:
    return [record(np_=np_, throughput=v, repeat=i, out=f"o/np{np_}-r{i}", **kw) for i, v in enumerate(values)]


# --------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n", range(1, 8))
def test_median_law_is_the_exact_bootstrap_law(n):
    """Every one of the n**n resamples enumerated: the law's probabilities are theirs, exactly."""
    i, j, p = stats._median_law(n)
    brute: dict[tuple[int, int], float] = {}
    for draw in itertools.product(range(n), repeat=n):
        s = sorted(draw)
        key = (s[(n - 1) // 2], s[n // 2])
        brute[key] = brute.get(key, 0.0) + n ** -n
    mine = {(int(a), int(b)): q for a, b, q in zip(i, j, p) if q > 0}
    assert mine.keys() == brute.keys()
    assert all(mine[k] == pytest.approx(v, abs=1e-12) for k, v in brute.items())
    assert p.sum() == pytest.approx(1.0)


def _scipy_ratio_ci(b, a, seed=0):
    res = sps.bootstrap((np.asarray(b), np.asarray(a)),
                        lambda x, y, axis=-1: np.median(x, axis=axis) / np.median(y, axis=axis), paired=False,
                        vectorized=True, method="percentile", n_resamples=9999, random_state=np.random.default_rng(seed))
    return res.confidence_interval.low, res.confidence_interval.high


@pytest.mark.parametrize("b, a", [
    ([8.0, 8.1, 7.9], [10.0, 10.1, 9.9]),                      # 20% slower, tight
    ([9.8, 10.3, 9.5], [10.0, 10.5, 9.6]),                     # 2% within noise
    ([12.0, 11.0, 13.5, 12.2], [10.0, 10.4, 6.0, 9.8, 10.1]),  # even and odd sizes, a slow repeat
    ([3.1, 2.9, 3.4, 3.0, 3.2, 2.8], [3.0, 3.3, 2.7, 3.1, 2.9, 3.5]),
])
def test_ratio_ci_agrees_with_scipy_bootstrap(b, a):
    value, low, high = stats.ratio_of_medians_ci(b, a)
    assert value == pytest.approx(np.median(b) / np.median(a))
    s_low, s_high = _scipy_ratio_ci(b, a)
    # the law is discrete: scipy's 9999 resamples land on the same outcomes, or next to them near a jump
    width = max(b) / min(a) - min(b) / max(a)
    assert low == pytest.approx(s_low, abs=0.02 * width) and high == pytest.approx(s_high, abs=0.02 * width)
    assert low <= value <= high


def test_ratio_ci_past_the_exact_size_samples_with_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(10, 1, 80), rng.normal(9, 1, 80)  # 80 a side: (80*81/2)^2 outcomes, too many to list
    value, low, high = stats.ratio_of_medians_ci(b, a)
    assert (low, high) == pytest.approx(_scipy_ratio_ci(b, a))
    assert low < value < high < 1


def test_ratio_ci_needs_two_values_a_side():
    value, low, high = stats.ratio_of_medians_ci([5.0], [10.0, 11.0, 9.0])
    assert value == pytest.approx(0.5) and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="median is zero"):
        stats.ratio_of_medians_ci([1.0, 2.0], [0.0, 0.0, 1.0])


@pytest.mark.parametrize("x, y", [
    ([8.0, 8.1, 7.9], [10.0, 10.1, 9.9]),
    ([9.8, 10.3, 9.5], [10.0, 10.5, 9.6]),
    ([1.0, 2.0, 2.0, 3.0], [2.0, 3.0, 4.0]),          # ties: scipy's asymptotic method
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
    (list(range(10)), [x + 0.5 for x in range(12)]),  # both above 8: asymptotic
])
def test_mann_whitney_p_is_scipys(x, y):
    assert stats.mann_whitney_p(x, y) == pytest.approx(sps.mannwhitneyu(x, y, alternative="two-sided").pvalue)


def test_mann_whitney_batches_give_each_pair_its_own_p():
    """One batch holding pairs with and without ties: each p is what scipy gives the pair alone."""
    pairs = [([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), ([1.0, 2.0, 2.0], [2.0, 5.0, 6.0]), ([3.0, 1.0, 2.0], [2.5, 0.5, 9.0]),
             ([1.0, 2.0], [3.0, 4.0, 5.0])]
    assert stats.mann_whitney_ps(pairs) == pytest.approx(
        [sps.mannwhitneyu(x, y, alternative="two-sided").pvalue for x, y in pairs])
    assert stats.mann_whitney_p([8.0, 8.1, 7.9], [10.0, 10.1, 9.9]) == pytest.approx(0.1)  # 3 vs 3: never below 0.1


# --------------------------------------------------------------------------------------------- points


def test_point_identity_leaves_out_repeat_output_paths_and_a_studys_seed():
    a = record(repeat=0, out="x/a")
    b = record(repeat=2, out="y/b")
    assert points.point_id(a) == points.point_id(b)
    assert points.point_id(record(np_=2)) != points.point_id(a)
    assert points.point_id(record(seed=1)) != points.point_id(a)  # a sweep's seed is a point of its own
    study = {"transfer": {"role": "scratch", "seed": 0}}
    assert points.point_id(record(seed=1, extra=study)) == points.point_id(record(seed=0, extra=study))
    fine = record(extra={"transfer": {"role": "finetune"}})
    fine["config"]["train"]["init_from"] = "/cluster/a/runs/pre/checkpoints"
    other = json.loads(json.dumps(fine))
    other["config"]["train"]["init_from"] = "/scratch/b/runs/pre/checkpoints"
    assert points.point_id(fine) == points.point_id(other) != points.point_id(record(extra={"transfer": {"role": "scratch"}}))
    assert points.point_id(record(backend="mwms"), ignore=[("train", "backend")]) == points.point_id(
        record(backend="horovod"), ignore=[("train", "backend")])
    assert points.label(record(repeat=2)) == "np1-b2-k0-scratch-s0"


def test_point_id_is_the_sweeps_run_id_of_the_first_repeat():
    from harness.sweep.plan import plan
    from harness.sweep.spec import parse_spec

    spec = parse_spec({"name": "p", "repeats": 2, "axes": {"np": [1, 2]},
                       "fixed": {"data": {"synthetic": True}, "train": {"benchmark": True}}}, origin="s")
    for run in plan(spec):
        rec = {"kind": "train", "config": run.config_for(f"/res/runs/{run.run_id}", "/res").to_dict(), "world_size": run.np}
        first = next(r for r in plan(spec) if r.np == run.np and r.repeat == 0)
        assert points.point_id(rec) == first.run_id


# --------------------------------------------------------------------------------------------- compare


@pytest.fixture
def known(tmp_path):
    """A and B with known differences: np1 20% slower with tight repeats, np2 2% within noise, np4 only in A,
    np8 with two repeats on B, np16 noisy on B."""
    a = write(tmp_path / "a", [*series(1, [10.0, 10.1, 9.9]), *series(2, [19.0, 20.2, 18.4]), *series(4, [30.0, 31.0, 29.0]),
                               *series(8, [50.0, 51.0, 49.0]), *series(16, [80.0, 81.0, 79.0])])
    b = write(tmp_path / "b", [*series(1, [8.0, 8.1, 7.9], system=H100), *series(2, [18.6, 19.8, 18.0], system=H100),
                               *series(8, [40.0, 41.0], system=H100), *series(16, [60.0, 85.0, 72.0], system=H100)])
    return a, b


def _row(result, label, metric="throughput"):
    rows = result.rows[(result.rows["label"] == label) & (result.rows["metric"] == metric)]
    assert len(rows) == 1, result.rows[["label", "metric"]]
    return rows.iloc[0]


def test_known_differences_get_the_right_verdicts(known):
    sides = compare.load_sides(known)
    result = compare.compare(sides, compare.Rule())
    slow = _row(result, "np1-b2-k0-scratch-s0")
    assert slow["verdict"] == "slower" and slow["why"] == ""
    assert slow["ratio"] == pytest.approx(0.8) and slow["p_value"] == pytest.approx(0.1)
    assert slow["ratio_ci_high"] < 0.95 and slow["change_pct"] == pytest.approx(-20.0)
    assert (slow["system_a"], slow["system_b"]) == (EPYC, H100)  # matched across systems: one system a side
    noise = _row(result, "np2-b2-k0-scratch-s0")
    assert noise["verdict"] == "~" and noise["ratio"] == pytest.approx(18.6 / 19.0) and noise["p_value"] > 0.1
    assert noise["why"].startswith("p ")
    few = _row(result, "np8-b2-k0-scratch-s0")
    assert few["verdict"] == "no verdict" and few["why"] == "3 vs 2 repeats: a verdict needs 3 a side"
    assert few["ratio"] == pytest.approx(40.5 / 50.0) and not math.isnan(few["ratio_ci_low"])
    assert _row(result, "np16-b2-k0-scratch-s0")["noisy"] == "B"
    # step time goes the other way: lower is faster
    assert _row(result, "np1-b2-k0-scratch-s0", "step_p50_ms")["verdict"] == "slower"
    assert _row(result, "np1-b2-k0-scratch-s0", "peak_host_mem_mb")["verdict"] == "~"
    gone = result.unmatched
    assert list(zip(gone["side"], gone["label"], gone["reason"])) == [("A", "np4-b2-k0-scratch-s0", "not in B")]
    head = "\n".join(result.header())
    assert EPYC in head and H100 in head
    assert "throughput, B vs A: 1 slower, 0 faster, 2 ~, 1 no verdict (~: no significant change)" in head  # np2, np16 ~
    assert "unmatched points: 1 of A, 0 of B; 1 noisy" in head


@pytest.mark.parametrize("a, b, rule, verdict, why", [
    ([10.0, 10.1, 9.9], [8.0, 8.1, 7.9], compare.Rule(), "slower", ""),
    ([10.0, 10.1, 9.9], [12.0, 12.1, 11.9], compare.Rule(), "faster", ""),
    ([10.0, 10.1, 9.9], [8.0, 8.1, 7.9], compare.Rule(alpha=0.05), "~", "p 0.1 > 0.05"),        # 3 vs 3 at 0.05
    ([10.0, 10.1, 9.9, 10.05], [8.0, 8.1, 7.9, 8.05], compare.Rule(alpha=0.05), "slower", ""),  # 4 vs 4 can
    ([10.0, 10.1, 9.9], [9.7, 9.75, 9.65], compare.Rule(), "~", "-3.0% is within 5%"),          # separated, small
    ([10.0, 10.1, 9.9], [9.7, 9.75, 9.65], compare.Rule(threshold=0.02), "slower", ""),
    ([10.0, 10.1], [8.0, 8.1, 7.9], compare.Rule(), "no verdict", "2 vs 3 repeats: a verdict needs 3 a side"),
    ([10.0, 10.1, 9.9], [10.0, 10.1, 9.9], compare.Rule(), "~", "p 1 > 0.1"),
])
def test_verdict_edges(a, b, rule, verdict, why):
    pa, pb = points.Point("p", "p", EPYC, {"throughput": a}), points.Point("p", "p", EPYC, {"throughput": b})
    row = compare.compare_pairs([(pa, pb)], rule, metrics=[points.BY_NAME["throughput"]])[0]
    assert (row["verdict"], row["why"]) == (verdict, why)


@pytest.mark.parametrize("bad, message", [
    ({"alpha": 0.0}, "--alpha 0.0 must be between 0 and 1"),
    ({"alpha": 1.5}, "--alpha 1.5 must be between 0 and 1"),
    ({"threshold": -0.01}, "--threshold -1% must be at least 0"),
    ({"threshold": 1.0}, "--threshold 100% must be at least 0"),
])
def test_rule_refuses_bad_values(bad, message):
    from harness.errors import UserError

    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        compare.Rule(**bad)


def test_compare_command_writes_tables_and_plot_and_fails_only_when_slower_by_more(known, cli, tmp_path):
    a, b = known
    code, out, err = cli("compare", str(a), str(b), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    assert out.splitlines()[1].strip().startswith(f"A: {a}: {EPYC} (15 runs)")
    assert "== throughput (samples/s, higher is better)" in out and "slower" in out
    assert "0.800 [0.782, 0.818]" in out  # B/A and its CI (the exact bootstrap law: scipy gives the same)
    csv = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(csv["verdict"][csv["metric"] == "throughput"]) == {"slower", "~", "no verdict"}
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.startswith("# compare: B ÷ A") and "| point | label |" in md and "not in B" in md
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = cli("compare", str(a), str(b), "--out", str(tmp_path / "c2"), "--fail-if-slower", "10")
    assert code == 1
    assert "slower than A by more than --fail-if-slower 10%: np1-b2-k0-scratch-s0" in err and "-20.0%" in err
    assert "1 point(s) have too few repeats" in err
    code, out, err = cli("compare", str(a), str(b), "--out", str(tmp_path / "c3"), "--fail-if-slower", "25")
    assert code == 0, err  # 20% is not more than 25%; np8's 19% has no verdict and np16 is not significant


def test_compare_three_folders_each_against_the_first(known, cli, tmp_path):
    a, b = known
    c = write(tmp_path / "c", series(1, [10.2, 10.0, 10.1]))
    code, out, err = cli("compare", str(a), str(b), str(c), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(rows["side"]) == {"B", "C"}
    assert rows[(rows["side"] == "C") & (rows["metric"] == "throughput")]["verdict"].tolist() == ["~"]
    assert "throughput, C vs A: 0 slower, 0 faster, 1 ~" in out and "unmatched points: 4 of A, 0 of C" in out


def test_by_system_splits_one_folder_and_never_pools(tmp_path, cli):
    res = write(tmp_path / "r", [*series(1, [10.0, 10.1, 9.9], started="2025-01-02"),
                                 *series(1, [8.0, 8.1, 7.9], system=H100, started="2025-01-01")])
    sides = compare.load_sides([res], by="system")
    assert [s.source for s in sides] == [H100, EPYC]  # the side whose first run started first is A
    assert [p.values["throughput"] for s in sides for p in s.points.values()] == [[8.0, 8.1, 7.9], [10.0, 10.1, 9.9]]
    sides = compare.load_sides([res], by="system", baseline=EPYC)
    assert sides[0].source == EPYC
    assert _row(compare.compare(sides, compare.Rule()), "np1-b2-k0-scratch-s0")["verdict"] == "slower"
    code, out, err = cli("compare", str(res), "--by", "system", "--baseline", "Cray", "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and "--baseline 'Cray' is none of the system values found" in err
    code, out, err = cli("compare", str(res), "--out", str(tmp_path / "x"))
    assert code == 2 and "nothing to compare" in err and err.count("\n") == 1


def test_by_engine_matches_across_the_backend_setting(tmp_path):
    res = write(tmp_path / "r", [*series(2, [20.0, 20.2, 19.8], backend="horovod", engine="horovod/gloo"),
                                 *series(2, [16.0, 16.1, 15.9], backend="mwms", engine="mwms/ring",
                                         started="2025-01-02")])
    sides = compare.load_sides([res], by="engine")
    assert [s.source for s in sides] == ["horovod/gloo", "mwms/ring"]
    assert _row(compare.compare(sides, compare.Rule()), "np2-b2-k0-scratch-s0")["verdict"] == "slower"
    # as folders, the backend setting is part of the point: nothing matches, and both points are listed
    h, m = (write(tmp_path / n, [r for r in json_records(res) if r["engine"]["name"] == n]) for n in ("horovod", "mwms"))
    result = compare.compare(compare.load_sides([h, m]), compare.Rule())
    assert result.rows.empty and sorted(result.unmatched["reason"]) == ["not in A", "not in B"]


def json_records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("runs/*/record.json"))]


def test_a_point_on_two_systems_in_one_folder_is_never_pooled(tmp_path):
    a = write(tmp_path / "a", [*series(1, [10.0, 10.1, 9.9]), *series(1, [20.0, 20.1, 19.9], system=H100)])
    b = write(tmp_path / "b", [*series(1, [10.0, 10.2, 9.8]), *series(1, [16.0, 16.1, 15.9], system=H100)])
    result = compare.compare(compare.load_sides([a, b]), compare.Rule())
    t = result.rows[result.rows["metric"] == "throughput"].set_index("system_a")
    assert t.loc[EPYC, "verdict"] == "~" and t.loc[H100, "verdict"] == "slower"
    assert t.loc[H100, "a"] == pytest.approx(20.0)
    # one system in A, two in B: which pairs with which is not clear, so nothing is paired and all are listed
    c = write(tmp_path / "c", series(1, [10.0, 10.1, 9.9], system="Grace Hopper"))
    result = compare.compare(compare.load_sides([c, b]), compare.Rule())
    assert result.rows.empty and len(result.unmatched) == 3
    assert "which pairs with which is not clear" in result.unmatched["reason"].iloc[0]


def test_study_points_compare_test_dice_and_time_to_target(tmp_path):
    def study(role, seed, dice, reach_epoch, folder_speed):
        history = [{"epoch": e, "train_s": 10.0 * folder_speed, "val": {"WT": 0.5 + 0.1 * e if e < reach_epoch else 0.9}}
                   for e in range(1, 5)]
        return record(seed=seed, repeat=0, extra={"transfer": {"role": role, "seed": seed}}, history=history,
                      metrics={"test": {"mean": {"WT": dice, "TC": dice - 0.1, "ET": dice - 0.2}}},
                      name=f"{role}-s{seed}", out=f"o/{role}-{seed}")
    a = write(tmp_path / "a", [study("scratch", s, d, 3, 1.0) for s, d in enumerate([0.90, 0.91, 0.89])])
    b = write(tmp_path / "b", [study("scratch", s, d, 3, 2.0) for s, d in enumerate([0.90, 0.905, 0.895])])
    result = compare.compare(compare.load_sides([a, b]), compare.Rule())
    dice = _row(result, "scratch", "test_WT_dice")
    assert dice["a_n"] == 3 and dice["verdict"] == "~" and dice["a"] == pytest.approx(0.90)
    ttt = _row(result, "scratch", "time_to_target_s")
    assert ttt["a"] == pytest.approx(30.0) and ttt["b"] == pytest.approx(60.0) and ttt["verdict"] == "slower"


# --------------------------------------------------------------------------------------------- references


def test_write_reference_then_check_it(known, cli, tmp_path):
    a, b = known
    refs = tmp_path / "refs.yaml"
    code, out, err = cli("compare", str(a), "--write-reference", str(refs), "--out", str(tmp_path / "w"))
    assert code == 0, err
    assert "wrote 5 reference(s)" in out
    written = yaml.safe_load(refs.read_text())["references"]
    assert list(written) == [EPYC]
    assert written[EPYC]["np1-b2-k0-scratch-s0"]["throughput"] == [10.0, -0.1, 0.1, "samples/s"]
    code, out, err = cli("analyze", str(a), "--reference", str(refs), "--check")
    assert code == 0, err
    assert "== References" in out and "low" not in out.split("== References")[1]
    # B runs on another system: A's references are not checked there, and said so
    code, out, err = cli("compare", str(a), str(b), "--reference", str(refs), "--check", "--out", str(tmp_path / "c"))
    assert code == 0, err
    # one expectation raised by 20%: the measured value is now low, flagged, and --check fails
    written[EPYC]["np1-b2-k0-scratch-s0"]["throughput"] = [12.5, -0.1, None]
    refs.write_text(yaml.safe_dump({"references": written}))
    code, out, err = cli("analyze", str(a), "--reference", str(refs))
    assert code == 0 and " low" in out  # flagged, but without --check the exit status stays 0
    code, out, err = cli("analyze", str(a), "--reference", str(refs), "--check")
    assert code == 1 and err.count("\n") == 1
    assert "outside its reference: np1-b2-k0-scratch-s0" in err and "throughput 10 is low (reference 12.5, allowed [11.25, inf])" in err
    code, out, err = cli("compare", str(a), str(b), "--reference", str(refs), "--check", "--out", str(tmp_path / "d"))
    assert code == 1 and "A low" in out
    refs.write_text(yaml.safe_dump({"references": {"*": {"np2-b2-k0-scratch-s0": {"throughput": [19.0, -0.05, 0.05]}}}}))
    code, out, err = cli("compare", str(a), str(b), "--reference", str(refs), "--check", "--out", str(tmp_path / "e"))
    assert code == 0, err  # "*": every system's np2 point is checked (A 19.0, B 18.6: both within 5%)
    table = pd.read_csv(tmp_path / "e" / "references.csv")
    assert sorted(zip(table["side"], table["status"])) == [("A", "ok"), ("B", "ok")]


@pytest.mark.parametrize("text, message", [
    ("references: {}\nsystems: {}\n", "unknown key 'systems' (a reference file holds: references)"),
    ("[1, 2]\n", "expected a mapping with the key 'references'"),
    ("references: {'%s': {np1-b2-k0-scratch-s0: {thruput: [10, -0.1, 0.1]}}}\n" % EPYC, "unknown metric 'thruput'"),
    ("references: {'%s': {np1-b2-k0-scratch-s0: {throughput: [10, 0.1, 0.1]}}}\n" % EPYC, "bad tolerance [10, 0.1, 0.1]"),
    ("references: {'%s': {np1-b2-k0-scratch-s0: {throughput: [10, -0.1, -0.1]}}}\n" % EPYC, "bad tolerance"),
    ("references: {'%s': {np1-b2-k0-scratch-s0: {throughput: [10, -1.5, null]}}}\n" % EPYC, "bad tolerance"),
    ("references: {'%s': {np1-b2-k0-scratch-s0: {throughput: [0, -0.1, 0.1]}}}\n" % EPYC, "bad tolerance"),
    ("references: {'%s': {np1-b2-k0-scratch-s0: {throughput: 10}}}\n" % EPYC, "bad tolerance 10"),
    ("references: {'%s': {np1-b2-k0-scratch-s0: {throughput: [10, '-10%%', 0.1]}}}\n" % EPYC, "bad tolerance"),
    ("references: {'%s': {np3-b2-k0-scratch-s0: {throughput: [10, -0.1, 0.1]}}}\n" % EPYC,
     f"system '{EPYC}', point 'np3-b2-k0-scratch-s0' matches no run"),
    ("references: {'*': {deadbeef0000: {throughput: [10, -0.1, 0.1]}}}\n", "point 'deadbeef0000' matches no run"),
    ("references: [unclosed\n", "not YAML"),
])
@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_a_bad_reference_file_is_one_line_of_error(known, cli, tmp_path, text, message, command):
    a, _ = known
    refs = tmp_path / "refs.yaml"
    refs.write_text(text)
    out_dir = tmp_path / "out"
    extra = ["--out", str(out_dir)]
    code, out, err = cli(command, str(a), "--reference", str(refs), "--check", *extra)
    assert code == 2 and err.count("\n") == 1 and err.startswith("bratsbench: error: "), err
    assert message in err
    assert not out_dir.exists()  # refused before anything was written


@pytest.mark.parametrize("args, message", [
    (["--check"], "--check needs --reference FILE"),
    (["--reference", "/nonexistent/refs.yaml"], "reference file '/nonexistent/refs.yaml'"),
    (["--threshold", "150"], "--threshold 150% must be at least 0 and below 100"),
    (["--alpha", "0"], "--alpha 0.0 must be between 0 and 1"),
    (["--fail-if-slower", "-5"], "--fail-if-slower -5"),
    (["--baseline", "x"], "--baseline names a side of --by"),
    (["--write-reference", "r.yaml", "--tolerance", "0"], "--tolerance 0"),
])
def test_compare_refuses_bad_options_in_one_line(known, cli, args, message):
    a, b = known
    code, out, err = cli("compare", str(a), str(b), *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_compare_refuses_missing_folders_and_folders_without_runs(tmp_path, cli, known):
    a, _ = known
    (tmp_path / "empty").mkdir()
    for args, message in (([str(a), str(tmp_path / "nope")], "does not exist"),
                          ([str(a), str(tmp_path / "empty")], "holds no training run records"),
                          ([str(a), str(a)], "is given twice")):
        code, out, err = cli("compare", *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err


# --------------------------------------------------------------------------------------------- analyze


def test_analyze_keeps_two_systems_apart_and_names_each_once(tmp_path, cli):
    """The same spec run under two (faked) systems in one folder: two groups with their labels, never pooled."""
    res = write(tmp_path / "r", [*series(1, [10.0, 10.2, 9.8]), *series(2, [18.0, 18.4, 17.6]),
                                 *series(1, [40.0, 41.0, 39.0], system=H100), *series(2, [78.0, 79.0, 77.0], system=H100)])
    code, out, err = cli("analyze", str(res))
    assert code == 0, err
    head = out.split("== Scaling")[0]
    assert head.count(EPYC) == 1 and head.count(H100) == 1 and "6" in head
    systems = pd.read_csv(res / "analysis" / "systems.csv")
    assert dict(zip(systems["system"], systems["runs"])) == {EPYC: 6, H100: 6}
    scaling = pd.read_csv(res / "analysis" / "scaling.csv").set_index(["system", "np"])
    assert scaling.loc[(EPYC, 1), "throughput"] == pytest.approx(10.0) and scaling.loc[(EPYC, 1), "runs"] == 3
    assert scaling.loc[(H100, 2), "throughput"] == pytest.approx(78.0)
    assert scaling.loc[(H100, 2), "speedup"] == pytest.approx(78.0 / 40.0)
    assert list(pd.read_csv(res / "analysis" / "phases.csv").columns[:2]) == ["run", "system"] or \
        "system" in pd.read_csv(res / "analysis" / "phases.csv").columns
    scaling_md = (res / "analysis" / "scaling.md").read_text()
    assert EPYC in scaling_md and H100 in scaling_md


def test_analyze_on_one_system_shows_no_system_column(tmp_path):
    records = [*series(1, [10.0, 10.2, 9.8]), *series(2, [18.0, 18.4, 17.6])]
    table = tables.scaling_table(records)
    assert "system" not in table and "system" not in tables.scaling_view(table)
    assert "system" not in tables.phases_table(records)
    old = [dict(r) for r in records]
    for r in old:
        r.pop("system")
    assert tables.scaling_table(old).equals(table)  # records without a system section: the same tables
    two = records + series(1, [5.0, 5.0, 5.0], system=None) + series(2, [9.0, 9.1, 8.9], system=None)
    t = tables.scaling_table(two)
    assert set(t["system"]) == {EPYC, "unknown system"}
    assert t[t["system"] == "unknown system"]["throughput"].tolist() == pytest.approx([5.0, 9.0])


def test_many_points_list_the_changes_and_draw_every_point(tmp_path, cli):
    """Past 40 points the terminal lists the points that changed and counts the rest; files keep every point."""
    a = write(tmp_path / "a", [r for s in range(45) for r in series(1, [10.0, 10.1, 9.9], seed=s)])
    b = write(tmp_path / "b", [r for s in range(45) for r in series(1, [8.0, 8.1, 7.9] if s == 7 else [10.0, 10.2, 9.8],
                                                                       seed=s)])
    code, out, err = cli("compare", str(a), str(b), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    section = out.split("== throughput")[1].split("==")[0]
    assert "np1-b2-k0-scratch-s7 " in section and "np1-b2-k0-scratch-s8 " not in section
    assert "... and 44 more point(s) with no significant change" in section
    rows = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert (rows["metric"] == "throughput").sum() == 45
    assert (tmp_path / "cmp" / "compare.md").read_text().count("np1-b2-k0-scratch-s") >= 45 * 4
    from tests.test_analysis import assert_png

    assert_png(tmp_path / "cmp" / "compare.png")


def test_analyze_notes_per_system(tmp_path, cli):
    res = write(tmp_path / "r", [*series(1, [10.0, 10.2, 9.8]), *series(1, [40.0, 41.0, 39.0], system=H100)])
    code, out, err = cli("analyze", str(res))
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note: benchmark runs")]
    assert len(notes) == 2 and any(EPYC in n for n in notes) and any(H100 in n for n in notes)


def test_the_scaling_model_takes_its_baseline_from_the_runs_own_system():
    from analysis.report import _baseline_for

    def comm(system, busbw):
        rows = [{"op": "allreduce", "bytes": b, "time_us": 10 + b / (busbw * 1e3), "busbw_gb_s": busbw} for b in (8, 2**20, 2**24)]
        return {"kind": "comm", "world_size": 2, "engine": {"name": "mpi"}, "system": {"label": system},
                "comm": {"rows": rows}}

    run = record(np_=2)  # on EPYC
    assert _baseline_for(run, [comm(H100, 100.0)]) is None  # another system's link says nothing about this one
    link = _baseline_for(run, [comm(H100, 100.0), comm(EPYC, 2.0)])
    assert link is not None and link.busbw_gb_s == pytest.approx(2.0, rel=0.2)
