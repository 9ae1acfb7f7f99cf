"""Turn a results folder into tables (Markdown + CSV), PNG figures and a report.md that links them.

A section whose inputs are missing is skipped with one line saying why; only a folder without any run record is
an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from analysis import plots, tables, transfer
from analysis.records import engine_label, load_records, run_dir, system_label, systems
from harness.errors import UserError
from harness.outdir import ensure_output_dir
from harness.rundir import RECORD, RunDir


@dataclass
class Section:
    name: str
    title: str
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, display frame)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    about: str = ""
    failures: list[str] = field(default_factory=list)  # values outside their reference (what --check fails on)

    @property
    def pngs(self) -> list[Path]:
        return [f for f in self.files if f.suffix == ".png"]


def _write(df: pd.DataFrame, out: Path, stem: str, section: Section, caption: str = "", display: pd.DataFrame | None = None) -> None:
    """CSV of the full table, Markdown of its display form."""
    shown = df if display is None else display
    (out / f"{stem}.csv").write_text(df.to_csv(index=False))
    (out / f"{stem}.md").write_text((f"**{caption}**\n\n" if caption else "") + tables.markdown(shown) + "\n")
    section.files += [out / f"{stem}.md", out / f"{stem}.csv"]
    section.tables.append((caption, shown))


def systems_section(records: list[dict], comm: list[dict], out: Path) -> Section:
    """Each system the runs ran on, once, with how many runs it holds: the tables below never pool two systems and
    name each row's system where more than one is present."""
    s = Section("systems", "Systems the runs ran on", about=(
        "A system is a record's system.label (CPU or GPU model and count, TensorFlow build; records written before "
        "runs named their system: 'unknown system'). Runs of two systems are never pooled."))
    train, baselines = systems(records), systems(comm)
    rows = [{"system": label, "runs": train.get(label, 0), **({"comm runs": baselines.get(label, 0)} if comm else {})}
            for label in dict.fromkeys([*train, *baselines])]
    _write(pd.DataFrame(rows), out, "systems", s)
    return s


def scaling_section(records: list[dict], out: Path) -> Section:
    s = Section("scaling", "Scaling: throughput vs ranks", about=(
        "Weak scaling fixes the per-rank batch, strong scaling the global batch. speedup = throughput(np) / "
        "throughput(smallest np), efficiency = speedup / (np / smallest np), ideal = linear from the smallest np. "
        "Each point is the median of its repeats [95% bootstrap CI]; a speedup pairs the repeats of the same round; "
        "noisy: the repeats spread more than 10% (CV); input-bound: the steps waited for input more than 10% of "
        "their time, so the point measures the input pipeline (compare a --synthetic-input run of the same point)."))
    table = tables.scaling_table(records)
    if table.empty:
        s.skipped = "no series of >= 2 rank counts that share the per-rank (weak) or global (strong) batch and all other settings"
        return s
    _write(table, out, "scaling", s, display=tables.scaling_view(table))
    for kind in ("weak", "strong"):
        if (table["scaling"] == kind).any():
            s.files.append(plots.scaling_png(table, kind, out / f"scaling_{kind}.png"))
    return s


def phases_section(records: list[dict], out: Path) -> Section:
    s = Section("phases", "Where the wall time goes", about=(
        "From each process's start: start-up (imports, engine, model build, data, the first step's tracing), "
        "training steps, validation, checkpoints, other (evaluation, writing); train_share = steps / wall."))
    table = tables.phases_table(records)
    if table.empty:
        s.skipped = "no record has phases (written by bratsbench train since 3/4)"
        return s
    _write(table, out, "phases", s)
    keys = ["system", "kind"] if "system" in table else ["kind"]  # two systems, like the two kinds, are never mixed
    for key, runs in table.groupby(keys, sort=True):  # benchmark points are mostly start-up: never mixed in
        kind = key[-1] if isinstance(key, tuple) else key
        where = f" on {key[0]}" if len(keys) == 2 else ""
        share = runs["train_share"]
        s.notes.append(f"{kind} runs{where}: training steps take a median {100 * share.median():.0f}% of the wall time "
                       f"(min {100 * share.min():.0f}%, max {100 * share.max():.0f}%, {len(runs)} run{'s' * (len(runs) != 1)}); "
                       f"start-up a "
                       f"median {runs['to_first_step_s'].median():.1f} s")
    return s


