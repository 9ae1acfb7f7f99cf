"""Sweep specs and plans: stable run IDs, the axes crossed as documented, bad specs refused in one line."""

from __future__ import annotations

import json

import pytest
import yaml

from harness.errors import UserError
from harness.sweep.plan import plan
from harness.sweep.spec import load_spec, parse_spec, spec_from_dict

BASE = {
    "name": "t",
    "axes": {"np": [1, 2], "batch_size": [2, 4], "freeze_depth": [0, 2], "mode": ["transfer", "scratch"], "seed": [0]},
    "fixed": {
        "model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
        "data": {"synthetic": True, "crop": [16, 16, 16]},
        "train": {"epochs": 1, "benchmark": True, "bench_warmup": 2, "bench_steps": 3},
    },
    "transfer": {"source": ["flair", "t1ce"], "epochs": 2},
}


def spec_of(**changes):
    raw = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        if value is _DROP:
            node.pop(key, None)
        else:
            node[key] = value
    return parse_spec(raw, origin="spec.yaml")


_DROP = object()


def ids(spec) -> list[str]:
    return [r.run_id for r in plan(spec)]


def test_plan_crosses_axes_with_pretrain_first_and_scratch_deduplicated():
    runs = plan(spec_of())
    pre = [r for r in runs if r.kind == "pretrain"]
    assert len(pre) == 1 and runs[0] is pre[0]
    assert pre[0].config.model.modalities == ("flair", "t1ce")
    assert pre[0].config.train.benchmark is False and pre[0].config.train.epochs == 2
    transfer = [r for r in runs if r.mode == "transfer"]
    scratch = [r for r in runs if r.mode == "scratch"]
    assert len(transfer) == 2 * 2 * 2  # np x batch x freeze depth
    assert len(scratch) == 2 * 2  # freeze depth ignored for scratch, duplicates dropped
    assert {r.freeze_depth for r in scratch} == {0}
    assert all(r.depends_on == [pre[0].run_id] for r in transfer)
    assert all(not r.depends_on for r in scratch)
    assert len({r.run_id for r in runs}) == len(runs) and len({r.label for r in runs}) == len(runs)
    labels = {r.label for r in runs}
    assert "np2-b4-k2-transfer-s0" in labels and "np1-b2-k0-scratch-s0" in labels
    for r in transfer:
        assert r.config.train.freeze_depth == r.freeze_depth
        assert r.config.model.modalities == ("t1", "t2")


def test_freeze_scratch_keeps_frozen_scratch_runs():
    runs = plan(spec_of(freeze_scratch=True))
    assert sorted(r.freeze_depth for r in runs if r.mode == "scratch") == [0, 0, 0, 0, 2, 2, 2, 2]


def test_ids_stable_across_calls_and_key_order(tmp_path):
    first = ids(spec_of())
    assert ids(spec_of()) == first
    # the same spec written with every mapping in reverse key order
    def reverse(node):
        return {k: reverse(v) for k, v in reversed(list(node.items()))} if isinstance(node, dict) else node

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(reverse(json.loads(json.dumps(BASE))), sort_keys=False))
    assert sorted(ids(load_spec(path))) == sorted(first)
    assert ids(spec_from_dict(spec_of().to_dict())) == first


def test_ids_change_with_config():
    base = plan(spec_of())
    other = plan(spec_of(**{"fixed.model.base_filters": 8}))
    assert not {r.run_id for r in base} & {r.run_id for r in other}
    # a different pre-training changes the transfer runs (their init) and itself, not the scratch runs
    longer = {r.label: r.run_id for r in plan(spec_of(**{"transfer.epochs": 3}))}
    for r in base:
        assert (longer[r.label] == r.run_id) is (r.mode == "scratch")
    # np is part of the identity: under weak scaling np1 and np2 have the same RunConfig but differ
    one, two = (next(r for r in base if r.label == f"np{n}-b2-k0-scratch-s0") for n in (1, 2))
    cfg1, cfg2 = one.config.to_dict(), two.config.to_dict()
    cfg1.pop("name"), cfg2.pop("name")
    assert cfg1 == cfg2 and one.run_id != two.run_id


def test_repeats_are_planned_round_by_round_with_their_own_ids():
    once = plan(spec_of())
    thrice = plan(spec_of(repeats=3))
    pre = [r for r in thrice if r.kind == "pretrain"]
    runs = [r for r in thrice if r.kind == "run"]
    assert len(pre) == 1 and len(runs) == 3 * (len(once) - 1)  # one pre-training shared by every repeat
    n = len(runs) // 3
    assert [r.repeat for r in runs] == [0] * n + [1] * n + [2] * n  # interleaved: every point once, then again
    assert [r.label for r in runs[:n]] == [r.label + "-r0" for r in once[1:]]
    assert len({r.run_id for r in thrice}) == len(thrice)
    assert [r.run_id for r in runs[:n]] == [r.run_id for r in once[1:]]  # repeat 0 keeps the one-run IDs
    assert runs[n].config.identity() == {**runs[0].config.identity(), "repeat": 1}
    assert spec_from_dict(spec_of(repeats=3).to_dict()).repeats == 3


