"""The scaling model's np=2 prediction against the measured np=2 throughput of the same run, on this machine.

Each round: a profiled np=2 Horovod benchmark run (horovodrun, one thread per rank) and, right after it, this
machine's allreduce baseline for the same engine and launcher (`bratsbench comm --backend horovod -np 2`, 8 B to
64 MiB), both into one results folder; then `analyze` (the report's scaling-model section) predicts the run's
np=2 throughput from its own trace (the slower rank's compute, the overlap) plus the ring allreduce of its gradient
bytes on the fitted baseline. Prints per round predicted, measured and predicted / measured, and the median with
min-max over rounds. Goal (issue 4/4): within 10% (0.90-1.10).

Then, on paper, NVIDIA's UNet_3D_Medical on A100s (the published figures and their source: docs/benchmarks.md,
"Reference figures"): its filters 32-64-128-256-320 + 320 (this package's U-Net at base 32, depth 5, cap 320,
4 modalities: the parameters are counted, float32 gradients in one fusion buffer), one-GPU step time from the published one-GPU throughput, no overlap; predicted
np=8 throughput against the published figure, and the curve to np=512 on the two stated interconnects
(`--png PATH` draws it; `--reference-only` skips the measured rounds).
Usage: python bench/bench_scaling_model.py [--rounds 3] [--crop 32] [--base-filters 8] [--steps 12] [--png P]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env, tmpdir, train_record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--base-filters", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="timed benchmark steps (the profiled window is inside)")
    p.add_argument("--png", type=Path, default=None, help="draw the reference curves to np=512 here")
    p.add_argument("--reference-only", action="store_true")
    a = p.parse_args()
    if not a.reference_only:
        measured_rounds(a)
    reference(a.png)


# NVIDIA UNet_3D_Medical, 8x A100-80G, 128^3 x 4 crops, vol/s (docs/benchmarks.md, "Reference figures"): (batch, precision) -> (1 GPU, 8 GPUs)
PUBLISHED = {(2, "TF32"): (10.40, 81.71), (2, "AMP"): (17.91, 100.24), (4, "TF32"): (10.66, 80.65), (4, "AMP"): (19.88, 140.44)}


def reference(png: Path | None) -> None:
    import pandas as pd

    from analysis import plots
    from analysis import scaling_model as sm
    from harness.config import ModelConfig
    from harness.model import build_unet, count_params

    model = build_unet(ModelConfig(modalities=("flair", "t1ce", "t1", "t2"), base_filters=32, depth=5, max_filters=320),
                       crop=(128, 128, 128))
    params = count_params(model)["trainable"]
    grad = params * sm.GRADIENT_BYTES_PER_PARAM
    print(f"reference: NVIDIA UNet_3D_Medical filters 32-64-128-256-320-320 = {params / 1e6:.1f} M parameters, "
          f"{grad / 1e6:.0f} MB of float32 gradients in {sm.messages_for('horovod', grad)} fusion buffer(s), no overlap")
    frames, dots = [], []
    for (batch, precision), (one, eight) in PUBLISHED.items():
        inputs = sm.StepInputs(compute_s=batch / one, grad_bytes=grad, per_rank_batch=batch,
                               messages=sm.messages_for("horovod", grad))
        for key, link in sm.INTERCONNECTS.items():
            pred = sm.predict(inputs, link)
            at8 = pred.set_index("np").loc[8]
            if key == "nvlink-a100":
                print(f"  batch {batch} {precision}: predicted {at8['throughput']:.1f} vol/s at 8 GPUs (efficiency "
                      f"{at8['efficiency']:.3f}) vs published {eight} ({eight / (8 * one):.3f}): "
                      f"{at8['throughput'] / eight - 1:+.0%}")
            if (batch, precision) == (2, "TF32"):
                frames.append(pred.assign(run="UNet_3D_Medical b2 TF32"))
                for n in (64, 512):
                    row = pred.set_index("np").loc[n]
                    print(f"    {link.name}: efficiency {row['efficiency']:.3f} at np={n} "
                          f"(allreduce {row['allreduce_ms']:.1f} ms per step)")
        if (batch, precision) == (2, "TF32"):
            dots.append(("published", 8, eight / (8 * one)))
    if png is not None:
        table = pd.concat(frames, ignore_index=True)
        print(f"  curve: {plots.scaling_model_png(table, png, pd.DataFrame(dots, columns=['run', 'np', 'efficiency']), 'published (NVIDIA, 8x A100-80G)')}")


def measured_rounds(a: argparse.Namespace) -> None:
    import pandas as pd

    from analysis.report import build_report

    ratios = []
    for r in range(a.rounds):
        results = tmpdir(f"bench-model-r{r}-")
        args = ["--synthetic", "--crop", *[str(a.crop)] * 3, "--base-filters", str(a.base_filters), "--depth", "3",
                "--batch-size", "2", "--threads", "1", "--benchmark", "--warmup", "3", "--bench-steps", str(a.steps),
                "--profile-steps", f"5:{min(8, 3 + a.steps)}"]
        train_record(2, args, results / "run-np2", backend="horovod")
        cmd = [sys.executable, "-m", "harness", "comm", "--backend", "horovod", "--launcher", "horovodrun", "-np", "2",
               "--ops", "allreduce", "--min-bytes", "8", "--max-bytes", str(64 * 2**20), "--out", str(results / "comm-hvd")]
        done = subprocess.run(cmd, env=env(), capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"comm failed:\n{done.stderr[-2000:]}")
        _, report = build_report(results, warn=lambda msg: None)
        table = pd.read_csv(report.parent / "scaling_model_vs_measured.csv")
        row = table.iloc[0]
        ratios.append(float(row["predicted / measured"]))
        print(f"round {r + 1}: predicted {row['predicted']:.3f} samples/s, measured {row['measured']:.3f} "
              f"(predicted / measured {ratios[-1]:.3f}; baseline {row['baseline']})", flush=True)
        notes = [line for line in report.read_text().splitlines() if "the baseline (" in line]
        if notes:
            print("  " + notes[0].removeprefix("- note: "), flush=True)
    print(f"np=2 predicted / measured throughput: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} rounds; goal 0.90-1.10")


if __name__ == "__main__":
    main()
