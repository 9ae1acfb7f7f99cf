"""A whole transfer study: plan the runs, check the store holds both modality sets, run (or reuse) them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.config import RunConfig
from harness.errors import UserError
from harness.outdir import ensure_output_dir
from harness.transfer.execute import execute
from harness.transfer.plan import StudyRun, plan_study


@dataclass
class StudyOptions:
    """What a study varies around its base RunConfig (the target's training settings)."""

    source: str = "flair,t1ce"
    target: str = "t1,t2"
    depths: list[int] | None = None  # default: 0, half and the whole encoder
    head_only: bool = True
    seeds: int = 3
    pretrain_epochs: int | None = None  # default: the base config's epochs
    pretrain_budget_s: float | None = None  # default: none, pre-training runs its epochs
    np: int = 1
    parallel: int = 1  # runs side by side, each on its own cores
    timeout_s: float | None = None

    def validate(self) -> "StudyOptions":
        if self.seeds < 1:
            raise UserError(f"--seeds {self.seeds} must be at least 1")
        if self.np < 1:
            raise UserError(f"--np {self.np} must be at least 1")
        if self.pretrain_budget_s is not None and not self.pretrain_budget_s > 0:
            raise UserError(f"--pretrain-budget-s {self.pretrain_budget_s} must be a positive number of seconds")
        from harness.transfer.execute import core_slots

        core_slots(self.parallel, self.np)  # enough cores for that many runs side by side
        return self


@dataclass
class StudyResult:
    runs: list[StudyRun]
    status: dict[str, dict[str, Any]]  # run id -> status, folder, error
    records: list[dict[str, Any]]  # the records of the runs that finished

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.status.values() if s["status"] != "ok"]


def run_study(base: RunConfig, opts: StudyOptions, out: Path, report: Callable[[str], None] = print) -> StudyResult:
    opts.validate()
    if base.data.synthetic:
        raise UserError("transfer needs a prepared store and split (--store, --split), not --synthetic")
    runs = plan_study(base, opts.source, opts.target, opts.depths, list(range(opts.seeds)), Path(out),
                      pretrain_epochs=opts.pretrain_epochs or base.train.epochs, head_only=opts.head_only,
                      pretrain_budget_s=opts.pretrain_budget_s)
    from harness.data.split import load_split
    from harness.data.store import open_store

    store = open_store(Path(base.data.store))  # both modality sets must be there before anything runs
    store.check_modalities(tuple(runs[0].cfg.model.modalities) + tuple(runs[-1].cfg.model.modalities))
    load_split(Path(base.data.split), store)
    ensure_output_dir(out)
    report(f"transfer study: {len(runs)} runs into {out}")
    status = execute(runs, np_=opts.np, timeout_s=opts.timeout_s, parallel=opts.parallel, report=report)
    records = [r for r in (run.run_dir.read_record() for run in runs if status[run.id]["status"] == "ok") if r]
    from harness.record import atomic_write_json

    atomic_write_json(Path(out) / "study.json", {"runs": [{"label": r.label, "role": r.role, "id": r.id, **status[r.id]} for r in runs]})
    return StudyResult(runs, status, records)
