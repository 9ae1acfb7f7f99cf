"""Entry point of the `bratsbench` console script."""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import sys
from typing import Sequence

from harness import __version__
from harness.commands import COMMANDS
from harness.errors import EXIT_PREEMPTED, Preempted, UserError, os_error_line, print_error
from harness.native_log import filter_native_stderr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bratsbench",
        description="Distributed 3D U-Net benchmarking harness for BraTS brain-tumour segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"bratsbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"harness.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet must not break the others
            if exc.name == f"harness.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure the user can act on ends as one `bratsbench: error: ...` line.

    Exit 2: bad input (UserError, raised before or during the work). Exit 1: the system refused an operation
    mid-work (an OSError, or a TensorFlow error wrapping one: disk full, permission denied), printed as
    `<path>: <strerror> (<free space> left)`; the input was fine and the same command can succeed once the
    cause is fixed, which is what 1 ("the run failed", as in the run record's exit_code) says. 130: Ctrl-C.
    75 (EXIT_PREEMPTED): `train` stopped on a stop signal (SIGUSR1/SIGTERM) with a checkpoint; `--resume` continues.
    Anything else is a bug and keeps its traceback.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of user output
    if argv is None:  # a real process (not a call from Python, whose stderr may be captured): its CUDA-probe noise
        filter_native_stderr()
    # a native crash (TensorFlow's profiler has segfaulted a worker, tensorboard#3149) then leaves every thread's
    # Python stack in the rank's log instead of nothing; the exit status is still the signal's
    try:
        faulthandler.enable()
    except (AttributeError, OSError, RuntimeError, ValueError):  # stderr is not a file (called from Python)
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("bratsbench: interrupted", file=sys.stderr)
        return 130
    except Preempted as exc:
        print(f"bratsbench: {exc}; run again with --resume to continue", file=sys.stderr)
        return EXIT_PREEMPTED
    except Exception as exc:  # noqa: BLE001 - only OS errors are reported here; the rest re-raise
        line = os_error_line(exc)
        if line is None:
            raise
        print_error(line)
        return 1


if __name__ == "__main__":
    sys.exit(main())
