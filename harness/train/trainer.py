"""The data-parallel trainer: build -> epoch loop -> finish, one process per rank.

Every rank runs the same steps and collectives in the same order; what only rank 0 does (the run record,
checkpoints, the epoch line, the progress bar) goes through one `RunWriter`, so no other line here asks which
rank it is on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from harness.checkpoint import check_compatible, check_optimizer
from harness.config import RunConfig
from harness.engines import Engine, default_backend, make_engine, unavailable
from harness.engines.base import check_distinct_gpus, gpu_identity
from harness.errors import EXIT_PREEMPTED, Preempted, UserError, one_line, os_error_line
from harness.losses import make_loss
from harness.outdir import ensure_output_dir
from harness.model import apply_freeze, build_unet, set_seed, count_params, forward_flops, training_flops, unfreeze_all
from harness.record import new_record, utc_from, utc_now
from harness.rundir import RunDir
from harness.system import collect as collect_system
from harness.train.profiling import StepProfiler
from harness.train import stopping
from harness.train.execution import configure_execution
from harness.train.sources import Source, iterate, make_source
from harness.train.step import make_optimizer, make_train_step, optimizer_variables
from harness.train.timing import GpuMemory, Phases, StepTimer, peak_host_mem_mb
from harness.train.validation import evaluate_items
from harness.train.writer import RunWriter

log = logging.getLogger("bratsbench.train")


def preflight(cfg: RunConfig) -> None:
    """Checks that need files but no TensorFlow work: they must fail before anything runs (MWMS needs its
    strategy before any TensorFlow op). Resolves the backend, so the record names the engine that ran."""
    cfg.validate()
    cfg.train.backend = cfg.train.backend or default_backend()
    problem = unavailable(cfg.train.backend)
    if problem:
        raise UserError(problem)
    if cfg.train.resume:
        ckpt = RunDir(cfg.out).checkpoints
        if not ckpt.is_dir():
            raise UserError(f"--resume: no checkpoint folder '{ckpt}' (run without --resume first)")
        check_compatible(ckpt, cfg.model)
    if cfg.train.init_from:
        from harness.model.pretrained import check_pretrained

        check_pretrained(cfg.train.init_from, cfg.model, cfg.train.first_conv)
    ensure_output_dir(cfg.out)  # on every rank: exist_ok, and each rank's probe file has its own name


def train(cfg: RunConfig, engine: Engine | None = None, started_at: float | None = None) -> dict[str, Any]:
    """Run one training (or benchmark) run and return its record (written by rank 0 into the run folder).

    `engine`: one made by the caller (a packed sweep's Horovod on a sub-communicator), else the config's.
    `started_at`: when this run started (time.time()), where it is not this process's start (a packed sweep
    runs many in one process), so start-up time is this run's own."""
    if engine is not None:
        if cfg.train.backend not in (None, engine.name):
            raise UserError(f"backend {cfg.train.backend}: this run is given the {engine.name} engine")
        cfg.train.backend = engine.name
    preflight(cfg)
    engine = engine or make_engine(cfg.train.backend)
    world = engine.init(cfg.train.threads, cfg.train.timeline, cfg.train.device)
    writer = RunWriter(world, RunDir(cfg.out), engine)
    record = _start_record(cfg, engine, writer)
    t_start = time.perf_counter()
    session = None
    try:
        session = build(cfg, engine, record, writer)
        if started_at is not None:
            session.phases.process_start = started_at
        writer.signature(session.ckpt_dir, cfg.model, {"loss_scaling": session.loss_scaling})
        epoch_loop(session, cfg, engine, writer, record)
        t_finish = time.perf_counter()
        finish(session, cfg, engine, writer, record)
        session.phases.add("bookkeeping_s", time.perf_counter() - t_finish)  # checksums, timing and memory over ranks
        record["status"], record["exit_code"] = "ok", 0
    except Preempted as stop:
        record["status"], record["exit_code"], record["error"] = "preempted", EXIT_PREEMPTED, None
        record["extra"]["preempted"] = stop.info
        record["finished_at"], record["wall_s"] = utc_now(), time.perf_counter() - t_start
        writer.record(record)
        engine.mean([0.0])  # every rank waits for rank 0's checkpoint and record before any exits (srun, mpirun
        raise               # and horovodrun stop the others when one exits non-zero)
    except KeyboardInterrupt:
        record["status"], record["exit_code"], record["error"] = "interrupted", 130, "interrupted"
        raise
    except UserError as exc:
        record["status"], record["exit_code"], record["error"] = "failed", 2, str(exc)
        raise
    except Exception as exc:
        error = os_error_line(exc) or one_line(f"{type(exc).__name__}: {exc}")  # disk full: the line the user sees
        record["status"], record["exit_code"], record["error"] = "failed", 1, error
        raise
    finally:
        record["finished_at"] = utc_now()
        record["wall_s"] = time.perf_counter() - t_start
        if session is not None:
            record["phases"] = session.phases.summary()
        writer.record(record)
    return record


