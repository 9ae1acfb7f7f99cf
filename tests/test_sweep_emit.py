"""Emitted job arrays: resource lines, manifest, afterok chaining, and quoting that survives a real bash run.

The array scripts are executed with bash here (SLURM_ARRAY_TASK_ID / PBS_ARRAY_INDEX set by hand) with a fake
`srun`/`mpirun` on PATH that records its argv: the run-task step and all paths are real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.errors import UserError
from harness.sweep.emit import EmitOptions, emit
from harness.sweep.spec import parse_spec
from tests.conftest import proc_env

SPEC = {
    "name": "emitdemo",
    "axes": {"np": [1, 2, 4], "freeze_depth": [0, 1], "mode": ["transfer", "scratch"]},
    "fixed": {
        "model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
        "data": {"synthetic": True, "crop": [16, 16, 16]},
        "train": {"benchmark": True},
    },
    "transfer": {"source": ["flair", "t1ce"], "epochs": 1, "first_conv": "average"},
    "timeout_s": 120,
}
# Fake launcher: records its argv (NUL-separated); FAKE_RECORD=ok writes an ok record into --out, else it fails.
# `--version` answers as Open MPI's mpirun does (the system probe of a launcher-written record asks it).
FAKE = r"""#!/bin/bash
if [ "$1" = --version ]; then echo "mpirun (Open MPI) 4.1.4"; exit 0; fi  # the system probe asks, as mpirun answers
printf '%s\0' "$@" > "$FAKE_ARGV"
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
if [ "${FAKE_RECORD:-}" = ok ]; then
  printf '{"schema_version": 1, "status": "ok", "error": null, "extra": {}}' > "$out/record.json"
  exit 0
