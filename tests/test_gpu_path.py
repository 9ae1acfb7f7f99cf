"""The GPU path, right by construction: device pinning and its one-line guards (through the device-listing seam,
no GPU here), batch norm over ranks on both engines, replicas that diverge fail the run, XLA that really
compiles, the gradient reduction as a recorded choice, peak GPU memory and --amp checkpoints across devices."""

from __future__ import annotations

import json
import os
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from harness.engines import base
from harness.engines.base import check_distinct_gpus, gpu_identity, pin_device
from harness.errors import UserError
from harness.train.timing import GpuMemory
from tests.conftest import REPO, bratsbench_cmd, horovodrun_cmd, proc_env, run

FakeGpu = namedtuple("FakeGpu", "name device_type")
GPU = [FakeGpu(f"/physical_device:GPU:{i}", "GPU") for i in range(4)]
SCRIPT = str(REPO / "tests" / "scripts" / "one_step.py")
FAKE = str(REPO / "tests" / "scripts" / "fake_gpus.py")
FAKE_PLAIN = str(REPO / "tests" / "scripts" / "one_step_plain_bn.py")
SMALL = ["--synthetic", "--crop", "16", "16", "16", "--base-filters", "4", "--depth", "2", "--synthetic-samples", "4",
         "--threads", "1"]


@pytest.fixture
def gpus(monkeypatch):
    """Fake the GPUs TensorFlow lists; returns what pin_device made visible."""
    used: list = []

    def fake(n: int) -> list:
        monkeypatch.setattr(base, "physical_gpus", lambda: GPU[:n])
        monkeypatch.setattr(base, "_use_gpu", used.append)
        monkeypatch.setattr(base, "_hide_gpus", lambda: used.append("hidden"))
        return used

    return fake


# --- pinning and its guards (fake device lists and environments) ----------------------------------------


