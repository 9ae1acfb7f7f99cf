"""The run record's `system` section and `bratsbench env`: the probe's parsers on real and fake inputs, the GPU part
through a fake `nvidia-smi`, `env` in an environment without TensorFlow or numpy, and a 2-rank run whose ranks
were confined to different cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import readiness, system
from tests.conftest import REPO, bratsbench_cmd, horovodrun_cmd, proc_env, run

FAKE_SMI = REPO / "tests" / "scripts" / "nvidia-smi"


def _cpuinfo_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    pytest.skip("this CPU's /proc/cpuinfo names no model")


@pytest.fixture
def fake_smi_bin(tmp_path) -> Path:
    """A folder whose nvidia-smi is the fake (FAKE_GPUS picks what it reports)."""
    folder = tmp_path / "fakebin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SMI}" "$@"\n')
    smi.chmod(0o755)
    return folder


# --- the environment's GPUs (the guards' seam) -----------------------------------------------------------


@pytest.mark.parametrize("env, expected", [
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
    ({"CUDA_VISIBLE_DEVICES": "GPU-5a3c7c56-0f6e"}, "CUDA_VISIBLE_DEVICES=GPU-5a3c7c56-0f6e"),
    ({"CUDA_VISIBLE_DEVICES": ""}, None),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1,0"}, None),  # CUDA stops at the first invalid index
    ({}, None),
    ({"SLURM_STEP_GPUS": "0,1"}, "SLURM_STEP_GPUS=0,1"),
    ({"SLURM_STEP_GPUS": "NoDevFiles", "SLURM_GPUS_ON_NODE": "2"}, "SLURM_GPUS_ON_NODE=2"),
    ({"SLURM_GPUS_ON_NODE": "0"}, None),
    ({"SLURM_GPUS_ON_NODE": "two"}, None),
    ({"CUDA_VISIBLE_DEVICES": "", "SLURM_STEP_GPUS": "0"}, None),  # hidden on purpose: CUDA's variable decides
])
def test_gpus_expected(env, expected):
    assert system.gpus_expected(env) == expected


# --- nvidia-smi ----------------------------------------------------------------------------------------------


H100 = "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15, GPU-5a3c\n1, NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15, GPU-9d1e\n"


def test_parse_nvidia_smi_rows():
    gpus = system.parse_nvidia_smi(H100, system.NVIDIA_SMI_FIELDS)
    assert gpus == [
        {"index": i, "model": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "compute_capability": "9.0",
         "driver": "550.54.15", "uuid": uuid} for i, uuid in ((0, "GPU-5a3c"), (1, "GPU-9d1e"))]


@pytest.mark.parametrize("text, asked, expected", [
    # an old driver asked without compute_cap: the field is None, not shifted into the next column
    ("0, Tesla V100-SXM2-32GB, 32510, 470.57.02, GPU-1b2c\n", ("index", "name", "memory.total", "driver_version", "uuid"),
     {"index": 0, "model": "Tesla V100-SXM2-32GB", "memory_mib": 32510, "compute_capability": None,
      "driver": "470.57.02", "uuid": "GPU-1b2c"}),
    ("0, Tesla K80, [N/A], [Not Supported], 418.87, [N/A]\n", system.NVIDIA_SMI_FIELDS,
     {"index": 0, "model": "Tesla K80", "memory_mib": None, "compute_capability": None, "driver": "418.87", "uuid": None}),
    ("0, A100, 40960 MiB, 8.0, 535.1, GPU-x\n", system.NVIDIA_SMI_FIELDS,  # units left in by an old --format
     {"index": 0, "model": "A100", "memory_mib": 40960, "compute_capability": "8.0", "driver": "535.1", "uuid": "GPU-x"}),
])
def test_parse_nvidia_smi_old_formats(text, asked, expected):
    assert system.parse_nvidia_smi(text, asked) == [expected]


@pytest.mark.parametrize("text", ["", "\n\n", "No devices were found\n", "0, A100, 40960\n"])
def test_parse_nvidia_smi_ignores_what_is_not_a_row(text):
    assert system.parse_nvidia_smi(text, system.NVIDIA_SMI_FIELDS) == []


@pytest.mark.parametrize("kind, count, compute, error", [
    ("h100x2", 2, "9.0", None),
    ("v100-old", 2, None, None),  # rejects compute_cap: asked again without it
    ("none", 0, None, None),
    ("broken", 0, None, "nvidia-smi exit status 9: NVIDIA-SMI has failed"),
])
def test_nvidia_gpus_through_a_fake_nvidia_smi(fake_smi_bin, monkeypatch, kind, count, compute, error):
    monkeypatch.setenv("PATH", f"{fake_smi_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GPUS", kind)
    gpus, present, problem = system.nvidia_gpus()
    assert present and len(gpus) == count
    assert all(g["compute_capability"] == compute and g["driver"] for g in gpus)
    assert (problem or "").startswith(error or "")
    if kind == "v100-old":
        assert [g["uuid"] for g in gpus] == ["GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", None]


def test_no_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert system.nvidia_gpus() == ([], False, None)


# --- CPU, MPI, scheduler, environment, git ----------------------------------------------------------------


def test_cpu_info_of_this_machine():
    info = system.cpu_info()
    text = Path("/proc/cpuinfo").read_text()
    assert info["cpu_model"] == _cpuinfo_model()
    assert info["threads"] == sum(1 for line in text.splitlines() if line.startswith("processor"))
    assert 1 <= info["sockets"] <= info["cores"] <= info["threads"]
    flags = next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    assert info["isa"] == [f for f in system.ISA_FEATURES if f in flags]


def _block(i: int, phys: int | None, core: int | None, extra: str = "") -> str:
    ids = f"physical id\t: {phys}\ncore id\t\t: {core}\n" if phys is not None else ""
    return f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n{ids}flags\t\t: avx2 avx512f amx_bf16 amx_tile\n{extra}\n"


@pytest.mark.parametrize("blocks, sockets, cores, threads", [
    ([(0, 0), (0, 1)], 1, 2, 2),  # a 2-vCPU VM
    ([(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)], 2, 4, 8),  # 2 sockets, SMT: core ids repeat
])
def test_cpu_topology_from_cpuinfo(tmp_path, blocks, sockets, cores, threads):
    path = tmp_path / "cpuinfo"
    path.write_text("".join(_block(i, p, c) for i, (p, c) in enumerate(blocks)))
    info = system.cpu_info(str(path), sysfs=str(tmp_path / "nosysfs"))
    assert (info["sockets"], info["cores"], info["threads"]) == (sockets, cores, threads)
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["isa"] == ["avx2", "avx512f", "amx_tile", "amx_bf16"]


def test_cpu_topology_from_sysfs_where_cpuinfo_has_no_ids(tmp_path):
    """Arm's /proc/cpuinfo has no physical or core ids: sysfs topology counts them."""
    path = tmp_path / "cpuinfo"
    path.write_text("".join(_block(i, None, None) for i in range(4)))
    for cpu, (pkg, core) in enumerate([(0, 0), (0, 1), (0, 2), (0, 3)]):
        topo = tmp_path / "sys" / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{pkg}\n")
        (topo / "core_id").write_text(f"{core}\n")
    info = system.cpu_info(str(path), sysfs=str(tmp_path / "sys"))
    assert (info["sockets"], info["cores"], info["threads"]) == (1, 4, 4)