def _start_record(cfg: RunConfig, engine: Engine, writer: RunWriter) -> dict[str, Any]:
    record = new_record(cfg.to_dict())
    record["extra"].update(cfg.tags)
    record["engine"] = engine.describe()
    record["world_size"] = engine.world.size
    record["hosts"] = engine.hostnames()
    record["system"] = collect_system(engine.world, engine.allgather_object)  # every rank probes itself
    if cfg.train.resume:  # keep the learning curve of the epochs done before the interruption
        earlier = writer.run.read_record() or {}
        record["history"] = earlier.get("history", [])
        record["extra"]["resumes"] = int(earlier.get("extra", {}).get("resumes", 0)) + 1
        record["extra"].update(stopping.carried(earlier.get("extra", {})))
    writer.record(record)
    return record


# --- build ----------------------------------------------------------------------------------------------


@dataclass
class Session:
    """What `build` makes and the loop uses."""

    model: tf.keras.Model
    opt: tf.keras.optimizers.Optimizer
    source: Source
    loss_fn: Callable
    step_fn: Callable
    loss_scaling: bool
    frozen_levels: list[str]
    epoch_var: tf.Variable
    manager: tf.train.CheckpointManager
    ckpt_dir: Any
    epochs: int
    steps_per_epoch: int
    total_steps: int
    val_items: list | None
    timer: StepTimer
    profiler: StepProfiler
    xla: bool = False
    fused: bool | None = None  # one collective for all gradients (else one per gradient)
    gpu_memory: "GpuMemory | None" = None
    stream: Iterator | None = None  # the run's batches, every epoch from the restored one on, one pipeline
    phases: Phases = field(default_factory=Phases)
    since_val_s: float = 0.0  # seconds in training steps since the last validation (validate_every_s)
    spent_s: float = 0.0  # seconds in training steps so far, earlier (resumed) epochs included: the budget's clock
    out_of_budget: bool = False
    signalled: bool = False  # a stop signal reached some rank: every rank stops at this step
    until_check: int = 1  # steps until the ranks next ask each other about a stop signal (stopping.steps_between)
    saved_step: int = -1  # the step of the last checkpoint written

    def rebuild_step(self, engine: Engine) -> None:
        """A tf.function step reads `trainable_variables` when traced: rebuild it after (un)freezing."""
        self.step_fn = make_train_step(self.model, self.opt, self.loss_fn, engine, amp=self.loss_scaling, xla=self.xla,
                                       fused=self.fused)


