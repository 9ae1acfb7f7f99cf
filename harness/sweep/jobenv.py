"""How an emitted job file finds bratsbench on a compute node: the site's set-up lines, then an environment.

Nothing in a job file names an interpreter: after `--setup FILE` (module load, exports, ...) it activates an
environment and runs the `bratsbench` (and, for a packed job, the `python`) found on PATH there, and stops with
one line when there is none. The environment is `--env NAME_OR_PATH` (a virtual environment's folder, a conda
environment's folder, or a conda environment's name), or else the one `bratsbench sweep emit` ran in.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

_CONDA_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_CONDA_HOOK = ('command -v conda >/dev/null 2>&1 || { echo "bratsbench: error: no conda command after the set-up '
               '(load it in --setup, e.g. module load anaconda)" >&2; exit 2; }\n'
               'eval "$(conda shell.bash hook)"\n')


@dataclass(frozen=True)
class JobEnv:
    """Shell lines that activate the environment, and what the job file's comment and error line call it."""

    lines: str
    described: str


def read_setup(path: str | Path | None) -> str:
    """The set-up file's lines, to run in the job before the environment is activated; "" for none."""
    if path is None:
        return ""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"--setup {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--setup {path}: is a folder, not a file of shell lines") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--setup {path}: cannot be read as text ({exc})") from None
    if "\0" in text:
        raise UserError(f"--setup {path}: holds NUL bytes, not shell lines")
    return text if text.endswith("\n") or not text else text + "\n"


def _from_folder(folder: Path, given: str) -> JobEnv:
    q = shlex.quote(str(folder))
    if (folder / "conda-meta").is_dir():
        return JobEnv(_CONDA_HOOK + f"conda activate {q}\n", f"the conda environment {folder}")
    if (folder / "bin" / "activate").is_file():
        return JobEnv(f"source {shlex.quote(str(folder / 'bin' / 'activate'))}\n", f"the virtual environment {folder}")
    raise UserError(f"--env {given}: '{folder}' is neither a virtual environment (bin/activate) nor a conda "
                    "environment (conda-meta/)")


def job_env(given: str | None) -> JobEnv:
    """The activation of `--env` (a folder: a venv or a conda environment; else a conda environment's name) or,
    without it, of the environment this process runs in."""
    if given is not None:
        text = given.strip()
        if not text:
            raise UserError("--env '': name a conda environment or give a virtual/conda environment's folder")
        if "/" in text or text.startswith(("~", ".")):
            folder = Path(text).expanduser().resolve()
            if not folder.is_dir():
                raise UserError(f"--env {given}: no such folder")
            return _from_folder(folder, given)
        if not _CONDA_NAME.match(text):
            raise UserError(f"--env {given!r}: a conda environment's name has only letters, digits and _ . + -")
        return JobEnv(_CONDA_HOOK + f"conda activate {shlex.quote(text)}\n", f"the conda environment {text}")
    prefix = Path(sys.prefix)
    if (prefix / "conda-meta").is_dir() or ((prefix / "bin" / "activate").is_file() and sys.prefix != sys.base_prefix):
        found = _from_folder(prefix, str(prefix))
        return JobEnv(found.lines, f"{found.described}, which ran `bratsbench sweep emit` (--env names another)")
    exe = shutil.which("bratsbench") or str(Path(sys.executable).parent / "bratsbench")
    folder = Path(exe).resolve().parent
    return JobEnv(f'export PATH={shlex.quote(str(folder))}:"$PATH"\n',
                  f"{folder} on PATH, where `bratsbench sweep emit` found bratsbench (--env names an environment)")
