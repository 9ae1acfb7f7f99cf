"""Output folders are checked before any work, so a bad --out costs one line, not a run that fails at the end."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import UserError


def ensure_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the folder `path` (and its parents) and check that a file can be written in it.

    Safe to call from every rank at once (exist_ok; each probe file has its own name). Raises UserError
    `<what> <path>: cannot create folder: <why>` or `<what> <path>: cannot write in folder: <why>`.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # exist_ok covers folders only
        raise UserError(f"{what} {folder}: cannot create folder: a file of that name exists") from None
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot create folder: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".bratsbench-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot write in folder: {exc.strerror or exc}") from None
    return folder
