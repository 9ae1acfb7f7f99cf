"""Step timing for benchmark mode: warm-up excluded, throughput from the mean step time.

Throughput is global batch / mean step time; averaging per-step rates would bias it upward.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepTimer:
    warmup: int = 0
    step_times: list[float] = field(default_factory=list)
    input_waits: list[float] = field(default_factory=list)
    seen: int = 0

    def add(self, step_s: float, input_wait_s: float) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.step_times.append(step_s)
            self.input_waits.append(input_wait_s)

    def summary(self, global_batch: int) -> dict[str, float | int | None]:
        times = np.asarray(self.step_times, dtype=np.float64)
        if times.size == 0:
            return {"steps": 0, "warmup_steps": self.warmup, "global_batch": global_batch}
        mean = float(times.mean())
        return {
            "steps": int(times.size),
            "warmup_steps": self.warmup,
            "global_batch": global_batch,
            "step_time_mean_s": mean,
            "step_time_p50_s": float(np.percentile(times, 50)),
            "step_time_p90_s": float(np.percentile(times, 90)),
            "step_time_p99_s": float(np.percentile(times, 99)),
            "step_time_sd_s": float(times.std()),
            "input_wait_share": float(np.sum(self.input_waits) / times.sum()),
            "throughput_samples_s": global_batch / mean,
        }


def peak_host_mem_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
