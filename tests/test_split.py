"""Patient-level split: disjoint, seeded, modality-independent, stratified by grade, checked fractions."""

from __future__ import annotations

import json
import logging

import pytest

from harness.cli import main
from harness.data.split import load_split, make_split, split_store
from harness.data.store import open_store, prepare_store
from harness.errors import UserError
from tests.test_loader import training_set, write_case

IDS = [f"BraTS20_Training_{i:03d}" for i in range(1, 41)]
GRADES = {cid: ("LGG" if i % 5 == 0 else "HGG") for i, cid in enumerate(IDS)}  # 8 LGG, 32 HGG


def test_no_patient_in_two_subsets_and_all_used():
    split = make_split(IDS, seed=0, val=0.2, test=0.15)
    sets = [set(split.train), set(split.val), set(split.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(IDS)
    assert (len(split.train), len(split.val), len(split.test)) == (26, 8, 6)


def test_deterministic_per_seed_and_independent_of_input_order():
    a = make_split(IDS, seed=7, val=0.2, test=0.2)
    b = make_split(list(reversed(IDS)), seed=7, val=0.2, test=0.2)
    c = make_split(IDS, seed=8, val=0.2, test=0.2)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert (a.val, a.test) != (c.val, c.test)


def test_stratification_keeps_lgg_in_every_subset():
    for seed in range(5):
        split = make_split(IDS, seed=seed, val=0.15, test=0.15, grades=GRADES, stratify="grade")
        for subset in (split.train, split.val, split.test):
            assert any(GRADES[c] == "LGG" for c in subset)
        n_lgg = [sum(GRADES[c] == "LGG" for c in s) for s in (split.train, split.val, split.test)]
        assert n_lgg == [6, 1, 1] and len(split.val) == len(split.test) == 6


def test_missing_grades_fall_back_with_a_warning(caplog):
    grades = {cid: g for cid, g in GRADES.items() if cid != IDS[3]}
    with caplog.at_level(logging.WARNING, logger="harness.data.split"):
        split = make_split(IDS, seed=0, val=0.2, test=0.2, grades=grades, stratify="grade")
    assert any("no grade" in r.message for r in caplog.records)
    assert len(split.train) + len(split.val) + len(split.test) == len(IDS)


@pytest.mark.parametrize(
    "val,test,n",
    [(-0.1, 0.2, 10), (1.0, 0.0, 10), (0.5, 0.5, 10), (0.6, 0.5, 10), (float("nan"), 0.1, 10), (0.3, 0.3, 2), (0.1, 0.1, 1)],
)
def test_bad_fractions_are_user_errors(val, test, n):
    with pytest.raises(UserError) as info:
        make_split(IDS[:n], seed=0, val=val, test=test)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("split") / "raw"
    training_set(root / "MICCAI_BraTS2020_TrainingData", 10)
    write_case(root / "MICCAI_BraTS2020_ValidationData", "BraTS20_Validation_001", seg=False)
    lines = ["Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID"]
    lines += [f"{'LGG' if i > 7 else 'HGG'},x,x,x,x,BraTS20_Training_{i:03d}" for i in range(1, 11)]
    (root / "MICCAI_BraTS2020_TrainingData" / "name_mapping.csv").write_text("\n".join(lines) + "\n")
    return root


def test_same_split_regardless_of_modality_choice(data_root, tmp_path):
    prepare_store(data_root, tmp_path / "a", roi=(8, 8, 8), modalities=("flair", "t1ce"), workers=1, progress=False)
    prepare_store(data_root, tmp_path / "b", roi=(12, 12, 12), modalities=("t1", "t2"), workers=1, progress=False)
    sa, sb = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    a = split_store(sa, seed=3, val=0.2, test=0.2, stratify="grade")
    b = split_store(sb, seed=3, val=0.2, test=0.2, stratify="grade")
    assert a.to_json() == b.to_json()
    assert "BraTS20_Validation_001" not in a.train + a.val + a.test  # unlabelled cases never enter a split
    assert all(any(sa.entry(c)["grade"] == "LGG" for c in s) for s in (a.train, a.val, a.test))


def test_cli_split_writes_file_and_load_split_checks_ids(data_root, tmp_path, capsys):
    prepare_store(data_root, tmp_path / "s", roi=(8, 8, 8), workers=1, progress=False)
    assert main(["split", "--store", str(tmp_path / "s"), "--seed", "4", "--val", "0.2", "--test", "0.1", "--stratify", "grade"]) == 0
    path = tmp_path / "s" / "split-seed4.json"
    raw = json.loads(path.read_text())
    assert raw["version"] == 1 and raw["seed"] == 4 and raw["stratify"] == "grade"
    assert raw["fractions"] == {"val": 0.2, "test": 0.1} and (len(raw["train"]), len(raw["val"]), len(raw["test"])) == (7, 2, 1)
    assert str(path) in capsys.readouterr().out
    store = open_store(tmp_path / "s")
    split = load_split(path, store)
    assert split.train == raw["train"] and split.store_manifest_hash == raw["store_manifest_hash"]
    raw["test"].append("BraTS20_Training_999")
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="BraTS20_Training_999"):
        load_split(path, store)
    raw["test"] = raw["train"][:1]
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="both train and test"):
        load_split(path)
    assert main(["split", "--store", str(tmp_path / "s"), "--val", "0.7", "--test", "0.3"]) == 2
    assert "--val 0.7" in capsys.readouterr().err
