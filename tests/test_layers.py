"""The package's layer order, read from its imports (ast): a module imports only from its own layer or below.

    base:     errors, outdir, modalities, config, record, rundir, metrics, inference, native_log, system, readiness
    data:     data/, checkpoint
    model:    model/, losses
    engines:  engines/ (horovod, mwms: nothing else names an engine)
    train:    train/
    launch:   launch
    studies:  transfer/, shift/, comm/
    sweep:    sweep/
    commands: commands/, cli, __main__
analysis/ reads only records: it may import the base layer of harness, nothing above it; nothing in harness
below commands imports analysis.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("base", {"errors", "outdir", "modalities", "config", "record", "rundir", "metrics", "inference", "native_log",
              "system", "readiness", "__init__"}),
    ("data", {"data", "checkpoint"}),
    ("model", {"model", "losses"}),
    ("engines", {"engines"}),
    ("train", {"train"}),
    ("launch", {"launch"}),
    ("studies", {"transfer", "shift", "comm"}),
    ("sweep", {"sweep"}),
    ("commands", {"commands", "cli", "__main__"}),
]
RANK = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str | None:
    """harness.train.step -> 'train'; harness.config -> 'config'; analysis.x -> 'analysis'."""
    bits = module.split(".")
    if bits[0] == "analysis":
        return "analysis"
    if bits[0] != "harness":
        return None
    return bits[1] if len(bits) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from harness import launch` names a module too
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "harness"]
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_harness_part_has_a_layer():
    parts = {p.relative_to(ROOT / "harness").parts[0].removesuffix(".py") for p in _modules("harness")}
    assert parts - set(RANK) == set(), "a new module needs a place in LAYERS"


@pytest.mark.parametrize("path", _modules("harness"), ids=lambda p: str(p.relative_to(ROOT)))
def test_harness_imports_only_downwards(path):
    me = _part("harness." + ".".join(path.relative_to(ROOT / "harness").with_suffix("").parts))
    wrong = []
    for line, module in _imports(path):
        other = _part(module)
        if other is None or other == me:
            continue
        if other == "analysis":
            if RANK[me] < RANK["commands"]:
                wrong.append(f"line {line}: {module} (analysis is read by commands only)")
        elif RANK.get(other, -1) > RANK[me]:
            wrong.append(f"line {line}: {module} ({LAYERS[RANK[other]][0]} is above {LAYERS[RANK[me]][0]})")
    assert not wrong, f"{path.relative_to(ROOT)} imports upwards: " + "; ".join(wrong)


@pytest.mark.parametrize("path", _modules("analysis"), ids=lambda p: str(p.relative_to(ROOT)))
def test_analysis_reads_only_records(path):
    base = LAYERS[0][1]
    wrong = [f"line {line}: {m}" for line, m in _imports(path) if _part(m) not in (None, "analysis", *base)]
    assert not wrong, f"{path.relative_to(ROOT)} imports harness above the base layer: " + "; ".join(wrong)


def test_demo_does_not_reparse_argv_and_checkpoint_builds_no_model():
    demo = ROOT / "harness" / "commands" / "demo.py"
    assert not any(m in ("harness.cli",) for _, m in _imports(demo)), "demo must call the library, not cli.main"
    ckpt = ROOT / "harness" / "checkpoint.py"
    assert not any(_part(m) == "model" for _, m in _imports(ckpt)), "checkpoint must not build models"


def test_trainer_functions_are_short():
    """build / epoch loop / finish: no function in harness/train/ grows past 60 lines again."""
    long = []
    for path in _modules("harness/train"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
