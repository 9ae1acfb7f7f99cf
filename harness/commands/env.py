"""`bratsbench env`: what this node is (the run record's `system` section) and whether it is ready to run."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
from typing import Any, Iterator

# TensorFlow's own words when it cannot use a GPU (hidden at the CLI's TF_CPP_MIN_LOG_LEVEL=2)
_TF_GPU_LOG = re.compile(r"dlopen|dynamic library|cuda drivers|cuInit|Skipping registering GPU|CUDA_ERROR|libcud", re.I)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "env",
        help="print this node's system (CPU, GPUs, TensorFlow/Horovod/MPI builds, job) and check it is ready",
        description="Probe this node as every run record's `system` section does (no TensorFlow needed: it says when "
        "TensorFlow is missing), then check readiness, each check marked ok, warn or FAIL with its fix: GPUs seen by "
        "the driver (nvidia-smi), by TensorFlow and named by CUDA_VISIBLE_DEVICES; a CUDA build of TensorFlow where "
        "there are GPUs; Horovod's MPI, Gloo and NCCL; MPI and mpi4py; the profile plugin. Run it first on a new "
        "node or environment.",
        epilog="Exit status: 0 when no check FAILs (warnings allowed), 1 when one does.",
    )
    p.add_argument("--json", action="store_true", help="print {system, checks, ready} as JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import readiness, system

    with _tensorflow_log() as tf_log:
        system.tensorflow_build()  # imports TensorFlow where it is installed; what it says about GPUs is kept
    section = system.collect(None, import_tensorflow=True, source="env")
    found = readiness.checks(section, tf_log=tf_log, profile_plugin=_profile_plugin)
    ready = not any(c.status == readiness.FAIL for c in found)
    if args.json:
        print(json.dumps({"system": section, "checks": [c.to_dict() for c in found], "ready": ready}, indent=2))
    else:
        print("\n".join(describe(section)))
        print()
        print("\n".join(check_lines(found)))
    return 0 if ready else 1


@contextlib.contextmanager
def _tensorflow_log() -> Iterator[list[str]]:
    """TensorFlow's GPU messages while it starts: its log level lowered to show them, stderr (fd 2, where its C++
    logging writes) captured, and only the lines about GPUs kept."""
    lines: list[str] = []
    if "tensorflow" in sys.modules:
        yield lines
        return
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile(mode="w+b") as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield lines
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace")
                lines += dict.fromkeys(line.split("] ", 1)[-1].strip() for line in text.splitlines()
                                       if _TF_GPU_LOG.search(line))
    finally:
        os.close(saved)
        if level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = level


def _profile_plugin() -> str | None:
    """Why TensorBoard's profile plugin (what `analyze` reads --profile-steps traces with) does not import."""
    try:
        from analysis.traces.capture import converter

        converter()
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        return f"{type(exc).__name__}: {exc}"
    return None


