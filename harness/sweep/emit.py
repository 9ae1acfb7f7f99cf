"""Emit a sweep as cluster job arrays (SLURM or PBS) from the templates in jobs/*.tmpl.

A job array has one resource shape, so runs are grouped by np: one array script per (pre-training | runs, np),
one array task per run. Each task runs the site's set-up lines, activates an environment (harness.sweep.jobenv),
finds its run in manifest.tsv by its array index and calls `bratsbench sweep run-task`, which does what the local
runner does for one run (skip if ok, fail if the pre-training failed, write the run's config, launch with srun /
mpirun / horovodrun through `harness.launch` under the sweep's timeout, settle the record). submit.sh submits the
pre-training arrays first and the run arrays with --dependency=afterok (PBS: -W depend=afterok).

Resources: a job of np ranks asks for the GPUs it uses (min(np, G) per node), and for `--cpus-per-task` cores per
rank (for GPU jobs a required value, or the node's cores / G with `--cores-per-node`). Preemption (SLURM): the job
asks for the warning signal `--warning-s` seconds before its time limit (`--signal=B:USR1@S`); the batch shell
passes it on to run-task, whose ranks checkpoint and stop; a preempted task requeues itself (`scontrol requeue
<array job>_<task>`) up to `--max-requeues` times and resumes from the checkpoint.

Templates use `${lower_case}` placeholders only; every other `$` is shell and left alone. Values placed in
shell code are shlex-quoted; values placed in #SBATCH/#PBS directives are checked against a safe charset.
"""

from __future__ import annotations

import math
import re
import shlex
import string
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.outdir import ensure_output_dir
from harness.record import atomic_write_json
from harness.sweep import index
from harness.sweep.jobenv import JobEnv, job_env, read_setup
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
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,:+=&|*!()\[\]-]+$")  # SLURM's feature expressions: a100&ib, [r1|r2], gpu*2
WARNING_SIGNAL = "USR1"  # what --signal=B:USR1@S sends; runs must stop on it (train.stop_signals)
DEFAULT_WARNING_S = 300
DEFAULT_MAX_REQUEUES = 3  # as submitit's slurm_max_num_timeout


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
    cpus_per_task: int | None = None  # cores per rank (None: GPU jobs derive it from cores_per_node or refuse)
    cores_per_node: int | None = None
    exclusive: bool = False
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    directives: tuple[str, ...] = ()  # free scheduler directive lines, e.g. "--mail-type=END"
    setup: Path | None = None  # shell lines run before the environment is activated
    env: str | None = None  # a venv/conda folder or a conda name; None: the environment that runs emit
    warning_s: int | None = None  # SLURM: seconds of warning before the time limit (0: none); None: the default
    max_requeues: int | None = None  # SLURM: requeues of a preempted array task; None: the default


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
    for flag, value in (("--cpus-per-task", opts.cpus_per_task), ("--cores-per-node", opts.cores_per_node)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value} must be >= 1")
    if opts.gpus_per_node and opts.cpus_per_task is None:
        if opts.cores_per_node is None:
            raise UserError(f"--gpus-per-node {opts.gpus_per_node} needs --cpus-per-task N (cores per rank) or "
                            "--cores-per-node C (then C / GPUs per rank): without it SLURM gives each rank one CPU")
        if opts.cores_per_node < opts.gpus_per_node:
            raise UserError(f"--cores-per-node {opts.cores_per_node} is fewer than --gpus-per-node {opts.gpus_per_node}")
        opts.cpus_per_task = opts.cores_per_node // opts.gpus_per_node
    for flag, value, pattern in (("--constraint", opts.constraint, _CONSTRAINT), ("--account", opts.account, _SAFE),
                                 ("--qos", opts.qos, _SAFE)):
        if value is not None and not pattern.match(value):
            raise UserError(f"{flag} {value!r}: only letters, digits and {'_ . , : + = & | * ! ( ) [ ] -' if pattern is _CONSTRAINT else '_ . , : + = -'} are allowed")
    if opts.scheduler == "pbs" and (opts.constraint or opts.qos or opts.exclusive):
        flag = "--constraint" if opts.constraint else "--qos" if opts.qos else "--exclusive"
        raise UserError(f"{flag} is a SLURM option; for PBS put the site's resource line in --directive")
    opts.directives = tuple(_directive(d, opts.scheduler) for d in opts.directives)
    _check_requeue(opts)
    opts.launcher = launcher
    return opts


def _directive(line: str, scheduler: str) -> str:
    """A free directive as the text after `#SBATCH ` / `#PBS `: one line, an option (it starts with -)."""
    prefix = "#SBATCH" if scheduler == "slurm" else "#PBS"
    text = line.strip().removeprefix(prefix).strip()
    if not text or any(c in text for c in "\n\r\0") or not text.startswith("-"):
        raise UserError(f"--directive {line!r} is not one {scheduler} option line (e.g. "
                        + ("--directive=--mail-type=END)" if scheduler == "slurm" else "--directive='-M me@example.org')"))
    return text


