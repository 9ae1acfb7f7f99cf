"""The training input pipeline at BraTS's full size, per core, against an allocating memory copy of the same bytes.

Generates full-size (240x240x155) cases, prepares them as `prepare --roi 160 192 144 --spacing 1` does, then, in
fresh processes confined to one core (one parallel map call) and to two cores (two calls), times `train_dataset`
with all four modalities, 128^3 crops, batch 2, augmentation on. Baseline, in the one-core process on the same
core: `x.copy()` of one sample's bytes (4 x 128^3 float32, 33.5 MB), median of 41. Rounds alternate the one-
and two-core processes, so a slow phase of a shared machine hits both; the two-core speedup pairs them by round.
The same processes time allocating copies on two threads at once, the two-core ceiling of a memory-bound pass.
Also prints where a sample's time goes on one core (each array pass of the numpy work timed) and the cores a
GPU needs for input at published training rates. Goals: one core >= 0.15 of the copy rate; two cores >= 1.7x one.

    PYTHONPATH=. python bench/bench_full_pipeline.py [--cases 8] [--rounds 5] [--batches 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODS = ("flair", "t1", "t1ce", "t2")
CROP = (128, 128, 128)
BATCH = 2
ROI = (160, 192, 144)
GOAL_RATIO, GOAL_SPEEDUP = 0.15, 1.7
# Published training rates at 128^3 x 4 (volumes = samples per second), as docs/benchmarks.md's reference figures
# give them: NVIDIA DeepLearningExamples, TensorFlow/Segmentation/UNet_3D_Medical (TF1) and its TF2 nnU-Net.
GPU_RATES = (
    ("nnU-Net TF2, 1x A100-80G, AMP, batch 2", 29.3),
    ("nnU-Net TF2, 1x A100-80G, TF32, batch 2", 11.81),
    ("UNet_3D_Medical TF1, 1x A100-80G, AMP, batch 4", 19.88),
    ("UNet_3D_Medical TF1, 1x A100-80G, AMP, batch 2", 17.91),
    ("UNet_3D_Medical TF1, 1x A100-80G, TF32, batch 2", 10.40),
    ("nnU-Net TF2, 8x A100-80G, AMP, batch 2 (one node)", 219.3),
    ("UNet_3D_Medical TF1, 8x A100-80G, AMP, batch 4 (one node)", 140.44),
)


def _spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}g} [{min(values):.{digits}g}-{max(values):.{digits}g}]"


# ---------------------------------------------------------------- child: one measurement in one process


def child(store_dir: str, cores: list[int], batches: int, profile: bool) -> dict:
    os.sched_setaffinity(0, cores)  # before numpy and TensorFlow size their thread pools
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from harness.data.pipeline import train_dataset
    from harness.data.store import open_store

    store = open_store(Path(store_dir))
    ids = store.labelled_ids
    out: dict = {"cores": cores}
    sample = np.random.default_rng(0).standard_normal((*CROP, len(MODS)), dtype=np.float32)
    if len(cores) == 1:
        times = []
        for _ in range(41):
            start = time.perf_counter()
            copy = sample.copy()
            times.append(time.perf_counter() - start)
            del copy
        out["copy_per_s"] = 1.0 / statistics.median(times)
    else:
        out["copy_per_s"] = _copies_side_by_side(sample, len(cores))
    ds = train_dataset(store, ids, MODS, CROP, BATCH, seed=0, epoch=0, epochs=10**6, augment=True,
                       num_parallel=len(cores))
    it = iter(ds)
    for _ in range(2 * len(ids) // BATCH):  # two epochs: every case's pages mapped, the pool warm
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    out["samples_per_s"] = batches * BATCH / (time.perf_counter() - start)
    del it, ds  # before interpreter shutdown: an iterator destroyed then waits forever for its map calls
    if profile:
        out["profile"] = _breakdown(store, ids, batches)
    return out


def _copies_side_by_side(sample, threads: int, each: int = 41) -> float:
    """Allocating copies per second with `threads` threads copying at once (numpy copies without the GIL): what
    the cores' shared memory path gives a memory-bound pass, the ceiling of the pipeline's speedup."""
    import threading

    barrier = threading.Barrier(threads + 1)

    def copy_loop():
        barrier.wait()
        for _ in range(each):
            copy = sample.copy()
            del copy

    pool = [threading.Thread(target=copy_loop) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return threads * each / (time.perf_counter() - start)


class _TimedNumpy:
    """numpy as harness.data.pipeline sees it, with its array passes timed by what they do."""

    def __init__(self, np, totals: dict[str, float]):
        self._np, self._totals = np, totals

    def __getattr__(self, name: str):
        return getattr(self._np, name)

    def _timed(self, key: str, fn, *args, **kw):
        start = time.perf_counter()
        out = fn(*args, **kw)
        self._totals[key] = self._totals.get(key, 0.0) + time.perf_counter() - start
        return out

    def copyto(self, dst, src, **kw):
        key = ("label: window, flips, uint8 -> int32 into the batch" if dst.dtype == self._np.int32 else
               "image: window and flips, voxels staged a slab at a time (in cache)")
        return self._timed(key, self._np.copyto, dst, src, **kw)

    def multiply(self, *args, **kw):
        return self._timed("image: int16 codes x (store scale x intensity gain) into the batch", self._np.multiply, *args, **kw)

    def add(self, *args, **kw):
        return self._timed("image: + intensity shift, in place", self._np.add, *args, **kw)


def _breakdown(store, ids: list[str], batches: int) -> list[tuple[str, float]]:
    """ms per sample of the numpy work of `batches` batches (CropSampler.batch on this thread), by pass."""
    from harness.data import pipeline

    sampler = pipeline.CropSampler(store, ids, MODS, CROP, seed=0, tumour_share=0.5, augment=True)
    for i in range(0, len(ids), BATCH):  # open every case and fault the batch memory in, as a running pipeline has
        sampler.batch([0] * BATCH, [(i + k) % len(ids) for k in range(BATCH)], list(range(BATCH)))
    totals: dict[str, float] = {}
    real, pipeline.np = pipeline.np, _TimedNumpy(pipeline.np, totals)  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        for b in range(batches):
            rows = [(1, (b * BATCH + i) % len(ids), b * BATCH + i) for i in range(BATCH)]
            sampler.batch(*zip(*rows))
        total = time.perf_counter() - start
    finally:
        pipeline.np = real
    n = batches * BATCH
    rest = total - sum(totals.values())
    return [("all numpy work of a sample (CropSampler.batch)", total * 1e3 / n),
            *((k, v * 1e3 / n) for k, v in totals.items()),
            ("draw (random choices), batch memory, Python between the passes", rest * 1e3 / n)]


# ---------------------------------------------------------------- parent


def make_store(work: Path, cases: int) -> Path:
    from harness.cli import main as cli

    raw, store = work / "raw", work / "store"
    if not (store / "manifest.json").exists():
        assert cli(["synth", "--out", str(raw), "--cases", str(cases), "--seed", "1"]) == 0
        assert cli(["prepare", "--data", str(raw), "--out", str(store), "--roi", *map(str, ROI), "--spacing", "1"]) == 0
    for path in store.rglob("*.npy"):  # the page cache holds the store, as it does after a run's first epoch
        path.read_bytes()
    return store


def run_child(store: Path, cores: list[int], batches: int, profile: bool = False) -> dict:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench_full_pipeline import child; "
            "print('RESULT ' + json.dumps(child(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1')))")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(store), json.dumps(cores),
                             str(batches), "1" if profile else "0"], capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        sys.exit(f"measurement on cores {cores} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8, help="full-size cases to generate (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one-core and two-core processes (default 5)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per process (default 30)")
    parser.add_argument("--work", default=None, help="folder for the cases and the store, kept for the next run "
                        "(default: a temporary folder)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit(f"needs two cores, this process may use {cores}")
    one, two = cores[:1], cores[:2]
    with tempfile.TemporaryDirectory(prefix="bench-full-pipeline-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        start = time.perf_counter()
        store = make_store(work, args.cases)
        print(f"store {store}: {args.cases} full-size cases, roi {ROI} at 1 mm, int16 "
              f"({sum(p.stat().st_size for p in store.rglob('image.npy')) / args.cases / 2**20:.0f} MiB image per case), "
              f"{time.perf_counter() - start:.0f} s")
        singles, doubles, copies, speedups, copy_speedups = [], [], [], [], []
        profile = None
        for r in range(args.rounds):
            a = run_child(store, one, args.batches, profile=(r == 0))
            b = run_child(store, two, args.batches)
            profile = profile or a.get("profile")
            singles.append(a["samples_per_s"])
            copies.append(a["copy_per_s"])
            doubles.append(b["samples_per_s"])
            speedups.append(b["samples_per_s"] / a["samples_per_s"])
            copy_speedups.append(b["copy_per_s"] / a["copy_per_s"])
            print(f"round {r + 1}: one core {a['samples_per_s']:.1f} samples/s (copy {a['copy_per_s']:.0f}/s), "
                  f"two cores {b['samples_per_s']:.1f} samples/s (copies side by side {b['copy_per_s']:.0f}/s)", flush=True)
    ratios = [s / c for s, c in zip(singles, copies)]
    print(f"\nfull size: {len(MODS)} x {CROP[0]}^3 crops, batch {BATCH}, augmentation on; median [min-max] of "
          f"{args.rounds} rounds, {args.batches} batches each")
    print(f"one core (cpu {one[0]}, 1 map call):   {_spread(singles)} samples/s")
    print(f"two cores (cpus {two}, 2 map calls): {_spread(doubles)} samples/s")
    print(f"allocating copy, one sample's 33.5 MB, cpu {one[0]}, same process: {_spread(copies)} copies/s")
    ratio = statistics.median(ratios)
    speedup = statistics.median(speedups)
    print(f"pipeline / copy on one core: {_spread(ratios, 2)} (goal >= {GOAL_RATIO}): {'met' if ratio >= GOAL_RATIO else 'NOT met'}")
    print(f"two cores / one core, paired by round: {_spread(speedups, 3)} (goal >= {GOAL_SPEEDUP}): "
          f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}")
    print(f"the machine's ceiling for a memory-bound pass: copies on two cores at once / one core, paired by round: "
          f"{_spread(copy_speedups, 3)}")
    if profile:
        print(f"\nwhere a sample's time goes on one core (round 1, {args.batches} batches; ms per sample):")
        print(f"  {1e3 / singles[0]:7.2f}  a sample through tf.data on one core (1 / rate)")
        for name, ms in profile:
            print(f"  {ms:7.2f}  {'' if name.startswith('all') else '  '}{name}")
        print(f"  {1e3 / singles[0] - profile[0][1]:7.2f}  tf.data around it: numpy_function, the hand-over between "
              "threads, prefetch (by difference)")
    per_core = statistics.median(singles)
    print(f"\ncores one GPU needs for input at {per_core:.1f} samples/s per core (published training rates, "
          "NVIDIA DeepLearningExamples):")
    for name, rate in GPU_RATES:
        print(f"  {rate:7.2f} samples/s  {name}: {rate / per_core:.1f} cores")
    return 0 if ratio >= GOAL_RATIO and speedup >= GOAL_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
