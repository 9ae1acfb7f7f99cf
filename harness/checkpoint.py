"""Checkpoints that can be resumed exactly, and refused clearly when they do not fit the model.

Beside TensorFlow's checkpoint files we keep a signature file (the architecture), so a mismatch is
reported as one line before any work instead of a shape error deep inside TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import ModelConfig, model_signature
from harness.errors import UserError, as_os_error
from harness.record import atomic_write_json
from harness.rundir import SIGNATURE

if TYPE_CHECKING:
    import tensorflow as tf


def write_signature(ckpt_dir: Path, cfg: ModelConfig, optimizer: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = {"signature": model_signature(cfg), "modalities": list(cfg.modalities)}
    if optimizer is not None:
        data["optimizer"] = optimizer
    atomic_write_json(Path(ckpt_dir) / SIGNATURE, data)


def check_optimizer(path: str | Path, loss_scaling: bool) -> None:
    """A checkpoint resumes only into the same optimizer form: `--amp` on a GPU wraps Adam in a loss-scale
    optimizer (float16), `--amp` on a CPU does not (bfloat16), so their variables differ. Checkpoints written
    before this was recorded had no loss scaling (they come from CPU runs)."""
    written = bool(read_signature(path).get("optimizer", {}).get("loss_scaling", False))
    if written != loss_scaling:
        def form(scaled: bool) -> str:
            return "float16 with loss scaling (--amp on a GPU)" if scaled else "no loss scaling (float32, or --amp on a CPU)"

        raise UserError(f"checkpoint '{path}' was written with {form(written)} and cannot resume with {form(loss_scaling)}: "
                        f"resume on the same kind of device, or start a new run (--init-from takes its weights)")


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """`manager.save(checkpoint_number=step)` that leaves the whole checkpoint or nothing of it.

    A save that fails part-way (disk full, Ctrl-C) leaves `ckpt-N_temp/`, maybe `ckpt-N.*` or a
    `checkpoint.tmp*` state file; they are removed, so `tf.train.latest_checkpoint` (and `--resume`) still find
    the previous complete checkpoint. The error is re-raised as an OSError naming ckpt-N (a TensorFlow error
    carries no errno), which the CLI prints as one line.
    """
    prefix = f"{getattr(manager, '_prefix', os.path.join(manager.directory, 'ckpt'))}-{int(step)}"
    try:
        return manager.save(checkpoint_number=step)
    except BaseException as exc:
        if not _is_recorded(manager.directory, prefix):  # else only the sweep of old checkpoints failed
            _remove_partial(prefix)
        err = as_os_error(exc, prefix)
        if err is None or err is exc:
            raise
        raise err from exc


def save_scratch(manager: tf.train.CheckpointManager, step: int, rank: int) -> None:
    """A non-chief rank's share of a save that every rank must join (MWMS): the same state written into a
    scratch folder of its own, removed at once, so only rank 0's checkpoint remains."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix=f"bratsbench-ckpt-rank{rank}-")
    try:
        manager.checkpoint.write(os.path.join(scratch, f"ckpt-{int(step)}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _is_recorded(directory: str, prefix: str) -> bool:
    """True when the `checkpoint` state file already names `prefix` (its files were all written)."""
    import tensorflow as tf

    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError):  # a state file that does not parse names nothing
        return False
    return state is not None and os.path.basename(state.model_checkpoint_path) == os.path.basename(prefix)


def _remove_partial(prefix: str) -> None:
    folder, name = Path(prefix).parent, Path(prefix).name
    leftovers = [*folder.glob(f"{name}_temp*"), folder / f"{name}.index", *folder.glob(f"{name}.data-*"),
                 *folder.glob("checkpoint.tmp*")]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


_STATE_LINE = re.compile(r'^model_checkpoint_path:\s*"([^"]+)"', re.M)


def resume_problem(ckpt_dir: str | Path, cfg: ModelConfig) -> str | None:
    """Why a run of model `cfg` cannot resume from `ckpt_dir`, or None when it can: the `checkpoint` state file
    names a complete checkpoint (its .index written) and the signature matches. Reads files only (no TensorFlow),
    for the runner that decides before launching; the trainer checks the same again with TensorFlow."""
    folder = Path(ckpt_dir)
    try:
        found = _STATE_LINE.search((folder / "checkpoint").read_text())
        signature = json.loads((folder / SIGNATURE).read_text())["signature"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no complete checkpoint with its {SIGNATURE} in '{folder}'"
    if found is None:
        return f"'{folder / 'checkpoint'}' names no checkpoint"
    latest = Path(found.group(1))
    latest = latest if latest.is_absolute() else folder / latest
    if not Path(f"{latest}.index").is_file():
        return f"checkpoint '{latest}' is incomplete (no .index)"
    wanted = model_signature(cfg)
    diffs = [f"{k} {signature.get(k)} != {wanted[k]}" for k in wanted if signature.get(k) != wanted[k]]
    return f"checkpoint '{folder}' does not match the model: " + "; ".join(diffs) if diffs else None


def read_signature(path: str | Path) -> dict[str, Any]:
    """Signature of a checkpoint directory or file prefix; UserError when missing or unreadable."""
    import tensorflow as tf

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    sig = folder / SIGNATURE
    latest = tf.train.latest_checkpoint(str(folder)) if folder.is_dir() else None
    if not folder.is_dir() or (latest is None and not Path(str(path) + ".index").exists()):
        raise UserError(f"checkpoint '{path}' not found (no TensorFlow checkpoint there)")
    if not sig.is_file():
        raise UserError(f"checkpoint '{path}' has no {SIGNATURE}: not written by bratsbench")
    try:
        return json.loads(sig.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint '{path}': cannot read {SIGNATURE} ({exc})") from None


def check_compatible(path: str | Path, cfg: ModelConfig, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    found = read_signature(path)["signature"]
    wanted = model_signature(cfg)
    diffs = [f"{k} {found.get(k)} != {wanted[k]}" for k in wanted if k not in ignore and found.get(k) != wanted[k]]
    if diffs:
        raise UserError(f"checkpoint '{path}' does not match the model: " + "; ".join(diffs))
    return found


def resolve(path: str | Path) -> str:
    """A directory means its latest checkpoint; a prefix is used as given."""
    import tensorflow as tf

    path = Path(path)
    if path.is_dir():
        latest = tf.train.latest_checkpoint(str(path))
        if latest is None:
            raise UserError(f"checkpoint directory '{path}' holds no checkpoint")
        return latest
    return str(path)