@pytest.mark.parametrize("text, expected", [
    ("Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022\x00", ("Open MPI", "4.1.4")),
    ("mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/\n", ("Open MPI", "5.0.3")),
    ("MPICH Version:\t4.0.2\nMPICH Release date:\tThu Apr  7 12:34:45 CDT 2022\n", ("MPICH", "4.0.2")),
    ("HYDRA build details:\n    Version:                                 4.1.2\n", ("MPICH", "4.1.2")),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)\n", ("Intel MPI", "2021.10")),
    ("MVAPICH2 Version      :\t2.3.7\n", ("MVAPICH", "2.3.7")),
    ("Some MPI 1.0\nmore\n", ("Some MPI 1.0", None)),
])
def test_parse_mpi_version(text, expected):
    assert system.parse_mpi_version(text) == expected


def test_scheduler_slurm_pbs_and_none(tmp_path):
    slurm = system.scheduler({"SLURM_JOB_ID": "1235", "SLURM_ARRAY_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "1",
                              "SLURM_STEP_ID": "0", "SLURM_JOB_PARTITION": "gpu", "SLURM_JOB_NODELIST": "n[01-02]",
                              "SLURM_CPUS_PER_TASK": "8", "SLURM_RESTART_COUNT": "1"})
    assert slurm["kind"] == "slurm" and (slurm["job_id"], slurm["array_job_id"], slurm["array_task_id"]) == ("1235", "1234", "1")
    assert (slurm["step_id"], slurm["partition"], slurm["nodelist"], slurm["cpus_per_task"], slurm["restart_count"]) == \
        ("0", "gpu", "n[01-02]", "8", "1")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n")
    pbs = system.scheduler({"PBS_JOBID": "77[3].server", "PBS_ARRAY_ID": "77[].server", "PBS_ARRAY_INDEX": "3",
                            "PBS_QUEUE": "workq", "PBS_NODEFILE": str(nodefile)})
    assert (pbs["kind"], pbs["job_id"], pbs["array_task_id"], pbs["partition"], pbs["nodelist"]) == \
        ("pbs", "77[3].server", "3", "workq", "n1,n2")
    assert system.scheduler({"HOME": "/root"}) is None


