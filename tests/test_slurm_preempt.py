"""Preemption, requeue and resume, wall-time limits, and cores per rank, in a real one-node SLURM cluster.

The cluster is the one of tests/slurm_cluster.py with what a production site has and the tests need:
task/affinity (each srun task is bound to its --cpus-per-task cores, the batch step to the job's), JobRequeue=1,
KillWait=10 (the seconds between SIGTERM and SIGKILL) and a requeue delay of 66 s (slurmctld holds a requeued job
for AuthInfo's cred_expire + 1 s; the default is 121 s). The delay must outlast slurmctld's retry of a message a
busy slurmd did not answer in time (every 60 s): a requeue's terminate for job J, retried after J restarted under
the same ID, cancels the new attempt's step. With a delay of 11 s that happened in about one run in three on 2
loaded cores ("Socket timed out on send/recv", then `STEP J.0 CANCELLED` about 60 s later).

A preemption is `scancel --batch --signal=USR1` (what `--signal=B:USR1@S` sends: the batch shell passes it on) or
`scancel --signal=USR1` (the job's steps: srun's ranks get it directly), sent once a run has finished its first
epoch, so that it lands mid-run. Every run's twin (`repeats: 2`) computes the same thing uninterrupted: the final
weights checksums must be equal.

Should a retry still come later than the delay, the new attempt's ranks get SIGTERM, which these tests never send,
and the run ends `preempted` ("the job is ending"), as it should: such a scenario stops there and runs once more, its
first logs printed (the daemons log at debug level, and the context lists their lines on signals and kills).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

from tests.conftest import proc_env
from tests.slurm_cluster import running_cluster
from tests.test_slurm import _index_status, _records

WAIT_S = 420
TRAIN = "{batch_size: 1, epochs: 3, steps_per_epoch: 300, threads: 1, backend: %s}"
SPEC = """
name: pre-{backend}
repeats: {repeats}
axes:
  np: [2]
fixed:
  model: {{base_filters: 4, depth: 2, modalities: [t1, t2]}}
  data: {{synthetic: true, crop: [16, 16, 16], synthetic_samples: 4, val_cases: 1}}
  train: %s
