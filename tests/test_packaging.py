"""The set-up files agree with each other: one set of pins, one console script with --help everywhere."""

from __future__ import annotations

import pytest

import subprocess
import sys

import yaml

from tests.conftest import REPO


def _pins(lines):
    return sorted(l.strip() for l in lines if l.strip() and not l.strip().startswith("#"))


def test_environment_yml_pip_section_equals_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    reqs = _pins((REPO / "requirements.txt").read_text().splitlines())
    assert _pins(pip_section) == reqs
    assert "python=3.11" in env["dependencies"] and "openmpi" in env["dependencies"]
    assert all("==" in pin for pin in reqs)


def test_installed_versions_match_pins():
    from importlib.metadata import version

    pins = dict(p.split("==") for p in _pins((REPO / "requirements.txt").read_text().splitlines()))
    for name in ("tensorflow-cpu", "numpy", "nibabel", "tensorboard_plugin_profile", "protobuf"):
        assert version(name) == pins[name], name


def test_every_subcommand_has_help():
    from harness.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "train" in sub.choices
    for name, sp in sub.choices.items():
        text = sp.format_help()
        assert "usage: bratsbench " + name in text and len(text) > 200, name


def test_console_script_help_runs_without_tensorflow_import():
    code = "import sys; from harness.cli import main; \ntry:\n main(['--help'])\nexcept SystemExit: pass\nprint('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.horovod
def test_train_flags_pass_through_horovodrun():
    """horovodrun's argparse rejects an ambiguous abbreviation of its own options even after the command."""
    import re

    from harness.cli import build_parser

    help_text = subprocess.run([str(REPO / ".venv" / "bin" / "horovodrun"), "--help"], capture_output=True, text=True).stdout
    theirs = set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text))
    assert "--timeline-filename" in theirs
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    ours = {opt for action in sub.choices["train"]._actions for opt in action.option_strings if opt.startswith("--")}
    for opt in ours:
        matches = [t for t in theirs if t.startswith(opt)]
        assert opt in matches or len(matches) <= 1, f"{opt} is ambiguous for horovodrun: {matches}"
