"""Running a transfer study: each run is a real `bratsbench train` launched through `harness.launch` (horovodrun
for np > 1), then a test-set `bratsbench evaluate`. Finished runs are reused, so a re-run only does what is
missing and the pre-training happens once per seed and config."""

from __future__ import annotations

from typing import Any, Callable

from harness import launch
from harness.metrics import REGIONS
from harness.rundir import RunDir
from harness.transfer.plan import StudyRun


def _evaluate(run: RunDir, timeout_s: float | None) -> int | None:
    args = ["evaluate", "--run", str(run.path), "--subset", "test"]
    return launch.run_logged(launch.bratsbench_command() + args, run.evaluate_log, timeout_s)


def execute(runs: list[StudyRun], *, np_: int = 1, timeout_s: float | None = None,
            report: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run (or reuse) every planned run in order; returns {run id: status dict}."""
    status: dict[str, dict[str, Any]] = {}
    for i, run in enumerate(runs, 1):
        folder = run.run_dir
        prefix = f"[{i}/{len(runs)}] {run.label}"
        if run.depends_on and status.get(run.depends_on.id, {}).get("status") != "ok":
            status[run.id] = {"status": "failed", "error": f"dependency {run.depends_on.label} failed", "folder": str(folder)}
            report(f"{prefix}: skipped, its pre-training run failed")
            continue
        if folder.finished():
            report(f"{prefix}: reusing finished run {folder.name}")
        else:
            folder.create().write_config(run.cfg.to_dict())
            report(f"{prefix}: training ...")
            entry = launch.launch_train(folder, np_, timeout_s=timeout_s)
            if entry["status"] != "ok":
                status[run.id] = {"status": "failed", "exit_code": entry["exit_code"], "folder": str(folder),
                                  "error": entry["error"]}
                report(f"{prefix}: FAILED ({entry['error']}); see {folder.logs}")
                continue
        record = folder.read_record() or {}
        if run.role != "pretrain" and "test" not in (record.get("metrics") or {}):
            code = _evaluate(folder, timeout_s)
            if code != 0:
                status[run.id] = {"status": "failed", "exit_code": code, "folder": str(folder),
                                  "error": "test evaluation failed: " + " | ".join(_tail_lines(folder.evaluate_log))}
                report(f"{prefix}: test evaluation FAILED; see {folder.evaluate_log}")
                continue
            record = folder.read_record() or {}
        status[run.id] = {"status": "ok", "folder": str(folder), "wall_s": record.get("wall_s")}
        test = (record.get("metrics") or {}).get("test", {}).get("mean", {})
        dice = " ".join(f"{r}={test[f'{r}_dice']:.3f}" for r in REGIONS if f"{r}_dice" in test)
        report(f"{prefix}: ok ({record.get('wall_s') or 0:.0f} s){' test Dice ' + dice if dice else ''}")
    return status


def _tail_lines(path, n: int = 5) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-n:]
    except OSError:
        return []
