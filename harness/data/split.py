"""Patient-level train/val/test split, fixed by seed and saved to JSON.

The split depends only on the labelled case ids (and grades), never on modalities, so source- and
target-modality runs share one file and no patient crosses subsets. Case order comes from a hash of
(seed, case id), which does not change with numpy versions or with the order cases were listed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.data.store import Store
from harness.errors import UserError

log = logging.getLogger(__name__)

SPLIT_VERSION = 1
SUBSETS = ("train", "val", "test")


@dataclass
class Split:
    seed: int
    fractions: dict[str, float]
    stratify: str | None
    train: list[str]
    val: list[str]
    test: list[str]
    store_manifest_hash: str | None = None
    path: Path | None = field(default=None, compare=False)

    def subset(self, name: str) -> list[str]:
        if name not in SUBSETS:
            raise UserError(f"unknown subset '{name}'; choose from {','.join(SUBSETS)}")
        return getattr(self, name)

    def to_json(self) -> dict:
        return {
            "version": SPLIT_VERSION, "seed": self.seed, "fractions": self.fractions, "stratify": self.stratify,
            "train": self.train, "val": self.val, "test": self.test, "store_manifest_hash": self.store_manifest_hash,
        }

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)
        self.path = path
        return path


def store_manifest_hash(store: Store) -> str:
    """Identity of the labelled cohort (ids and grades): re-preparing at another roi or spacing keeps it."""
    cohort = {cid: store.entry(cid).get("grade") for cid in store.labelled_ids}
    return hashlib.sha256(json.dumps(cohort, sort_keys=True).encode()).hexdigest()[:16]


def check_fractions(val: float, test: float) -> None:
    for name, value in (("--val", val), ("--test", test)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
            raise UserError(f"{name} {value}: a fraction must be in [0, 1)")
    if val + test >= 1.0:
        raise UserError(f"--val {val} + --test {test} = {val + test:g}: must be below 1 to leave training cases")


def _subset_sizes(n: int, val: float, test: float) -> tuple[int, int]:
    """Cases in val and test: rounded, at least one where the fraction is positive."""
    n_val = max(1, round(val * n)) if val > 0 else 0
    n_test = max(1, round(test * n)) if test > 0 else 0
    if n - n_val - n_test < 1:
        raise UserError(
            f"--val {val} --test {test} on {n} labelled case(s) leave no training case ({n_val} val, {n_test} test)"
        )
    return n_val, n_test


def _allocate(sizes: dict[str, int], totals: dict[str, int], seed: int) -> dict[str, dict[str, int]]:
    """Cases of each stratum per subset: every stratum and every subset gets exactly its size.

    Proportional shares rounded by largest remainder over (subset, stratum) cells, ties broken by a seeded hash;
    then each stratum with at least one case per non-empty subset is swapped into every subset it missed.
    """
    n = sum(sizes.values())
    quota = {k: {s: t * m / n for s, m in sizes.items()} for k, t in totals.items()}
    counts = {k: {s: math.floor(q) for s, q in row.items()} for k, row in quota.items()}
    row_left = {s: m - sum(counts[k][s] for k in totals) for s, m in sizes.items()}
    col_left = {k: t - sum(counts[k].values()) for k, t in totals.items()}

    def tie(k: str, s: str) -> bytes:
        return hashlib.sha256(f"{seed}:{k}:{s}".encode()).digest()

    cells = sorted(((k, s) for k in totals for s in sizes), key=lambda c: (counts[c[0]][c[1]] - quota[c[0]][c[1]], tie(*c)))
    for k, s in cells + cells:  # second pass: a cell may take a second case when the remainders ran out
        if row_left[s] > 0 and col_left[k] > 0:
            counts[k][s] += 1
            row_left[s] -= 1
            col_left[k] -= 1

    wanted = [k for k, t in totals.items() if t > 0]
    for s in sorted(sizes):
        if sizes[s] < len(wanted):
            continue
        for k in wanted:
            if counts[k][s]:
                continue
            # swap one case: s moves from its fullest subset k2 into k, another stratum s2 moves from k into k2
            k2 = max(wanted, key=lambda j: counts[j][s])
            donors = [d for d in sorted(sizes) if d != s and counts[k][d] > (1 if sizes[d] >= len(wanted) else 0)]
            if counts[k2][s] < 2 or not donors:
                continue
            s2 = max(donors, key=lambda d: counts[k][d])
            counts[k][s] += 1
            counts[k2][s] -= 1
            counts[k][s2] -= 1
            counts[k2][s2] += 1
    return counts


def make_split(
    case_ids: Sequence[str],
    *,
    seed: int,
    val: float,
    test: float,
    grades: dict[str, str | None] | None = None,
    stratify: str | None = None,
    manifest_hash: str | None = None,
) -> Split:
    """Split `case_ids` into train/val/test; with stratify='grade' each grade is spread proportionally."""
    check_fractions(val, test)
    ids = sorted(set(case_ids))
    if not ids:
        raise UserError("no labelled cases to split")
    n_val, n_test = _subset_sizes(len(ids), val, test)
    if stratify not in (None, "none", "grade"):
        raise UserError(f"--stratify {stratify}: choose 'grade' or 'none'")
    stratify = None if stratify in (None, "none") else stratify
    strata: dict[str, list[str]] = {"all": ids}
    if stratify == "grade":
        grades = grades or {}
        unknown = [c for c in ids if not grades.get(c)]
        if unknown:
            log.warning(
                "split: %d of %d case(s) have no grade (e.g. %s); they form their own 'unknown' stratum",
                len(unknown), len(ids), unknown[0],
            )
        strata = {}
        for cid in ids:
            strata.setdefault(grades.get(cid) or "unknown", []).append(cid)

    def rank(cid: str) -> bytes:
        return hashlib.sha256(f"{seed}:{cid}".encode()).digest()

    for name in strata:
        strata[name].sort(key=rank)
    totals = {"train": len(ids) - n_val - n_test, "val": n_val, "test": n_test}
    counts = _allocate({s: len(members) for s, members in strata.items()}, totals, seed)
    chosen: dict[str, list[str]] = {"val": [], "test": []}
    for name, members in strata.items():
        n_v, n_t = counts["val"][name], counts["test"][name]
        chosen["val"].extend(members[:n_v])
        chosen["test"].extend(members[n_v : n_v + n_t])
    held = set(chosen["val"]) | set(chosen["test"])
    return Split(
        seed=int(seed), fractions={"val": float(val), "test": float(test)}, stratify=stratify,
        train=[c for c in ids if c not in held], val=sorted(chosen["val"]), test=sorted(chosen["test"]),
        store_manifest_hash=manifest_hash,
    )


def split_store(store: Store, *, seed: int, val: float, test: float, stratify: str | None = None) -> Split:
    """Split the store's labelled cases (validation cases without labels never enter a split)."""
    ids = store.labelled_ids
    grades = {cid: store.entry(cid).get("grade") for cid in ids}
    return make_split(ids, seed=seed, val=val, test=test, grades=grades, stratify=stratify, manifest_hash=store_manifest_hash(store))


