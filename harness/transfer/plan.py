"""The runs of a transfer study, each a whole RunConfig, keyed by its config so reruns reuse finished work.

A fine-tuning run's `init_from` is its pre-training run's checkpoint folder inside the study folder, and its
freeze choice, first-conv rule and unfreeze epoch are RunConfig fields: the run record alone reproduces it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from harness.config import HEAD_ONLY, Freeze, RunConfig
from harness.errors import UserError
from harness.model.unet import encoder_levels
from harness.modalities import parse_modalities
from harness.record import run_id
from harness.rundir import RunDir

ROLES = ("pretrain", "finetune", "scratch")


@dataclass
class StudyRun:
    role: str  # pretrain | finetune | scratch
    seed: int
    cfg: RunConfig
    depends_on: "StudyRun | None" = None

    @property
    def freeze(self) -> Freeze | None:
        return self.cfg.train.freeze_depth if self.role == "finetune" else None

    @property
    def id(self) -> str:
        """Stable over reruns: what the run computes, its role, and what it starts from."""
        parent = self.depends_on.id if self.depends_on else None
        train = dict(self.cfg.identity()["train"], init_from=None)
        return run_id({"config": {**self.cfg.identity(), "train": train}, "role": self.role, "after": parent})

    @property
    def label(self) -> str:
        if self.role == "finetune":
            return f"finetune-{'head' if self.freeze == HEAD_ONLY else f'k{self.freeze}'}-s{self.seed}"
        return f"{self.role}-s{self.seed}"

    @property
    def folder(self) -> str:
        return f"{self.label}-{self.id}"

    def place(self, study: Path) -> "StudyRun":
        """Set out, name, tags and init_from for a run folder inside `study` (the id does not change)."""
        self.cfg.out = str(study / self.folder)
        self.cfg.name = self.label
        if self.depends_on is not None:
            self.cfg.train.init_from = str(RunDir(self.depends_on.cfg.out).checkpoints)
        self.cfg.tags = {"transfer": {"role": self.role, "freeze_depth": self.freeze, "seed": self.seed,
                                      "pretrain_run": self.depends_on.id if self.depends_on else None,
                                      "label": self.label}}
        return self

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.cfg.out)


def default_depths(depth: int) -> list[int]:
    """0 (all trainable), half the encoder, the whole encoder (enc1..encD and the bottleneck)."""
    whole = len(encoder_levels(depth))
    return sorted({0, whole // 2, whole})


def plan_study(
    base: RunConfig, source: str, target: str, depths: list[int] | None, seeds: list[int], study: Path, *,
    pretrain_epochs: int, head_only: bool = False, pretrain_budget_s: float | None = None,
) -> list[StudyRun]:
    """Per seed: pre-training on `source`, fine-tuning on `target` at each depth (and head-only), scratch.

    `base.train.unfreeze_after` and `base.train.first_conv` apply to the fine-tuning runs."""
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
        pre.train.budget_s = pretrain_budget_s  # not the target runs' budget: pre-training has its own
        pre.train.unfreeze_after = None
        pretrain = StudyRun("pretrain", seed, pre).place(study)
        runs.append(pretrain)
        for k in [*depths, *([HEAD_ONLY] if head_only else [])]:
            tuned = _variant(base, tgt, seed, freeze=k)
            tuned.train.first_conv = base.train.first_conv
            runs.append(StudyRun("finetune", seed, tuned, pretrain).place(study))
        scratch = _variant(base, tgt, seed, freeze=0)
        scratch.train.unfreeze_after = None
        runs.append(StudyRun("scratch", seed, scratch).place(study))
    for r in runs:
        r.cfg.validate()
    return runs


def _variant(base: RunConfig, modalities: tuple[str, ...], seed: int, freeze: Freeze) -> RunConfig:
    cfg = copy.deepcopy(base)
    cfg.model.modalities = modalities
    cfg.train.seed = seed
    cfg.train.freeze_depth = freeze
    cfg.train.init_from = None
    cfg.train.first_conv = None
    cfg.train.resume = False
    cfg.train.benchmark = False
    cfg.tags = {}
    return cfg
