"""Bad input is refused with one line before any work (no run folder, no record)."""

from __future__ import annotations

import json

import pytest

BASE = ["train", "--synthetic", "--crop", "32", "32", "32", "--depth", "3"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--modalities", "flair,t3"], "unknown modality 't3'"),
        (["--depth", "5"], "depth 5 is too deep for crop [32, 32, 32]"),
        (["--depth", "7"], "too deep"),
        (["--crop", "32", "30", "32"], "not divisible by 2^depth"),
        (["--batch-size", "0"], "batch size 0 must be positive"),
        (["--batch-size", "-2"], "batch size -2 must be positive"),
        (["--freeze-depth", "9"], "freeze depth 9 is beyond the model"),
        (["--validate-every-s", "0"], "validation interval 0.0 s must be a positive number of seconds"),
        (["--budget-s", "-1"], "training budget -1.0 s must be a positive number of seconds"),
        (["--resume"], "--resume: no checkpoint folder"),
        (["--init-from", "/nonexistent/ckpt"], "checkpoint '/nonexistent/ckpt' not found"),
        (["--synthetic-input", "--benchmark"], "--synthetic-input keeps a store run's shapes: it needs --store and --split"),
    ],
)
def test_one_line_error_before_any_work(cli, tmp_path, extra, needle):
    out = tmp_path / "run"
    code, _, err = cli(*BASE, *extra, "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bratsbench: error: ")
    assert needle in lines[0]
    assert not (out / "record.json").exists()


def test_incompatible_checkpoint_is_refused(cli, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "model.json").write_text(json.dumps({"signature": {"in_channels": 2, "base_filters": 16, "depth": 3,
                                                               "norm": "instance", "n_classes": 4, "max_filters": 320}}))
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    (ckpt / "ckpt-1.index").write_bytes(b"")
    code, _, err = cli(*BASE, "--base-filters", "8", "--resume", "--out", str(tmp_path / "run"))
    assert code == 2
    assert "does not match the model: base_filters 16 != 8" in err
    assert len(err.strip().splitlines()) == 1


def test_synthetic_input_needs_a_benchmark(cli, tmp_path):
    code, _, err = cli("train", "--store", str(tmp_path / "store"), "--split", str(tmp_path / "split.json"),
                       "--synthetic-input", "--out", str(tmp_path / "run"))
    assert code == 2 and err.strip() == ("bratsbench: error: --synthetic-input times the step without the input "
                                         "pipeline: it needs --benchmark")
