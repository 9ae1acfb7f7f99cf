"""`bratsbench compare` on 10,000 run records: its own cost against reading the same records.

Writes two results folders into a temporary folder (POINTS points x REPEATS repeats each; 1,667 x 3 x 2 = 10,002
records by default), each record shaped as the trainer writes it (config, versions, a system section with hosts,
ranks and environment, timing with percentiles and memory, phases, a short history, extra.sweep; about 6 KB), B 3%
slower than A at every point with 2% noise. Then, in alternating order for ROUNDS rounds (the files in the page
cache after a warm-up read):
  json        json.load of every record file (the floor: any reader pays it),
  load        analysis.records.load_records of both folders (what `analyze` reads with),
  compare     `bratsbench compare A B --out DIR` in this process (match, statistics, tables, plot),
  cli         the same as a new process (`python -m harness compare`), as a user runs it: interpreter and imports too.
Prints each one's median with min-max, and compare / load and compare / json per round.
Usage: python bench/bench_compare.py [--rounds 5] [--points 1667] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, env, tmpdir  # noqa: E402

sys.path.insert(0, str(REPO))

SYSTEM = {
    "label": "AMD EPYC 9B14 (AVX-512), 2 cores, TF 2.18.1 CPU",
    "hosts": [{"hostname": "node1", "os": "Debian GNU/Linux 12", "kernel": "6.1.0-28-cloud-amd64",
               "cpu_model": "AMD EPYC 9B14", "sockets": 1, "cores": 2, "threads": 2,
               "isa": ["avx2", "avx512f", "avx512_bf16"], "mem_gib": 7.8, "gpus": [], "nvidia_smi": False}],
    "ranks": [{"rank": r, "host": "node1", "local_rank": r, "cores": [r], "n_cores": 1, "intra_op_threads": 1,
               "inter_op_threads": 1, "device": "CPU", "cuda_visible_devices": None} for r in range(2)],
    "tensorflow": {"version": "2.18.1", "build": "cpu", "cuda_version": None, "cudnn_version": None, "onednn": True,
                   "gpus_seen": 0},
    "horovod": {"version": "0.28.1", "mpi": True, "gloo": True, "nccl": False},
    "mpi": {"library": "Open MPI", "version": "4.1.4"}, "scheduler": None,
    "env": {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "HOROVOD_CYCLE_TIME": "5"},
    "git": {"commit": "b42f92f" + "0" * 33, "modified": False},
}


def make_record(point: int, repeat: int, throughput: float) -> dict:
    from harness.config import RunConfig

    np_ = 1 + point % 2
    cfg = RunConfig.from_dict({"model": {"modalities": ["t1", "t2"]}, "data": {"synthetic": True},
                               "train": {"batch_size": 2, "benchmark": True, "seed": point, "threads": 1}})
    cfg.name, cfg.out, cfg.repeat = f"np{np_}-b2-k0-scratch-s{point}-r{repeat}", f"/results/runs/{point}-{repeat}", repeat
    step = 2 * np_ / throughput
    return {
        "schema_version": 1, "kind": "train", "name": cfg.name, "status": "ok", "exit_code": 0, "error": None,
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:10+00:00", "wall_s": 10.0,
        "config": cfg.to_dict(), "versions": {"python": "3.11.2", "tensorflow": "2.18.1", "horovod": "0.28.1",
                                              "numpy": "2.0.2", "bratsbench": "0.1.0"},
        "git_commit": SYSTEM["git"]["commit"], "hosts": ["node1"] * np_, "world_size": np_,
        "model": {"params_total": 1413540, "params_trainable": 1413540, "frozen_levels": [],
                  "forward_gflops_per_sample": 1.2, "train_gflops_per_sample": 3.6, "replica_checksums": ["ab" * 8] * np_},
        "timing": {"steps": 8, "warmup_steps": 2, "global_batch": 2 * np_, "step_time_mean_s": step,
                   "step_time_p50_s": step, "step_time_p90_s": step * 1.04, "step_time_p99_s": step * 1.08,
                   "step_time_sd_s": step * 0.02, "input_wait_share": 0.01, "throughput_samples_s": throughput,
                   "window_throughputs_samples_s": [throughput] * 3, "peak_host_mem_mb": 1100.0,
                   "peak_host_mem_mb_per_rank": [1100.0] * np_, "peak_gpu_mem_mb": None, "threads_per_rank": 1,
                   "cores": [0, 1], "achieved_gflops_per_rank": 60.0},
        "history": [{"epoch": 1, "loss": 1.2, "wall_s": 2.0, "step_time_mean_s": step, "params_trainable": 1413540}],
        "metrics": {}, "engine": {"name": "horovod", "version": "0.28.1", "transport": "gloo"},
        "phases": {"wall_s": 10.0, "to_first_step_s": 7.2, "steps_s": 2.0, "steps": 7, "validation_s": 0.0,
                   "checkpoint_s": 0.0, "input_setup_s": 0.1, "bookkeeping_s": 0.05, "other_s": 0.65,
                   "train_share": 0.2},
        "extra": {"sweep": {"sweep": "bench", "run_id": f"{point:012x}", "label": cfg.name, "kind": "run", "np": np_,
                            "mode": "scratch", "seed": point, "batch_size": 2, "per_rank_batch": 2,
                            "global_batch": 2 * np_, "freeze_depth": 0, "depends_on": [], "scaling": "weak"}},
        "system": SYSTEM,
    }


def write_folders(root: Path, points: int, repeats: int) -> tuple[Path, Path, int]:
    rng = np.random.default_rng(0)
    n = 0
    for side, scale in (("a", 1.0), ("b", 0.97)):
        for p in range(points):
            for r in range(repeats):
                folder = root / side / "runs" / f"{p:05d}-r{r}"
                folder.mkdir(parents=True)
                rec = make_record(p, r, float(20.0 * scale * (1 + 0.02 * rng.standard_normal())))
                (folder / "record.json").write_text(json.dumps(rec, indent=2))
                n += 1
    return root / "a", root / "b", n


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--points", type=int, default=1667)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    root = tmpdir("bench-compare-")
    try:
        t0 = time.perf_counter()
        side_a, side_b, n = write_folders(root, a.points, a.repeats)
        size = sum(f.stat().st_size for f in root.rglob("record.json")) / n
        print(f"{n} records ({a.points} points x {a.repeats} repeats x 2 folders, {size / 1024:.1f} KB each) written in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        files = sorted(root.rglob("record.json"))

        from analysis.records import load_records
        from harness.cli import main as cli

        def json_all() -> None:
            for f in files:
                with open(f) as fh:
                    json.load(fh)

        def compare_here() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli(["compare", str(side_a), str(side_b), "--out", str(root / "out")])
            assert code == 0, code

        def compare_cli() -> None:
            subprocess.run([sys.executable, "-m", "harness", "compare", str(side_a), str(side_b), "--out",
                            str(root / "out-cli")], env=env(), check=True, capture_output=True)

        steps = {"json": json_all, "load": lambda: (load_records(side_a), load_records(side_b)),
                 "compare": compare_here, "cli": compare_cli}
        json_all()  # warm-up: the files in the page cache, the modules imported
        compare_here()
        times: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(a.rounds):
            order = list(steps) if r % 2 == 0 else list(reversed(steps))
            for name in order:
                times[name].append(timed(steps[name]))
            print(f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in steps), flush=True)
        for name, values in times.items():
            print(f"{name:>8}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}) "
                  f"over {len(values)} rounds")
        vs_json = [c / j for c, j in zip(times["compare"], times["json"])]
        vs_load = [c / lo for c, lo in zip(times["compare"], times["load"])]
        rows = (root / "out" / "compare.csv").read_text().count("\n") - 1
        print(f"compare of {n} records ({rows} compared rows): {statistics.median(times['compare']):.2f} s in-process = "
              f"{statistics.median(vs_load):.1f}x analyze's record loading (rounds {', '.join(f'{x:.1f}' for x in vs_load)}), "
              f"{statistics.median(vs_json):.1f}x json-loading the files; as a command {statistics.median(times['cli']):.2f} s. "
              "Goal: compare <= 3x analyze's record loading (it reads the same records, then matches, tests, writes "
              "and plots).")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