fi
echo "fake launcher: boom" >&2
exit 3
"""


def directives(text: str, prefix: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            body = line[len(prefix) + 1 :]
            key, _, value = body.partition("=") if body.startswith("--") else body.partition(" ")
            found[key] = value
    return found


@pytest.fixture
def weird(tmp_path):
    """Folders whose names hold a space, a quote and a dollar sign."""
    return tmp_path / "jo b's" / "x", tmp_path / "res ult's $HOME"


def fake_bin(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "fakebin"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(FAKE)
    (folder / name).chmod(0o755)
    return folder


def run_task(script: Path, index: int, env_var: str, tmp_path: Path, launcher: str, **extra: str):
    env = proc_env(**extra)
    env[env_var] = str(index)
    env["PATH"] = f"{fake_bin(tmp_path, launcher)}{os.pathsep}{env['PATH']}"
    env["FAKE_ARGV"] = str(tmp_path / "argv")
    (tmp_path / "argv").unlink(missing_ok=True)
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)


def manifest_rows(jobs: Path) -> list[dict[str, str]]:
    lines = (jobs / "manifest.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def test_slurm_scripts_resources_manifest_and_submit(weird):
    jobs, results = weird
    written = emit(parse_spec(SPEC), jobs, EmitOptions("slurm", results=results, limit=3, gpus_per_node=2, partition="gpu",
                                                       cores_per_node=16))
    rows = manifest_rows(jobs)
    plan = json.loads((jobs / "plan.json").read_text())["plan"]
    assert [(r["run_id"], r["label"]) for r in rows] == [(p["run_id"], p["label"]) for p in plan]
    for name in ("pretrain-np1", "run-np1", "run-np2", "run-np4"):
        mine = [r for r in rows if r["array"] == name]
        assert [int(r["index"]) for r in mine] == list(range(len(mine))) and mine
        text = written[name].read_text()
        np_ = int(name.rsplit("np", 1)[1])
        d = directives(text, "#SBATCH")
        assert d["--array"] == f"0-{len(mine) - 1}%3"
        assert d["--ntasks"] == str(np_) and d["--nodes"] == str(-(-np_ // 2))
        assert d["--gpus-per-node"] == str(min(np_, 2)) and d["--partition"] == "gpu"  # the GPUs its ranks use
        assert d["--cpus-per-task"] == "8"  # the node's 16 cores / 2 GPUs
        assert d["--output"] == "logs/%x-%A_%a.out" and d["--job-name"] == f"emitdemo-{name}"
        assert not re.search(r"\$\{[a-z]", text)  # every placeholder filled
        assert subprocess.run(["bash", "-n", str(written[name])]).returncode == 0
        cfg = json.loads((jobs / "configs" / f"{mine[0]['run_id']}.json").read_text())
        assert cfg["out"] == str(results / "runs" / mine[0]["run_id"])
    transfer = [r for r in rows if "transfer" in r["label"]]
    pre_id = rows[0]["run_id"]
    assert transfer and all(r["depends_on"] == pre_id and r["first_conv"] == "average" for r in transfer)
    submit = written["submit"].read_text()
    assert subprocess.run(["bash", "-n", str(written["submit"])]).returncode == 0
    assert "JOB_PRETRAIN_NP1=$(sbatch --parsable pretrain-np1.sbatch)" in submit
    for name in ("run-np1", "run-np2", "run-np4"):
        assert f"--dependency=afterok:${{JOB_PRETRAIN_NP1}} {name}.sbatch" in submit


def test_cpu_only_nodes_follow_tasks_per_node(tmp_path):
    spec = parse_spec({**SPEC, "axes": {"np": [4]}, "transfer": None})
    one = emit(spec, tmp_path / "a", EmitOptions("slurm"))
    d = directives(one["run-np4"].read_text(), "#SBATCH")
    assert (d["--nodes"], d["--ntasks"], d["--ntasks-per-node"]) == ("1", "4", "4")
    assert "--gpus-per-node" not in d and "--array" in d and d["--array"] == "0-0"
    two = emit(spec, tmp_path / "b", EmitOptions("slurm", tasks_per_node=2))
    d = directives(two["run-np4"].read_text(), "#SBATCH")
    assert (d["--nodes"], d["--ntasks-per-node"]) == ("2", "2")
    assert "sbatch" in two["submit"].read_text() and "dependency" not in two["submit"].read_text()


def test_array_task_runs_with_awkward_paths_and_settles_records(weird, tmp_path):
    jobs, results = weird
    written = emit(parse_spec(SPEC), jobs, EmitOptions("slurm", results=results, launcher="srun"))
    rows = manifest_rows(jobs)
    pre = rows[0]

    # the pre-training task: fake srun fails -> the record says failed, with the exit code and the log tail
    done = run_task(written["pretrain-np1"], 0, "SLURM_ARRAY_TASK_ID", tmp_path, "srun")
    assert done.returncode == 1, done.stderr
    argv = (tmp_path / "argv").read_text().split("\0")[:-1]
    run_dir = results / "runs" / pre["run_id"]
    assert argv[:4] == ["--ntasks=1", "--mpi=pmix", "--kill-on-bad-exit=1", "--label"]
    assert argv[argv.index("--config") + 1] == str(run_dir / "config.json")
    assert argv[argv.index("--out") + 1] == str(run_dir)
    assert json.loads((run_dir / "config.json").read_text())["out"] == str(run_dir)
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 3
    assert "fake launcher: boom" in record["log_tail"] and record["extra"]["sweep"]["label"] == pre["label"]

    # a transfer task whose pre-training failed is recorded failed without launching
    transfer = next(r for r in rows if r["array"] == "run-np2" and "transfer" in r["label"])
    script = written["run-np2"]
    done = run_task(script, int(transfer["index"]), "SLURM_ARRAY_TASK_ID", tmp_path, "srun")
    assert done.returncode == 1 and not (tmp_path / "argv").exists()
    record = json.loads((results / "runs" / transfer["run_id"] / "record.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"dependency {pre['run_id']} failed"

    # once the pre-training is ok: init_from points into it, and an ok launch is settled ok
    (run_dir / "record.json").write_text(json.dumps({"schema_version": 1, "status": "ok"}))
    done = run_task(script, int(transfer["index"]), "SLURM_ARRAY_TASK_ID", tmp_path, "srun", FAKE_RECORD="ok")
    assert done.returncode == 0, done.stdout + done.stderr
    argv = (tmp_path / "argv").read_text().split("\0")[:-1]
    assert argv[0] == "--ntasks=2"
    config = json.loads(Path(argv[argv.index("--config") + 1]).read_text())
    assert config["train"]["init_from"] == str(run_dir / "checkpoints")
    assert config["train"]["first_conv"] == "average"
    record = json.loads((results / "runs" / transfer["run_id"] / "record.json").read_text())
    assert record["status"] == "ok" and record["extra"]["sweep"]["np"] == 2
    # a second submission skips it
    done = run_task(script, int(transfer["index"]), "SLURM_ARRAY_TASK_ID", tmp_path, "srun")
    assert done.returncode == 0 and "already ok" in done.stdout and not (tmp_path / "argv").exists()
    index = json.loads((results / "sweep.json").read_text())
    assert index["runs"][transfer["run_id"]]["status"] == "ok"
    assert len(index["plan"]) == len(rows)


def test_pbs_arrays(tmp_path):
    spec = parse_spec({**SPEC, "axes": {"np": [2], "freeze_depth": [0, 1, 2], "mode": ["transfer"]}})
    written = emit(spec, tmp_path / "pbs", EmitOptions("pbs", limit=2, partition="workq", gpus_per_node=1, cpus_per_task=4))
    run = written["run-np2"].read_text()
    d = directives(run, "#PBS")
    assert d["-J"] == "0-2%2" and d["-q"] == "workq"
    assert "#PBS -l select=2:ncpus=4:mpiprocs=1:ngpus=1\n" in run  # np 2 over 1-GPU nodes, 4 cores per rank
    assert "PBS_ARRAY_INDEX" in run and not re.search(r"\$\{[a-z]", run)
    pre = written["pretrain-np1"].read_text()
    assert "#PBS -J" not in pre  # PBS refuses one-element arrays: a plain job, index 0
    for path in written.values():
        if path.suffix in (".pbs", ".sh"):
            assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path
    submit = written["submit"].read_text()
    assert "JOB_PRETRAIN_NP1=$(qsub pretrain-np1.pbs)" in submit
    assert "qsub -W depend=afterok:${JOB_PRETRAIN_NP1} run-np2.pbs" in submit

    # a subjob launches with mpirun; a failed launch is recorded with its exit code
    plan = json.loads((tmp_path / "pbs" / "plan.json").read_text())["plan"]
    results = tmp_path / "pbs" / "results" / "runs"
    (results / plan[0]["run_id"]).mkdir(parents=True)
    (results / plan[0]["run_id"] / "record.json").write_text(json.dumps({"schema_version": 1, "status": "ok"}))
    done = run_task(written["run-np2"], 1, "PBS_ARRAY_INDEX", tmp_path, "mpirun")
    assert done.returncode == 1
    argv = (tmp_path / "argv").read_text().split("\0")[:-1]
    assert argv[:2] == ["-np", "2"] and argv[argv.index("--out") + 1] == str(results / plan[2]["run_id"])
    record = json.loads((results / plan[2]["run_id"] / "record.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 3


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (EmitOptions("pbs", launcher="srun"), "--launcher srun does not work with pbs"),
        (EmitOptions("slurm", time="2h"), "--time '2h' must be HH:MM:SS"),
        (EmitOptions("slurm", partition="gpu; rm -rf /"), "--partition"),
        (EmitOptions("slurm", limit=0), "--limit 0 must be >= 1"),
        (EmitOptions("slurm", gpus_per_node=-1), "--gpus-per-node -1"),
    ],
)
def test_bad_emit_options(tmp_path, opts, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        emit(parse_spec(SPEC), tmp_path / "jobs", opts)
    assert not (tmp_path / "jobs").exists()


def test_cli_emit(tmp_path, cli):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    code, out, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(tmp_path / "j"), "--time", "01:00:00")
    assert code == 0, err
    assert "submit.sh" in out and (tmp_path / "j" / "submit.sh").exists()
    assert directives((tmp_path / "j" / "run-np2.sbatch").read_text(), "#SBATCH")["--time"] == "01:00:00"
    code, _, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(tmp_path / "k"), "--time", "soon")
    assert code == 2 and "HH:MM:SS" in err


# --- GPUs and cores per task, site options, the environment a job activates -----------------------------

GPU_SPEC = {
    "name": "gpu",
    "axes": {"np": [1, 2, 4, 8]},
    "fixed": {"model": {"base_filters": 4, "depth": 2, "modalities": ["t1", "t2"]},
              "data": {"synthetic": True, "crop": [16, 16, 16]}, "train": {"benchmark": True}},
}


def test_a_job_asks_for_the_gpus_and_cores_its_ranks_use(tmp_path):
    written = emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm", gpus_per_node=4, cores_per_node=64))
    shapes = {}
    for np_ in (1, 2, 4, 8):
        d = directives(written[f"run-np{np_}"].read_text(), "#SBATCH")
        shapes[np_] = (d["--nodes"], d["--ntasks-per-node"], d["--gpus-per-node"], d["--cpus-per-task"])
    assert shapes == {1: ("1", "1", "1", "16"), 2: ("1", "2", "2", "16"), 4: ("1", "4", "4", "16"),
                      8: ("2", "4", "4", "16")}  # min(np, 4) GPUs per node; 64 cores / 4 GPUs per rank
    mine = emit(parse_spec(GPU_SPEC), tmp_path / "k", EmitOptions("slurm", gpus_per_node=4, cpus_per_task=6))
    assert directives(mine["run-np2"].read_text(), "#SBATCH")["--cpus-per-task"] == "6"
    cpu = emit(parse_spec(GPU_SPEC), tmp_path / "c", EmitOptions("slurm", tasks_per_node=4, cores_per_node=32))
    assert directives(cpu["run-np2"].read_text(), "#SBATCH")["--cpus-per-task"] == "16"  # CPU: cores / ranks per node
    plain = emit(parse_spec(GPU_SPEC), tmp_path / "p", EmitOptions("slurm"))
    assert "--cpus-per-task" not in directives(plain["run-np2"].read_text(), "#SBATCH")  # CPU: SLURM's default


def test_site_options_become_directives(tmp_path):
    written = emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions(
        "slurm", gpus_per_node=4, cpus_per_task=8, exclusive=True, constraint="a100&ib", account="proj-42", qos="high",
        directives=("--mail-type=END", "#SBATCH --mail-user=me@example.org")))
    text = written["run-np4"].read_text()
    for line in ("--exclusive", "--constraint=a100&ib", "--account=proj-42", "--qos=high", "--mail-type=END",
                 "--mail-user=me@example.org", "--requeue", "--signal=B:USR1@300", "--open-mode=append"):
        assert f"#SBATCH {line}\n" in text
    assert "--max-requeues 3" in text
    pbs = emit(parse_spec(GPU_SPEC), tmp_path / "p", EmitOptions("pbs", gpus_per_node=4, cpus_per_task=8, account="proj-42",
                                                                  directives=("-M me@example.org",)))
    d = directives(pbs["run-np4"].read_text(), "#PBS")
    assert d["-A"] == "proj-42" and d["-M"] == "me@example.org"


def test_no_warning_and_no_requeues(tmp_path):
    text = emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm", warning_s=0, max_requeues=0))["run-np1"].read_text()
    assert "#SBATCH --signal" not in text and "#SBATCH --requeue" not in text and "--max-requeues 0" in text
    assert "# Preemption: no warning signal is asked for and the task does not requeue itself" in text


def test_runs_that_ignore_the_warning_are_refused(tmp_path):
    spec = {**GPU_SPEC, "fixed": {**GPU_SPEC["fixed"], "train": {"benchmark": True, "stop_signals": ["TERM"]}}}
    with pytest.raises(UserError, match=r"does not stop on SIGUSR1 .*--warning-s 0"):
        emit(parse_spec(spec), tmp_path / "j", EmitOptions("slurm"))
    assert not (tmp_path / "j").exists()
    assert emit(parse_spec(spec), tmp_path / "j", EmitOptions("slurm", warning_s=0))


@pytest.mark.parametrize("kind", ["venv", "conda-folder", "conda-name"])
def test_the_job_activates_a_named_environment(tmp_path, kind):
    folder = tmp_path / "envs" / "bb"
    if kind == "venv":
        (folder / "bin").mkdir(parents=True)
        (folder / "bin" / "activate").write_text("")
        given, line = str(folder), f"source {folder}/bin/activate"
    elif kind == "conda-folder":
        (folder / "conda-meta").mkdir(parents=True)
        given, line = str(folder), f"conda activate {folder}"
    else:
        given, line = "bratsbench-gpu", "conda activate bratsbench-gpu"
    setup = tmp_path / "site.sh"
    setup.write_text("module load cuda/12.4\nexport NCCL_DEBUG=WARN")
    text = emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm", env=given, setup=setup))["run-np2"].read_text()
    lines = text.splitlines()
    assert lines.index("module load cuda/12.4") < lines.index("export NCCL_DEBUG=WARN") < lines.index(line)
    assert ('eval "$(conda shell.bash hook)"' in text) == kind.startswith("conda")
    assert lines.index(line) < next(i for i, s in enumerate(lines) if s.startswith("bratsbench sweep run-task"))
    assert sys.executable not in text and "PYTHON=" not in text  # no interpreter baked in
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0


def test_without_env_the_job_activates_the_environment_that_emitted_it(tmp_path):
    text = emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm"))["run-np1"].read_text()
    prefix = Path(sys.prefix)
    assert f"# activate the virtual environment {prefix}, which ran `bratsbench sweep emit`" in text
    assert f"source {prefix}/bin/activate\n" in text and "PYTHON=" not in text


def test_a_job_without_bratsbench_after_its_set_up_stops_with_one_line(tmp_path):
    venv = tmp_path / "empty-env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f"export PATH={venv}/bin:/usr/bin:/bin\n")
    written = emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm", env=str(venv)))
    env = {"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(written["run-np1"])], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"bratsbench: error: no bratsbench command after the set-up and activating the virtual environment {venv} "
        "(check --setup and --env)"]


# a fake `bratsbench`: records the signals it gets, exits 75 on SIGUSR1 (a preempted run asking to be requeued);
# a fake `scontrol` records its arguments
FAKE_TASK = f"""#!{sys.executable}
import os, signal, sys, time
log = os.environ["FAKE_LOG"]
def stop(s, f):
    open(log, "a").write(signal.Signals(s).name + "\\n")
    sys.exit(75 if s == signal.SIGUSR1 else 1)
