"""Allreduce bus bandwidth at the model's gradient size on 2 ranks: Horovod and MWMS against raw MPI (mpi4py).

Each round runs `bratsbench comm` three times (mpi under mpirun, horovod under horovodrun, mwms under our
launcher), in turn so a slow phase of the shared machine hits all three, at the power of two nearest the default
model's float32 gradient bytes. Prints per backend the median busbw over rounds with min-max, and Horovod / MPI
and MWMS / MPI (medians of the per-round ratios). Goal (issue 4/4): >= 0.8 each.
Usage: python bench/bench_comm.py [--rounds 3] [--iters 50] [--tensors 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env, tmpdir  # noqa: E402


def main() -> None:
    from harness.comm.baseline import default_gradient_bytes
    from harness.engines import unavailable

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--tensors", type=int, default=1)
    a = p.parse_args()
    grad = default_gradient_bytes()
    size = 2 ** round(math.log2(grad))
    # (label, backend, launcher): Horovod both over Gloo (horovodrun) and over MPI (mpirun, Open MPI's shared memory)
    backends = [("mpi", "mpi", "mpirun")]
    if unavailable("horovod") is None:
        backends += [("horovod/gloo", "horovod", "horovodrun"), ("horovod/mpi", "horovod", "mpirun")]
    if unavailable("mwms") is None:
        backends += [("mwms", "mwms", "mwms")]
    out = tmpdir("bench-comm-")
    bw: dict[str, list[float]] = {label: [] for label, _, _ in backends}
    for r in range(a.rounds):
        for b, backend, launcher in backends:
            folder = out / f"{b.replace('/', '-')}-r{r}"
            cmd = [sys.executable, "-m", "harness", "comm", "--backend", backend, "--launcher", launcher, "-np", "2",
                   "--ops", "allreduce",
                   "--min-bytes", str(size), "--max-bytes", str(size), "--iters", str(a.iters), "--warmup", "10",
                   "--tensors", str(a.tensors), "--gradient-bytes", str(grad), "--out", str(folder)]
            result = subprocess.run(cmd, env=env(), capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
            row = json.loads((folder / "record.json").read_text())["comm"]["rows"][0]
            bw[b].append(row["busbw_gb_s"])
            print(f"round {r + 1}: {b:12s} allreduce {size} B: {row['time_us']:.0f} us, busbw {row['busbw_gb_s']:.3f} GB/s",
                  flush=True)
    print(f"\nallreduce of {size} B (the model's gradients: {grad} B), 2 ranks, {a.tensors} tensor(s), {a.rounds} rounds")
    for b, values in bw.items():
        print(f"{b:12s} busbw median {statistics.median(values):.3f} GB/s (min {min(values):.3f}, max {max(values):.3f})")
    for b in [label for label, _, _ in backends[1:]]:
        ratios = [x / m for x, m in zip(bw[b], bw["mpi"])]
        print(f"{b} / mpi busbw: {statistics.median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)}; goal >= 0.8)")


if __name__ == "__main__":
    main()
