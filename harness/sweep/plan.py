"""From a spec to the list of runs: cross the axes, build and validate each RunConfig, give it a stable ID.

The run ID is `harness.record.run_id` of the RunConfig's identity (without `out`, `name` and `tags`) plus np. A
transfer run's `train.init_from` is planned as "run:<pre-training run ID>" and resolved into that run's
checkpoint folder only when its config file is written (`config_for`), so IDs do not depend on where results
live and change whenever anything that defines the run changes.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.errors import UserError
from harness.record import run_id as config_id
from harness.sweep.spec import AXES, SweepSpec

RUN_REF = "run:"  # a planned init_from that names another run of the sweep


@dataclass
class PlannedRun:
    run_id: str
    label: str
    kind: str  # "pretrain" | "run"
    np: int
    mode: str
    seed: int
    batch_size: int  # the axis value: per rank (weak) or global (strong)
    per_rank_batch: int
    freeze_depth: int
    config: RunConfig
    depends_on: list[str] = field(default_factory=list)
    scaling: str = "weak"

    @property
    def first_conv(self) -> str | None:
        return self.config.train.first_conv

    @property
    def repeat(self) -> int:
        return self.config.repeat

    @property
    def global_batch(self) -> int:
        return self.per_rank_batch * self.np

    def config_for(self, run_dir: str | Path, results: str | Path) -> RunConfig:
        """The RunConfig `bratsbench train --config` gets: `out` is the run's folder, and a planned
        `init_from` "run:<ID>" becomes that run's checkpoint folder under `results`."""
        from harness.rundir import RunDir
        from harness.sweep.index import run_dir as index_run_dir

        cfg = RunConfig.from_dict(self.config.to_dict())
        cfg.out = str(run_dir)
        init = cfg.train.init_from
        if init and init.startswith(RUN_REF):
            cfg.train.init_from = str(RunDir(index_run_dir(results, init[len(RUN_REF):])).checkpoints)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config.to_dict()
        cfg.pop("out", None)
        return {
            "run_id": self.run_id,
            "label": self.label,
            "kind": self.kind,
            "np": self.np,
            "mode": self.mode,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "per_rank_batch": self.per_rank_batch,
            "global_batch": self.global_batch,
            "freeze_depth": self.freeze_depth,
            "depends_on": list(self.depends_on),
            "scaling": self.scaling,
            "config": cfg,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PlannedRun":
        values = {k: v for k, v in raw.items() if k not in ("global_batch", "config", "first_conv")}
        return cls(config=RunConfig.from_dict(raw["config"]), **values)


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of the sweep, pre-training runs first, then round by round (each point once per repeat, so a
    runner that goes down the list interleaves the repeats); duplicates (same ID) dropped; raises UserError early."""
    pretrains: dict[int, PlannedRun] = {}
    runs: dict[str, PlannedRun] = {}
    points = itertools.product(*(spec.axes[a] for a in AXES))
    for repeat, (np_, batch, depth, mode, seed, backend) in itertools.product(range(spec.repeats), list(points)):
        if mode == "scratch" and not spec.freeze_scratch:
            depth = 0  # freezing random weights is not asked for unless freeze_scratch: true
        per_rank = batch if spec.scaling == "weak" else batch // np_
        raw = _base(spec)
        raw["train"].update(batch_size=per_rank, freeze_depth=depth, seed=seed, backend=backend)
        label = f"np{np_}-b{batch}-k{depth}-{mode}-s{seed}"  # k{head} for head-only
        if "backend" in spec.explicit_axes:
            label += f"-{backend}"
        if spec.repeats > 1:
            label += f"-r{repeat}"
        cfg = _config(raw, label, spec.origin)
        cfg.repeat = repeat
        deps: list[str] = []
        if mode == "transfer":
            pre = pretrains.get(seed) or _pretrain(spec, seed)
            pretrains[seed] = pre
            deps = [pre.run_id]
            cfg.train.init_from = f"{RUN_REF}{pre.run_id}"
            cfg.train.first_conv = spec.transfer.first_conv
            _check_first_conv(cfg.train.first_conv, pre.config, cfg, label, spec.origin)
            cfg.validate()
        rid = _identity(cfg, np_)
        runs.setdefault(
            rid,
            PlannedRun(rid, label, "run", np_, mode, seed, batch, per_rank, depth, cfg, deps, spec.scaling),
        )
    return list(pretrains.values()) + list(runs.values())


def _base(spec: SweepSpec) -> dict[str, Any]:
    raw = {section: copy.deepcopy(spec.fixed.get(section, {})) for section in ("model", "data", "train")}
    if spec.scaling == "strong":
        # the global batch stays fixed, so the learning rate should not grow with np
        raw["train"].setdefault("lr_scaling", False)
    return raw


def _pretrain(spec: SweepSpec, seed: int) -> PlannedRun:
    t = spec.transfer
    assert t is not None
    raw = _base(spec)
    raw["model"]["modalities"] = list(t.source)
    batch = t.batch_size or raw["train"].get("batch_size") or RunConfig().train.batch_size
    raw["train"].update(
        benchmark=False, epochs=t.epochs, batch_size=batch, freeze_depth=0, seed=seed
    )
    if t.steps_per_epoch is not None:
        raw["train"]["steps_per_epoch"] = t.steps_per_epoch
    label = f"pretrain-{'+'.join(t.source)}-np{t.np}-b{batch}-s{seed}"
    cfg = _config(raw, label, spec.origin)
    rid = _identity(cfg, t.np)
    return PlannedRun(rid, label, "pretrain", t.np, "pretrain", seed, batch, batch, 0, cfg)


def _config(raw: dict[str, Any], label: str, origin: str) -> RunConfig:
    try:
        cfg = RunConfig.from_dict(raw)
        cfg.name = label
        return cfg.validate()
    except UserError as exc:
        raise UserError(f"{origin}: run {label}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{origin}: run {label}: a fixed value has the wrong type ({exc})") from None


def _check_first_conv(first_conv: str | None, pre: RunConfig, cfg: RunConfig, label: str, origin: str) -> None:
    if first_conv == "copy" and pre.model.in_channels != cfg.model.in_channels:
        raise UserError(
            f"{origin}: run {label}: transfer.first_conv copy needs as many source modalities "
            f"({pre.model.in_channels}) as target ones ({cfg.model.in_channels})"
        )


def _identity(cfg: RunConfig, np_: int) -> str:
    return config_id({**cfg.identity(), "np": np_})


def format_table(runs: list[PlannedRun]) -> str:
    """A fixed-width table for `bratsbench sweep plan`, with the count at the end."""
    head = ("run_id", "label", "np", "batch", "freeze", "mode", "seed", "after")
    rows = [
        (r.run_id, r.label, str(r.np), str(r.batch_size), str(r.freeze_depth), r.mode, str(r.seed), ",".join(r.depends_on) or "-")
        for r in runs
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *rows)]
    n_pre = sum(r.kind == "pretrain" for r in runs)
    lines.append(f"{len(runs)} runs ({n_pre} pre-training, {len(runs) - n_pre} sweep runs)")
    return "\n".join(lines)