@pytest.mark.parametrize("n, local_rank, local_size, env, device", [
    (4, 2, 4, {}, "GPU:2"),                                       # one GPU per local rank, Horovod's rule
    (4, 0, 1, {}, "GPU:0"),
    (1, 1, 2, {"CUDA_VISIBLE_DEVICES": "3"}, "GPU:0"),            # the scheduler gave each rank its own GPU
    (0, 0, 1, {}, "CPU"),                                         # a CPU node: nothing expected
    (0, 1, 2, {"CUDA_VISIBLE_DEVICES": ""}, "CPU"),
    (0, 0, 1, {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "CPU"),     # SLURM: no GPU in this job
    (0, 0, 1, {"CUDA_VISIBLE_DEVICES": "-1"}, "CPU"),
])
def test_pin_device(gpus, n, local_rank, local_size, env, device):
    used = gpus(n)
    assert pin_device("auto", local_rank, local_size, env) == (n, device)
    assert used == ([GPU[int(device[4:])]] if device != "CPU" else [])


@pytest.mark.parametrize("n, local_size, env, choice, fragment", [
    (2, 4, {}, "auto", "4 ranks on this node but TensorFlow sees 2 GPU(s): ranks would share a GPU"),
    (1, 2, {}, "auto", "2 ranks on this node but TensorFlow sees 1 GPU(s)"),
    (1, 2, {"CUDA_VISIBLE_DEVICES": "0,1"}, "auto", "(CUDA_VISIBLE_DEVICES=0,1)"),
    (0, 1, {"CUDA_VISIBLE_DEVICES": "0"}, "auto", "CUDA_VISIBLE_DEVICES=0 asks for GPUs, but TensorFlow sees none"),
    (0, 1, {"SLURM_STEP_GPUS": "0,1"}, "auto", "SLURM_STEP_GPUS=0,1 asks for GPUs"),
    (0, 1, {"SLURM_GPUS_ON_NODE": "4"}, "auto", "SLURM_GPUS_ON_NODE=4 asks for GPUs"),
    (0, 1, {}, "gpu", "--device gpu asks for GPUs, but TensorFlow sees none"),
])
def test_pin_device_refuses_in_one_line(gpus, n, local_size, env, choice, fragment):
    gpus(n)
    with pytest.raises(UserError) as err:
        pin_device(choice, 0, local_size, env)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_device_cpu_hides_the_gpus_and_names_no_gpu(gpus):
    used = gpus(2)
    assert pin_device("cpu", 1, 2, {"CUDA_VISIBLE_DEVICES": "0,1"}) == (0, "CPU")
    assert used == ["hidden"]


def test_no_gpu_names_tensorflows_build():
    from harness.system import tensorflow_build

    why = base.why_no_gpu()
    build = tensorflow_build()
    assert f"TensorFlow {build['version']}" in why
    assert ("built for CUDA" in why) == (build["build"] == "cuda")
    assert "tensorflow[and-cuda]" in why


def test_two_ranks_of_a_node_on_one_gpu_are_refused(tmp_path, monkeypatch):
    check_distinct_gpus([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a"), ("n1", None)])  # fine: distinct per node
    with pytest.raises(UserError, match="ranks 0 and 2 on n1 both use GPU GPU-a"):
        check_distinct_gpus([("n1", "GPU-a"), ("n1", "GPU-b"), ("n1", "GPU-a")])
    # the identity: nvidia-smi's UUID of the CUDA_VISIBLE_DEVICES entry, or of the only GPU a cgroup shows
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, GPU-aaa'\necho '1, GPU-bbb'\n")
    smi.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "1"}
    assert gpu_identity("GPU:0", env) == "GPU-bbb"
    assert gpu_identity("GPU:1", {"PATH": env["PATH"]}) == "GPU-bbb"
    smi.write_text("#!/bin/sh\necho '0, GPU-ccc'\n")
    assert gpu_identity("GPU:0", env) == "GPU-ccc"
    assert gpu_identity("CPU", env) is None


def test_peak_gpu_memory_is_reset_per_epoch_and_the_max_of_the_steps():
    peaks = iter([300 * 2**20, 200 * 2**20])
    resets: list[str] = []
    mem = GpuMemory("GPU:0", info=lambda d: {"peak": next(peaks)}, reset_stats=resets.append)
    for _ in range(2):
        mem.reset()
        mem.read()
    assert resets == ["GPU:0", "GPU:0"] and mem.peak_mb == 300.0
    assert GpuMemory.of("CPU") is None and GpuMemory.of("GPU:3").device == "GPU:0"  # the rank's only visible GPU


@pytest.mark.horovod
def test_a_faked_gpu_for_two_local_ranks_is_one_line_of_error(tmp_path):
    """Two real Horovod ranks on a node that lists one GPU (faked through the seam): one line, exit 2, no step."""
    out = tmp_path / "run"
    result = run(horovodrun_cmd(2, sys.executable, FAKE, "1", "train", *SMALL, "--out", str(out)), check=False)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if "bratsbench: error:" in line]
    assert errors and all("2 ranks on this node but TensorFlow sees 1 GPU(s)" in line for line in errors)
    ranks = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("[0]", "[1]"))]
    assert not [line for line in ranks if "Traceback" in line]  # (horovodrun prints its own on a rank's exit 2)
    assert not (out / "record.json").exists() or json.loads((out / "record.json").read_text())["history"] == []


def test_cuda_visible_devices_on_a_cpu_tensorflow_is_one_line_of_error(tmp_path):
    out = tmp_path / "run"
    result = run(bratsbench_cmd("train", *SMALL, "--out", str(out)), check=False, env_extra={"CUDA_VISIBLE_DEVICES": "0"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bratsbench: error: CUDA_VISIBLE_DEVICES=0 asks for GPUs, but "
                                                   "TensorFlow sees none")
    assert not (out / "record.json").exists()  # before any step, before the record


# --- batch norm over ranks; replicas that diverge ------------------------------------------------------


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda s: int(s.split("_")[1]))]


def _np2_launch(backend: str, *cmd: str) -> list[str]:
    if backend == "horovod":
        return horovodrun_cmd(2, *cmd)
    return bratsbench_cmd("launch", "--backend", "mwms", "-np", "2", "--", *cmd)