def test_env_vars_keep_the_fixed_list_and_nothing_secret():
    config = json.dumps({"cluster": {"worker": [f"node{i}:2222" for i in range(40)]}, "task": {"type": "worker", "index": 3}})
    env = {"OMP_NUM_THREADS": "4", "TF_ENABLE_ONEDNN_OPTS": "0", "NCCL_DEBUG": "INFO", "CUDA_VISIBLE_DEVICES": "0",
           "SLURM_CPUS_PER_TASK": "8", "XLA_FLAGS": "--xla_dump_to=/tmp", "TF_CONFIG": config,
           "HOROVOD_FUSION_THRESHOLD": "0", "HOROVOD_RANK": "1", "HOROVOD_GLOO_RENDEZVOUS_PORT": "5555",
           "TF_VAR_db": "x", "TF_CLI_CONFIG_FILE": "/root/.terraformrc", "TF_TOKEN_app": "t",  # Terraform's
           "NCCL_SECRET_KEY": "s", "HOME": "/root", "SLURM_JOB_ID": "1"}
    found = system.env_vars(env)
    assert list(found) == sorted(["OMP_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS", "NCCL_DEBUG", "CUDA_VISIBLE_DEVICES",
                                  "SLURM_CPUS_PER_TASK", "XLA_FLAGS", "TF_CONFIG", "HOROVOD_FUSION_THRESHOLD"])
    assert found["TF_CONFIG"] == "<40 workers from node0:2222, task worker:3>"
    short = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}})
    assert system.env_vars({"TF_CONFIG": short}) == {"TF_CONFIG": short}


