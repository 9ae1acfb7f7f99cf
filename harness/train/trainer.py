"""The Horovod trainer: one process per rank, rank 0 alone writes checkpoints, logs, bar and record."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from harness.checkpoint import check_compatible, checkpoint_dir, save_checkpoint, write_signature
from harness.config import RunConfig
from harness.errors import UserError
from harness.losses import make_loss
from harness.model import build_unet, count_params, forward_flops, training_flops
from harness.model.freeze import freeze_all_but_head, freeze_encoder, unfreeze_all
from harness.record import RECORD_NAME, atomic_write_json, new_record, utc_now
from harness.train import distributed
from harness.train.profiling import StepProfiler
from harness.train.sources import iterate, make_source
from harness.train.step import make_optimizer, make_train_step, optimizer_variables
from harness.train.timing import StepTimer, peak_host_mem_mb
from harness.train.validation import evaluate_items

log = logging.getLogger("bratsbench.train")


def preflight(cfg: RunConfig, first_conv: str | None = None) -> None:
    """Checks that need files but no TensorFlow work: they must fail before anything runs."""
    cfg.validate()
    if cfg.train.resume:
        ckpt = checkpoint_dir(cfg.out)
        if not ckpt.is_dir():
            raise UserError(f"--resume: no checkpoint folder '{ckpt}' (run without --resume first)")
        check_compatible(ckpt, cfg.model)
    if cfg.train.init_from:
        from harness.model.pretrained import check_pretrained

        check_pretrained(cfg.train.init_from, cfg.model, first_conv)


def apply_freeze(model: tf.keras.Model, cfg: RunConfig, frozen: bool = True) -> list[str]:
    if not frozen:
        unfreeze_all(model)
        return []
    if cfg.train.freeze_all_but_head:
        freeze_all_but_head(model)
        return ["all-but-head"]
    return freeze_encoder(model, cfg.train.freeze_depth, cfg.model.depth)


def train(cfg: RunConfig, *, first_conv: str | None = None, unfreeze_after: int | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Run one training (or benchmark) run and return its record (written by rank 0 to OUT/record.json)."""
    preflight(cfg, first_conv)
    tcfg = cfg.train
    world = distributed.init(tcfg.threads, tcfg.timeline)
    run_dir = Path(cfg.out)
    record = new_record(cfg.to_dict())
    record["extra"].update(extra or {})
    record["world_size"] = world.size
    record["hosts"] = distributed.hostnames()
    t_start = time.perf_counter()
    if tcfg.resume:  # keep the learning curve of the epochs done before the interruption
        try:
            earlier = json.loads((run_dir / RECORD_NAME).read_text())
            record["history"] = earlier.get("history", [])
            record["extra"]["resumes"] = int(earlier.get("extra", {}).get("resumes", 0)) + 1
        except (OSError, json.JSONDecodeError):
            pass
    if world.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / RECORD_NAME, record)
    try:
        _train(cfg, world, run_dir, record, first_conv, unfreeze_after)
        record["status"], record["exit_code"] = "ok", 0
    except KeyboardInterrupt:
        record["status"], record["exit_code"], record["error"] = "interrupted", 130, "interrupted"
        raise
    except UserError as exc:
        record["status"], record["exit_code"], record["error"] = "failed", 2, str(exc)
        raise
    except Exception as exc:
        record["status"], record["exit_code"], record["error"] = "failed", 1, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record["finished_at"] = utc_now()
        record["wall_s"] = time.perf_counter() - t_start
        if world.is_root:
            atomic_write_json(run_dir / RECORD_NAME, record)
    return record