def build(cfg: RunConfig, engine: Engine, record: dict, writer: RunWriter) -> Session:
    """Model (initial or pre-trained weights, frozen levels), optimizer, checkpoint state restored and
    broadcast from rank 0, data source and the step function."""
    tcfg, dcfg, mcfg = cfg.train, cfg.data, cfg.model
    world = engine.world
    if world.gpus:  # two ranks of a node on one GPU: NCCL would fail later, less clearly
        check_distinct_gpus(engine.allgather_object((socket.gethostname(), gpu_identity(world.device))))
    set_seed(tcfg.seed)  # same initial weights on every rank
    loss_scaling, fused = configure_execution(cfg, engine, record, writer)
    source = make_source(cfg, world)
    with engine.scope():  # MWMS mirrors the variables created here
        model = build_unet(mcfg, dcfg.crop, batch_norm=engine.batch_norm())
        opt = make_optimizer(tcfg, world.size, loss_scaling)
        opt.build(model.trainable_variables)  # slots for every variable, so later unfreezing needs no rebuild
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    if tcfg.init_from:
        from harness.model.pretrained import load_pretrained

        record["model"]["init"] = load_pretrained(model, mcfg, tcfg.init_from, dcfg.crop, tcfg.first_conv)
    frozen_levels = apply_freeze(model, tcfg.freeze_depth, mcfg.depth)

    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, epoch=epoch_var)
    ckpt_dir = RunDir(cfg.out).checkpoints
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir), max_to_keep=2)
    if tcfg.resume:
        check_optimizer(ckpt_dir, loss_scaling)
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.debug("resumed from %s", manager.latest_checkpoint)
    engine.broadcast(model.variables + optimizer_variables(opt) + [epoch_var])

    params = count_params(model)
    record["model"].update(
        params_total=params["total"], params_trainable=params["trainable"], frozen_levels=frozen_levels,
        forward_gflops_per_sample=forward_flops(model) / 1e9, train_gflops_per_sample=training_flops(model) / 1e9,
    )
    spe = tcfg.steps_per_epoch or source.steps_per_epoch
    epochs, total = (1, tcfg.bench_warmup + tcfg.bench_steps) if tcfg.benchmark else (tcfg.epochs, tcfg.epochs * spe)
    warmup = tcfg.bench_warmup if tcfg.benchmark else min(tcfg.bench_warmup, max(total - 1, 0))
    loss_fn = make_loss(tcfg.loss, tcfg.class_weights)
    return Session(
        model=model, opt=opt, source=source, loss_fn=loss_fn,
        step_fn=make_train_step(model, opt, loss_fn, engine, amp=loss_scaling, xla=tcfg.xla, fused=fused),
        loss_scaling=loss_scaling, xla=tcfg.xla, fused=fused, gpu_memory=GpuMemory.of(world.device),
        frozen_levels=frozen_levels, epoch_var=epoch_var, manager=manager, ckpt_dir=ckpt_dir,
        epochs=epochs, steps_per_epoch=spe, total_steps=total,
        val_items=None if tcfg.benchmark else source.val_items(), timer=StepTimer(warmup=warmup),
        profiler=StepProfiler(RunDir(cfg.out), engine, tcfg.profile_steps, tcfg.timeline),
    )


# --- the epoch loop -------------------------------------------------------------------------------------


def epoch_loop(s: Session, cfg: RunConfig, engine: Engine, writer: RunWriter, record: dict) -> None:
    """Epochs from the restored one on; after each: mean loss over ranks, validation, checkpoint, record."""
    tcfg = cfg.train
    global_step = int(s.opt.iterations.numpy())
    start_epoch = int(s.epoch_var.numpy())
    record["history"] = [h for h in record["history"] if h.get("epoch", 0) <= start_epoch]
    s.spent_s = sum(h.get("train_s") or 0.0 for h in record["history"])
    partial = stopping.partial_epoch(record["extra"], global_step)  # the steps a preempted epoch took before
    s.spent_s += partial.get("train_s", 0.0)
    t_setup = time.perf_counter()
    s.stream = _run_stream(s, tcfg.benchmark, start_epoch, done=0 if tcfg.benchmark else global_step - start_epoch * s.steps_per_epoch)
    s.phases.add("input_setup_s", time.perf_counter() - t_setup)
    for epoch in range(start_epoch, s.epochs):
        if tcfg.unfreeze_after is not None and epoch >= tcfg.unfreeze_after and s.frozen_levels:
            unfreeze_all(s.model)
            s.frozen_levels = []
            s.rebuild_step(engine)
            record["model"]["unfrozen_at_epoch"] = epoch
        t_epoch = time.perf_counter()
        losses, times, global_step = run_epoch(s, cfg, epoch, global_step, writer, engine)
        stopping_here = _stop_point(s, cfg, engine, writer, epoch, global_step, losses, times)
        s.epoch_var.assign(epoch + 1)
        t_book = time.perf_counter()
        mean_loss = engine.mean([float(np.mean(losses)) if losses else float("nan")])[0]
        entry: dict[str, Any] = {
            "epoch": epoch + 1, "step": global_step, "loss": mean_loss, "wall_s": time.perf_counter() - t_epoch,
            "step_time_mean_s": float(np.mean(times)) if times else None,
            "train_s": float(np.sum(times)),  # in training steps (a time-to-target counts these, not validation)
            "params_trainable": count_params(s.model)["trainable"],
        }
        if epoch == start_epoch:
            stopping.merge_partial(entry, partial, len(times))
        s.phases.add("bookkeeping_s", time.perf_counter() - t_book)
        s.since_val_s += entry["train_s"]
        # decided on the mean over ranks, so every rank validates (a collective) at the same epoch
        due = ((epoch + 1) % tcfg.validate_every == 0 if tcfg.validate_every_s is None
               else engine.mean([s.since_val_s])[0] >= tcfg.validate_every_s)
        if s.val_items and (due or epoch + 1 == s.epochs or s.out_of_budget) and not stopping_here:
            s.since_val_s = 0.0
            t_val = time.perf_counter()
            result = evaluate_items(s.model, s.val_items, cfg.data.crop, engine)
            entry["val_s"] = time.perf_counter() - t_val
            s.phases.add("validation_s", entry["val_s"])
            entry["val"] = result["dice"]
            record["metrics"] = {"val": result["summary"], "val_cases": result["cases"]}
        record["history"].append(entry)
        if not tcfg.benchmark:
            _checkpoint(s, writer, global_step)
        if s.out_of_budget:
            record["extra"]["stopped"] = {"reason": "budget", "budget_s": tcfg.budget_s, "epoch": epoch + 1,
                                          "step": global_step}
        t_book = time.perf_counter()
        writer.record(record)
        writer.epoch(entry)
        s.phases.add("bookkeeping_s", time.perf_counter() - t_book)
        if s.out_of_budget:
            break
        if stopping_here:
            _preempt(s, cfg, engine, writer, epoch + 1, global_step, [], [])
    s.profiler.close()


