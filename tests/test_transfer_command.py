"""`bratsbench transfer` end to end on generated cases: one split, cached pre-training, frozen weights kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

MODEL = ["--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--batch-size", "1",
         "--epochs", "2", "--steps-per-epoch", "3", "--val-cases", "1"]


def _records(study: Path) -> dict[str, dict]:
    out = {}
    for path in study.glob("*/record.json"):
        rec = json.loads(path.read_text())
        out[rec["extra"]["transfer"]["label"]] = rec | {"_dir": path.parent}
    return out


def _level_weights(run_dir: Path, levels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Checkpointed weights of the layers in `levels`, keyed by layer name."""
    from harness.model.pretrained import load_run_model

    model, _ = load_run_model(run_dir)
    return {f"{l.name}/{i}": w for l in model.layers if l.name.split("_")[0] in levels for i, w in enumerate(l.get_weights())}


@pytest.fixture(scope="module")
def study(small_store, tmp_path_factory):
    from harness.cli import main

    out = tmp_path_factory.mktemp("transfer") / "study"
    args = ["transfer", "--store", str(small_store["store"]), "--split", str(small_store["split"]), *MODEL, "--seeds", "1",
            "--out", str(out)]
    assert main([*args, "--freeze-depths", "3", "--no-head-only"]) == 0
    first = {label: rec["_dir"].joinpath("record.json").stat().st_mtime_ns for label, rec in _records(out).items()}
    # head-only is a default variant; the two new runs go side by side, one core each (CI has 2 cores)
    assert main([*args, "--freeze-depths", "0,3", "--parallel", "2"]) == 0
    return out, first


