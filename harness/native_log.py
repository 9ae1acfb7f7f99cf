"""Native start-up noise kept out of the terminal and the rank logs, without hiding real errors.

The `tensorflow` wheel probes for CUDA whenever it is imported: on a machine without an NVIDIA driver its C++
prints "Unable to register cuFFT/cuDNN/cuBLAS factory" and "failed call to cuInit" straight to file descriptor 2,
before Python could filter anything, and xprof prints a "serving tool" line per profile tool it converts.
Newcomers read them as errors. `TF_CPP_MIN_LOG_LEVEL=3` would hide them, and every real error with them.
TensorFlow 2.21 also writes its start-up INFO lines ("oneDNN custom operations are on", "Could not find cuda
drivers") in absl's format before absl is initialised, where `TF_CPP_MIN_LOG_LEVEL` does not reach them: the filter
drops absl-format lines below that level, as TensorFlow 2.18 itself does.

So descriptor 2, where native code writes, becomes a pipe read by a small filter process that forwards every
line but the known ones; Python's own `sys.stderr` keeps the real descriptor (a terminal stays a terminal for
progress bars). A process rather than a thread: when the process dies (a CHECK failure, an abort, a signal), the
last lines it wrote are still in the pipe, and the filter forwards them after it is gone.
`BRATSBENCH_NATIVE_LOGS=all` turns the filter off.
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
from pathlib import Path

ENV = "BRATSBENCH_NATIVE_LOGS"  # "all": no filter
# one line each, matched anywhere in the line (TensorFlow prefixes them with a timestamp or an absl header)
ALWAYS = (
    r"Unable to register cu(?:FFT|DNN|BLAS) factory: Attempting to register factory for plugin cu\w+ when one has "
    r"already been registered",
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"xplane_to_tools_data\.cc:\d+\] serving tool: ",
    r"computation_placer\.cc:\d+\] computation placer already registered",
)
# noise only where no NVIDIA driver is installed: on a GPU node a failed cuInit is the error that matters
WITHOUT_DRIVER = (r"failed call to cuInit: ",)
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"  # 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL: TensorFlow's lines below it are hidden
# an absl/glog header: severity, MMDD, time, thread, file:line]  e.g. "I0000 00:00:1796651371.675439   28513 port.cc:153] "
_ABSL_HEADER = r"^[{severities}]\d{{4}} [0-9:.]+ +\d+ [\w./-]+:\d+\] "

# The filter, run as `python -S -c FILTER PATTERN...`: stdin is the pipe, stdout the real stderr. Complete lines
# are matched; a partial line that cannot start a native log line (a progress bar's redraw) is passed on at once,
# one that could is held until its line ends or the pipe stays quiet for 0.3 s.
FILTER = r"""
import os, re, select, sys
drop = re.compile("|".join(sys.argv[1:]).encode())
native = re.compile(rb"^[0-9EWIF]")  # a timestamp or an absl/glog severity letter
src, out = 0, 1
held, passing = b"", False
def write(data):
    while data:
        data = data[os.write(out, data):]
while True:
    ready = select.select([src], [], [], 0.3 if held else None)[0]
    chunk = os.read(src, 65536) if ready else None
    if chunk == b"":
        break
    if chunk is None:
        write(held); passing, held = True, b""
        continue
    lines = (held + chunk).split(b"\n")
    held = lines.pop()
    for line in lines:
        if passing or not drop.search(line):
            write(line + b"\n")
        passing = False
    if held and (passing or not native.match(held)):
        write(held); passing, held = True, b""
write(held)
"""


def min_log_level(environ: dict[str, str] | None = None) -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0 where unset or not a number)."""
    value = (os.environ if environ is None else environ).get(LEVEL_ENV, "0").strip()
    return min(3, int(value)) if value.isdigit() else 0


def patterns(driver: bool | None = None, level: int | None = None) -> list[str]:
    """The lines dropped on this machine: the known ones, and absl-format lines below TF_CPP_MIN_LOG_LEVEL."""
    driver = NVIDIA_DRIVER.exists() if driver is None else driver
    level = min_log_level() if level is None else level
    below = [_ABSL_HEADER.format(severities="IWE"[:level])] if level > 0 else []
    return list(ALWAYS) + ([] if driver else list(WITHOUT_DRIVER)) + below


def is_noise(line: str, dropped: list[str] | None = None) -> bool:
    return re.search("|".join(patterns() if dropped is None else dropped), line) is not None


def filter_native_stderr(python_stderr: bool = True) -> bool:
    """Route descriptor 2 through the filter for the rest of this process (and the children that inherit it);
    `python_stderr`: Python's `sys.stderr` keeps the real descriptor. Returns whether it did: not with
    `BRATSBENCH_NATIVE_LOGS=all`, nor where descriptor 2 is closed."""
    if os.environ.get(ENV, "").lower() == "all":
        return False
    try:
        real = os.dup(2)
    except OSError:
        return False
    read, write = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-c", FILTER, *patterns()], stdin=read, stdout=real,
                                stderr=real, close_fds=True)
    except OSError:
        for fd in (read, write, real):
            os.close(fd)
        return False
    os.close(read)
    sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)
    if not python_stderr:
        os.close(real)
        return True
    sys.stderr = open(real, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                      errors="backslashreplace", closefd=False)

    def restore() -> None:  # the filter forwards what is left before the shell prompt comes back
        try:
            sys.stderr.flush()
            os.dup2(real, 2)  # children that still hold the pipe keep the filter alive; it ends with them
            proc.wait(timeout=2)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass

    atexit.register(restore)
    return True


def filtered_command(cmd: list[str]) -> list[str]:
    """`cmd` with its descriptor 2 filtered: for programs of others that import TensorFlow (horovodrun)."""
    return [sys.executable, "-m", "harness.native_log", *cmd]


if __name__ == "__main__":  # python -m harness.native_log CMD ...: filter, then become CMD
    filter_native_stderr(python_stderr=False)
    os.execvp(sys.argv[1], sys.argv[1:])