def _train(cfg: RunConfig, world: distributed.World, run_dir: Path, record: dict, first_conv: str | None, unfreeze_after: int | None) -> None:
    tcfg, dcfg, mcfg = cfg.train, cfg.data, cfg.model
    tf.keras.utils.set_random_seed(tcfg.seed)  # same initial weights on every rank
    if dcfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    # --amp: float16 with loss scaling on GPUs; on CPUs bfloat16 (float16 has no CPU MaxPool3D kernel, and
    # bfloat16 keeps float32's range, so it needs no loss scaling)
    loss_scaling = tcfg.amp and world.gpus > 0
    if tcfg.amp:
        policy = "mixed_float16" if loss_scaling else "mixed_bfloat16"
        tf.keras.mixed_precision.set_global_policy(policy)
        record["extra"]["precision"] = policy
    if tcfg.xla:
        tf.config.optimizer.set_jit(True)  # auto-clustering leaves Horovod's ops outside XLA clusters

    source = make_source(cfg, world)
    model = build_unet(mcfg, dcfg.crop)
    opt = make_optimizer(tcfg.lr, world.size, tcfg.lr_scaling, tcfg.warmup_steps, loss_scaling)
    opt.build(model.trainable_variables)  # slots for every variable, so later unfreezing needs no rebuild
    if tcfg.init_from:
        from harness.model.pretrained import load_pretrained

        record["model"]["init"] = load_pretrained(model, mcfg, tcfg.init_from, dcfg.crop, first_conv)
    frozen_levels = apply_freeze(model, cfg)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, epoch=epoch_var)
    ckpt_dir = checkpoint_dir(run_dir)
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir), max_to_keep=2)
    if tcfg.resume:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if world.is_root:
            log.info("resumed from %s", manager.latest_checkpoint)
    distributed.broadcast_state(model.variables + optimizer_variables(opt) + [epoch_var])
    if world.is_root:
        write_signature(ckpt_dir, mcfg)

    params = count_params(model)
    record["model"].update(
        params_total=params["total"],
        params_trainable=params["trainable"],
        frozen_levels=frozen_levels,
        forward_gflops_per_sample=forward_flops(model) / 1e9,
        train_gflops_per_sample=training_flops(model) / 1e9,
    )
    loss_fn = make_loss(tcfg.loss, tcfg.class_weights)
    step_fn = make_train_step(model, opt, loss_fn, amp=loss_scaling)
    global_batch = tcfg.batch_size * world.size
    spe = tcfg.steps_per_epoch or source.steps_per_epoch
    if tcfg.benchmark:
        total_steps, epochs = tcfg.bench_warmup + tcfg.bench_steps, 1
    else:
        epochs = tcfg.epochs
        total_steps = epochs * spe
    timer = StepTimer(warmup=tcfg.bench_warmup if tcfg.benchmark else min(tcfg.bench_warmup, max(total_steps - 1, 0)))
    profiler = StepProfiler(run_dir, world, tcfg.profile_steps, tcfg.timeline)
    val_items = None if tcfg.benchmark else source.val_items()

    global_step = int(opt.iterations.numpy())
    ahead: dict[int, Any] = {}  # epoch -> iterator already started
    start_epoch = int(epoch_var.numpy())
    record["history"] = [h for h in record["history"] if h.get("epoch", 0) <= start_epoch]
    for epoch in range(start_epoch, epochs):
        if unfreeze_after is not None and epoch >= unfreeze_after and frozen_levels:
            frozen_levels = apply_freeze(model, cfg, frozen=False)
            step_fn = make_train_step(model, opt, loss_fn, amp=loss_scaling)
            record["model"]["unfrozen_at_epoch"] = epoch
        steps = total_steps if tcfg.benchmark else spe
        done_in_epoch = global_step - epoch * spe if not tcfg.benchmark else 0
        it = ahead.pop(epoch, None) or iterate(_epoch_stream(source, epoch, steps, tcfg.benchmark), skip=done_in_epoch)
        t_epoch = time.perf_counter()
        epoch_losses: list[float] = []
        epoch_times: list[float] = []
        bar = _bar(world, steps, done_in_epoch, f"epoch {epoch + 1}/{epochs}" if not tcfg.benchmark else "benchmark")
        for _ in range(done_in_epoch, steps):
            profiler.before_step(global_step)
            t0 = time.perf_counter()
            x, y = next(it)
            t1 = time.perf_counter()
            with profiler.trace(global_step):
                loss = float(step_fn(x, y))
            t2 = time.perf_counter()
            profiler.after_step(global_step)
            timer.add(t2 - t0, t1 - t0)
            if epoch + 1 < epochs and epoch + 1 not in ahead:
                # start the next epoch's pipeline now, so its first batches are ready when this epoch ends
                ahead[epoch + 1] = iterate(_epoch_stream(source, epoch + 1, spe, tcfg.benchmark))
            epoch_losses.append(loss)
            epoch_times.append(t2 - t0)
            global_step += 1
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {global_step}")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if world.is_root and tcfg.checkpoint_every and global_step % tcfg.checkpoint_every == 0:
                save_checkpoint(manager, global_step)
        if bar is not None:
            bar.close()
        epoch_var.assign(epoch + 1)
        mean_loss = distributed.mean_over_ranks([float(np.mean(epoch_losses)) if epoch_losses else float("nan")])[0]
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            "loss": mean_loss,
            "wall_s": time.perf_counter() - t_epoch,
            "step_time_mean_s": float(np.mean(epoch_times)) if epoch_times else None,
            "params_trainable": count_params(model)["trainable"],
        }
        if val_items and ((epoch + 1) % tcfg.validate_every == 0 or epoch + 1 == epochs):
            result = evaluate_items(model, val_items, dcfg.crop, world)
            entry["val"] = result["dice"]
            record["metrics"] = {"val": result["summary"], "val_cases": result["cases"]}
        record["history"].append(entry)
        if world.is_root:
            if not tcfg.benchmark:
                save_checkpoint(manager, global_step)
            atomic_write_json(run_dir / RECORD_NAME, record)
            print(_epoch_line(entry), file=sys.stderr, flush=True)
    profiler.close()
    record["model"]["replica_checksums"] = distributed.allgather_object(weights_checksum(model))

    timing = timer.summary(global_batch)
    mems = distributed.allgather_object(peak_host_mem_mb())
    timing["peak_host_mem_mb"] = max(mems)
    timing["peak_host_mem_mb_per_rank"] = mems
    timing["peak_gpu_mem_mb"] = _peak_gpu_mem_mb()
    if timing.get("step_time_mean_s"):
        per_rank_rate = tcfg.batch_size / timing["step_time_mean_s"]
        timing["achieved_gflops_per_rank"] = per_rank_rate * record["model"]["train_gflops_per_sample"]
    record["timing"] = timing
    record["timing"]["threads_per_rank"] = world.threads
    if world.is_root and tcfg.benchmark:
        print(json.dumps({k: timing[k] for k in ("throughput_samples_s", "step_time_mean_s", "input_wait_share") if k in timing}), file=sys.stderr)


