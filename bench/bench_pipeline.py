"""Input pipeline vs trainer: can tf.data keep the trainer fed at the demo configuration?

Prints the pipeline's samples/s on its own (one rank's shard, several epochs), the trainer's consumption in
samples/s (a benchmark run on the same store), their ratio (goal >= 3x) and the share of step time spent
waiting for input during a training run (goal <= 5%).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import tmpdir, train_record  # noqa: E402

CROP = (32, 32, 32)
BATCH = 2
MODEL = ["--base-filters", "8", "--depth", "3", "--crop", *map(str, CROP), "--batch-size", str(BATCH), "--modalities", "flair,t1ce"]


def main() -> None:
    from harness.cli import main as cli

    work = tmpdir("bench-pipeline-")
    assert cli(["synth", "--out", str(work / "raw"), "--cases", "12", "--seed", "1", "--shape", "96", "96", "64"]) == 0
    assert cli(["prepare", "--data", str(work / "raw"), "--out", str(work / "store"), "--roi", "64", "64", "48", "--spacing", "2.5"]) == 0
    assert cli(["split", "--store", str(work / "store"), "--seed", "0", "--val", "0.2", "--test", "0.2"]) == 0
    store_args = ["--store", str(work / "store"), "--split", str(work / "store" / "split-seed0.json")]

    from harness.data.pipeline import train_dataset
    from harness.data.split import load_split
    from harness.data.store import open_store

    store = open_store(work / "store")
    train_ids = load_split(work / "store" / "split-seed0.json", store).train
    samples, t0 = 0, None
    for epoch in range(12):
        for x, _ in train_dataset(store, train_ids, ("flair", "t1ce"), CROP, BATCH, seed=0, epoch=epoch):
            if t0 is None:  # first batch pays for graph building and the first reads
                t0 = time.perf_counter()
                continue
            samples += int(x.shape[0])
    pipeline_rate = samples / (time.perf_counter() - t0)

    bench = train_record(1, [*store_args, *MODEL, "--benchmark", "--warmup", "3", "--bench-steps", "20"], work / "bench")
    train = train_record(1, [*store_args, *MODEL, "--epochs", "3", "--steps-per-epoch", "10", "--val-cases", "1"], work / "train")
    consume = bench["timing"]["throughput_samples_s"]
    print(f"demo configuration: crop {CROP}, batch {BATCH}, base filters 8, depth 3, store roi 64x64x48 at 2.5 mm")
    print(f"pipeline alone: {pipeline_rate:.1f} samples/s; trainer consumes {consume:.1f} samples/s")
    print(f"pipeline / trainer: {pipeline_rate / consume:.1f}x (goal >= 3x)")
    print(f"input wait during training: {100 * train['timing']['input_wait_share']:.1f}% of step time (goal <= 5%); "
          f"benchmark run: {100 * bench['timing']['input_wait_share']:.1f}%")


if __name__ == "__main__":
    main()
