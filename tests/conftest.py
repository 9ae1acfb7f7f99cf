"""Shared helpers: run the CLI in-process or as real processes (plain, or under horovodrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness  # noqa: F401 - sets TF_USE_LEGACY_KERAS before any test module imports TensorFlow
from tests import parallel

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def proc_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def bratsbench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness", *args]


def launch_cmd(np: int, *cmd: str) -> list[str]:
    """`cmd` on np local ranks with this environment's default engine (Horovod where installed, else MWMS)."""
    from harness.launch import launch_command, launcher_for

    return launch_command(np, list(cmd), launcher_for(None, "horovodrun"))


def horovodrun_cmd(np: int, *cmd: str) -> list[str]:
    return [str(BIN / "horovodrun"), "-np", str(np), "-H", f"localhost:{np}", "--gloo", *cmd]


def run(cmd: list[str], timeout: int = 600, check: bool = True, env_extra: dict[str, str] | None = None,
        **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=proc_env(**(env_extra or {})), capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def shown_lines(stream: str) -> list[str]:
    """The non-blank lines a terminal would show: a progress bar that cleared itself (with \\r) is gone."""
    shown = (line.rsplit("\r", 1)[-1] for line in stream.split("\n"))
    return [line for line in shown if line.strip()]


def pytest_configure(config):
    config.addinivalue_line("markers", "horovod: needs Horovod (the Python 3.13 stack has none: `-m 'not horovod'`)")
    config.addinivalue_line("markers", "mwms: MultiWorkerMirroredStrategy tests (the only engine of the Python 3.13 stack)")
    config.addinivalue_line("markers", "stack: a slow test whose outcome depends on TensorFlow's version: the Python "
                            "3.13 stack runs it too (scripts/test-py313.sh)")
    config.addinivalue_line("markers", "alone: a test whose point is a timing: under pytest-xdist it runs with no other "
                            "test beside it (tests/parallel.py)")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the order
def pytest_collection_modifyitems(config, items):
    """Heavy modules first (tests/parallel.py). Where Horovod is not installed, a Horovod test that was not
    deselected would error deep inside horovodrun: it is skipped with the reason printed (the 3.13 run deselects them
    with -m)."""
    from harness.engines import unavailable

    parallel.heavy_first(items)
    problem = unavailable("horovod")
    if problem:
        for item in items:
            if "horovod" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=problem))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (make test): modules as units, the SLURM ones as one, heavy first (tests/parallel.py)."""
    return parallel.make_scheduler(config, log) if config.getvalue("dist") == "loadfile" else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown (module fixtures included) inside the run's CPU lock: `alone` tests run alone."""
    with parallel.cpu_turn(item.config, alone="alone" in item.keywords):
        return (yield)


def final_weights(run_dir: Path) -> dict:
    """The model weights of a run's latest checkpoint, by checkpoint name (to compare two runs exactly)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(Path(run_dir) / "checkpoints"))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
    return {n: reader.get_tensor(n) for n in names}


@pytest.fixture
def cli(capsys):
    """Run `bratsbench ARGS` in-process; returns (exit code, stdout, stderr)."""
    from harness.cli import main

    def _run(*args: str):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    """Generated BraTS cases (reduced size), prepared and split once for the whole session.

    Returns a dict with raw, store and split paths. 10 cases at 64x64x40 voxels (3.75 mm), roi 48x48x40.
    """
    from harness.cli import main

    root = tmp_path_factory.mktemp("small-store")
    raw, store = root / "raw", root / "store"
    assert main(["synth", "--out", str(raw), "--cases", "10", "--seed", "3", "--shape", "64", "64", "40"]) == 0
    assert main(["prepare", "--data", str(raw), "--out", str(store), "--roi", "48", "48", "40", "--workers", "2"]) == 0
    assert main(["split", "--store", str(store), "--seed", "0", "--val", "0.2", "--test", "0.2"]) == 0
    return {"raw": raw, "store": store, "split": store / "split-seed0.json"}


@pytest.fixture(scope="session")
def store_run(small_store, tmp_path_factory):
    """A short 2-rank run on `small_store` with flair,t1ce (shared by several test modules)."""
    out = tmp_path_factory.mktemp("store-run") / "run"
    run(launch_cmd(2, *bratsbench_cmd(
        "train", "--store", str(small_store["store"]), "--split", str(small_store["split"]),
        "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--batch-size", "1",
        "--modalities", "flair,t1ce", "--epochs", "2", "--steps-per-epoch", "3", "--out", str(out))))
    return out