def test_git_state_of_the_checkout_and_outside_one(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    state = system.git_state()
    assert state["commit"] == head.stdout.strip() and isinstance(state["modified"], bool)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    assert state["modified"] == bool(dirty)
    assert system.git_state(tmp_path) == {"commit": None, "modified": None}


@pytest.mark.parametrize("model, short", [
    ("Intel(R) Xeon(R) Platinum 8480+", "Intel Xeon Platinum 8480+"),
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248"),
    ("AMD EPYC 9B14 96-Core Processor", "AMD EPYC 9B14"),
    ("AMD EPYC", "AMD EPYC"),
    (None, "unknown CPU"),
])
def test_short_cpu_model(model, short):
    assert system.short_cpu_model(model) == short


def _host(name="n1", gpus=(), sockets=1, cores=96, isa=("avx2", "avx512f")):
    return {"hostname": name, "cpu_model": "AMD EPYC 9B14 96-Core Processor", "sockets": sockets, "cores": cores,
            "isa": list(isa), "gpus": [{"model": m} for m in gpus]}


TF_CUDA = {"version": "2.18.1", "build": "cuda", "cuda_version": "12.5.1", "gpus_seen": 4}


@pytest.mark.parametrize("hosts, ranks, tf, expected", [
    ([_host()], [{"device": "CPU"}], {**TF_CUDA, "gpus_seen": 0}, "AMD EPYC 9B14 (AVX-512), 96 cores, TF 2.18.1 CPU"),
    ([_host(sockets=2, cores=192, isa=("avx2", "avx512f", "amx_bf16"))], [{"device": "CPU"}] * 8, {**TF_CUDA, "gpus_seen": 0},
     "2x AMD EPYC 9B14 (AMX), 192 cores, TF 2.18.1 CPU"),
    ([_host(gpus=["NVIDIA H100 80GB HBM3"] * 4)], [{"device": f"GPU:{i}"} for i in range(4)], TF_CUDA,
     "4x NVIDIA H100 80GB HBM3, TF 2.18.1 CUDA 12.5"),
    ([_host("n1", gpus=["A100"] * 4), _host("n2", gpus=["A100"] * 4)], [{"device": "GPU:0"}] * 8, TF_CUDA,
     "2 nodes: 4x A100, TF 2.18.1 CUDA 12.5"),
    # GPUs the run did not use (TensorFlow found no CUDA libraries): the label says CPU
    ([_host(gpus=["A100"] * 2)], [{"device": "CPU"}], {**TF_CUDA, "gpus_seen": 0}, "2x A100, TF 2.18.1 CPU"),
    ([_host()], [], {"version": None, "error": "not installed"}, "AMD EPYC 9B14 (AVX-512), 96 cores, no TensorFlow"),
])
def test_label(hosts, ranks, tf, expected):
    section = {"hosts": hosts, "ranks": ranks, "tensorflow": tf}
    assert system.label(section) == expected
    # the run's own threads and rank count do not change it
    assert system.label({**section, "ranks": ranks[:1] * 3}) == expected


@pytest.mark.parametrize("cpus, text", [([0], "0"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([3, 1, 2], "1-3"), ([], "")])
def test_cpu_ranges(cpus, text):
    assert system.cpu_ranges(cpus) == text


def test_collect_alone_names_this_process_and_host():
    section = system.collect(None, source="env")
    (host,) = section["hosts"]
    (rank,) = section["ranks"]
    assert rank["cores"] == sorted(os.sched_getaffinity(0)) and rank["host"] == host["hostname"]
    assert host["cpu_model"] == system.cpu_info()["cpu_model"] and section["label"] == system.label(section)
    launcher = system.collect(None, source="launcher")
    assert launcher["source"] == "launcher" and launcher["ranks"] == [] and launcher["hosts"] == section["hosts"]


def test_tensorflow_build_read_without_importing_it_matches_tensorflow():
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed")
    code = ("import json, sys; from harness.system import tensorflow_build as b; cold = b(False); "
            "assert 'tensorflow' not in sys.modules; warm = b(True); print(json.dumps([cold, warm]))")
    out = run([sys.executable, "-c", code]).stdout
    cold, warm = json.loads(out.strip().splitlines()[-1])
    assert cold["gpus_seen"] is None and isinstance(warm["gpus_seen"], int)
    for key in ("version", "build", "cuda_version", "cudnn_version", "compute_capabilities"):
        assert cold[key] == warm[key], key
    assert warm["build"] in ("cuda", "rocm", "cpu")


# --- readiness (the checks on sections faked through the seam) ---------------------------------------------


def _section(gpus=0, tf=None, hvd=None, cvd=None):
    host = _host(gpus=["NVIDIA H100 80GB HBM3"] * gpus)
    host.update(nvidia_smi=bool(gpus), gpu_error=None)
    for i, g in enumerate(host["gpus"]):
        g.update(index=i, driver="550.54.15", compute_capability="9.0")
    return {"hosts": [host], "tensorflow": tf or {**TF_CUDA, "gpus_seen": 0, "compute_capabilities": ["sm_60", "sm_90"]},
            "horovod": hvd if hvd is not None else {"version": "0.28.1", "mpi": True, "gloo": True, "nccl": False},
            "mpi": {"library": "Open MPI", "version": "4.1.4"}}


def _status(found, name):
    return next((c.status, c.detail, c.fix) for c in found if c.name == name)


def _which(name):
    return "/usr/bin/mpirun" if name == "mpirun" else None


@pytest.mark.parametrize("gpus, seen, env, status, needle", [
    (0, 0, {}, "ok", "runs on CPU"),
    (0, 0, {"CUDA_VISIBLE_DEVICES": "0"}, "FAIL", "CUDA_VISIBLE_DEVICES=0 names GPUs, but the driver lists none"),
    (2, 0, {}, "FAIL", "missing or do not match"),
    (2, 0, {"CUDA_VISIBLE_DEVICES": "0"}, "FAIL", "missing or do not match"),
    (2, 0, {"CUDA_VISIBLE_DEVICES": ""}, "warn", "hides every GPU"),
    (2, 2, {}, "ok", "driver lists 2"),
    (2, 1, {"CUDA_VISIBLE_DEVICES": "0,1"}, "warn", "fewer than the 2 expected"),
])
def test_gpu_readiness(gpus, seen, env, status, needle):
    tf = {**TF_CUDA, "gpus_seen": seen, "onednn": True, "compute_capabilities": ["sm_60", "sm_90"]}
    got, detail, fix = _status(readiness.checks(_section(gpus, tf), env, which=_which), "gpus")
    assert (got, needle in detail) == (status, True), detail
    if "missing or do not match" in needle:
        assert 'pip install "tensorflow[and-cuda]==2.18.1"' in fix


def test_cpu_only_tensorflow_on_gpus_fails_with_the_cuda_wheel_as_fix():
    tf = {"version": "2.18.1", "build": "cpu", "gpus_seen": 0}
    got, detail, fix = _status(readiness.checks(_section(2, tf), {}, which=_which), "gpus")
    assert got == "FAIL" and "CPU-only build" in detail and 'tensorflow[and-cuda]==2.18.1' in fix


@pytest.mark.parametrize("gpus, hvd, which, status, needle", [
    (0, {"version": "0.28.1", "mpi": True, "gloo": True, "nccl": False}, _which, "ok", "MPI yes, Gloo yes, NCCL no"),
    (2, {"version": "0.28.1", "mpi": True, "gloo": True, "nccl": False}, _which, "FAIL", "host memory"),
    (0, {"version": "0.28.1", "mpi": False, "gloo": True, "nccl": False}, _which, "warn", "Horovod has no MPI"),
    (0, {"version": "0.28.1", "mpi": False, "gloo": True, "nccl": False}, lambda n: None, "ok", "Gloo yes"),
    (0, {"version": "0.28.1", "mpi": None, "gloo": None, "nccl": None, "error": "ImportError: undefined symbol"}, _which,
     "FAIL", "does not import"),
])
def test_horovod_readiness(gpus, hvd, which, status, needle):
    got, detail, fix = _status(readiness.checks(_section(gpus, hvd=hvd), {}, which=which), "horovod")
    assert got == status and needle in detail, detail
    if status != "ok":
        assert "horovod==0.28.1" in fix and ("HOROVOD_GPU_OPERATIONS=NCCL" in fix) == bool(gpus)


def test_compute_capability_outside_tensorflows_targets():
    section = _section(2, {**TF_CUDA, "gpus_seen": 2, "compute_capabilities": ["sm_70", "sm_80", "compute_90"]})
    section["hosts"][0]["gpus"][0]["compute_capability"] = "6.0"
    assert _status(readiness.checks(section, {}, which=_which), "gpus")[0] == "FAIL"
    section["hosts"][0]["gpus"][0]["compute_capability"] = "10.0"
    got, detail, _ = _status(readiness.checks(section, {}, which=_which), "gpus")
    assert got == "warn" and "PTX" in detail


# --- bratsbench env, for real --------------------------------------------------------------------------------


def _env(*args: str, python: str = sys.executable, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "harness", "env", *args], env=proc_env(**extra), capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A venv of the base interpreter without pip: the standard library only (no TensorFlow, numpy, psutil)."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = str(folder / "bin" / "python")
    probe = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('tensorflow', 'numpy', "
                            "'psutil', 'horovod', 'mpi4py') if u.find_spec(m)])"], capture_output=True, text=True, env={})
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    return python


def test_env_without_tensorflow_or_numpy(bare_python, fake_smi_bin):
    result = _env(python=bare_python)
    assert result.returncode == 1, result.stderr  # TensorFlow missing is a FAIL
    lines = result.stdout.splitlines()
    assert f"cpu         {_cpuinfo_model()}:" in "\n".join(lines)
    assert "tensorflow  missing: not installed" in lines and "horovod     not installed" in lines
    assert any(line.startswith("  FAIL  tensorflow") for line in lines) and "Traceback" not in result.stderr
    data = json.loads(_env("--json", python=bare_python).stdout)
    assert data["system"]["tensorflow"] == {"version": None, "error": "not installed"} and data["ready"] is False
    assert data["system"]["label"].endswith(", no TensorFlow")
    # the GPU part needs no TensorFlow either
    path = f"{fake_smi_bin}{os.pathsep}{os.environ['PATH']}"
    data = json.loads(_env("--json", python=bare_python, PATH=path, FAKE_GPUS="h100x2").stdout)
    gpus = data["system"]["hosts"][0]["gpus"]
    assert [g["model"] for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2 and data["system"]["label"].startswith("2x NVIDIA H100")


@pytest.fixture(scope="module")
def tensorflow_installed():
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed")


def test_env_on_the_cpu_stack_is_ready(tensorflow_installed):
    from harness.engines import unavailable

    result = _env()
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert f"cpu         {_cpuinfo_model()}:" in text and "gpus        none" in text
    assert "runs on CPU" in text.split("tensorflow  ", 1)[1].splitlines()[0]
    if unavailable("horovod") is None:
        assert "Gloo yes" in text.split("horovod     ", 1)[1].splitlines()[0]
    assert not [line for line in text.splitlines() if line.startswith("  FAIL")] and text.rstrip().endswith(" 0 FAIL: ready")
    data = json.loads(_env("--json").stdout)
    assert data["ready"] is True and data["system"]["tensorflow"]["gpus_seen"] == 0
    assert data["system"]["ranks"][0]["cores"] == sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize("kind, cvd, gpus_status, model", [
    ("h100x2", None, "FAIL", "NVIDIA H100 80GB HBM3"),
    ("h100x2", "0", "FAIL", "NVIDIA H100 80GB HBM3"),
    ("h100x2", "", "warn", "NVIDIA H100 80GB HBM3"),
    ("v100-old", None, "FAIL", "Tesla V100-SXM2-32GB"),
    ("broken", None, "FAIL", None),
])
def test_env_with_a_fake_nvidia_smi(tensorflow_installed, fake_smi_bin, kind, cvd, gpus_status, model):
    """This TensorFlow finds no GPU (no CUDA libraries, no driver): the driver's two GPUs are a FAIL with the fix."""
    extra = {"PATH": f"{fake_smi_bin}{os.pathsep}{os.environ['PATH']}", "FAKE_GPUS": kind}
    if cvd is not None:
        extra["CUDA_VISIBLE_DEVICES"] = cvd
    result = _env("--json", **extra)
    assert result.returncode == (1 if "FAIL" in (gpus_status,) else 0), result.stderr
    data = json.loads(result.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["gpus"]["status"] == gpus_status, checks["gpus"]
    host = data["system"]["hosts"][0]
    if model:
        assert [g["model"] for g in host["gpus"]] == [model] * 2 and data["system"]["label"].startswith(f"2x {model}")
        assert {g["compute_capability"] for g in host["gpus"]} == ({"9.0"} if kind == "h100x2" else {None})
    else:
        assert host["gpus"] == [] and "NVIDIA-SMI has failed" in host["gpu_error"]
    if gpus_status == "FAIL" and model:
        assert 'tensorflow[and-cuda]==' in checks["gpus"]["fix"]
    if "horovod" in checks and checks["horovod"]["status"] != "warn":  # Horovod without NCCL, on GPUs not hidden
        assert checks["horovod"]["status"] == ("FAIL" if model and cvd != "" else "ok")


def test_env_help_names_the_exit_status():
    result = _env("--help")
    assert result.returncode == 0 and "Exit status: 0 when no check FAILs (warnings allowed), 1 when one does." in result.stdout


# --- a real 2-rank run ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.horovod
def test_two_rank_record_names_each_ranks_own_cores(tmp_path):
    """Each rank confined to a different core (rank i to the other's): the record holds what each really had."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        pytest.skip("needs two cores")
    pin = tmp_path / "pin.sh"
    pin.write_text(f'#!/bin/sh\nif [ "$HOROVOD_LOCAL_RANK" = 0 ]; then c={cores[1]}; else c={cores[0]}; fi\n'
                   'exec taskset -c "$c" "$@"\n')
    pin.chmod(0o755)
    out = tmp_path / "run"
    run(horovodrun_cmd(2, str(pin), *bratsbench_cmd("train", "--synthetic", "--crop", "16", "16", "16", "--base-filters",
                                                     "4", "--depth", "2", "--synthetic-samples", "4", "--epochs", "1",
                                                     "--batch-size", "1", "--out", str(out))))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    s = record["system"]
    assert [r["cores"] for r in s["ranks"]] == [[cores[1]], [cores[0]]]
    assert [r["rank"] for r in s["ranks"]] == [0, 1] and {r["device"] for r in s["ranks"]} == {"CPU"}
    assert all(r["n_cores"] == 1 and r["intra_op_threads"] == 1 for r in s["ranks"])
    (host,) = s["hosts"]
    assert host["cpu_model"] == _cpuinfo_model() and host["hostname"] == record["hosts"][0]
    assert s["source"] == "ranks" and s["horovod"]["gloo"] is True and s["tensorflow"]["gpus_seen"] == 0
    assert s["label"] == system.label(s) and s["label"].endswith(f"TF {s['tensorflow']['version']} CPU")
    assert s["git"]["commit"] == record["git_commit"]  # the older top-level field agrees
    assert "HOROVOD_RANK" not in s["env"] and s["env"].get("HOROVOD_CYCLE_TIME") == "5"  # the engine's CPU setting