def run_epoch(s: Session, cfg: RunConfig, epoch: int, global_step: int, writer: RunWriter,
              engine: Engine) -> tuple[list[float], list[float], int]:
    """This epoch's steps (skipping those a resumed run already did); returns losses, step times, next step."""
    tcfg = cfg.train
    steps = s.total_steps if tcfg.benchmark else s.steps_per_epoch
    done = 0 if tcfg.benchmark else global_step - epoch * s.steps_per_epoch
    losses: list[float] = []
    times: list[float] = []
    label = ("benchmark" if tcfg.benchmark else f"epoch {epoch + 1}/{s.epochs}" if tcfg.budget_s is None
             else f"epoch {epoch + 1}, {s.spent_s:.0f} of {tcfg.budget_s:g} s")  # the budget ends it, not the epochs
    if s.gpu_memory:
        s.gpu_memory.reset()
    with writer.bar(steps, done, label) as bar:
        for _ in range(done, steps):
            s.profiler.before_step(global_step)
            t0 = time.perf_counter()
            x, y = next(s.stream)
            t1 = time.perf_counter()
            with s.profiler.trace(global_step):
                loss = float(s.step_fn(x, y))
            t2 = time.perf_counter()
            s.profiler.after_step(global_step)
            s.timer.add(t2 - t0, t1 - t0)
            s.phases.step(t2 - t0)
            losses.append(loss)
            times.append(t2 - t0)
            global_step += 1
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {global_step}")
            bar.update(loss)
            if tcfg.checkpoint_every and global_step % tcfg.checkpoint_every == 0:
                _checkpoint(s, writer, global_step)
            if _should_stop(s, tcfg, t2 - t0, engine):
                break
    if s.gpu_memory:
        s.gpu_memory.read()
    return losses, times, global_step


def _should_stop(s: Session, tcfg: Any, step_s: float, engine: Engine) -> bool:
    """Whether the training-time budget is spent or a stop signal reached any rank; decided on one mean over ranks,
    so every rank stops at the same step (a rank that stopped alone would leave the others waiting in their next
    collective). A budget asks after every step; stop signals alone about once a second of steps (the flag rides
    along the budget's mean where there is one); without either there is nothing to ask the other ranks."""
    budget = tcfg.budget_s is not None and not tcfg.benchmark
    if budget:
        s.spent_s += step_s
    s.until_check -= 1
    if not (budget or (stopping.armed() and s.until_check <= 0)):
        return False
    (spent, mean_step_s), s.signalled = stopping.agree([s.spent_s, step_s], engine.mean)
    s.until_check = stopping.steps_between(mean_step_s)  # the same on every rank: it comes from the mean
    s.out_of_budget = budget and spent >= tcfg.budget_s
    return s.out_of_budget or s.signalled


def _stop_point(s: Session, cfg: RunConfig, engine: Engine, writer: RunWriter, epoch: int, step: int,
                losses: list[float], times: list[float]) -> bool:
    """After an epoch's steps, where a stop signal ends the run: mid-epoch, a checkpoint at this step (Preempted
    raised); at an epoch's end, True: the epoch is recorded (without the validation, which may take long) and
    its checkpoint is the one to resume from; after the last epoch, False: the run ends ok."""
    complete = len(times) == s.total_steps if cfg.train.benchmark else step == (epoch + 1) * s.steps_per_epoch
    if s.signalled and not complete:
        _preempt(s, cfg, engine, writer, epoch, step, losses, times)
    return s.signalled and epoch + 1 < s.epochs


