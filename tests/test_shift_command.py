"""`bratsbench shift` end to end on generated cases: real shift detected, the same-domain control not."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_shift_patches_and_learned_features(small_store, store_run, tmp_path, cli):
    out = tmp_path / "shift"
    code, stdout, err = cli("shift", "--store", str(small_store["store"]), "--split", str(small_store["split"]),
                            "--per-case", "60", "--permutations", "100", "--run", str(store_run), "--out", str(out))
    assert code == 0, err
    rows = {(r["features"], r["pair"]): r for r in json.loads((out / "shift.json").read_text())["rows"]}
    pair = rows[("patch3", "flair+t1ce vs t1+t2")]
    control = rows[("patch3", "control: flair+t1ce halves")]
    assert pair["p_value"] < 0.01 and pair["mmd2"] > 0
    assert control["mmd2"] < pair["mmd2"]
    assert pair["mmd2_ci_low"] <= pair["mmd2"] <= pair["mmd2_ci_high"]  # the bootstrap CI beside the p-value
    assert control["mmd2_ci_high"] < pair["mmd2_ci_low"]  # the shift is larger than the control's, beyond noise
    for s in ("flair", "t1ce"):
        for t in ("t1", "t2"):
            assert ("patch3", f"{s} vs {t}") in rows
    assert ("bottleneck", "flair+t1ce vs t1+t2") in rows
    assert rows[("bottleneck", "flair+t1ce vs t1+t2")]["dim"] == 16  # bottleneck filters: base 4 x 2^depth 2
    for name in ("patch3-pca.png", "patch3-tsne.png", "bottleneck-pca.png", "bottleneck-tsne.png", "shift.md", "shift.csv"):
        assert (out / name).stat().st_size > 1000 or name.endswith((".md", ".csv"))
    assert (out / "patch3-pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MMD" in (out / "shift.md").read_text()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--source", "t1,t2", "--target", "t2,t1"], "are the same modalities"),
        (["--source", "flair,t9"], "unknown modality 't9'"),
        (["--patch", "4"], "--patch 4 must be a positive odd number"),
    ],
)
def test_shift_bad_input(small_store, tmp_path, cli, args, needle):
    code, _, err = cli("shift", "--store", str(small_store["store"]), "--split", str(small_store["split"]), *args,
                       "--out", str(tmp_path / "s"))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s" / "shift.json").exists()