ENGINES = [pytest.param("horovod", marks=pytest.mark.horovod), pytest.param("mwms", marks=pytest.mark.mwms)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ENGINES)
def test_batch_norm_two_ranks_batch_b_equal_one_rank_batch_2b(tmp_path, backend):
    # the batch statistics are over the global batch: two ranks of 2 samples normalise as one rank of 4
    run(_np2_launch(backend, sys.executable, SCRIPT, str(tmp_path / "np2.npz"), "4", backend, "batch"))
    run([sys.executable, SCRIPT, str(tmp_path / "np1.npz"), "4", backend, "batch"])
    g2, g1 = _weights(tmp_path / "np2.first.npz"), _weights(tmp_path / "np1.first.npz")
    assert len(g1) == len(g2) > 20  # gradients, then the moving means and variances
    for a, b in zip(g1, g2):  # float32 sums in another order (Horovod: variance as E[x^2] - E[x]^2)
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))
    # the control: unsynchronised statistics over each rank's 2 samples are far from those over all 4
    run(_np2_launch(backend, sys.executable, FAKE_PLAIN, str(tmp_path / "plain.npz"), "4", backend, "batch"))
    plain = _weights(tmp_path / "plain.first.npz")
    assert max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(g1, plain)) > 0.05


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.parametrize("backend", ENGINES)
def test_batch_norm_at_np2_trains_identical_replicas(tmp_path, backend):
    out = tmp_path / "run"
    run(_np2_launch(backend, *bratsbench_cmd("train", *SMALL, "--norm", "batch", "--backend", backend, "--epochs", "2",
                                              "--steps-per-epoch", "2", "--out", str(out))))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    sums = record["model"]["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert set(record["history"][-1]["val"]) == {"ET", "TC", "WT"}  # validation on unequal shards, no hang


@pytest.mark.slow
@pytest.mark.horovod
def test_replicas_that_diverge_are_never_recorded_ok(tmp_path):
    # unsynchronised batch norm (as before): each rank's moving statistics follow its own batches
    out = tmp_path / "run"
    result = run(horovodrun_cmd(2, sys.executable, FAKE, "plain-batch-norm", "train", *SMALL, "--norm", "batch",
                                "--epochs", "1", "--steps-per-epoch", "2", "--out", str(out)), check=False)
    assert result.returncode != 0
    record = json.loads((out / "record.json").read_text())
    sums = record["model"]["replica_checksums"]
    assert record["status"] == "failed" and sums[0] != sums[1]
    assert record["error"].startswith("RuntimeError: replicas diverged: their weights differ at the end (ranks 0: ")


# --- gradient reduction, XLA, --amp checkpoints ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.horovod
def test_fused_and_per_tensor_reductions_agree(tmp_path):
    for how in ("fused", "per_tensor"):
        run(horovodrun_cmd(2, sys.executable, SCRIPT, str(tmp_path / f"{how}.npz"), "4", "horovod", "instance", how))
    for a, b in zip(_weights(tmp_path / "fused.npz"), _weights(tmp_path / "per_tensor.npz")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_record_says_how_the_step_ran(tmp_path):
    out = tmp_path / "run"
    run(bratsbench_cmd("train", *SMALL, "--epochs", "1", "--steps-per-epoch", "1", "--out", str(out)))
    execution = json.loads((out / "record.json").read_text())["execution"]
    assert execution == {"device": "CPU", "op_determinism": True, "precision": "float32", "loss_scaling": False,
                         "xla": {"requested": False, "how": None, "compiled": None}, "grad_reduction": None}


def test_xla_compiles_on_cpu_and_says_so(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "xla-dump"
    result = run(bratsbench_cmd("train", *SMALL, "--xla", "--benchmark", "--warmup", "1", "--bench-steps", "2",
                                "--out", str(out)), env_extra={"XLA_FLAGS": f"--xla_dump_to={dump}"})
    assert "--xla: the forward and backward pass are compiled by XLA (jit_compile) for the CPU" in result.stderr
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["execution"]["xla"]["compiled"] is True
    assert list(dump.glob("*forward_backward*after_optimizations.txt"))  # XLA really compiled the step


def test_amp_checkpoint_of_another_device_kind_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    run(bratsbench_cmd("train", *SMALL, "--amp", "--epochs", "1", "--steps-per-epoch", "1", "--out", str(out)))
    sig_path = out / "checkpoints" / "model.json"
    sig = json.loads(sig_path.read_text())
    assert sig["optimizer"] == {"loss_scaling": False}  # bfloat16 on this CPU: no loss-scale optimizer
    run(bratsbench_cmd("train", *SMALL, "--amp", "--epochs", "2", "--steps-per-epoch", "1", "--resume", "--out", str(out)))
    sig["optimizer"] = {"loss_scaling": True}  # as a GPU run with --amp writes it
    sig_path.write_text(json.dumps(sig))
    result = run(bratsbench_cmd("train", *SMALL, "--amp", "--epochs", "3", "--steps-per-epoch", "1", "--resume",
                                "--out", str(out)), check=False)
    assert result.returncode == 2
    assert "was written with float16 with loss scaling (--amp on a GPU) and cannot resume with no loss scaling" \
        in result.stderr
