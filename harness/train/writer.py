"""Rank 0's side effects: the run record, checkpoints, the epoch line and the progress bar.

Every rank holds a RunWriter; on the others each method does nothing, so the trainer never asks which rank
it is on. Nothing here runs a collective: all ranks may call these methods or not, in any order.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from harness.engines import Engine, World
from harness.rundir import RunDir


class _Bar:
    """A tqdm bar on rank 0 (nothing elsewhere) that shows the last loss."""

    def __init__(self, bar: Any | None):
        self._bar = bar

    def update(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)


class RunWriter:
    def __init__(self, world: World, run: RunDir, engine: Engine | None = None):
        self.world = world
        self.run = run
        self.engine = engine
        self.active = world.is_root
        if self.active:
            run.create()

    def record(self, record: dict[str, Any]) -> None:
        if self.active:
            self.run.write_record(record)

    def signature(self, ckpt_dir: Path, model_cfg: Any, optimizer: dict[str, Any] | None = None) -> None:
        """The architecture (and the optimizer's form: loss scaling or not) beside the checkpoints, so a
        mismatching --resume/--init-from fails in one line."""
        if self.active:
            from harness.checkpoint import write_signature

            Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
            write_signature(ckpt_dir, model_cfg, optimizer)

    def checkpoint(self, manager: Any, step: int) -> None:
        """Rank 0 writes the checkpoint. Where the engine needs every rank to take part (MWMS), the others
        write the same state into a scratch folder of their own, removed at once."""
        from harness.checkpoint import save_checkpoint, save_scratch

        if self.active:
            save_checkpoint(manager, step)
        elif self.engine is not None and self.engine.saves_on_every_rank():
            save_scratch(manager, step, self.world.rank)

    def note(self, message: str) -> None:
        """One line for the user, once per run (rank 0)."""
        if self.active:
            print(f"bratsbench: {message}", file=sys.stderr, flush=True)

    def epoch(self, entry: dict[str, Any]) -> None:
        if self.active:
            print(epoch_line(entry), file=sys.stderr, flush=True)

    def summary(self, timing: dict[str, Any]) -> None:
        """Benchmark mode's one JSON line on stderr."""
        if self.active:
            keys = ("throughput_samples_s", "step_time_mean_s", "input_wait_share")
            print(json.dumps({k: timing[k] for k in keys if k in timing}), file=sys.stderr)

    @contextlib.contextmanager
    def bar(self, total: int, initial: int, desc: str) -> Iterator[_Bar]:
        if not self.active:
            yield _Bar(None)
            return
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, mininterval=1.0, leave=False)
        try:
            yield _Bar(bar)
        finally:
            bar.close()


def epoch_line(entry: dict[str, Any]) -> str:
    val = entry.get("val")
    dice = " ".join(f"{k}={v:.3f}" for k, v in val.items()) if val else ""
    return f"epoch {entry['epoch']}: loss {entry['loss']:.4f}, {entry['wall_s']:.1f} s {('dice ' + dice) if dice else ''}".rstrip()