def batch_section(records: list[dict], out: Path) -> Section:
    s = Section("batch", "Step time vs batch size")
    table = tables.batch_table(records)
    if table.empty:
        s.skipped = "no runs that differ only in the per-rank batch size"
        return s
    _write(table, out, "batch", s)
    s.files.append(plots.batch_png(table, out / "batch.png"))
    return s


def freeze_section(records: list[dict], out: Path) -> Section:
    s = Section("freeze", "Step time and trainable parameters vs freeze depth")
    table = tables.freeze_table(records)
    if table.empty:
        s.skipped = "no runs that differ only in the freeze depth"
        return s
    _write(table, out, "freeze", s)
    s.files.append(plots.freeze_png(table, out / "freeze.png"))
    return s


def transfer_section(records: list[dict], out: Path) -> Section:
    s = Section("transfer", "Transfer (fine-tuned at freeze depth k, or head-only) vs training from scratch")
    table, files = transfer.write_comparison(records, out)
    if table.empty:
        s.skipped = "no records with extra.transfer role finetune/scratch"
        return s
    s.files += files
    s.tables.append((transfer.caption(table), transfer.display(table)))
    if not any(f.suffix == ".png" for f in files):
        s.notes.append("no learning curves: no per-epoch validation Dice in the transfer records")
    return s


def mmd_section(results: Path, out: Path) -> Section:
    s = Section("mmd", "Domain shift (MMD)")
    table = tables.mmd_table(results)
    if table.empty:
        s.skipped = f"no MMD results ({results / 'shift'}/*.json with 'rows')"
        return s
    _write(table, out, "mmd", s)
    return s


def profile_section(records: list[dict], out: Path, top: int = 10,
                    breakdowns: list[tuple[dict, pd.DataFrame]] | None = None, several: bool = False) -> Section:
    """Step-time breakdown, top ops and Horovod timeline of every run that holds profiler captures; each run's
    per-step breakdown is also appended to `breakdowns` (for the scaling model). `several`: the records come from
    more than one system, so each row names its run's system."""
    s = Section("profile", "Profiler: step-time breakdown per rank", about=(
        "Per rank, mean ms per profiled step. step_ms runs from the trainer's next(it) to the end of the step marker "
        "(marker_ms is the marker alone, as TensorBoard shows it). compute: some TF op runs; communication: a Horovod "
        "collective is in flight and no op runs (comm_inflight_ms counts the overlapped time too); input: blocked in "
        "GetNext; other: the rest. record_step_ms is the record's mean over all timed steps, profiled or not."))
    from analysis import traces

    profiled = [(r, run_dir(r)) for r in records]
    profiled = [(r, d, traces.find_captures(d)) for r, d in profiled if d is not None and RunDir(d).profile.is_dir()]
    profiled = [p for p in profiled if p[2]]
    if not profiled:
        s.skipped = "no run with profiler captures (train --profile-steps A:B writes one per rank)"
        return s
    from tqdm import tqdm

    summaries, steps, ops, op_types, phases, ranks = [], [], [], [], [], []
    bar = tqdm(total=sum(len(p[2]) for p in profiled), desc="profiles", unit="rank", file=sys.stderr)
    try:
        for record, folder, captures in profiled:
            name = folder.name
            try:
                per_step = traces.run_breakdown(folder, progress=bar)
            except (ValueError, RuntimeError, OSError) as exc:
                s.notes.append(f"{folder}: no breakdown ({exc})")
                continue
            if breakdowns is not None:
                breakdowns.append((record, per_step.assign(run=name)))
            per_step.insert(0, "run", name)
            steps.append(per_step)
            summary = traces.summarize_breakdown(per_step.drop(columns="run"), record)
            summary.insert(0, "run", name)
            if several:
                summary.insert(1, "system", system_label(record))
            summaries.append(summary)
            for rank, xplane in captures.items():
                try:
                    by_name, by_type = traces.top_ops(xplane, top), traces.top_op_types(xplane, top)
                except (RuntimeError, OSError, KeyError, ValueError) as exc:
                    s.notes.append(f"{xplane}: no op table ({exc})")
                    continue
                for t, into in ((by_name, ops), (by_type, op_types)):
                    t.insert(0, "rank", rank)
                    if several:
                        t.insert(0, "system", system_label(record))
                    t.insert(0, "run", name)
                    into.append(t)
            listed = _tensorboard_check(traces, folder, captures)
            if listed:
                s.notes.append(listed)
            timeline = RunDir(folder).timeline
            if timeline.is_file():
                summary_t = traces.timeline_summary(traces.read_timeline(timeline))
                phases.append(summary_t.phases.assign(run=name)[["run", *summary_t.phases.columns]])
                if not summary_t.ranks.empty:
                    ranks.append(summary_t.ranks.assign(run=name)[["run", *summary_t.ranks.columns]])
                if summary_t.note:
                    s.notes.append(f"{timeline}: {summary_t.note}")
                if summary_t.unclosed:
                    s.notes.append(f"{timeline}: {summary_t.unclosed} activities never ended (job killed, or the window closed "
                                   "mid-activity); they are not counted")
    finally:
        bar.close()
    summary_all = tables.concat(summaries)
    if summary_all.empty:
        s.skipped = "captures found but none could be analysed: " + "; ".join(s.notes)
        return s
    _write(summary_all, out, "profile_breakdown", s, "mean ms per profiled step; buckets sum to step_ms (span incl. next(it))",
           tables.breakdown_view(summary_all))
    (out / "profile_steps.csv").write_text(tables.concat(steps).to_csv(index=False))
    s.files.append(out / "profile_steps.csv")
    if ops:
        all_ops = tables.concat(ops)
        _write(all_ops, out, "profile_top_ops", s, f"top {top} ops by self time per rank", all_ops.assign(share=all_ops["share"].round(3)))
        all_types = tables.concat(op_types)
        _write(all_types, out, "profile_top_op_types", s, f"top {top} op types by self time per rank (summed over ops)",
               all_types.assign(share=all_types["share"].round(3)))
    if phases:
        _write(tables.concat(phases), out, "timeline_phases", s,
               "Horovod timeline (written by rank 0): time per phase summed over tensors, which overlap")
    if ranks:
        _write(tables.concat(ranks), out, "timeline_ranks", s, "Horovod timeline: negotiation per rank")
    s.files.append(plots.breakdown_png(summary_all, out / "profile_breakdown.png"))
    return s