def describe(s: dict[str, Any]) -> list[str]:
    """The section as compact text, one subject per line."""
    from harness import __version__
    from harness.system import cpu_ranges

    rows: list[tuple[str, str]] = [("system", s.get("label") or "?")]
    for h in s.get("hosts") or []:
        rows.append(("host", f"{h.get('hostname')}: {h.get('os')}, kernel {h.get('kernel')}, {h.get('arch')}"))
        numa = f", {h['numa_nodes']} NUMA node{'s' if h['numa_nodes'] != 1 else ''}" if h.get("numa_nodes") else ""
        rows.append(("cpu", f"{h.get('cpu_model')}: {_n(h.get('sockets'), 'socket')}, {_n(h.get('cores'), 'core')}, "
                            f"{_n(h.get('threads'), 'thread')}{numa}; {' '.join(h.get('isa') or []) or 'no listed ISA features'}"))
        rows.append(("memory", f"{h.get('mem_gib')} GiB"))
        gpus = h.get("gpus") or []
        if h.get("gpu_error"):
            rows.append(("gpus", h["gpu_error"]))
        elif not gpus:
            rows.append(("gpus", "none" + ("" if h.get("nvidia_smi") else " (no nvidia-smi)")))
        for g in gpus:
            rows.append(("gpus" if g is gpus[0] else "", f"{g.get('index')}: {g.get('model')}, {g.get('memory_mib')} MiB, "
                         f"compute {g.get('compute_capability') or 'unknown'}, driver {g.get('driver')}"))
    for r in s.get("ranks") or []:
        cvd = r.get("cuda_visible_devices")
        rows.append(("process", f"cores {cpu_ranges(r['cores'])} ({r['n_cores']}), CUDA_VISIBLE_DEVICES "
                                f"{'unset' if cvd is None else repr(cvd)}"))
    tf = s.get("tensorflow") or {}
    if tf.get("version") and not tf.get("error"):
        build = (f"CUDA {tf.get('cuda_version')} / cuDNN {tf.get('cudnn_version')} build" if tf.get("build") == "cuda"
                 else f"{tf.get('build')} build")
        onednn = {True: "on", False: "off"}.get(tf.get("onednn"), "unknown")
        seen = tf.get("gpus_seen")
        runs = "runs on CPU" if not seen else f"sees {_n(seen, 'GPU')}"
        rows.append(("tensorflow", f"{tf['version']}: {build}, oneDNN {onednn}, {runs}"))
    else:
        rows.append(("tensorflow", f"{tf.get('version') or 'missing'}: {tf.get('error')}"))
    hvd = s.get("horovod")
    rows.append(("horovod", "not installed" if hvd is None else f"{hvd.get('version')}: " + (hvd.get("error") or ", ".join(
        f"{name} {'yes' if hvd.get(k) else 'no' if hvd.get(k) is not None else '?'}"
        for k, name in (("mpi", "MPI"), ("gloo", "Gloo"), ("nccl", "NCCL"))))))
    mpi = s.get("mpi")
    rows.append(("mpi", "none found" if mpi is None else f"{mpi.get('library')} {mpi.get('version') or ''} ({mpi.get('source')})"))
    rows.append(("scheduler", _scheduler(s.get("scheduler"))))
    rows.append(("python", f"{s.get('python')}, bratsbench {__version__} ({sys.executable})"))
    git = s.get("git") or {}
    rows.append(("git", "not a checkout" if not git.get("commit") else
                 f"{git['commit'][:12]}{', modified' if git.get('modified') else ''}"))
    env = s.get("env") or {}
    rows.append(("env", ", ".join(f"{k}={v}" for k, v in env.items()) or "none of the recorded variables set"))
    return [f"{name:<11} {text}" for name, text in rows]


def _n(count: Any, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _scheduler(job: dict[str, Any] | None) -> str:
    if not job:
        return "none"
    parts = [f"{job['kind']} job {job.get('job_id')}"]
    if job.get("array_task_id") is not None:
        parts.append(f"array {job.get('array_job_id')}_{job.get('array_task_id')}")
    for key, name in (("step_id", "step"), ("partition", "partition"), ("nodelist", "nodes"),
                      ("cpus_per_task", "cpus per task"), ("restart_count", "restarts")):
        if job.get(key) is not None:
            parts.append(f"{name} {job[key]}")
    return ", ".join(parts)


def check_lines(found: list[Any]) -> list[str]:
    lines = ["checks"]
    for c in found:
        lines.append(f"  {c.status:<5} {c.name:<11} {c.detail}")
        if c.fix:
            lines.append(f"  {'':<5} {'':<11} fix: {c.fix}")
    counts = {status: sum(1 for c in found if c.status == status) for status in ("ok", "warn", "FAIL")}
    lines.append(f"{counts['ok']} ok, {counts['warn']} warn, {counts['FAIL']} FAIL: "
                 + ("ready" if not counts["FAIL"] else "not ready (exit status 1)"))
    return lines