timeout_s: 600
"""


@pytest.fixture(scope="module")
def cluster():
    yield from running_cluster(lambda c: {"TaskPlugin": "task/affinity", "JobRequeue": "1", "KillWait": "10",
                                          "AuthInfo": f"socket={c.socket},cred_expire=65",
                                          "SlurmctldDebug": "debug", "SlurmdDebug": "debug"})


def _emit(cli, folder: Path, spec_text: str, *extra: str) -> tuple[Path, Path, list[dict]]:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.yaml"
    spec.write_text(spec_text)
    jobs, results = folder / "jobs", folder / "results"
    code, _, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(jobs), "--results", str(results),
                       "--launcher", "srun", "--time", "00:10:00", *extra)
    assert code == 0, err
    return jobs, results, json.loads((jobs / "plan.json").read_text())["plan"]


def _submit(cluster, jobs: Path) -> str:
    out = cluster.run(["bash", str(jobs / "submit.sh")], env=proc_env(SLURM_CONF=cluster.env["SLURM_CONF"])).stdout
    return out.rsplit("job ", 1)[1].split()[0]


def _context(cluster, jobs: Path, results: Path) -> str:
    parts = [f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((jobs / "logs").glob("*.out"))]
    parts += [f"== {p}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(results.glob("runs/*/logs/*.log"))]
    # the daemons log at debug level here: their lines on signals, kills and cancels say who stopped a step
    said = [line for path in sorted((cluster.root / "log").glob("slurm*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if any(word in line.lower() for word in ("signal", "terminat", "kill", "cancel", "requeue"))]
    return "\n".join(parts) + "\n" + cluster.logs(15) + "\n== signals, kills, cancels\n" + "\n".join(said[-60:])


def _drive(cluster, results: Path, plan: list[dict], job: str, signals: dict[int, int], scancel: list[str]) -> dict:
    """Wait until every run is settled ok or failed; meanwhile send array task i its `signals[i]` preemptions, each
    once its run is training past its first epoch (again after each requeue). Returns {run_id: status}."""
    sent = {i: 0 for i in signals}
    attempt_seen = {i: None for i in signals}
    clients: list[subprocess.Popen] = []
    deadline = time.monotonic() + WAIT_S
    try:
        return _drive_until(cluster, results, plan, job, signals, scancel, sent, attempt_seen, clients, deadline)
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
            client.wait()


def _drive_until(cluster, results, plan, job, signals, scancel, sent, attempt_seen, clients, deadline) -> dict:
    states: dict = {}
    signalled: dict[int, subprocess.Popen] = {}
    while time.monotonic() < deadline:
        states = {p["run_id"]: _index_status(results, p["run_id"]) for p in plan}
        for i, wanted in signals.items():
            record = _records(results, [plan[i]["run_id"]]).get(plan[i]["run_id"], {})
            started = record.get("started_at")
            if i in signalled and record.get("status") != "running":
                # the run stopped: end the scancel if it still waits. Seen: a `scancel --batch` whose signal was
                # delivered did not return while the task requeued itself, and sent it again to the next attempt
                client = signalled.pop(i)
                if client.poll() is None:
                    client.kill()
            if (sent[i] < wanted and record.get("status") == "running" and record.get("history")
                    and attempt_seen[i] != started):
                attempt_seen[i] = started
                time.sleep(0.5)
                clients.append(subprocess.Popen(["scancel", *scancel, f"{job}_{i}"], env=cluster.env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                signalled[i] = clients[-1]
                sent[i] += 1
        if all(s in ("ok", "failed") for s in states.values()) and all(sent[i] == n for i, n in signals.items()):
            return states
        if _cancelled_by_slurm(_records(results, list(states))):
            return states
        time.sleep(0.3)
    return states


class Scenario(NamedTuple):
    jobs: Path
    results: Path
    plan: list[dict]
    job: str
    states: dict
    records: dict
    context: str


def _cancelled_by_slurm(records: dict) -> bool:
    """A run stopped by SIGTERM: these tests send USR1 only, so SLURM cancelled its step (see the module's note)."""
    return any(r.get("status") == "preempted" and (r.get("extra", {}).get("preempted") or {}).get("signal") == "TERM"
               for r in records.values())


def _once_more_if_slurm_cancelled(cluster, scenario: Callable[[Path], Scenario], folder: Path) -> Scenario:
    first = scenario(folder / "first")
    if not _cancelled_by_slurm(first.records):
        return first
    print("SLURM cancelled a resumed attempt's step with SIGTERM; running the scenario once more. Its logs:")
    print(first.context)
    cluster.run(["scancel", first.job])  # its other tasks must not share the cores with the second run
    deadline = time.monotonic() + 60
    while cluster.run(["squeue", "-h", "-j", first.job], check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    return scenario(folder / "again")


@pytest.mark.slow
@pytest.mark.horovod
def test_horovod_task_preempted_requeues_itself_resumes_exactly_and_the_cap_holds(cluster, tmp_path, cli):
    """np=2 Horovod under srun: the warning as SLURM sends it (to the batch shell only) reaches the ranks; the
    task requeues itself and resumes from the checkpoint's step to the weights of the uninterrupted twin. A run
    preempted twice with --max-requeues 1 ends failed, saying why, and the array's other tasks run."""
    def scenario(folder: Path) -> Scenario:
        text = SPEC.format(backend="horovod", repeats=3) % (TRAIN % "horovod")
        jobs, results, plan = _emit(cli, folder, text, "--cpus-per-task", "1", "--max-requeues", "1")
        sbatch = (jobs / "run-np2.sbatch").read_text()
        assert "#SBATCH --requeue\n" in sbatch and "#SBATCH --signal=B:USR1@300\n" in sbatch
        labels = [p["label"] for p in plan]
        assert labels == [f"np2-b1-k0-scratch-s0-r{i}" for i in range(3)]  # the same computation three times
        job = _submit(cluster, jobs)
        states = _drive(cluster, results, plan, job, {0: 1, 2: 2}, ["--batch", "--signal=USR1"])
        records = _records(results, [p["run_id"] for p in plan])
        return Scenario(jobs, results, plan, job, states, records, _context(cluster, jobs, results))

    jobs, results, plan, job, states, records, context = _once_more_if_slurm_cancelled(cluster, scenario, tmp_path)
    assert states == {plan[0]["run_id"]: "ok", plan[1]["run_id"]: "ok", plan[2]["run_id"]: "failed"}, context

    resumed, twin = records[plan[0]["run_id"]], records[plan[1]["run_id"]]
    (stop,) = resumed["extra"]["preemptions"]
    assert stop["signal"] == "USR1" and stop["checkpoint"] and stop["ranks_signalled"] == 2
    assert 300 < stop["step"] < 900  # mid-run, after the first epoch
    assert resumed["extra"]["resumes"] == 1 and [h["step"] for h in resumed["history"]] == [300, 600, 900]
    assert resumed["model"]["replica_checksums"] == twin["model"]["replica_checksums"], context
    assert len(set(resumed["model"]["replica_checksums"])) == 1
    assert "resumed from the checkpoint" in (results / "runs" / plan[0]["run_id"] / "logs" / "launcher.log").read_text()
    log = (jobs / "logs" / f"pre-horovod-run-np2-{job}_0.out").read_text()
    assert f"requeueing array task {job}_0 (1 of at most 1)" in log and "restart 1" in log, log

    capped = records[plan[2]["run_id"]]
    assert capped["status"] == "failed" and "--max-requeues 1 reached" in capped["error"], capped["error"]
    assert capped["extra"]["preempted"]["step"] > capped["extra"]["preemptions"][0]["step"]  # resumed, then again
    index = json.loads((results / "sweep.json").read_text())["runs"]
    assert "--max-requeues 1 reached" in index[plan[2]["run_id"]]["error"]


@pytest.mark.slow
@pytest.mark.mwms
def test_mwms_task_preempted_through_its_step_resumes_exactly(cluster, tmp_path, cli):
    """np=2 MWMS workers started by srun get `scancel --signal=USR1` themselves (the job's steps, not the batch
    shell); the record says preempted at step N, the task requeues itself and the run ends with its twin's weights."""
    def scenario(folder: Path) -> Scenario:
        text = SPEC.format(backend="mwms", repeats=2) % (TRAIN % "mwms")
        jobs, results, plan = _emit(cli, folder, text, "--cpus-per-task", "1")
        job = _submit(cluster, jobs)
        states = _drive(cluster, results, plan, job, {0: 1}, ["--signal=USR1"])
        records = _records(results, [p["run_id"] for p in plan])
        return Scenario(jobs, results, plan, job, states, records, _context(cluster, jobs, results))

    jobs, results, plan, job, states, records, context = _once_more_if_slurm_cancelled(cluster, scenario, tmp_path)
    assert set(states.values()) == {"ok"}, context
    resumed, twin = records[plan[0]["run_id"]], records[plan[1]["run_id"]]
    (stop,) = resumed["extra"]["preemptions"]
    assert stop["signal"] == "USR1" and 300 < stop["step"] < 900 and resumed["extra"]["resumes"] == 1
    assert resumed["engine"]["name"] == "mwms"
    assert resumed["model"]["replica_checksums"] == twin["model"]["replica_checksums"], context


CORES_SPEC = """
name: cores{n}
axes:
  np: [1]
fixed:
  model: {{base_filters: 4, depth: 2, modalities: [t1, t2]}}
  data: {{synthetic: true, crop: [16, 16, 16], synthetic_samples: 4, val_cases: 1}}
  train: {{batch_size: 1, benchmark: true, bench_warmup: 1, bench_steps: 2}}
timeout_s: 600
"""


@pytest.mark.slow
def test_cpus_per_task_is_each_ranks_cores_and_threads(cluster, tmp_path, cli):
    """Tasks emitted with --cpus-per-task 1 and 2 (no `threads` in the spec) run 1 and 2 threads on 1 and 2 cores."""
    emitted = {n: _emit(cli, tmp_path / f"c{n}", CORES_SPEC.format(n=n), "--cpus-per-task", str(n)) for n in (1, 2)}
    for n, (jobs, _, _) in emitted.items():
        assert f"#SBATCH --cpus-per-task={n}\n" in (jobs / "run-np1.sbatch").read_text()
        _submit(cluster, jobs)
    for n, (jobs, results, plan) in emitted.items():
        deadline = time.monotonic() + WAIT_S
        rid = plan[0]["run_id"]
        while time.monotonic() < deadline and _index_status(results, rid) not in ("ok", "failed"):
            time.sleep(0.5)
        record = _records(results, [rid]).get(rid, {})
        assert record.get("status") == "ok", _context(cluster, jobs, results)
        ranks = record["system"]["ranks"]  # the record's system section: what each rank had
        assert [(r["n_cores"], r["intra_op_threads"]) for r in ranks] == [(n, n)], ranks
        assert (len(record["timing"]["cores"]), record["timing"]["threads_per_rank"]) == (n, n)


WALL_SPEC = """
name: wall-{name}
axes:
  np: [1]
fixed:
  model: {{base_filters: 4, depth: 2, modalities: [t1, t2]}}
  data: {{synthetic: true, crop: [16, 16, 16], synthetic_samples: 4, val_cases: 1}}
  train: {{batch_size: 1, epochs: 1, steps_per_epoch: 1000000, threads: 1, stop_signals: {signals}}}
timeout_s: 600
"""


@pytest.mark.slow
def test_wall_time_limit_without_a_warning(cluster, tmp_path, cli):
    """Runs longer than their one-minute --time, emitted without a warning (--warning-s 0). The one that stops on
    SIGTERM (the default) checkpoints at the limit's SIGTERM and is recorded preempted, not requeued (the job is
    ending); the one that does not is recorded failed, naming the wall-time limit."""
    emitted = {}
    for name, signals in (("term", "[USR1, TERM]"), ("none", "[USR1]")):
        emitted[name] = _emit(cli, tmp_path / name, WALL_SPEC.format(name=name, signals=signals), "--cpus-per-task", "1",
                              "--warning-s", "0", "--time", "00:01:00")
        assert "#SBATCH --signal" not in (emitted[name][0] / "run-np1.sbatch").read_text()
        emitted[name] = (*emitted[name], _submit(cluster, emitted[name][0]))
    for name, (jobs, results, plan, job) in emitted.items():
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and cluster.run(["squeue", "-h", "-j", job], check=False).stdout.strip():
            time.sleep(1)
    jobs, results, plan, job = emitted["term"]
    record = _records(results, [plan[0]["run_id"]])[plan[0]["run_id"]]
    context = _context(cluster, jobs, results)
    assert record["status"] == "preempted" and record["exit_code"] == 75, context
    assert record["extra"]["preempted"]["signal"] == "TERM" and record["extra"]["preempted"]["checkpoint"]
    assert (results / "runs" / plan[0]["run_id"] / "checkpoints" / "checkpoint").is_file()
    assert "Restarts=0" in cluster.run(["scontrol", "show", "job", job]).stdout  # not requeued

    jobs, results, plan, job = emitted["none"]
    record = _records(results, [plan[0]["run_id"]])[plan[0]["run_id"]]
    assert record["status"] == "failed", _context(cluster, jobs, results)
    assert record["error"].startswith(f"killed at the wall-time limit of job {job}_0 (--time 00:01:00)"), record["error"]
