"""The set-up files agree with each other: one exact pin list per stack, one console script with --help everywhere."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO


STACKS = {(3, 11): "py311-py312.txt", (3, 12): "py311-py312.txt", (3, 13): "py313.txt"}


def _pins(lines):
    return sorted(l.strip() for l in lines if l.strip() and not l.strip().startswith("#"))


def _stack_file(name):
    return _pins((REPO / "requirements" / name).read_text().splitlines())


def _pin_map(pins):
    """name -> version for the pins that apply to this interpreter (a `; python_version < "3.12"` line may not)."""
    from packaging.requirements import Requirement

    out = {}
    for line in pins:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            out[req.name.lower().replace("_", "-")] = spec.version
    return out


def test_environment_yml_pip_section_equals_the_py312_stack():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == _stack_file("py311-py312.txt")
    assert "python=3.12" in env["dependencies"] and "openmpi" in env["dependencies"]
    assert not (REPO / "requirements.txt").exists()  # one home for each pin list: requirements/


def test_every_stack_file_pins_the_key_packages_exactly():
    expect = {"py311-py312.txt": ("2.18.1", "2.18.0", "2.0.2"), "py313.txt": ("2.21.0", "2.21.0", None)}
    for name, (tf, tf_keras, numpy) in expect.items():
        pins = _stack_file(name)
        assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+( ; python_version .+)?", p) for p in pins), name
        versions = _pin_map(p.split(" ; ")[0] for p in pins)  # every pin, whatever its marker
        assert versions["tensorflow"] == tf and versions["tf-keras"] == tf_keras, name
        assert "mpi4py" in versions and "numpy" in versions and (numpy is None or versions["numpy"] == numpy), name
        # tf-keras requires `tensorflow`; with tensorflow-cpu as well both would own the same tensorflow/ tree
        assert "tensorflow-cpu" not in versions, name
        assert "horovod" not in versions and "bratsbench" not in versions, name


def test_installed_versions_match_this_pythons_stack():
    from importlib.metadata import version

    name = STACKS.get(sys.version_info[:2])
    if name is None:
        pytest.skip(f"no stack for Python {sys.version_info[:2]}")
    pins = _pin_map(_stack_file(name))
    for dist in ("tensorflow", "tf-keras", "numpy", "nibabel", "tensorboard-plugin-profile", "protobuf", "mpi4py"):
        assert version(dist) == pins[dist], dist


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
    from harness.cli import build_parser

    from pathlib import Path

    help_text = subprocess.run([str(Path(sys.executable).parent / "horovodrun"), "--help"], capture_output=True, text=True).stdout
    theirs = set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text))
    assert "--timeline-filename" in theirs
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    ours = {opt for action in sub.choices["train"]._actions for opt in action.option_strings if opt.startswith("--")}
    for opt in ours:
        matches = [t for t in theirs if t.startswith(opt)]
        assert opt in matches or len(matches) <= 1, f"{opt} is ambiguous for horovodrun: {matches}"
