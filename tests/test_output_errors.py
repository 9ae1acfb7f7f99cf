"""Every command that writes refuses an output folder it cannot create or write in: one line, exit 2, no work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_loader import training_set

BAD = "/proc/x/y"  # /proc takes no new folders, whoever runs the tests (root included)
SPEC = str(REPO / "examples" / "sweep-demo.yaml")
TINY = ["--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--epochs", "1", "--steps-per-epoch", "1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Real inputs, so a command that reads them first still reaches its output check: raw cases, store, split,
    a results folder with one record."""
    from harness.cli import main

    root = tmp_path_factory.mktemp("inputs")
    training_set(root / "raw" / "MICCAI_BraTS2020_TrainingData", 4)
    store = root / "store"
    assert main(["prepare", "--data", str(root / "raw"), "--out", str(store), "--roi", "16", "16", "16", "--workers", "1"]) == 0
    assert main(["split", "--store", str(store), "--val", "0.25", "--test", "0.25"]) == 0
    (root / "results" / "run").mkdir(parents=True)
    (root / "results" / "run" / "record.json").write_text(json.dumps({"schema_version": 1, "config": {}}))
    return {"raw": str(root / "raw"), "store": str(store), "split": str(store / "split-seed0.json"),
            "results": str(root / "results"), "file": str(root / "results" / "run" / "record.json")}


# command line with {raw}, {store}, {split}, {results}; the output flag gets OUT
WRITERS = {
    "synth": ["synth", "--cases", "1", "--shape", "16", "16", "16", "--out", "OUT"],
    "prepare": ["prepare", "--data", "{raw}", "--roi", "16", "16", "16", "--workers", "1", "--out", "OUT"],
    "split": ["split", "--store", "{store}", "--out", "OUT/split.json"],
    "train": ["train", "--synthetic", *TINY, "--out", "OUT"],
    "sweep run": ["sweep", "run", SPEC, "--out", "OUT"],
    "sweep emit": ["sweep", "emit", SPEC, "--scheduler", "slurm", "--out", "OUT"],
    "analyze": ["analyze", "{results}", "--out", "OUT"],
    "transfer": ["transfer", "--store", "{store}", "--split", "{split}", *TINY, "--out", "OUT"],
    "shift": ["shift", "--store", "{store}", "--split", "{split}", "--out", "OUT"],
    "predict": ["predict", "--run", "{results}/run", "--data", "{raw}", "--out", "OUT"],
    "demo": ["demo", "--out", "OUT"],
    # evaluate writes into --run, which must already hold a record: that is what it reports
    "evaluate": ["evaluate", "--run", "OUT"],
}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bratsbench: error: ")
    return lines[0]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_uncreatable_output_folder_is_one_line_exit_2(name, inputs, cli, tmp_path):
    argv = [a.replace("OUT", BAD).format(**inputs) for a in WRITERS[name]]
    code, out, err = cli(*argv)
    line = _one_error_line(err)
    assert code == 2 and BAD in line, line
    if name == "evaluate":
        assert "has no record.json" in line
    else:
        assert line.endswith(": cannot create folder: No such file or directory"), line
        assert out == ""  # nothing started


@pytest.mark.parametrize("out, needle", [
    ("{file}", "cannot create folder: a file of that name exists"),
    ("/proc", "cannot write in folder: No such file or directory"),  # exists, takes no files
])
def test_output_that_is_a_file_or_unwritable_folder(out, needle, inputs, cli):
    out = out.format(**inputs)
    code, _, err = cli("train", "--synthetic", *TINY, "--out", out)
    assert code == 2 and _one_error_line(err) == f"bratsbench: error: --out {out}: {needle}"
    assert Path(inputs["file"]).is_file()
