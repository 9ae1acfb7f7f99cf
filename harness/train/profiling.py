"""Profiler and Horovod-timeline capture for a window of steps A..B (inclusive), on every rank.

Each rank writes its own TensorBoard profile log directory (RunDir.profile_rank), because two ranks on one
host would otherwise write the same `<host>.xplane.pb` and overwrite each other; `tensorboard --logdir
RUN/profile` then lists every rank as its own run. Each step is wrapped in a `Trace(step_num=...)` so the
profile plugin's step views find their markers.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import tensorflow as tf

from harness.engines import Engine
from harness.rundir import RunDir

log = logging.getLogger("bratsbench.train")


class StepProfiler:
    def __init__(self, run: RunDir, engine: Engine, steps: tuple[int, int] | None, timeline: bool):
        self.engine = engine
        world = engine.world
        self.window = tuple(steps) if steps else None
        self.timeline = timeline and self.window is not None
        if self.timeline and not engine.has_timeline:
            self.timeline = False
            if world.is_root:
                log.warning("--hvd-timeline: the %s engine has no timeline; its collectives are in the profiler "
                            "trace (%s)", engine.name, run.profile)
        self.logdir = run.profile_rank(world.rank)
        self.timeline_path = run.timeline.resolve()
        self.active = False

    def before_step(self, step: int) -> None:
        if self.window and step == self.window[0] and not self.active:
            self.logdir.mkdir(parents=True, exist_ok=True)
            # TensorBoard lists a folder as a run only when it holds an events file
            tf.summary.create_file_writer(str(self.logdir)).close()
            if self.timeline:
                self.timeline_path.parent.mkdir(parents=True, exist_ok=True)
                self.engine.start_timeline(str(self.timeline_path))
            tf.profiler.experimental.start(str(self.logdir))
            self.active = True

    @contextlib.contextmanager
    def trace(self, step: int) -> Iterator[None]:
        if self.active:
            with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                yield
        else:
            yield

    def after_step(self, step: int) -> None:
        if self.active and step >= self.window[1]:
            self.close()

    def close(self) -> None:
        if not self.active:
            return
        tf.profiler.experimental.stop()
        if self.timeline:
            self.engine.stop_timeline()
        self.active = False