def test_strong_scaling_splits_the_global_batch():
    runs = [r for r in plan(spec_of(scaling="strong", **{"axes.batch_size": [4]})) if r.kind == "run"]
    assert {(r.np, r.config.train.batch_size, r.global_batch) for r in runs} == {(1, 4, 4), (2, 2, 4)}
    assert all(r.config.train.lr_scaling is False for r in runs)
    weak = [r for r in plan(spec_of(**{"axes.batch_size": [4]})) if r.kind == "run"]
    assert {(r.np, r.config.train.batch_size, r.global_batch) for r in weak} == {(1, 4, 4), (2, 4, 8)}
    assert all(r.config.train.lr_scaling is True for r in weak)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"colour": "red"}, "unknown key 'colour' in top level"),
        ({"axes.lr": [1e-3]}, "unknown key 'lr' in axes"),
        ({"fixed.optim": {"lr": 1}}, "unknown key 'optim' in fixed"),
        ({"fixed.train.learning_rate": 1e-3}, "unknown key 'learning_rate' in fixed.train"),
        ({"fixed.model.filters": 8}, "unknown key 'filters' in fixed.model"),
        ({"transfer.modalities": ["t1"]}, "unknown key 'modalities' in transfer"),
        ({"axes.np": [0, 1]}, "axes.np value 0 must be >= 1"),
        ({"axes.freeze_depth": [0, 4]}, "freeze depth 4 is beyond the model"),
        ({"scaling": "strong", "axes.batch_size": [3]}, "batch_size 3 is not divisible by np 2"),
        ({"axes.mode": ["finetune"]}, "axes.mode value 'finetune' is not one of scratch, transfer"),
        ({"axes.seed": []}, "axes.seed is an empty list"),
        ({"transfer": _DROP}, "mode 'transfer' needs a 'transfer' section"),
        ({"fixed.train.init_from": "x"}, "fixed.train.init_from is set by the sweep"),
        ({"fixed.train.seed": 3}, "'seed' is both an axis and fixed.train.seed"),
        ({"fixed.data.crop": [18, 18, 18]}, "not divisible by 2^depth"),
        ({"fixed.model.base_filters": "eight"}, "wrong type"),
        ({"transfer.source": ["flair", "pd"]}, "unknown modality 'pd'"),
        ({"transfer.first_conv": "copy", "transfer.source": ["flair"]}, "first_conv copy needs as many source"),
        ({"scaling": "sideways"}, "scaling 'sideways' is not one of weak, strong"),
        ({"name": "a b"}, "name 'a b' must be"),
        ({"timeout_s": 0}, "timeout_s 0 must be a positive number"),
        ({"repeats": 0}, "repeats 0 must be an integer >= 1"),
        ({"repeats": "3"}, "repeats '3' must be an integer >= 1"),
        ({"repeats": True}, "repeats True must be an integer >= 1"),
    ],
)
def test_bad_specs_are_refused_before_anything_runs(changes, fragment):
    with pytest.raises(UserError) as info:
        plan(spec_of(**changes))
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and message.startswith("spec.yaml")


def test_cli_plan_table_json_and_one_line_errors(tmp_path, cli):
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(BASE))
    code, out, _ = cli("sweep", "plan", str(path))
    runs = plan(load_spec(path))
    assert code == 0
    assert out.strip().splitlines()[-1].startswith(f"{len(runs)} runs (1 pre-training")
    for r in runs:
        assert r.run_id in out and r.label in out
    code, out, _ = cli("sweep", "plan", str(path), "--json")
    data = json.loads(out)
    assert code == 0 and data["count"] == len(runs)
    assert [r["run_id"] for r in data["runs"]] == [r.run_id for r in runs]
    assert data["runs"][1]["config"]["train"]["batch_size"] == runs[1].config.train.batch_size

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "axes": {"np": [1], "widgets": [2]}}))
    code, out, err = cli("sweep", "plan", str(bad))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "widgets" in err and str(bad) in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("axes: [np: 1\n")
    code, _, err = cli("sweep", "plan", str(broken))
    assert code == 2 and "not valid YAML" in err and err.strip().count("\n") == 0
    code, _, err = cli("sweep", "plan", str(tmp_path / "missing.yaml"))
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("name", ["sweep-demo.yaml", "sweep-engines.yaml"])
def test_example_specs_plan(name):
    from tests.conftest import REPO

    runs = plan(load_spec(REPO / "examples" / name))
    assert runs and len({r.run_id for r in runs}) == len(runs)
    if name == "sweep-engines.yaml":  # both engines at np 1 and 2, three interleaved rounds
        assert [(r.np, r.config.train.backend, r.repeat) for r in runs[:4]] == [
            (1, "horovod", 0), (1, "mwms", 0), (2, "horovod", 0), (2, "mwms", 0)]
        assert len(runs) == 12


def test_fields_added_later_keep_the_ids_of_earlier_versions():
    from harness.config import RunConfig

    cfg = RunConfig()
    ident = cfg.identity()
    assert "repeat" not in ident and "budget_s" not in ident["train"]  # at their defaults: not part of the ID
    cfg.train.budget_s = 60.0
    cfg.repeat = 2
    assert cfg.identity()["train"]["budget_s"] == 60.0 and cfg.identity()["repeat"] == 2
