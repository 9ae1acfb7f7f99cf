"""TensorFlow's CUDA-probe lines and xprof's 'serving tool' lines are filtered out of a process's stderr; real
native errors, Python's own output, progress bars and the last words of a crashing process are not."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from pathlib import Path

from harness.native_log import min_log_level, patterns
from tests.conftest import REPO, bratsbench_cmd, proc_env

NOISE = [
    "2026-12-07 09:16:07.020432: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:477] Unable to register "
    "cuFFT factory: Attempting to register factory for plugin cuFFT when one has already been registered",
    "E0000 00:00:1796634967.075577    7759 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register "
    "factory for plugin cuDNN when one has already been registered",
    "E0000 00:00:1796634967.087650    7759 cuda_blas.cc:1418] Unable to register cuBLAS factory: Attempting to "
    "register factory for plugin cuBLAS when one has already been registered",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1733.123 4242 xplane_to_tools_data.cc:326] serving tool: trace_viewer@ with options: {} using "
    "ProfileProcessor: 0",
]
CUINIT = ("2026-12-07 09:16:13.845874: E external/local_xla/xla/stream_executor/cuda/cuda_driver.cc:152] failed call "
          "to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
REAL = [
    "2026-12-07 09:16:13.845874: E tensorflow/core/framework/op_kernel.cc:1830] OP_REQUIRES failed: OOM",
    "F0000 00:00:1.2 4242 check.cc:10] Check failed: x == y",
    "WARNING: something else",
    "E0000 00:00:1.2 4242 cuda_dnn.cc:8310] Could not create cudnn handle: CUDNN_STATUS_INTERNAL_ERROR",
]

SCRIPT = """
import os, sys, time
from harness.native_log import filter_native_stderr
assert filter_native_stderr()
lines = sys.argv[1].split("|")
for line in lines:
    os.write(2, (line + "\\n").encode())     # native code writes to descriptor 2
print("python line", file=sys.stderr)      # Python's own stderr keeps the real descriptor
os.write(2, b"\\rbar 50%")                  # a progress bar's redraw: no newline, passed on at once
sys.stderr.flush()
if sys.argv[2] == "crash":
    os.write(2, b"F0000 last words before the crash\\n")
    os.kill(os.getpid(), 9)
"""


def _filtered(lines: list[str], how: str = "exit", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, "|".join(lines), how], cwd=REPO, env=proc_env(**env),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("line", NOISE)
def test_noise_is_known(line):
    assert any(re.search(p, line) for p in patterns(driver=False))


@pytest.mark.parametrize("line", REAL)
def test_real_errors_are_not_noise(line):
    assert not any(re.search(p, line) for p in patterns(driver=False, level=2))


TF221_STARTUP = [  # TensorFlow 2.21 at import, before absl is initialised: TF_CPP_MIN_LOG_LEVEL does not reach them
    "I0000 00:00:1796651361.896229   28485 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796651361.896531   28485 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
]


@pytest.mark.parametrize("line", TF221_STARTUP)
@pytest.mark.parametrize("level, dropped", [(0, False), (1, True), (2, True)])
def test_absl_lines_below_the_min_log_level_are_dropped(line, level, dropped):
    assert any(re.search(p, line) for p in patterns(driver=True, level=level)) == dropped


@pytest.mark.parametrize("level, severities", [(0, ""), (1, "I"), (2, "IW"), (3, "IWE")])
def test_the_min_log_level_keeps_what_it_should(level, severities):
    """Level 2 (the CLI's default) keeps every error and fatal line; only lines in absl's format are touched."""
    for severity in "IWEF":
        line = f"{severity}0000 00:00:1.2 4242 some_file.cc:10] a message"
        assert any(re.search(p, line) for p in patterns(driver=True, level=level)) == (severity in severities), line
    assert not any(re.search(p, "I think this is a user's line") for p in patterns(driver=True, level=3))


@pytest.mark.parametrize("value, level", [(None, 0), ("2", 2), ("3", 3), ("9", 3), ("x", 0), (" 1 ", 1)])
def test_min_log_level_reads_the_environment(value, level):
    assert min_log_level({} if value is None else {"TF_CPP_MIN_LOG_LEVEL": value}) == level


def test_a_failed_cuinit_is_noise_only_without_an_nvidia_driver():

    assert any(re.search(p, CUINIT) for p in patterns(driver=False))
    assert not any(re.search(p, CUINIT) for p in patterns(driver=True))


def test_the_filter_drops_noise_and_keeps_everything_else():
    result = _filtered(NOISE + REAL)
    assert result.returncode == 0
    kept = result.stderr.split("\n")
    for line in REAL:
        assert line in kept
    for line in NOISE:
        assert line not in result.stderr
    assert "python line" in kept and result.stderr.rstrip("\n").endswith("bar 50%")


def test_a_crashing_process_still_gets_its_last_lines_out():
    result = _filtered(REAL[:1], "crash")
    assert result.returncode == -9
    assert REAL[0] in result.stderr and "F0000 last words before the crash" in result.stderr


def test_the_filter_can_be_turned_off():
    result = _filtered(NOISE[:1], BRATSBENCH_NATIVE_LOGS="all")
    assert result.returncode != 0 and "AssertionError" in result.stderr  # filter_native_stderr() said no


def test_a_training_process_prints_no_cuda_probe_lines(tmp_path):
    result = subprocess.run(bratsbench_cmd("train", "--synthetic", "--crop", "16", "16", "16", "--base-filters", "2",
                                           "--depth", "2", "--epochs", "1", "--steps-per-epoch", "1",
                                           "--out", str(tmp_path / "run")),
                            env=proc_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    for needle in ("Unable to register", "absl::InitializeLog"):
        assert needle not in output
    if not Path("/proc/driver/nvidia/version").exists():
        assert "cuInit" not in output
    assert "epoch 1: loss" in output
