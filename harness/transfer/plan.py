"""The runs of a transfer study, each a whole RunConfig, keyed by its config so reruns reuse finished work."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from harness.config import RunConfig
from harness.errors import UserError
from harness.model.unet import encoder_levels
from harness.modalities import parse_modalities
from harness.record import run_id


@dataclass
class StudyRun:
    role: str  # pretrain | finetune | scratch
    seed: int
    cfg: RunConfig
    freeze: str | int | None = None  # freeze depth k, "head", or None
    depends_on: str | None = None
    args: list[str] = field(default_factory=list)  # extra train flags not in RunConfig

    @property
    def id(self) -> str:
        key = self.cfg.to_dict()
        key.pop("out", None)
        key.pop("name", None)
        return run_id({"config": key, "role": self.role, "args": self.args, "depends_on": self.depends_on})

    @property
    def label(self) -> str:
        if self.role == "finetune":
            return f"finetune-{'head' if self.freeze == 'head' else f'k{self.freeze}'}-s{self.seed}"
        return f"{self.role}-s{self.seed}"

    @property
    def folder(self) -> str:
        return f"{self.label}-{self.id}"

    def tags(self) -> dict[str, Any]:
        return {"transfer": {"role": self.role, "freeze_depth": self.freeze, "seed": self.seed,
                             "pretrain_run": self.depends_on, "label": self.label}}


def default_depths(depth: int) -> list[int]:
    """0 (all trainable), half the encoder, the whole encoder (enc1..encD and the bottleneck)."""
    whole = len(encoder_levels(depth))
    return sorted({0, whole // 2, whole})


def plan_study(
    base: RunConfig, source: str, target: str, depths: list[int] | None, seeds: list[int], *,
    pretrain_epochs: int, head_only: bool = False, unfreeze_after: int | None = None, first_conv: str | None = None,
) -> list[StudyRun]:
    src, tgt = parse_modalities(source), parse_modalities(target)
    if set(src) == set(tgt):
        raise UserError(f"source {','.join(src)} and target {','.join(tgt)} are the same modalities; transfer needs two pairs")
    whole = len(encoder_levels(base.model.depth))
    depths = default_depths(base.model.depth) if depths is None else depths
    for k in depths:
        if not 0 <= k <= whole:
            raise UserError(f"freeze depth {k} is beyond the model: depth {base.model.depth} allows 0..{whole}")
    if pretrain_epochs < 1:
        raise UserError(f"--pretrain-epochs {pretrain_epochs} must be at least 1")
    runs: list[StudyRun] = []
    for seed in seeds:
        pre = _variant(base, src, seed, freeze=0)
        pre.train.epochs = pretrain_epochs
        pretrain = StudyRun("pretrain", seed, pre)
        runs.append(pretrain)
        extra = (["--unfreeze-after", str(unfreeze_after)] if unfreeze_after else []) + (
            ["--first-conv", first_conv] if first_conv else [])
        for k in depths:
            runs.append(StudyRun("finetune", seed, _variant(base, tgt, seed, freeze=k), k, pretrain.id, extra))
        if head_only:
            cfg = _variant(base, tgt, seed, freeze=0)
            cfg.train.freeze_all_but_head = True
            runs.append(StudyRun("finetune", seed, cfg, "head", pretrain.id, extra))
        runs.append(StudyRun("scratch", seed, _variant(base, tgt, seed, freeze=0)))
    for r in runs:
        r.cfg.validate()
    return runs


def _variant(base: RunConfig, modalities: tuple[str, ...], seed: int, freeze: int) -> RunConfig:
    cfg = copy.deepcopy(base)
    cfg.model.modalities = modalities
    cfg.train.seed = seed
    cfg.train.freeze_depth = freeze
    cfg.train.freeze_all_but_head = False
    cfg.train.init_from = None
    cfg.train.resume = False
    cfg.train.benchmark = False
    return cfg
