"""Emit a sweep as cluster job arrays (SLURM or PBS) from the templates in jobs/*.tmpl.

A job array has one resource shape, so runs are grouped by np: one array script per (pre-training | runs, np),
one array task per run. Each task finds its run in manifest.tsv by its array index and calls
`python -m harness.sweep.runner run-task`, which does what the local runner does for one run (skip if ok, fail
if the pre-training failed, write the run's config, launch with srun / mpirun / horovodrun through `harness.launch`
under the sweep's timeout, settle the record). submit.sh submits the pre-training arrays first and the
run arrays with --dependency=afterok (PBS: -W depend=afterok).

Templates use `${lower_case}` placeholders only; every other `$` is shell and left alone. Values placed in
shell code are shlex-quoted; values placed in #SBATCH/#PBS directives are checked against a safe charset.
"""

from __future__ import annotations

import math
import re
import shlex
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.outdir import ensure_output_dir
from harness.record import atomic_write_json
from harness.sweep import index
from harness.sweep.plan import PlannedRun, plan
from harness.sweep.spec import SweepSpec

SCHEDULERS = {"slurm": ("slurm.sbatch.tmpl", ".sbatch"), "pbs": ("pbs.tmpl", ".pbs")}
PACK_TEMPLATE = "slurm-pack.sbatch.tmpl"  # --pack: one job, not arrays
LAUNCHERS = {"slurm": ("srun", "horovodrun", "mpirun"), "pbs": ("mpirun", "horovodrun")}
TEMPLATES = Path(__file__).resolve().parents[2] / "jobs"
MANIFEST_COLUMNS = ("array", "index", "run_id", "label", "np", "depends_on", "first_conv")
JOB_LOGS = "logs"  # the job folder's scheduler logs (the templates' --output), not a run folder's
_TIME = re.compile(r"^\d{1,4}:\d{2}:\d{2}$")
_SAFE = re.compile(r"^[A-Za-z0-9_.,:+=-]+$")


class _Template(string.Template):
    """Only ${lower_case} is a placeholder, so shell code ($VAR, ${VAR:-x}, "${A[@]}") needs no escaping."""

    pattern = r"""
    \$(?:
      (?P<escaped>(?!)) |
      \{(?P<braced>[a-z][a-z0-9_]*)\} |
      (?P<named>(?!)) |
      (?P<invalid>(?!))
    )
    """
    flags = re.VERBOSE  # case-sensitive: ${UPPER} stays shell


@dataclass
class ArrayJob:
    name: str  # e.g. "pretrain-np1", "run-np2"
    np: int
    runs: list[PlannedRun]
    after: list[str] = field(default_factory=list)  # names of arrays that must succeed first


@dataclass
class EmitOptions:
    scheduler: str = "slurm"
    results: Path | None = None
    limit: int | None = None
    partition: str | None = None
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    time: str | None = None
    launcher: str | None = None
    srun_mpi: str = "pmix"
    pack: int | None = None  # one allocation of this many ranks runs every point (harness.sweep.pack)


def group_arrays(runs: list[PlannedRun]) -> list[ArrayJob]:
    """One array per (kind, np); run arrays holding transfer runs wait for every pre-training array."""
    arrays: dict[str, ArrayJob] = {}
    for run in runs:
        prefix = "pretrain" if run.kind == "pretrain" else "run"
        name = f"{prefix}-np{run.np}"
        arrays.setdefault(name, ArrayJob(name, run.np, [])).runs.append(run)
    pre = [a.name for a in arrays.values() if a.name.startswith("pretrain")]
    for job in arrays.values():
        if not job.name.startswith("pretrain") and any(r.depends_on for r in job.runs):
            job.after = list(pre)
    return sorted(arrays.values(), key=lambda a: (not a.name.startswith("pretrain"), a.np))


