"""Cost of the run record's system probe (harness.system.collect) on one rank, against TensorFlow's import.

Each round is a fresh process that imports TensorFlow (timed: the baseline, which every rank pays anyway), then
times `collect` twice: cold (the first call of a run: Horovod's build flags import horovod.tensorflow, `mpirun
--version`, `git status`, nvidia-smi where present, /proc/cpuinfo) and warm (a packed sweep's later points: the
host and MPI parts are cached). Prints the median and min-max over rounds, and cold / import.
Usage: python bench/bench_system_probe.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env  # noqa: E402

ROUND = """
import json, time
t = time.perf_counter()
import harness, tensorflow as tf
t_import = time.perf_counter() - t
from harness.system import collect
class Place: rank, local_rank, device = 0, 0, "CPU"
t = time.perf_counter(); section = collect(Place(), None); cold = time.perf_counter() - t
t = time.perf_counter(); collect(Place(), None); warm = time.perf_counter() - t
print(json.dumps({"import": t_import, "cold": cold, "warm": warm, "label": section["label"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    rows = []
    for _ in range(a.rounds):
        out = subprocess.run([sys.executable, "-c", ROUND], env=env(), capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"system: {rows[0]['label']}; {a.rounds} fresh processes")
    for key, name in (("import", "import tensorflow (baseline)"), ("cold", "collect, first call"),
                      ("warm", "collect, cached host and MPI")):
        values = [r[key] * 1000 for r in rows]
        print(f"  {name:<30} median {statistics.median(values):8.1f} ms  (min {min(values):.1f}, max {max(values):.1f})")
    ratio = statistics.median(r["cold"] / r["import"] for r in rows)
    print(f"  first call / TensorFlow import: {ratio:.3f}")


if __name__ == "__main__":
    main()
