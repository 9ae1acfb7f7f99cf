"""--amp and --xla runs train on CPU (bfloat16 there: float16 has no CPU MaxPool3D kernel)."""

from __future__ import annotations

import json

import pytest

from harness.engines.base import cpu_bf16_instructions
from tests.conftest import bratsbench_cmd, run

SMALL = ["--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--synthetic-samples", "4",
         "--epochs", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("flag, precision", [("--amp", "mixed_bfloat16"), ("--xla", None)])
def test_amp_and_xla_train(tmp_path, flag, precision):
    out = tmp_path / "run"
    result = run(bratsbench_cmd("train", *SMALL, flag, "--out", str(out)))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    assert record["extra"].get("precision") == precision
    if precision:  # bfloat16 without the instructions for it is emulated: the user is told, and the record says so
        assert record["extra"]["cpu_bf16_instructions"] == cpu_bf16_instructions()
        assert ("no bfloat16 instructions" in result.stderr) == (not cpu_bf16_instructions())
    losses = [h["loss"] for h in record["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.parametrize("flags, found", [
    ("fpu avx2 fma", []),
    ("fpu avx512f avx512_bf16 avx2", ["avx512_bf16"]),
    ("amx_tile amx_bf16 avx512_bf16", ["amx_bf16", "avx512_bf16"]),
])
def test_cpu_bf16_instructions_from_cpuinfo(tmp_path, flags, found):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    assert cpu_bf16_instructions(str(info)) == found


def test_cpu_bf16_instructions_without_cpuinfo(tmp_path):
    assert cpu_bf16_instructions(str(tmp_path / "missing")) == []


def test_record_says_where_the_wall_time_went(tmp_path):
    out = tmp_path / "bench"
    run(bratsbench_cmd("train", *SMALL[:-2], "--benchmark", "--warmup", "2", "--bench-steps", "7", "--out", str(out)))
    record = json.loads((out / "record.json").read_text())
    phases, timing = record["phases"], record["timing"]
    assert phases["steps"] == 2 + 7 - 1  # every step after the first (which traces the step function)
    assert 0 < phases["to_first_step_s"] < phases["wall_s"] and 0 < phases["train_share"] < 1
    named = ("to_first_step_s", "steps_s", "validation_s", "checkpoint_s", "input_setup_s", "bookkeeping_s", "other_s")
    assert sum(phases[k] for k in named) == pytest.approx(phases["wall_s"])
    assert phases["input_setup_s"] >= 0 and phases["bookkeeping_s"] > 0  # the end's checksums over ranks at least
    assert all(phases[k] >= 0 for k in named)  # a partition: nothing counted twice (the pipeline built before the
    # first step is start-up, not input_setup_s as well)
    assert phases["wall_s"] >= record["wall_s"]  # from the process's start, imports included
    windows = timing["window_throughputs_samples_s"]
    assert len(windows) == 3 and min(windows) <= timing["throughput_samples_s"] <= max(windows)


def test_budget_in_training_seconds_stops_the_run_and_validates_the_last_epoch(tmp_path):
    out = tmp_path / "budget"
    run(bratsbench_cmd("train", *SMALL[:-2], "--epochs", "500", "--steps-per-epoch", "5", "--budget-s", "2",
                       "--out", str(out)))
    record = json.loads((out / "record.json").read_text())
    stopped, history = record["extra"]["stopped"], record["history"]
    assert record["status"] == "ok" and stopped["reason"] == "budget" and stopped["epoch"] == len(history) < 500
    spent = sum(h["train_s"] for h in history)
    steps = history[-1]["step"]
    assert spent >= 2.0 and spent - 2.0 < 2 * spent / steps + 0.5  # stopped within about a step of the budget
    assert "val" in history[-1] and stopped["step"] == steps


def test_validation_every_s_seconds_of_training(tmp_path):
    out = tmp_path / "every-s"
    run(bratsbench_cmd("train", *SMALL[:-2], "--epochs", "500", "--steps-per-epoch", "2", "--budget-s", "8",
                       "--validate-every-s", "1.5", "--out", str(out)))
    history = json.loads((out / "record.json").read_text())["history"]
    assert "val" in history[-1]  # the last epoch always validates
    since = 0.0
    for h in history[:-1]:  # an epoch validates exactly when 1.5 s of steps have gone in since the last validation
        since += h["train_s"]
        assert ("val" in h) == (since >= 1.5), (since, h)
        if "val" in h:
            since = 0.0
    assert 1 <= sum("val" in h for h in history) < len(history)
