"""Shared helpers for the bench scripts: run bratsbench as real processes and read their records."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["PATH"] = str(BIN) + os.pathsep + e.get("PATH", "")
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return e


def train_record(np_: int, args: list[str], out: Path, backend: str | None = None) -> dict:
    """Run `bratsbench train ARGS --out OUT` on np_ ranks with the project's launcher for `backend` (horovodrun
    over Gloo, or MWMS workers started by `bratsbench launch`; None: this environment's default engine)."""
    from harness.launch import launch_command, launcher_for
    from harness.rundir import RunDir

    engine = ["--backend", backend] if backend else []
    cmd = launch_command(np_, [sys.executable, "-m", "harness", "train", *args, *engine, "--out", str(out)],
                         launcher_for(backend, "horovodrun"))
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"run failed ({' '.join(cmd)}):\n{result.stderr[-2000:]}")
    return RunDir(out).load_record()


def matmul_gflops_one_thread(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """TensorFlow matmul rate (float32 or bfloat16) on one intra-op thread, in a fresh process (thread pools are
    per process)."""
    code = f"""
import time, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
a = tf.cast(tf.random.normal(({n}, {n})), tf.{dtype}); b = tf.cast(tf.random.normal(({n}, {n})), tf.{dtype})
f = tf.function(lambda a, b: tf.linalg.matmul(a, b))
f(a, b).numpy()
best = float('inf')
for _ in range({repeats}):
    t = time.perf_counter(); f(a, b).numpy(); best = min(best, time.perf_counter() - t)
print(2 * {n}**3 / best / 1e9)
"""
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def now() -> float:
    return time.perf_counter()
