"""One exception type for bad user input, and one line for the system errors the CLI reports.

Light code imports this module, so it must not import TensorFlow: TensorFlow's errors are recognised by
their class's module and their message instead.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """Bad input from the user (file, flag or value). The CLI prints `bratsbench: error: <msg>` and exits 2.

    The message must be one line and name the offending file or value and what is wrong with it.
    """


# The exit status of a run stopped by a signal (the scheduler's warning before its time limit or a preemption,
# SIGUSR1/SIGTERM by default) after it wrote a checkpoint at the step all ranks agreed on: 75 is sysexits.h's
# EX_TEMPFAIL, "try again later", and none of 0 (ok), 1 (failed), 2 (bad input) or 130 (Ctrl-C).
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """A run stopped on a signal with a checkpoint at `info["step"]` (None in benchmark mode, which keeps none).

    The CLI prints one line and exits EXIT_PREEMPTED; `--resume` (or the sweep runner) continues from it."""

    def __init__(self, info: dict):
        self.info = info
        where = f"checkpoint at step {info['step']}" if info.get("checkpoint") else f"at step {info['step']}, no checkpoint (benchmark)"
        super().__init__(f"preempted by SIG{info.get('signal') or '?'} ({where})")


def print_error(message: str) -> None:
    """The CLI's one error line on stderr (also for a command that fails without raising)."""
    print(f"bratsbench: error: {message}", file=sys.stderr)


# errors whose cause is space: the free space left is then part of the message
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# what TensorFlow's file-system layer says when it wraps an OS error (it keeps strerror's text, not errno)
_TF_STRERRORS = {os.strerror(code): code for code in
                 (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT, errno.EIO, errno.EFBIG)}
# an absolute path after a space or at the start ("...device_/job:localhost/..." inside a word is not one)
_PATH_IN_TEXT = re.compile(r"(?:^|\s)(/[^\s;'\"]+?)[;:,]?(?=\s|$)")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes free on the file system holding `path` (or its nearest existing parent); None if unmeasurable."""
    p = Path(os.path.abspath(path))
    for candidate in (p, *p.parents):
        try:
            if candidate.exists():
                return shutil.disk_usage(candidate).free
        except OSError:
            return None
    return None


def is_tf_error(exc: BaseException) -> bool:
    """A tf.errors.OpError (ResourceExhaustedError, UnknownError, ...), recognised without importing TensorFlow."""
    return any(k.__module__.startswith("tensorflow") and k.__name__ == "OpError" for k in type(exc).__mro__)


def as_os_error(exc: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """`exc` as an OSError naming a file: an OSError itself, or a TensorFlow error wrapping one; else None.

    A failed write() or close() raises an OSError without a file name, so writers pass the `path` they were
    writing; for TensorFlow errors the path is taken from the message when not given.
    """
    if isinstance(exc, OSError):
        if exc.filename is not None or path is None:
            return exc
        return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))
    if not is_tf_error(exc):
        return None
    message = str(getattr(exc, "message", None) or exc)
    for text, code in _TF_STRERRORS.items():
        if text.lower() in message.lower():
            if path is None:
                before = message[: message.lower().index(text.lower())]
                found = _PATH_IN_TEXT.findall(before) or _PATH_IN_TEXT.findall(message)
                path = found[-1] if found else None  # the path nearest before the strerror
            return OSError(code, text, None if path is None else os.fspath(path))
    return None


def one_line(text: str, limit: int = 600) -> str:
    """`text` as one line (a record's `error`, a summary line): whitespace runs and line breaks become one space, and
    a very long message is cut (TensorFlow and Gloo errors can carry pages of context)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def os_error_line(exc: BaseException) -> str | None:
    """One line for an OS error (or a TensorFlow error wrapping one): `<path>: <strerror> (<free> left)`.

    The free space is given for out-of-space errors only (where it is the point), and left out when it cannot
    be measured. None when `exc` is not an OS error.
    """
    err = as_os_error(exc)
    if err is None:
        return None
    text = err.strerror or str(err) or type(err).__name__
    if err.filename is not None:
        where = os.fsdecode(err.filename)
        if err.filename2 is not None:  # rename, link: both ends
            where += f" -> {os.fsdecode(err.filename2)}"
        text = f"{where}: {text}"
    if err.errno in _SPACE_ERRNOS and err.filename is not None:
        free = free_space(err.filename)
        if free is not None:
            text += f" ({human_bytes(free)} left)"
    return " ".join(text.split())  # one line, whatever the message held


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError raised without a file name (a failed write or close) as one naming `path`."""
    try:
        yield
    except OSError as exc:
        named = as_os_error(exc, path)
        if named is exc:
            raise
        raise named from exc
