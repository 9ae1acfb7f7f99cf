"""A real comparison: the same small sweep run three times, round by round, twice as it is and once on another
software stack: TensorFlow with its oneDNN kernels turned off (TF_ENABLE_ONEDNN_OPTS=0, as in a build without them;
the run settings are the same, so the points match). `compare` must tell that sweep apart and call
the unchanged rerun unchanged; `--fail-if-slower` and `--check` must fail exactly there.

The three sweeps are interleaved (round r of each, in a rotated order, then round r + 1), so a slow phase of the
machine hits all three,
and each run has one thread (two threads on two shared cores spread 10-20% from run to run here; one spreads 1-2%).
"""

from __future__ import annotations

import subprocess
import time

import pandas as pd
import pytest
import yaml

from tests.conftest import bratsbench_cmd, proc_env

SPEC = {
    "name": "compare-real",
    "scaling": "weak",
    "repeats": 3,
    "axes": {"np": [1], "batch_size": [2]},
    "fixed": {"model": {"base_filters": 8, "depth": 3, "modalities": ["t1", "t2"]},
              "data": {"synthetic": True, "crop": [32, 32, 32], "synthetic_samples": 4},
              "train": {"benchmark": True, "bench_warmup": 2, "bench_steps": 6, "threads": 1}},
    "timeout_s": 600,
}
# %: without oneDNN a step is ~7 times slower; unchanged interleaved reruns on two shared cores differed by up to 4%
# in throughput (all three repeats apart: p 0.1) and 6% in p90 step time, so the verdict's threshold is 10%, not 5%.
# One point (batch 2): each run is mostly start-up, and a second point doubled the test's 4.5 minutes.
# A reference's tolerance is 40%: on a loaded CI machine an unchanged rerun's mean throughput was 24% off its
# reference's 3 runs (the verdict, with its p-value, still said unchanged); the difference tested is 7x
THRESHOLD = FAIL_IF_SLOWER = "10"


def _sweep_round(spec, out, repeat: int, env: dict[str, str]) -> None:
    labels = [f"np1-b{b}-k0-scratch-s0-r{repeat}" for b in SPEC["axes"]["batch_size"]]
    result = subprocess.run(bratsbench_cmd("sweep", "run", str(spec), "--out", str(out), "--only", *labels),
                            env=proc_env(**env), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.alone  # a timing comparison: no other test beside it under pytest-xdist
def test_compare_tells_a_real_difference_apart_and_calls_an_unchanged_rerun_unchanged(tmp_path, cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    base, again, other = tmp_path / "base", tmp_path / "again", tmp_path / "no-onednn"
    t0 = time.perf_counter()
    sides = [(base, {}), (again, {}), (other, {"TF_ENABLE_ONEDNN_OPTS": "0"})]
    for repeat in range(SPEC["repeats"]):
        # each round in another order (a Latin square): a side always run right after the slow no-oneDNN one, or
        # right after its twin, would carry that position's effect in all its repeats (seen: an unchanged rerun
        # always run second came out 11% slower in all three rounds)
        for out, env in sides[repeat % 3:] + sides[:repeat % 3]:
            _sweep_round(spec, out, repeat, env)
    swept = time.perf_counter() - t0

    code, out, err = cli("compare", str(base), str(again), "--threshold", THRESHOLD, "--fail-if-slower", FAIL_IF_SLOWER,
                         "--out", str(tmp_path / "same"))
    assert code == 0, out + err
    same = pd.read_csv(tmp_path / "same" / "compare.csv")
    thr = same[same["metric"] == "throughput"]
    assert len(thr) == 1 and set(thr["verdict"]) == {"~"}, thr.to_string()
    # not a band on the ratio, nor "its CI contains 1": on a loaded 2-core CI machine one side's repeats spread 15-18%
    # (cv), and an unchanged rerun's 3 repeats lie all above the other's 10% of the time by chance (then the CI
    # excludes 1); the claim that holds run to run is the verdict's: not a change (above, and the steady metrics below)
    assert ((thr["ratio_ci_low"] <= thr["ratio"]) & (thr["ratio"] <= thr["ratio_ci_high"])).all(), thr.to_string()
    steady = same[same["metric"].isin(["throughput", "step_p50_ms", "peak_host_mem_mb"])]  # tails of 6 steps vary more
    assert set(steady["verdict"]) == {"~"}, same[["label", "metric", "ratio", "p_value", "verdict"]].to_string()

    code, out, err = cli("compare", str(base), str(other), "--threshold", THRESHOLD, "--fail-if-slower", FAIL_IF_SLOWER,
                         "--out", str(tmp_path / "other"))
    assert code == 1, out + err
    slow = pd.read_csv(tmp_path / "other" / "compare.csv")
    thr = slow[slow["metric"] == "throughput"]
    assert len(thr) == 1 and set(thr["verdict"]) == {"slower"}, thr.to_string()
    assert (thr["ratio_ci_high"] < 0.5).all() and thr["p_value"].tolist() == pytest.approx([0.1]), thr.to_string()
    assert err.count("slower than A by more than --fail-if-slower") == 1
    assert set(slow[slow["metric"] == "step_p50_ms"]["verdict"]) == {"slower"}

    refs = tmp_path / "refs.yaml"
    code, out, err = cli("compare", str(base), "--write-reference", str(refs), "--tolerance", "40",
                         "--out", str(tmp_path / "w"))
    assert code == 0, err
    written = yaml.safe_load(refs.read_text())["references"]
    assert len(written) == 1 and len(next(iter(written.values()))) == 1  # one system, one point
    # for any system: pinning a run may change how its system is labelled, and the point is what is checked here
    refs.write_text(yaml.safe_dump({"references": {"*": next(iter(written.values()))}}))
    code, out, err = cli("analyze", str(again), "--reference", str(refs), "--check")
    assert code == 0, out + err
    code, out, err = cli("analyze", str(other), "--reference", str(refs), "--check")
    assert code == 1 and err.count("outside its reference") == 1 and "throughput" in err, out + err
    print(f"three interleaved sweeps of {SPEC['repeats']} runs each: {swept:.0f} s; base / again / no-onednn "
          f"throughput B/A: {same[same['metric'] == 'throughput']['ratio'].round(3).tolist()} / "
          f"{thr['ratio'].round(3).tolist()}")