@pytest.mark.slow
def test_comparison_and_shared_split(study, small_store):
    out, _ = study
    recs = _records(out)
    assert set(recs) == {"pretrain-s0", "finetune-k0-s0", "finetune-k3-s0", "finetune-head-s0", "scratch-s0"}
    splits = {rec["config"]["data"]["split"] for rec in recs.values()}
    assert splits == {str(small_store["split"])}
    assert recs["pretrain-s0"]["config"]["model"]["modalities"] == ["flair", "t1ce"]
    for label in ("finetune-k0-s0", "finetune-k3-s0", "scratch-s0"):
        assert recs[label]["config"]["model"]["modalities"] == ["t1", "t2"]
        assert "test" in recs[label]["metrics"] and recs[label]["history"][-1]["val"]["WT"] >= 0
    assert recs["finetune-k3-s0"]["model"]["init"]["first_conv"] == "copy"
    assert recs["finetune-k3-s0"]["model"]["params_trainable"] < recs["scratch-s0"]["model"]["params_trainable"]
    assert recs["scratch-s0"]["config"]["train"]["init_from"] is None
    assert recs["finetune-head-s0"]["config"]["train"]["freeze_depth"] == "head"
    assert recs["finetune-head-s0"]["model"]["frozen_levels"] == ["all-but-head"]
    table = (out / "transfer.md").read_text()
    for variant in ("| k=0 |", "| k=3 |", "| head-only |", "| scratch |"):
        assert variant in table
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_analyze_shows_the_same_transfer_table_as_the_study(study, cli):
    out, _ = study
    code, stdout, err = cli("analyze", str(out), "--out", str(out / "analysis"))
    assert code == 0, err
    assert "skipped transfer" not in stdout and "head-only" in stdout
    for name in ("transfer.md", "transfer.csv"):
        assert (out / "analysis" / name).read_text() == (out / name).read_text(), name
    assert (out / "analysis" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_fine_tuning_record_reproduces_its_run(study, small_store, tmp_path):
    from tests.conftest import bratsbench_cmd, run

    out, _ = study
    pre = _records(out)["pretrain-s0"]["_dir"] / "checkpoints"
    first, again = tmp_path / "first", tmp_path / "again"
    run(bratsbench_cmd("train", "--store", str(small_store["store"]), "--split", str(small_store["split"]), *MODEL,
                       "--modalities", "t1,t2", "--init-from", str(pre), "--first-conv", "average", "--freeze-depth", "2",
                       "--unfreeze-after", "1", "--out", str(first)))
    run(bratsbench_cmd("train", "--config", str(first / "record.json"), "--out", str(again)))
    a, b = (json.loads((d / "record.json").read_text()) for d in (first, again))
    assert a["status"] == b["status"] == "ok"
    assert {**a["config"], "out": None} == {**b["config"], "out": None}
    train = b["config"]["train"]
    assert (train["init_from"], train["first_conv"], train["freeze_depth"], train["unfreeze_after"]) == (str(pre), "average", 2, 1)
    assert b["model"]["init"]["first_conv"] == "average" and b["model"]["frozen_levels"] == ["enc1", "enc2"]
    assert b["model"]["unfrozen_at_epoch"] == 1
    assert b["model"]["replica_checksums"] == a["model"]["replica_checksums"]


@pytest.mark.slow
def test_pretraining_and_finished_runs_are_reused(study):
    out, first = study
    now = {label: rec["_dir"].joinpath("record.json").stat().st_mtime_ns for label, rec in _records(out).items()}
    assert now["pretrain-s0"] == first["pretrain-s0"]
    assert now["finetune-k3-s0"] == first["finetune-k3-s0"]
    assert "finetune-k0-s0" not in first


@pytest.mark.slow
def test_parallel_runs_each_have_their_own_cores(study):
    import os

    out, first = study
    recs = _records(out)
    new = [recs[label]["timing"]["cores"] for label in recs if label not in first]
    assert len(new) == 2  # finetune-k0 and finetune-head, run with --parallel 2
    assert all(len(c) == len(os.sched_getaffinity(0)) // 2 for c in new)
    assert not set(new[0]) & set(new[1])
    assert all(len(recs[label]["timing"]["cores"]) == len(os.sched_getaffinity(0)) for label in first)


@pytest.mark.slow
def test_frozen_encoder_equals_pretrained_weights_after_finetuning(study):
    out, _ = study
    recs = _records(out)
    frozen = ("enc1", "enc2", "bottleneck")
    pre = _level_weights(recs["pretrain-s0"]["_dir"], frozen)
    tuned = _level_weights(recs["finetune-k3-s0"]["_dir"], frozen)
    assert pre.keys() == tuned.keys() and len(pre) >= 6
    for name in pre:
        np.testing.assert_array_equal(pre[name], tuned[name], err_msg=name)
    dec_pre = _level_weights(recs["pretrain-s0"]["_dir"], ("dec1", "head"))
    dec_tuned = _level_weights(recs["finetune-k3-s0"]["_dir"], ("dec1", "head"))
    assert any(not np.array_equal(dec_pre[n], dec_tuned[n]) for n in dec_pre)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--source", "t1,t2", "--target", "t2,t1"], "are the same modalities"),
        (["--target", "t1,t5"], "unknown modality 't5'"),
        (["--freeze-depths", "0,9"], "freeze depth 9 is beyond the model"),
        (["--parallel", "0"], "--parallel 0 must be at least 1"),
        (["--parallel", "999"], "--parallel 999 with --np 1 needs 999 cores"),
        (["--pretrain-budget-s", "0"], "--pretrain-budget-s 0.0 must be a positive number"),
    ],
)
def test_transfer_bad_input_before_any_work(small_store, tmp_path, cli, extra, needle):
    out = tmp_path / "study"
    code, _, err = cli("transfer", "--store", str(small_store["store"]), "--split", str(small_store["split"]),
                       *MODEL, *extra, "--out", str(out))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_pretrained_checkpoint_with_other_architecture_is_refused(study, small_store, tmp_path, cli):
    out, _ = study
    pre = _records(out)["pretrain-s0"]["_dir"] / "checkpoints"
    code, _, err = cli("train", "--store", str(small_store["store"]), "--split", str(small_store["split"]),
                       "--crop", "16", "16", "16", "--base-filters", "8", "--depth", "2", "--modalities", "t1,t2",
                       "--init-from", str(pre), "--out", str(tmp_path / "r"))
    assert code == 2 and "does not match the model: base_filters 4 != 8" in err
    assert not (tmp_path / "r" / "record.json").exists()
