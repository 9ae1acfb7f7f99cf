"""--amp and --xla runs train on CPU (bfloat16 there: float16 has no CPU MaxPool3D kernel)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import bratsbench_cmd, run

SMALL = ["--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--synthetic-samples", "4",
         "--epochs", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("flag, precision", [("--amp", "mixed_bfloat16"), ("--xla", None)])
def test_amp_and_xla_train(tmp_path, flag, precision):
    out = tmp_path / "run"
    run(bratsbench_cmd("train", *SMALL, flag, "--out", str(out)))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    assert record["extra"].get("precision") == precision
    losses = [h["loss"] for h in record["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
