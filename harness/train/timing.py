"""Step timing for benchmark mode (warm-up excluded, throughput from the mean step time), and where a run's wall
time goes (start-up, training steps, validation, checkpoints).

Throughput is global batch / mean step time; averaging per-step rates would bias it upward. The timed steps are
also cut into WINDOWS consecutive windows, each with its own throughput, so one run shows whether its rate drifted.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import psutil

WINDOWS = 3


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
            "window_throughputs_samples_s": [global_batch / float(w.mean()) for w in
                                             np.array_split(times, min(WINDOWS, times.size))],
        }


@dataclass
class Phases:
    """Wall time from this process's start (interpreter, imports, engine start) to now, by phase. The first step
    counts as start-up: it traces and compiles the step function. The phases partition the wall time: whatever
    happens before the first step ends (building the input pipeline, restoring a checkpoint) is start-up and
    counted there only, so `other_s` is never negative."""

    process_start: float = field(default_factory=lambda: psutil.Process().create_time())
    first_step_end: float | None = None
    steps_s: float = 0.0  # every training step after the first
    steps: int = 0
    validation_s: float = 0.0
    checkpoint_s: float = 0.0
    input_setup_s: float = 0.0  # building each epoch's input pipeline, outside the timed steps
    bookkeeping_s: float = 0.0  # per epoch: loss mean, record, log line; at the end: checksums over ranks

    def add(self, phase: str, seconds: float) -> None:
        """`seconds` spent in `phase` (validation_s, checkpoint_s, input_setup_s, bookkeeping_s)."""
        if self.first_step_end is not None:
            setattr(self, phase, getattr(self, phase) + seconds)

    def step(self, seconds: float) -> None:
        if self.first_step_end is None:
            self.first_step_end = time.time()
        else:
            self.steps_s += seconds
            self.steps += 1

    def summary(self) -> dict[str, float | int | None]:
        wall = time.time() - self.process_start
        to_first = None if self.first_step_end is None else self.first_step_end - self.process_start
        return {
            "wall_s": wall, "to_first_step_s": to_first, "steps_s": self.steps_s, "steps": self.steps,
            "validation_s": self.validation_s, "checkpoint_s": self.checkpoint_s,
            "input_setup_s": self.input_setup_s, "bookkeeping_s": self.bookkeeping_s,
            "other_s": wall - (to_first or 0.0) - self.steps_s - self.validation_s - self.checkpoint_s
            - self.input_setup_s - self.bookkeeping_s,
            "train_share": self.steps_s / wall if wall > 0 else None,
        }


def peak_host_mem_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class GpuMemory:
    """Peak GPU memory of the training steps on this rank: the device's peak is reset before each epoch's steps
    and read after them, so neither validation nor an earlier run in the same process (a packed sweep) counts.
    `info`/`reset` are TensorFlow's (tests give fakes: no GPU here)."""

    device: str  # the logical device, "GPU:0" once a rank sees only its own GPU
    info: Callable[[str], dict[str, Any]] | None = None
    reset_stats: Callable[[str], None] | None = None
    peak_mb: float | None = None

    @classmethod
    def of(cls, device: str) -> "GpuMemory | None":
        return cls("GPU:0") if device.startswith("GPU") else None

    def reset(self) -> None:
        import tensorflow as tf

        (self.reset_stats or tf.config.experimental.reset_memory_stats)(self.device)

    def read(self) -> None:
        import tensorflow as tf

        peak = (self.info or tf.config.experimental.get_memory_info)(self.device)["peak"] / 2**20
        self.peak_mb = peak if self.peak_mb is None else max(self.peak_mb, peak)
