"""The emitted SLURM job arrays run for real: a local slurmctld + slurmd, sbatch via submit.sh, srun launches.

The sweep has a pre-training array (1 task) and a 3-task run array (freeze depths 0-2) chained with --dependency=afterok, and both the job
folder and the results folder have a space and a quote in their paths (every interpolated value is quoted).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import proc_env
from tests.slurm_cluster import slurm_cluster  # noqa: F401 - the fixture

SPEC = """
name: slurmtest
axes:
  freeze_depth: [0, 1, 2]
  mode: [transfer]
fixed:
  model: {base_filters: 4, depth: 2, modalities: [t1, t2]}
  data: {synthetic: true, crop: [16, 16, 16], synthetic_samples: 4, val_cases: 1}
  train: {batch_size: 1, benchmark: true, bench_warmup: 2, bench_steps: 3}
transfer: {source: [flair], epochs: 1, steps_per_epoch: 2}
timeout_s: 600
"""
WAIT_S = 300


def _records(results: Path, ids: list[str]) -> dict[str, dict]:
    found = {}
    for rid in ids:
        try:
            found[rid] = json.loads((results / "runs" / rid / "record.json").read_text())
        except (OSError, ValueError):
            pass
    return found


def _index_status(results: Path, rid: str) -> str | None:
    try:
        return json.loads((results / "sweep.json").read_text())["runs"][rid]["status"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_emitted_array_runs_under_slurm(slurm_cluster, tmp_path, cli):  # noqa: F811
    spec = tmp_path / "slurmtest.yaml"
    spec.write_text(SPEC)
    jobs = tmp_path / "jo bs's"
    results = tmp_path / "res ult's"
    code, out, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(jobs), "--results", str(results),
                         "--limit", "2", "--time", "00:10:00", "--launcher", "srun")
    assert code == 0, err
    manifest = [line.split("\t") for line in (jobs / "manifest.tsv").read_text().splitlines()[1:]]
    plan = json.loads((jobs / "plan.json").read_text())["plan"]
    assert [(row[2], row[3]) for row in manifest] == [(p["run_id"], p["label"]) for p in plan]
    assert [row[0] for row in manifest] == ["pretrain-np1"] + ["run-np1"] * 3
    ids = [p["run_id"] for p in plan]

    env = proc_env(SLURM_CONF=slurm_cluster.env["SLURM_CONF"])
    submitted = slurm_cluster.run(["bash", str(jobs / "submit.sh")], env=env)
    job_ids = [line.rsplit("job ", 1)[1].split()[0] for line in submitted.stdout.splitlines()]
    assert len(job_ids) == 2, submitted.stdout
    deps = slurm_cluster.run(["squeue", "-h", "-j", job_ids[1], "-o", "%E"], check=False).stdout
    assert not deps.strip() or f"afterok:{job_ids[0]}" in deps  # empty once the pre-training has finished

    # done when finish-task has settled every run in sweep.json (a record says "ok" a moment before that)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        states = {rid: _index_status(results, rid) for rid in ids}
        if all(s in ("ok", "failed") for s in states.values()) or "failed" in states.values():
            break
        time.sleep(1)
    records = _records(results, ids)
    task_logs = sorted((jobs / "logs").glob("*.out"))
    context = "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in task_logs) + "\n" + slurm_cluster.logs(10)
    assert {rid: records.get(rid, {}).get("status") for rid in ids} == {rid: "ok" for rid in ids}, context

    by_label = {p["label"]: p for p in plan}
    for rid, record in records.items():
        label = record["extra"]["sweep"]["label"]
        assert by_label[label]["run_id"] == rid
        assert record["config"]["out"] == str(results / "runs" / rid)
        assert record["world_size"] == 1
        if by_label[label]["kind"] == "run":
            pre = by_label[label]["depends_on"][0]
            assert record["model"]["init"]["from"] == str(results / "runs" / pre / "checkpoints")
    # each record names its array task: the array's job ID (sbatch's), the task's index, a job ID of its own
    array_of = {name: job_ids[i] for i, name in enumerate(dict.fromkeys(row[0] for row in manifest))}
    for name, task, rid, *_ in manifest:
        job = records[rid]["system"]["scheduler"]
        assert (job["kind"], job["array_job_id"], job["array_task_id"]) == ("slurm", array_of[name], task), rid
        assert job["step_id"] is not None and job["nodelist"]  # srun's step, inside the allocation
    assert len({records[row[2]]["system"]["scheduler"]["job_id"] for row in manifest}) == len(manifest)
    # one SLURM log per array task, named %x-%A_%a.out
    expected = {f"slurmtest-pretrain-np1-{job_ids[0]}_0.out"}
    expected |= {f"slurmtest-run-np1-{job_ids[1]}_{i}.out" for i in range(3)}
    assert {p.name for p in task_logs} == expected
    index = json.loads((results / "sweep.json").read_text())
    assert {rid: index["runs"][rid]["status"] for rid in ids} == {rid: "ok" for rid in ids}


MWMS_SPEC = """
name: mwmsslurm
axes:
  np: [2]
  backend: [mwms]
fixed:
  model: {base_filters: 4, depth: 2, modalities: [t1, t2]}
  data: {synthetic: true, crop: [16, 16, 16], synthetic_samples: 4, val_cases: 1}
  train: {batch_size: 1, benchmark: true, bench_warmup: 2, bench_steps: 3, threads: 1}
timeout_s: 600
"""


@pytest.mark.slow
@pytest.mark.mwms
def test_emitted_mwms_task_builds_tf_config_from_srun(slurm_cluster, tmp_path, cli):  # noqa: F811
    """Two MWMS workers started by srun find each other through TF_CONFIG built from SLURM's step variables."""
    spec = tmp_path / "mwms.yaml"
    spec.write_text(MWMS_SPEC)
    jobs, results = tmp_path / "jobs", tmp_path / "results"
    code, out, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(jobs), "--results", str(results),
                         "--time", "00:10:00", "--launcher", "srun")
    assert code == 0, err
    (run,) = json.loads((jobs / "plan.json").read_text())["plan"]
    env = proc_env(SLURM_CONF=slurm_cluster.env["SLURM_CONF"])
    slurm_cluster.run(["bash", str(jobs / "submit.sh")], env=env)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and _index_status(results, run["run_id"]) not in ("ok", "failed"):
        time.sleep(1)
    context = "\n".join(p.read_text()[-3000:] for p in sorted((jobs / "logs").glob("*.out"))) + slurm_cluster.logs(10)
    record = _records(results, [run["run_id"]]).get(run["run_id"], {})
    assert record.get("status") == "ok", context
    assert record["engine"]["name"] == "mwms" and record["world_size"] == 2
    assert len(record["model"]["replica_checksums"]) == 2 and len(set(record["model"]["replica_checksums"])) == 1