def reference_section(checked: tuple[pd.DataFrame, list[str]], path: str, out: Path) -> Section:
    """The references of a file checked against the median of their point's repeats on their system
    (`analysis.reference.check`); the ones outside flagged."""
    from analysis import reference

    s = Section("reference", f"References ({path})", about=(
        "Expected value per system and point with ReFrame-style tolerances (fractions of the value); measured is the "
        "median over the point's repeats on that system; status ok, low, high or not measured."))
    table, notes = checked
    s.notes += notes
    s.failures = reference.failures(table)
    if table.empty:
        s.skipped = "no reference of these runs' systems in the file"
        return s
    _write(table.drop(columns=["side", "lower", "upper"]), out, "references", s)
    return s


def _baseline_for(record: dict, comm: list[dict]) -> Any:
    """This machine's measured allreduce baseline for a run: a comm record of the same system, of the run's engine
    over the same transport (Horovod over MPI and over Gloo differ 5x here) at its rank count, else of its engine
    over any transport when the run's record does not say which, else raw MPI's; None without one."""
    from analysis import scaling_model as sm

    system = system_label(record)
    comm = [c for c in comm if system_label(c) == system]  # another system's links say nothing about this one
    n, label = record.get("world_size") or 1, engine_label(record)
    engine = (record.get("engine") or {}).get("name")
    wants = [lambda c: engine_label(c) == label]
    if label == engine:  # an older record: its transport is unknown
        wants.append(lambda c: (c.get("engine") or {}).get("name") == engine)
    wants.append(lambda c: (c.get("engine") or {}).get("name") == "mpi")
    for want in wants:
        for c in comm:
            if c.get("world_size") == n and want(c) \
                    and (c.get("comm") or {}).get("fusion_bytes") != 0 and ((c.get("comm") or {}).get("tensors") or 1) == 1:
                link = sm.measured_interconnect(c)
                if link is not None:
                    return link
    return None


