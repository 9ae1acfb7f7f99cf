"""Running a transfer study: each run is a real `bratsbench train` process (horovodrun for np > 1), then a
test-set `bratsbench evaluate`. Finished runs are reused, so a re-run only does what is missing and the
pre-training happens once per seed and config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from harness.record import atomic_write_json
from harness.sweep.runner import bratsbench_command, read_record
from harness.sweep.supervise import local_launch, run_logged
from harness.transfer.plan import StudyRun


def _launch(np_: int, args: list[str], log: Path, timeout_s: float | None) -> int | None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    return run_logged(local_launch(np_, bratsbench_command() + args), log, timeout_s, env)


def _tail(log: Path, n: int = 5) -> str:
    try:
        lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def execute(runs: list[StudyRun], out: Path, *, np_: int = 1, timeout_s: float | None = None,
            report: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run (or reuse) every planned run in order; returns {run folder name: status dict}."""
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, dict[str, Any]] = {}
    folders = {r.id: out / r.folder for r in runs}
    for i, run in enumerate(runs, 1):
        folder = folders[run.id]
        prefix = f"[{i}/{len(runs)}] {run.label}"
        record = read_record(folder)
        if run.depends_on and status.get(run.depends_on, {}).get("status") != "ok":
            status[run.id] = {"status": "failed", "error": f"dependency {run.depends_on} failed", "folder": str(folder)}
            report(f"{prefix}: skipped, its pre-training run failed")
            continue
        if record and record.get("status") == "ok" and (folder / "checkpoints").is_dir():
            report(f"{prefix}: reusing finished run {folder.name}")
        else:
            cfg = run.cfg.to_dict()
            cfg["out"] = str(folder)
            cfg["name"] = run.label
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / "config.json", cfg)
            args = ["train", "--config", str(folder / "config.json"), "--extra", json.dumps(run.tags()), *run.args]
            if run.depends_on:
                args += ["--init-from", str(folders[run.depends_on] / "checkpoints")]
            report(f"{prefix}: training ...")
            code = _launch(np_, args, folder / "train.log", timeout_s)
            record = read_record(folder)
            if code != 0 or not record or record.get("status") != "ok":
                status[run.id] = {"status": "failed", "exit_code": code, "folder": str(folder),
                                  "error": _tail(folder / "train.log")}
                report(f"{prefix}: FAILED (exit {code}); see {folder / 'train.log'}")
                continue
        if run.role != "pretrain" and "test" not in (record.get("metrics") or {}):
            code = _launch(1, ["evaluate", "--run", str(folder), "--subset", "test"], folder / "evaluate.log", timeout_s)
            if code != 0:
                status[run.id] = {"status": "failed", "exit_code": code, "folder": str(folder),
                                  "error": "test evaluation failed: " + _tail(folder / "evaluate.log")}
                report(f"{prefix}: test evaluation FAILED; see {folder / 'evaluate.log'}")
                continue
            record = read_record(folder)
        status[run.id] = {"status": "ok", "folder": str(folder), "wall_s": record.get("wall_s")}
        test = (record.get("metrics") or {}).get("test", {}).get("mean", {})
        dice = " ".join(f"{r}={test[f'{r}_dice']:.3f}" for r in ("ET", "TC", "WT") if f"{r}_dice" in test)
        report(f"{prefix}: ok ({record.get('wall_s') or 0:.0f} s){' test Dice ' + dice if dice else ''}")
    return status
