"""An emitted packed sweep (`sweep emit --pack 2`) runs for real in the one-node SLURM cluster: one job of two
ranks, one srun step, the pre-training's wave before the transfer runs' waves, every record settled ok."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import proc_env
from tests.slurm_cluster import slurm_cluster  # noqa: F401 - the fixture
from tests.test_slurm import SPEC, WAIT_S, _index_status, _records


@pytest.mark.slow
@pytest.mark.horovod
def test_emitted_packed_sweep_runs_in_one_allocation(slurm_cluster, tmp_path, cli):  # noqa: F811
    spec = tmp_path / "slurmtest.yaml"
    spec.write_text(SPEC)
    jobs, results = tmp_path / "jobs", tmp_path / "results"
    code, out, err = cli("sweep", "emit", str(spec), "--scheduler", "slurm", "--out", str(jobs), "--results", str(results),
                         "--pack", "2", "--time", "00:10:00")
    assert code == 0, err
    script = (jobs / "pack.sbatch").read_text()
    assert "#SBATCH --ntasks=2" in script and "#SBATCH --nodes=1" in script and "--array" not in script
    assert not list(jobs.glob("*-np*.sbatch"))  # no arrays beside the packed job
    plan = json.loads((jobs / "plan.json").read_text())["plan"]
    ids = [p["run_id"] for p in plan]

    env = proc_env(SLURM_CONF=slurm_cluster.env["SLURM_CONF"])
    submitted = slurm_cluster.run(["bash", str(jobs / "submit.sh")], env=env)
    assert submitted.stdout.startswith("pack: 4 run(s), job "), submitted.stdout
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not all(_index_status(results, rid) in ("ok", "failed") for rid in ids):
        time.sleep(1)
    records = _records(results, ids)
    context = "\n".join(p.read_text()[-3000:] for p in sorted((jobs / "logs").glob("*.out"))) + slurm_cluster.logs(10)
    assert {rid: records.get(rid, {}).get("status") for rid in ids} == {rid: "ok" for rid in ids}, context
    waves = {p["label"]: records[p["run_id"]]["extra"]["pack"]["wave"] for p in plan}
    pre = next(label for label in waves if label.startswith("pretrain"))
    assert waves[pre] == 1 and all(w > 1 for label, w in waves.items() if label != pre)
    assert sorted(waves.values()) == [1, 2, 2, 3]  # the three transfer runs two by two on the two ranks
    for p in plan:
        if p["kind"] == "run":
            assert records[p["run_id"]]["model"]["init"]["from"] == str(results / "runs" / p["depends_on"][0] / "checkpoints")
    assert len(list((jobs / "logs").glob("slurmtest-pack-*.out"))) == 1
