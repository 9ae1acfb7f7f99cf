"""Shared helpers: run the CLI in-process or as real processes (plain, or under horovodrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def horovodrun_cmd(np: int, *cmd: str) -> list[str]:
    return [str(BIN / "horovodrun"), "-np", str(np), "-H", f"localhost:{np}", "--gloo", *cmd]


def run(cmd: list[str], timeout: int = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=proc_env(), capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def cli(capsys):
    """Run `bratsbench ARGS` in-process; returns (exit code, stdout, stderr)."""
    from harness.cli import main

    def _run(*args: str):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run