def model_section(breakdowns: list[tuple[dict, pd.DataFrame]], out: Path, comm: list[dict] | None = None,
                  several: bool = False) -> Section:
    """Weak scaling to np = 512 predicted from each profiled run's compute, gradient bytes and overlap, on the
    stated interconnects and on this machine's measured baseline (comm records), against the run's own throughput."""
    from analysis import scaling_model as sm

    s = Section("model", "Scaling model: predicted weak scaling past this machine", about=(
        "Per profiled run: step = compute + (1 - overlap) x ring allreduce of its gradient bytes, "
        "2(n-1)/n x bytes / busbw + 2(n-1) x latency per fused message; compute and overlap from the run's trace "
        "(the slowest rank's mean over its profiled steps). Interconnects are stated inputs: "
        + "; ".join(f"{k}: {v.name}, busbw {v.busbw_gb_s:g} GB/s, latency {v.latency_us:g} us"
                    for k, v in sm.INTERCONNECTS.items())
        + ". Not modelled: input pipelines, stragglers, ranks sharing one host's memory bandwidth."))
    frames, compared, dots = [], [], []
    for record, per_step in breakdowns:
        name = per_step["run"].iloc[0] if "run" in per_step and len(per_step) else record.get("name")
        try:
            inputs = sm.inputs_from_run(record, per_step)
        except UserError as exc:
            s.notes.append(f"{name}: {exc}")
            continue
        here = _baseline_for(record, comm or [])
        system = {"system": system_label(record)} if several else {}
        for link in [*([here] if here else []), *sm.INTERCONNECTS.values()]:
            frames.append(sm.predict(inputs, link).assign(run=name, **system))
        measured = (record.get("timing") or {}).get("throughput_samples_s")
        n = record.get("world_size") or 1
        if measured and here is not None:
            pair = sm.against_measured(sm.predict(inputs, here, [n]), [(n, measured)]).assign(run=name, baseline=here.name,
                                                                                              **system)
            compared.append(pair)
            exposed = per_step["communication_ms"].mean() if "communication_ms" in per_step else float("nan")
            s.notes.append(f"{name}: the baseline ({here.name}: busbw {here.busbw_gb_s:.3g} GB/s, latency "
                           f"{here.latency_us:.3g} us) predicts {sm.allreduce_s(n, inputs.grad_bytes, here, inputs.messages) * 1e3:.2f} ms "
                           f"of allreduce per step for its {inputs.grad_bytes / 1e6:.2f} MB of gradients; its trace shows "
                           f"{exposed:.2f} ms of exposed communication per step (mean over ranks: waiting for the slower "
                           "rank counts as communication there)")
        if measured:
            alone = (record.get("world_size") or 1) * inputs.per_rank_batch / inputs.compute_s
            dots.append((name, n, measured / alone))
            s.notes.append(f"{name}: compute {inputs.compute_s * 1e3:.0f} ms per step, {inputs.grad_bytes / 1e6:.2f} MB "
                           f"of gradients in {inputs.messages} message(s), overlap {inputs.overlap:.0%}; its measured "
                           f"throughput {measured:.3g} samples/s at np={record.get('world_size')} is "
                           f"{measured / alone:.2f}x what its compute alone would give")
    if not frames:
        s.skipped = "no profiled run to take compute and overlap from (train --profile-steps A:B on np >= 1)"
        return s
    table = tables.concat(frames)
    table = table[["run", *(["system"] if several else []), "interconnect", "np", "allreduce_ms", "exposed_ms",
                   "step_ms", "throughput", "efficiency"]]
    _write(table, out, "scaling_model", s, "predicted per rank count (weak scaling; throughput in samples/s)",
           table[table["np"].isin([1, 2, 8, 64, 512])])
    if compared:
        both = tables.concat(compared)[["run", *(["system"] if several else []), "baseline", "np", "predicted",
                                            "measured", "predicted / measured"]]
        _write(both, out, "scaling_model_vs_measured", s, "predicted (this machine's measured baseline) against the "
               "run's own measured throughput (samples/s)", both)
    points = pd.DataFrame(dots, columns=["run", "np", "efficiency"])
    s.files.append(plots.scaling_model_png(table, out / "scaling_model.png", points))
    return s