for s in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(s, stop)
open(log, "a").write("started " + " ".join(sys.argv[1:4]) + "\\n")
time.sleep(30)
"""


def test_the_batch_shell_passes_the_warning_on_and_requeues_only_its_array_task(tmp_path):
    written = emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm", max_requeues=2))
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "bratsbench").write_text(FAKE_TASK)
    (fake / "scontrol").write_text('#!/bin/bash\necho "scontrol $*" >> "$FAKE_LOG"\n')
    for name in ("bratsbench", "scontrol"):
        (fake / name).chmod(0o755)
    env = proc_env(SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="41", FAKE_LOG=str(tmp_path / "log"))
    # the job's activation would put the real bratsbench first: run it with the fake one first on PATH instead
    script = written["run-np1"].read_text().replace(f"source {sys.prefix}/bin/activate", f'export PATH={fake}:"$PATH"')
    (tmp_path / "job.sh").write_text(script)
    proc = subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "started" not in (tmp_path / "log").read_text() if (tmp_path / "log").exists() else True:
        time.sleep(0.1)
    time.sleep(0.5)  # the fake has its handlers
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@S and scancel --batch send: the batch shell only
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    assert (tmp_path / "log").read_text().splitlines() == ["started sweep run-task --plan", "SIGUSR1",
                                                          "scontrol requeue 41_0"]


@pytest.mark.parametrize("extra, fragment", [
    (["--max-requeues", "-1"], "--max-requeues -1 must be >= 0"),
    (["--setup", "/nonexistent/site.sh"], "--setup /nonexistent/site.sh: no such file"),
    (["--cpus-per-task", "0"], "--cpus-per-task 0 must be >= 1"),
    (["--cores-per-node", "0"], "--cores-per-node 0 must be >= 1"),
    (["--gpus-per-node", "4"], "--gpus-per-node 4 needs --cpus-per-task N"),
    (["--gpus-per-node", "4", "--cores-per-node", "2"], "--cores-per-node 2 is fewer than --gpus-per-node 4"),
    (["--tasks-per-node", "2", "--cpus-per-task", "8", "--cores-per-node", "8"], "2 rank(s) per node x --cpus-per-task 8"),
    (["--warning-s", "-5"], "--warning-s -5 must be >= 0"),
    (["--warning-s", "3600", "--time", "01:00:00"], "--warning-s 3600 is not shorter than"),
    (["--scheduler", "pbs", "--max-requeues", "2"], "--max-requeues is SLURM-only"),
    (["--scheduler", "pbs", "--qos", "high"], "--qos is a SLURM option"),
    (["--constraint", "a100 gpu"], "--constraint 'a100 gpu'"),
    (["--account", "x;y"], "--account 'x;y'"),
    (["--directive", "mail-type=END"], "--directive 'mail-type=END' is not one slurm option line"),
    (["--env", "/nonexistent/env"], "--env /nonexistent/env: no such folder"),
    (["--env", "my env"], "--env 'my env': a conda environment's name"),
])
def test_bad_site_and_preemption_options_are_one_line_and_write_nothing(tmp_path, cli, extra, fragment):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({**GPU_SPEC, "axes": {"np": [1, 2]}}))
    args = ["--scheduler", "slurm", *extra] if "--scheduler" not in extra else extra
    code, out, err = cli("sweep", "emit", str(spec), "--out", str(tmp_path / "jobs"), *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("bratsbench: error: ") and fragment in err, err
    assert not (tmp_path / "jobs").exists()


def test_an_env_folder_that_is_no_environment_is_refused(tmp_path, cli):
    with pytest.raises(UserError, match="is neither a virtual environment"):
        emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm", env=str(tmp_path)))
    (tmp_path / "dir.sh").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        emit(parse_spec(GPU_SPEC), tmp_path / "j", EmitOptions("slurm", setup=tmp_path / "dir.sh"))
    assert not (tmp_path / "j").exists()


def test_the_gpu_example_emits_jobs_that_activate_a_named_environment(tmp_path, cli):
    """examples/sweep-gpu-cluster.yaml plans, and emits 4-GPU-node arrays whose jobs ask for the GPUs their np uses
    and activate the environment they are told to, with no interpreter path of the machine that emitted them."""
    spec = Path(__file__).resolve().parents[1] / "examples" / "sweep-gpu-cluster.yaml"
    code, out, err = cli("sweep", "plan", str(spec))
    assert code == 0, err
    code, out, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--gpus-per-node", "4", "--cpus-per-task", "8",
                         "--env", "bratsbench-gpu", "--out", str(tmp_path / "jobs"))
    assert code == 0, err
    gpus = {}
    for np_ in (1, 2, 4, 8):
        text = (tmp_path / "jobs" / f"run-np{np_}.sbatch").read_text()
        d = directives(text, "#SBATCH")
        gpus[np_] = (d["--nodes"], d["--gpus-per-node"], d["--cpus-per-task"])
        assert 'eval "$(conda shell.bash hook)"\nconda activate bratsbench-gpu\n' in text
        assert "# activate the conda environment bratsbench-gpu\n" in text
        assert sys.executable not in text and sys.prefix not in text and "PYTHON=" not in text
        assert "\nbratsbench sweep run-task " in text
    assert gpus == {1: ("1", "1", "8"), 2: ("1", "2", "8"), 4: ("1", "4", "8"), 8: ("2", "4", "8")}