def _check(opts: EmitOptions) -> EmitOptions:
    if opts.scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {opts.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    launcher = opts.launcher or LAUNCHERS[opts.scheduler][0]
    if launcher not in LAUNCHERS[opts.scheduler]:
        raise UserError(f"--launcher {launcher} does not work with {opts.scheduler}; choose {', '.join(LAUNCHERS[opts.scheduler])}")
    if opts.limit is not None and opts.limit < 1:
        raise UserError(f"--limit {opts.limit} must be >= 1 (array tasks running at once)")
    if opts.gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {opts.gpus_per_node} must be >= 0")
    if opts.tasks_per_node is not None and opts.tasks_per_node < 1:
        raise UserError(f"--tasks-per-node {opts.tasks_per_node} must be >= 1")
    if opts.time is not None and not _TIME.match(opts.time):
        raise UserError(f"--time {opts.time!r} must be HH:MM:SS")
    for flag, value in (("--partition", opts.partition), ("--srun-mpi", opts.srun_mpi)):
        if value is not None and not _SAFE.match(value):
            raise UserError(f"{flag} {value!r}: only letters, digits and _ . , : + = - are allowed")
    if opts.pack is not None:
        if opts.scheduler != "slurm":
            raise UserError(f"--pack is emitted for slurm (one srun step of T ranks); not for {opts.scheduler}")
        if launcher != "srun":
            raise UserError(f"--pack starts its ranks with srun, not {launcher}")
    opts.launcher = launcher
    return opts


def _hms(seconds: float) -> str:
    s = int(math.ceil(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def emit(spec: SweepSpec, out: str | Path, opts: EmitOptions) -> dict[str, Path]:
    """Write the job folder; returns the written files by role (manifest, plan, submit, and one per array)."""
    opts = _check(opts)
    out = Path(out).resolve()
    results = Path(opts.results).resolve() if opts.results else out / "results"
    runs = plan(spec)
    mwms = [r.label for r in runs if r.np > 1 and r.config.train.backend == "mwms"]
    if mwms and opts.launcher != "srun":
        raise UserError(f"run {mwms[0]} uses backend mwms: its workers start with srun (TF_CONFIG from SLURM's "
                        f"variables), not {opts.launcher}; emit it for slurm with --launcher srun")
    if opts.pack is not None:
        from harness.sweep.pack import check_packable

        check_packable(runs, opts.pack)
    arrays = group_arrays(runs)
    template_name, suffix = SCHEDULERS[opts.scheduler]
    template = _Template((TEMPLATES / template_name).read_text())

    ensure_output_dir(out)  # only now: bad options write nothing
    (out / JOB_LOGS).mkdir(exist_ok=True)
    for old in [*out.glob("*.sbatch"), *out.glob("*.pbs"), *(out / "configs").glob("*.json")]:
        old.unlink()  # a previous emit into the same folder
    written: dict[str, Path] = {}
    for run in runs:
        atomic_write_json(out / "configs" / f"{run.run_id}.json", run.config_for(index.run_dir(results, run.run_id), results).to_dict())
    plan_path = out / "plan.json"
    atomic_write_json(
        plan_path,
        {"spec": spec.to_dict(), "plan": [r.to_dict() for r in runs], "results": str(results), "scheduler": opts.scheduler},
    )
    written["plan"] = plan_path
    manifest = out / "manifest.tsv"
    rows = ["\t".join(MANIFEST_COLUMNS)]
    for job in arrays:
        for i, run in enumerate(job.runs):
            rows.append("\t".join(map(str, (job.name, i, run.run_id, run.label, run.np, ",".join(run.depends_on) or "-", run.first_conv or "-"))))
    manifest.write_text("\n".join(rows) + "\n")
    written["manifest"] = manifest

    if opts.pack is not None:
        arrays = [ArrayJob("pack", opts.pack, runs)]
        template = _Template((TEMPLATES / PACK_TEMPLATE).read_text())
    for job in arrays:
        path = out / f"{job.name}{suffix}"
        path.write_text(_render(template, job, spec, opts, out, results, plan_path, manifest))
        path.chmod(0o755)
        written[job.name] = path
    submit = out / "submit.sh"
    submit.write_text(_submit_script(arrays, spec, opts.scheduler, suffix))
    submit.chmod(0o755)
    written["submit"] = submit
    return written


def _render(template: _Template, job: ArrayJob, spec: SweepSpec, opts: EmitOptions, out: Path, results: Path, plan_path: Path, manifest: Path) -> str:
    per_node = opts.gpus_per_node or opts.tasks_per_node or job.np
    per_node = min(per_node, job.np)
    nodes = math.ceil(job.np / per_node)
    n = len(job.runs)
    limit = f"%{opts.limit}" if opts.limit else ""
    q = shlex.quote
    values = {
        "sweep": spec.name,
        "array_name": q(job.name),
        "count": str(n),
        "np": str(job.np),
        "job_name": f"{spec.name}-{job.name}",
        "nodes": str(nodes),
        "tasks_per_node": str(per_node),
        "time": opts.time or _hms(spec.timeout_s + 300),
        "plan": q(str(plan_path)),
        "manifest": q(str(manifest)),
        "results": q(str(results)),
        "python": q(sys.executable),
        "launcher": q(opts.launcher or ""),
        "srun_mpi": q(opts.srun_mpi),
    }
    if opts.pack is not None:
        from harness.sweep.pack import START_SLACK_S, waves

        n_waves = len(waves(job.runs, opts.pack))
        values.update(slots=str(opts.pack), waves=str(n_waves), job_name=f"{spec.name}-pack",
                      time=opts.time or _hms(n_waves * spec.timeout_s + START_SLACK_S + 300))
    if opts.scheduler == "slurm":
        values["array_range"] = f"0-{n - 1}{limit}"
        values["gpus_directive"] = f"#SBATCH --gpus-per-node={opts.gpus_per_node}" if opts.gpus_per_node else ""
        values["partition_directive"] = f"#SBATCH --partition={opts.partition}" if opts.partition else ""
    else:
        # PBS refuses one-element arrays; a single run is a plain job (the script then takes index 0)
        values["array_directive"] = f"#PBS -J 0-{n - 1}{limit}" if n > 1 else ""
        values["select"] = f"{nodes}:ncpus={per_node}:mpiprocs={per_node}" + (f":ngpus={opts.gpus_per_node}" if opts.gpus_per_node else "")
        values["queue_directive"] = f"#PBS -q {opts.partition}" if opts.partition else ""
    text = template.substitute(values)
    # optional directives that were left out leave blank lines inside the directive block
    return re.sub(r"(?m)^(#(?:SBATCH|PBS)\b.*\n)(?:[ \t]*\n)+(?=#(?:SBATCH|PBS)\b)", r"\1", text)


def _submit_script(arrays: list[ArrayJob], spec: SweepSpec, scheduler: str, suffix: str) -> str:
    lines = [
        "#!/bin/bash",
        f"# Submit sweep {spec.name} ({scheduler}): " + ("one packed job of every run." if [a.name for a in arrays] == ["pack"]
                                                       else "pre-training arrays first, run arrays after they succeeded."),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "mkdir -p logs",
    ]
    for job in arrays:
        var = "JOB_" + job.name.upper().replace("-", "_")
        deps = ":".join(f"${{JOB_{a.upper().replace('-', '_')}}}" for a in job.after)
        script = shlex.quote(job.name + suffix)
        if scheduler == "slurm":
            dep = f" --dependency=afterok:{deps}" if deps else ""
            lines.append(f"{var}=$(sbatch --parsable{dep} {script})")
            lines.append(f"{var}=${{{var}%%;*}}")
        else:
            dep = f" -W depend=afterok:{deps}" if deps else ""
            lines.append(f"{var}=$(qsub{dep} {script})")
        after = f" (after {', '.join('$JOB_' + a.upper().replace('-', '_') for a in job.after)})" if job.after else ""
        lines.append(f'echo "{job.name}: {len(job.runs)} run(s), job ${var}{after}"')
    return "\n".join(lines) + "\n"