def comm_section(records: list[dict], out: Path) -> Section:
    """Collective latency and bandwidth per backend and rank count (bratsbench comm records)."""
    s = Section("comm", "Communication baselines (bratsbench comm)", about=(
        "Per backend, collective and size: mean time per call on the slowest rank; algbw = bytes / time, busbw = "
        "algbw x 2(n-1)/n (allreduce), x (n-1)/n (allgather), x 1 (broadcast), as nccl-tests reports them."))
    table = tables.comm_table(records)
    if table.empty:
        s.skipped = "no comm records (bratsbench comm -np 2 --backend mpi|horovod|mwms --out RESULTS/comm/NAME)"
        return s
    _write(table, out, "comm", s, "all sizes", table)
    marks = tables.comm_marks(records)
    if not marks.empty:
        _write(marks, out, "comm_gradient", s, "allreduce at the model's gradient size (nearest measured size), "
               "and each backend's busbw there relative to raw MPI at the same rank count")
    s.files.append(plots.comm_png(table, records, out / "comm.png"))
    return s


def _tensorboard_check(traces: Any, folder: Path, captures: dict[int, Path]) -> str | None:
    """A note when `tensorboard --logdir` on the run's profile folder would not list every rank's capture."""
    try:
        listed = traces.tensorboard_runs(RunDir(folder).profile)
    except Exception as exc:  # noqa: BLE001 - a TensorBoard API change must not stop the analysis
        return f"{folder}: could not ask TensorBoard's profile plugin for its runs ({type(exc).__name__})"
    missing = [r for r in captures if not any(run.split("/")[0] == f"rank{r}" for run in listed)]
    if missing:
        return (f"{RunDir(folder).profile}: TensorBoard's profile plugin does not list rank(s) {', '.join(map(str, missing))} "
                "(a rank folder needs an events file to be a TensorBoard run)")
    return None


def build_report(results: str | Path, out: str | Path | None = None, top: int = 10,
                 warn: Callable[[str], None] | None = None, reference: str | Path | None = None
                 ) -> tuple[list[Section], Path]:
    """Write every section's files and report.md into OUT (default RESULTS/analysis); returns the sections.
    `reference`: a reference file to check the points against (a bad file is a UserError before anything is written)."""
    from analysis import points, reference as references

    results = Path(results)
    refs = references.load(reference) if reference else None
    if not results.is_dir():
        raise UserError(f"results folder '{results}' does not exist")
    records = load_records(results, warn=warn)
    if not records:
        raise UserError(f"'{results}' holds no readable run records (no */{RECORD} below it)")
    comm = [r for r in records if r.get("kind") == "comm"]
    several = len(systems(records)) > 1
    records = [r for r in records if r.get("kind") != "comm"]
    # a reference that names no point is an error before any file is written
    checked = references.check(refs, {"": points.collect(records)}, str(reference)) if refs is not None else None
    out = ensure_output_dir(out, "--out") if out else ensure_output_dir(results / "analysis", "analysis folder")
    breakdowns: list[tuple[dict, pd.DataFrame]] = []
    sections = [
        systems_section(records, comm, out),
        scaling_section(records, out),
        phases_section(records, out),
        batch_section(records, out),
        freeze_section(records, out),
        transfer_section(records, out),
        mmd_section(results, out),
        profile_section(records, out, top, breakdowns, several),
        model_section(breakdowns, out, comm, several),
        comm_section(comm, out),
        *([reference_section(checked, str(reference), out)] if checked is not None else []),
    ]
    (out / "report.md").write_text(render(sections, results, len(records), out))
    return sections, out / "report.md"


def render(sections: list[Section], results: Path, n_records: int, out: Path) -> str:
    lines = [f"# Benchmark report: {results}", "", f"{n_records} run record(s) read.", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.about and not s.skipped:
            lines += [s.about, ""]
        if s.skipped:
            lines += [f"Skipped: {s.skipped}.", ""]
            continue
        for caption, table in s.tables:
            if caption:
                lines += [f"*{caption}*", ""]
            lines += [tables.markdown(table), ""]
        lines += ["Files: " + ", ".join(f"[{f.name}]({f.relative_to(out)})" for f in s.files if f.suffix != ".png"), ""]
        lines += [f"![{p.stem}]({p.relative_to(out)})" for p in s.pngs] + [""]
        lines += [f"- note: {n}" for n in s.notes] + ([""] if s.notes else [])
    return "\n".join(lines)
