"""Stop on a signal: the scheduler's warning before a time limit or a preemption (SIGUSR1) or SIGTERM.

The handler only sets a flag, so a signal never interrupts TensorFlow or a checkpoint being written (a second
signal while saving changes nothing). The ranks ask each other about the flag after a step, through the engine
(one small mean over ranks, shared with the time budget's: after every step with a budget, else about once a
second), so every rank stops at the same step, writes the checkpoint there and the run ends "preempted" with exit
status 75 (harness.errors.EXIT_PREEMPTED).

The process's entry point installs the handlers (`bratsbench train`, before TensorFlow is imported, so a signal
during start-up is kept, not fatal); library callers and packed sweeps install none, and their runs ignore
nothing they did not ask for.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from harness.config import parse_stop_signals


@dataclass
class _State:
    installed: dict[int, Any] = field(default_factory=dict)  # signal number -> the handler it replaced
    signal: str | None = None  # the first stop signal received ("USR1")
    count: int = 0
    at: float | None = None  # time.time() of the first


_state = _State()


def _handler(signum: int, frame: Any) -> None:
    if _state.signal is None:
        _state.signal = signal.Signals(signum).name.removeprefix("SIG")
        _state.at = time.time()
    _state.count += 1


def install(names: Sequence[str]) -> bool:
    """Handle these signals (names as in RunConfig.train.stop_signals) from now on; idempotent, and a signal that
    already arrived is kept. Returns False where handlers cannot be installed (not the main thread)."""
    for name in parse_stop_signals(list(names)):
        number = getattr(signal, f"SIG{name}")
        if number in _state.installed:
            continue
        try:
            _state.installed[number] = signal.signal(number, _handler)
        except ValueError:  # not the main thread of the main interpreter
            return False
    return True


def uninstall() -> None:
    """Put back the handlers `install` replaced and forget any signal received (tests, library use)."""
    for number, previous in _state.installed.items():
        signal.signal(number, previous)
    _state.installed.clear()
    _state.signal, _state.count, _state.at = None, 0, None


def ignore() -> None:
    """Ignore the stop signals from now on (a preempted process on its way out)."""
    for number in _state.installed:
        signal.signal(number, signal.SIG_IGN)


def armed() -> bool:
    """Whether this process stops on a signal at all (then every step asks the other ranks)."""
    return bool(_state.installed)


def requested() -> bool:
    return _state.signal is not None


def received() -> dict[str, Any]:
    """What arrived: the first signal's name, how many stop signals in all, and when the first came."""
    return {"signal": _state.signal, "count": _state.count, "at": _state.at}


CHECK_EVERY_S = 1.0  # how often (in seconds of steps) the ranks ask each other when nothing else asks every step
MAX_STEPS_BETWEEN = 1000


def steps_between(mean_step_s: float) -> int:
    """Steps until the next check, from the mean step time over ranks (so the same on every rank): about one check per
    CHECK_EVERY_S. One check costs a small collective (milliseconds on CPUs: docs/benchmarks.md), so a check every
    step would cost a few percent of a short step; a stop then waits at most about CHECK_EVERY_S more."""
    if not mean_step_s > 0:
        return 1
    return max(1, min(MAX_STEPS_BETWEEN, int(CHECK_EVERY_S / mean_step_s)))


def agree(local: Sequence[float], mean: Callable[[Sequence[float]], list[float]]) -> tuple[list[float], bool]:
    """One mean over ranks of `local` values plus this rank's stop flag: (the means of `local`, whether any rank
    was asked to stop). Called at a step boundary by every rank, so all of them decide at the same step."""
    out = mean([*local, 1.0 if requested() else 0.0])
    return out[:-1], out[-1] > 0.0


def carried(earlier_extra: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run's record keeps of the record it resumes: every preemption so far, the last one included."""
    done = list(earlier_extra.get("preemptions") or [])
    if earlier_extra.get("preempted"):
        done.append(earlier_extra["preempted"])
    return {"preemptions": done} if done else {}


def partial_epoch(extra: dict[str, Any], step: int) -> dict[str, Any]:
    """The steps taken in the epoch a run was preempted in, when it resumes from that very step: {steps, loss (mean
    over ranks), train_s}, else {}. That epoch has no history entry yet; its entry and a time budget count them."""
    last = (extra.get("preemptions") or [{}])[-1]
    if last.get("step") != step or not last.get("epoch_steps"):
        return {}
    return {"steps": int(last["epoch_steps"]), "loss": float(last["epoch_loss"]), "train_s": float(last["epoch_train_s"])}


def merge_partial(entry: dict[str, Any], partial: dict[str, Any], steps_after: int) -> None:
    """The history entry of a resumed epoch as if it had not been cut: loss and step time over all its steps."""
    if not partial:
        return
    steps = partial["steps"] + steps_after
    after_loss = entry["loss"] if steps_after else 0.0
    entry["loss"] = (partial["loss"] * partial["steps"] + after_loss * steps_after) / steps
    entry["train_s"] += partial["train_s"]
    entry["step_time_mean_s"] = entry["train_s"] / steps
    entry["resumed_at_step"] = entry["step"] - steps_after