def default_split_path(store: Store, seed: int) -> Path:
    return store.path / f"split-seed{seed}.json"


def load_split(path: Path, store: Store | None = None) -> Split:
    """Read a split file; with `store`, every id must exist there (UserError naming the first missing one)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read split file ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("version") != SPLIT_VERSION or not all(isinstance(raw.get(s), list) for s in SUBSETS):
        raise UserError(f"{path}: not a bratsbench split file (version {SPLIT_VERSION} with train/val/test lists)")
    split = Split(
        seed=raw.get("seed"), fractions=raw.get("fractions") or {}, stratify=raw.get("stratify"),
        train=list(raw["train"]), val=list(raw["val"]), test=list(raw["test"]),
        store_manifest_hash=raw.get("store_manifest_hash"), path=path,
    )
    seen: dict[str, str] = {}
    for subset in SUBSETS:
        for cid in split.subset(subset):
            if cid in seen:
                raise UserError(f"{path}: case {cid} is in both {seen[cid]} and {subset}")
            seen[cid] = subset
    if store is not None:
        known = set(store.case_ids)
        for subset in SUBSETS:
            for cid in split.subset(subset):
                if cid not in known:
                    raise UserError(f"{path}: case {cid} ({subset}) is not in store {store.path}")
        if split.store_manifest_hash and split.store_manifest_hash != store_manifest_hash(store):
            log.warning("%s: made for a different set of labelled cases than store %s", path, store.path)
    return split