def _check_requeue(opts: EmitOptions) -> None:
    """The preemption options: SLURM only (PBS has no warning signal to ask for, nor a self-requeue for users)."""
    if opts.scheduler != "slurm":
        for flag, value in (("--warning-s", opts.warning_s), ("--max-requeues", opts.max_requeues)):
            if value is not None:
                raise UserError(f"{flag} is SLURM-only: a PBS run still checkpoints on SIGTERM (qdel, walltime) and "
                                "resumes when submitted again")
        return
    if opts.max_requeues is not None and opts.max_requeues < 0:
        raise UserError(f"--max-requeues {opts.max_requeues} must be >= 0")
    if opts.warning_s is not None and opts.warning_s < 0:
        raise UserError(f"--warning-s {opts.warning_s} must be >= 0 (0: ask for no warning)")
    if opts.pack is not None and (opts.warning_s or opts.max_requeues):
        raise UserError("--warning-s/--max-requeues: a packed job (--pack) is not requeued; its runs start over")
    opts.max_requeues = DEFAULT_MAX_REQUEUES if opts.max_requeues is None else opts.max_requeues
    opts.warning_s = DEFAULT_WARNING_S if opts.warning_s is None else opts.warning_s
    if opts.pack is not None:
        opts.max_requeues = opts.warning_s = 0


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def _hms(seconds: float) -> str:
    s = int(math.ceil(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass(frozen=True)
class Shape:
    """What one array job asks for per task: its ranks spread over nodes, GPUs and cores per node/rank, wall time."""

    nodes: int
    per_node: int  # ranks per node
    gpus: int  # GPUs per node: the ones its ranks use, min(np, G), not the whole node's
    cpus_per_task: int | None  # cores per rank (None: the scheduler's default, one)
    time: str


def shape(job: ArrayJob, spec: SweepSpec, opts: EmitOptions) -> Shape:
    per_node = min(opts.gpus_per_node or opts.tasks_per_node or job.np, job.np)
    cpus = opts.cpus_per_task
    if cpus is None and opts.cores_per_node:  # CPU jobs: the node's cores shared by the ranks on it
        cpus = max(1, opts.cores_per_node // per_node)
    if opts.pack is not None:
        from harness.sweep.pack import START_SLACK_S, waves

        time = opts.time or _hms(len(waves(job.runs, opts.pack)) * spec.timeout_s + START_SLACK_S + 300)
    else:
        time = opts.time or _hms(spec.timeout_s + 300)
    return Shape(math.ceil(job.np / per_node), per_node, per_node if opts.gpus_per_node else 0, cpus, time)


def _check_shapes(arrays: list[ArrayJob], runs: list[PlannedRun], spec: SweepSpec, opts: EmitOptions) -> None:
    """What only the plan tells: cores per node, the warning within the wall time, every run stopping on it."""
    for job in arrays:
        s = shape(job, spec, opts)
        if opts.cores_per_node and s.cpus_per_task and s.cpus_per_task * s.per_node > opts.cores_per_node:
            raise UserError(f"{job.name}: {s.per_node} rank(s) per node x --cpus-per-task {s.cpus_per_task} is more "
                            f"than --cores-per-node {opts.cores_per_node}")
        if opts.warning_s and opts.warning_s >= _seconds(s.time):
            raise UserError(f"--warning-s {opts.warning_s} is not shorter than {job.name}'s wall time {s.time} (--time)")
    if opts.warning_s:
        deaf = [r for r in runs if WARNING_SIGNAL not in r.config.train.stop_signals]
        if deaf:
            raise UserError(f"run {deaf[0].label} does not stop on SIG{WARNING_SIGNAL} (train.stop_signals "
                            f"{list(deaf[0].config.train.stop_signals)}), the warning --warning-s asks for: add "
                            f"{WARNING_SIGNAL} to stop_signals or emit with --warning-s 0")


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
    jobs = [ArrayJob("pack", opts.pack, runs)] if opts.pack is not None else arrays
    _check_shapes(jobs, runs, spec, opts)
    site = Site(read_setup(opts.setup), job_env(opts.env), opts.setup)
    template_name, suffix = SCHEDULERS[opts.scheduler]
    template = _Template((TEMPLATES / (PACK_TEMPLATE if opts.pack is not None else template_name)).read_text())

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

    for job in jobs:
        path = out / f"{job.name}{suffix}"
        path.write_text(_render(template, job, spec, opts, site, results, plan_path, manifest))
        path.chmod(0o755)
        written[job.name] = path
    submit = out / "submit.sh"
    submit.write_text(_submit_script(jobs, spec, opts.scheduler, suffix))
    submit.chmod(0o755)
    written["submit"] = submit
    return written


@dataclass(frozen=True)
class Site:
    """The job file's set-up lines and the environment it activates (harness.sweep.jobenv)."""

    setup: str
    env: JobEnv
    setup_file: Path | None


def _directives(prefix: str, lines: list[str]) -> str:
    return "".join(f"{prefix} {line}\n" for line in lines)


def _slurm_directives(s: Shape, opts: EmitOptions) -> str:
    lines = []
    if s.cpus_per_task:
        lines.append(f"--cpus-per-task={s.cpus_per_task}")
    if s.gpus:
        lines.append(f"--gpus-per-node={s.gpus}")
    if opts.partition:
        lines.append(f"--partition={opts.partition}")
    if opts.exclusive:
        lines.append("--exclusive")
    for flag in ("constraint", "account", "qos"):
        if getattr(opts, flag):
            lines.append(f"--{flag}={getattr(opts, flag)}")
    if opts.max_requeues:
        lines.append("--requeue")
    if opts.warning_s:
        lines.append(f"--signal=B:{WARNING_SIGNAL}@{opts.warning_s}")
    return _directives("#SBATCH", [*lines, *opts.directives])


def _preemption_comment(opts: EmitOptions) -> str:
    """The job file's own account of what happens on preemption (SLURM)."""
    warned = (f"SIGUSR1 comes {opts.warning_s} s before the time limit (or with scancel --batch --signal=USR1): the run "
              "stops at a step its ranks agree on, with a checkpoint there" if opts.warning_s else
              "no warning signal is asked for (scancel --batch --signal=USR1 still stops the run with a checkpoint)")
    again = (f"this array task then requeues itself (at most {opts.max_requeues} times: exit status 75 of run-task) and "
             "the run resumes from the checkpoint" if opts.max_requeues else
             "the task does not requeue itself; submitting again resumes the run from its checkpoint")
    if not opts.warning_s and not opts.max_requeues:
        warned, again = ("no warning signal is asked for and the task does not requeue itself",
                         "a run stopped by a signal resumes from its checkpoint when submitted again")
    text = f"Preemption: {warned}; {again}. SIGTERM (scancel, the time limit) also checkpoints, if there is time."
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 112))


def _site_lines(site: Site) -> str:
    setup = (f"# --- set-up lines from {site.setup_file} ---\n{site.setup}# --- end of the set-up lines ---\n"
             if site.setup_file is not None else "")
    return f"{setup}# activate {site.env.described}\n{site.env.lines}"


def _render(template: _Template, job: ArrayJob, spec: SweepSpec, opts: EmitOptions, site: Site, results: Path,
            plan_path: Path, manifest: Path) -> str:
    s = shape(job, spec, opts)
    n = len(job.runs)
    limit = f"%{opts.limit}" if opts.limit else ""
    q = shlex.quote
    values = {
        "sweep": spec.name,
        "array_name": q(job.name),
        "count": str(n),
        "np": str(job.np),
        "job_name": f"{spec.name}-{job.name}",
        "nodes": str(s.nodes),
        "tasks_per_node": str(s.per_node),
        "time": s.time,
        "plan": q(str(plan_path)),
        "manifest": q(str(manifest)),
        "results": q(str(results)),
        "launcher": q(opts.launcher or ""),
        "srun_mpi": q(opts.srun_mpi),
        "site": _site_lines(site),
        "env_described": site.env.described.replace('"', "'").replace("$", "").replace("`", "'"),
        "max_requeues": str(opts.max_requeues or 0),
        "preemption": _preemption_comment(opts),
    }
    if opts.pack is not None:
        from harness.sweep.pack import waves

        values.update(slots=str(opts.pack), waves=str(len(waves(job.runs, opts.pack))), job_name=f"{spec.name}-pack")
    if opts.scheduler == "slurm":
        values["array_range"] = f"0-{n - 1}{limit}"
        values["directives"] = _slurm_directives(s, opts)
    else:
        # PBS refuses one-element arrays; a single run is a plain job (the script then takes index 0)
        cpus = s.per_node * (s.cpus_per_task or 1)
        select = f"{s.nodes}:ncpus={cpus}:mpiprocs={s.per_node}" + (f":ngpus={s.gpus}" if s.gpus else "")
        lines = ([f"-J 0-{n - 1}{limit}"] if n > 1 else []) + [f"-l select={select}", f"-l walltime={s.time}"]
        lines += [f"-q {opts.partition}"] if opts.partition else []
        lines += [f"-A {opts.account}"] if opts.account else []
        values["directives"] = _directives("#PBS", [*lines, *opts.directives])
    return template.substitute(values)


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