def _epoch_stream(source, epoch: int, steps: int, benchmark: bool) -> tf.data.Dataset:
    """This epoch's batches. An epoch longer than one pass over the data chains further passes with their own
    seeds (fresh shuffles and crops, still deterministic, so `--resume` can skip into them)."""
    ds = source.epoch_dataset(epoch)
    if benchmark:
        ds = ds.repeat()
    else:
        passes = -(-steps // source.steps_per_epoch)
        for extra in range(1, passes):
            ds = ds.concatenate(source.epoch_dataset(epoch + 1_000_003 * extra))
    # an outer buffer reaches into the next pass before this one runs dry, so its pipeline start is hidden
    return ds.prefetch(2)


def weights_checksum(model: tf.keras.Model) -> str:
    """Hash of every weight's bytes: equal on all ranks iff the replicas hold identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]


def _bar(world: distributed.World, total: int, initial: int, desc: str):
    if not world.is_root:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, mininterval=1.0, leave=False)


def _epoch_line(entry: dict[str, Any]) -> str:
    val = entry.get("val")
    dice = " ".join(f"{k}={v:.3f}" for k, v in val.items()) if val else ""
    return f"epoch {entry['epoch']}: loss {entry['loss']:.4f}, {entry['wall_s']:.1f} s {('dice ' + dice) if dice else ''}".rstrip()


def _peak_gpu_mem_mb() -> float | None:
    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20