def _preempt(s: Session, cfg: RunConfig, engine: Engine, writer: RunWriter, epoch: int, step: int,
             losses: list[float], times: list[float]) -> None:
    """Every rank: the checkpoint of this step (the epoch counter stays at this epoch, so --resume skips the steps
    it already took), then Preempted. Benchmark runs keep no checkpoint: they start over."""
    s.profiler.close()
    if not cfg.train.benchmark and s.saved_step != step:
        _checkpoint(s, writer, step)
    got = [g for g in engine.allgather_object(stopping.received()) if g["signal"]]  # perhaps only some ranks got it
    first = min(got, key=lambda g: g["at"]) if got else {"signal": None, "at": None}
    loss = engine.mean([float(np.mean(losses)) if losses else 0.0])[0]
    raise Preempted({"signal": first["signal"], "step": step, "epoch": epoch + 1, "checkpoint": not cfg.train.benchmark,
                     "signalled_at": utc_from(first["at"]), "ranks_signalled": len(got),
                     "epoch_steps": len(times), "epoch_loss": loss, "epoch_train_s": float(np.sum(times))})


def _checkpoint(s: Session, writer: RunWriter, step: int) -> None:
    t = time.perf_counter()
    writer.checkpoint(s.manager, step)
    s.saved_step = step
    s.phases.add("checkpoint_s", time.perf_counter() - t)


def _run_stream(s: Session, benchmark: bool, first_epoch: int, done: int) -> Iterator:
    """One iterator over every batch the run can take (the budget may end it early), skipping the `done` steps a
    resumed run already took in its first epoch. Benchmark mode repeats epoch 0 for as long as it is timed."""
    if benchmark:
        ds = s.source.batches(0).repeat()
    else:
        ds = s.source.batches(first_epoch, max(s.epochs - first_epoch, 1), s.steps_per_epoch)
    # an outer buffer reaches into the next epoch before this one runs dry, so its first crops are ready
    return iterate(ds.prefetch(2), skip=done)


# --- finish ---------------------------------------------------------------------------------------------


def finish(s: Session, cfg: RunConfig, engine: Engine, writer: RunWriter, record: dict) -> None:
    """Replica checksums, timing and memory over ranks into the record; replicas that ended with different
    weights fail the run (a data-parallel run's replicas must stay identical: anything else is a bug, e.g.
    batch statistics that were never averaged)."""
    world = engine.world
    checksums = engine.allgather_object(weights_checksum(s.model))
    record["model"]["replica_checksums"] = checksums
    timing = s.timer.summary(cfg.train.batch_size * world.size)
    mems = engine.allgather_object((peak_host_mem_mb(), s.gpu_memory.peak_mb if s.gpu_memory else None))
    gpu = [g for _, g in mems if g is not None]
    timing.update(peak_host_mem_mb=max(h for h, _ in mems), peak_host_mem_mb_per_rank=[h for h, _ in mems],
                  peak_gpu_mem_mb=max(gpu) if gpu else None, peak_gpu_mem_mb_per_rank=[g for _, g in mems] if gpu else None,
                  threads_per_rank=world.threads, cores=sorted(os.sched_getaffinity(0)))  # rank 0's allowed cores
    if timing.get("step_time_mean_s"):
        per_rank_rate = cfg.train.batch_size / timing["step_time_mean_s"]
        timing["achieved_gflops_per_rank"] = per_rank_rate * record["model"]["train_gflops_per_sample"]
    record["timing"] = timing
    if s.xla and s.timer.seen:
        record["execution"]["xla"]["compiled"] = True  # jit_compile: the steps ran compiled, or raised
    if len(set(checksums)) > 1:
        groups = {c: [r for r, x in enumerate(checksums) if x == c] for c in dict.fromkeys(checksums)}
        raise RuntimeError("replicas diverged: their weights differ at the end ("
                           + "; ".join(f"ranks {', '.join(map(str, r))}: {c}" for c, r in groups.items()) + ")")
    if cfg.train.benchmark:
        writer.summary(timing)


def weights_checksum(model: tf.keras.Model) -> str:
    """Hash of every weight's bytes: equal on all ranks iff the replicas hold identical weights."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]
