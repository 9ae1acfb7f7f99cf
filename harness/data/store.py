"""Preprocessed case store: decode NIfTI once, then training reads fixed-size .npy arrays by memmap.

Layout, version 2 (other modules rely on it):
    STORE/manifest.json                  format, version, roi, spacing, modalities, cases, skipped, warnings
    STORE/cases/<case_id>/image.npy      int16 (X,Y,Z,C), the manifest's modalities interleaved; z-scored inside
                                         the brain mask, 0 outside, as codes: z = code * meta.image_scale[c]
    STORE/cases/<case_id>/label.npy      uint8 (X,Y,Z) in 0..3 (BraTS 4 -> 3); absent for unlabelled cases
    STORE/cases/<case_id>/mask.npy       uint8 brain mask (X,Y,Z)
    STORE/cases/<case_id>/meta.json      sources, image_scale, original geometry and every step needed to map back

Interleaved so that a training crop of all modalities is one window of one file, read in runs of crop-z x C
values. A store of another version (1: one float32 file per modality) is refused with a line that says to run
`prepare` again, which rewrites it in place.

A case appears only by renaming a finished temporary folder, and the manifest is replaced atomically,
so an interrupted `prepare` leaves a valid store that the next run completes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from harness.data.loader import CaseFiles, find_cases, read_clinical
from harness.data.preprocess import (  # noqa: F401 - re-exported: the store's public API
    DEFAULT_ROI,
    IMAGE_DTYPE,
    VERSION,
    CaseProblem,
    PrepParams,
    decode,
    preprocess,
    to_original_geometry,
)
from harness.data.validate import read_case
from harness.data.workers import map_in_processes
from harness.errors import UserError, naming
from harness.modalities import MODALITIES, parse_modalities

log = logging.getLogger(__name__)

FORMAT = "bratsbench-store"
MANIFEST = "manifest.json"
CASES = "cases"
IMAGE = "image"  # the modalities' array: cases/<case_id>/image.npy
_TMP_PREFIXES = (".tmp-", ".old-")
_MANIFEST_EVERY_S = 1.0  # an interrupt loses at most this much finished work from the manifest
_WORKER_DIED = ("a prepare worker process died (out of memory?); finished cases are kept: "
                "run prepare again to resume, with fewer --workers")


# ---------------------------------------------------------------- writing


def _atomic_json(path: Path, payload: dict) -> None:
    """Replace `path` whole or not at all; a failed write (disk full) leaves the old file and no temporary."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(path), open(tmp, "w") as fh:
            json.dump(payload, fh, indent=1, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through Python's file write: numpy's own writer reports a full disk as "32768 requested and
    24544 written" with no errno, Python's raises ENOSPC, which names the cause."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with naming(path), open(path, "wb") as fh:
        fh.write(buffer.getbuffer())


def _write_case(cases_dir: Path, case_id: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write into a temporary folder, then swap it in, so no half-written case is ever visible.

    On any failure (disk full, interrupt) the temporary folder is removed and an earlier version of the case
    stays in place; an OSError names the file that could not be written.
    """
    tmp = cases_dir / f".tmp-{case_id}-{os.getpid()}"
    old = cases_dir / f".old-{case_id}-{os.getpid()}"
    final = cases_dir / case_id
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, array in arrays.items():
            _save_npy(tmp / f"{name}.npy", array)
        with naming(tmp / "meta.json"), open(tmp / "meta.json", "w") as fh:
            json.dump(meta, fh, indent=1)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)  # the earlier version, which the manifest still lists
        raise
    shutil.rmtree(old, ignore_errors=True)


def source_fingerprint(case: CaseFiles, modalities: Sequence[str]) -> dict[str, dict]:
    """Path, size and mtime of each source file; a change in any of them means the case is redone."""
    files = {m: case.modalities[m] for m in modalities if m in case.modalities}
    if case.seg is not None:
        files["seg"] = case.seg
    out = {}
    for key, path in files.items():
        try:
            st = path.stat()
            out[key] = {"path": str(path.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
        except OSError:
            out[key] = {"path": str(path), "size": -1, "mtime_ns": -1}
    return out


@dataclass
class _Job:
    case: CaseFiles
    params: PrepParams
    cases_dir: Path
    sources: dict
    clinical: dict


def _process_case(job: _Job) -> tuple[str, str, Any]:
    """Worker: read, check, preprocess and write one case -> (case_id, 'done'|'skipped', entry|problems)."""
    case = job.case
    data, problems = read_case(case, job.params.modalities)
    if data is None:
        return case.case_id, "skipped", problems
    try:
        arrays, geometry = preprocess(data, job.params)
    except CaseProblem as exc:
        return case.case_id, "skipped", [f"case {case.case_id}: {exc}"]
    entry = {
        "is_validation": bool(case.is_validation),
        "has_label": "label" in arrays,
        "grade": job.clinical.get("grade"),
        "age": job.clinical.get("age"),
        "sources": job.sources,
    }
    meta = {"case_id": case.case_id, "prep": job.params.as_dict(), **entry, **geometry}
    _write_case(job.cases_dir, case.case_id, arrays, meta)
    return case.case_id, "done", entry


def _clinical_for(clinical, case_id: str) -> dict:
    if clinical is None or case_id not in clinical.index:
        return {"grade": None, "age": None}
    row = clinical.loc[case_id]
    grade = row["grade"] if isinstance(row["grade"], str) and row["grade"] else None
    age = float(row["age"]) if row["age"] == row["age"] and row["age"] is not None else None
    return {"grade": grade, "age": age}


@contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    lock = store / ".prepare.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # left by a run that died
                continue
            except PermissionError:
                pass
            raise UserError(
                f"{store}: another `bratsbench prepare` (pid {pid}) is writing this store (if not, remove {lock})"
            ) from None
    else:
        raise UserError(f"{store}: cannot take the lock file {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _remove_temporaries(cases_dir: Path) -> None:
    for child in cases_dir.iterdir():
        if child.name.startswith(_TMP_PREFIXES):
            shutil.rmtree(child, ignore_errors=True)


def _read_existing(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(p.name not in (CASES, ".prepare.lock") for p in out.iterdir()):
            raise UserError(f"{out}: folder exists, is not empty and is not a bratsbench store; choose another --out")
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a bratsbench store manifest; choose another --out or remove it")
    return manifest  # another version: its parameters differ, so every case is redone


_progress_shown = False


def _progress(total: int, enabled: bool):
    """One tqdm bar per process (a second prepare in the same process stays quiet).

    The bar clears its line when it ends, so the summary, or an error, is the one line left on the terminal.
    """
    global _progress_shown
    from tqdm import tqdm

    show = enabled and not _progress_shown and total > 0
    _progress_shown = _progress_shown or show
    return tqdm(total=total, desc="prepare", unit="case", disable=not show, file=sys.stderr, leave=False)


@dataclass
class PrepareReport:
    prepared: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare_store(
    data_dir: Path,
    out: Path,
    *,
    roi: Sequence[int] = DEFAULT_ROI,
    spacing: float | None = None,
    modalities: Sequence[str] = MODALITIES,
    strict: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Build or update the store at `out` from the BraTS data under `data_dir`.

    Only new cases, cases whose sources changed, and (after a parameter change) all cases are redone.
    Bad cases are skipped and listed under "skipped", or stop the run with UserError when `strict`.
    """
    params = PrepParams(tuple(int(r) for r in roi), None if spacing is None else float(spacing), parse_modalities(modalities))
    out = Path(out)
    cases = find_cases(Path(data_dir))
    report = PrepareReport()
    clinical = read_clinical(Path(data_dir), None if strict else report.warnings)
    for warning in report.warnings:
        log.warning("%s", warning)

    out.mkdir(parents=True, exist_ok=True)
    existing = _read_existing(out)
    cases_dir = out / CASES
    cases_dir.mkdir(exist_ok=True)
    with _store_lock(out):
        _remove_temporaries(cases_dir)
        manifest = {"format": FORMAT, **params.as_dict(), "cases": {}, "skipped": {}, "warnings": list(report.warnings)}
        old_cases: dict[str, dict] = {}
        if existing is not None:
            old_cases = dict(existing.get("cases", {}))
            if _params_of(existing) == params.as_dict():
                manifest["cases"] = dict(old_cases)
            else:
                log.info("%s: preprocessing parameters changed; redoing every case", out)
        found = {c.case_id for c in cases}
        for gone in sorted(set(old_cases) - found):
            manifest["cases"].pop(gone, None)
            shutil.rmtree(cases_dir / gone, ignore_errors=True)
            report.removed.append(gone)

        jobs: list[_Job] = []
        for case in cases:
            sources = source_fingerprint(case, params.modalities)
            info = _clinical_for(clinical, case.case_id)
            entry = manifest["cases"].get(case.case_id)
            if entry is not None and _same_sources(entry.get("sources", {}), sources) and (cases_dir / case.case_id / "meta.json").is_file():
                report.reused.append(case.case_id)
                if entry.get("grade") != info["grade"] or entry.get("age") != info["age"]:
                    _update_clinical(cases_dir / case.case_id / "meta.json", entry, info)
                continue
            jobs.append(_Job(case, params, cases_dir, sources, info))
        _atomic_json(out / MANIFEST, manifest)

        last_write = time.monotonic()
        try:
            results = map_in_processes(_process_case, jobs, workers, _WORKER_DIED)
            with _progress(len(jobs), progress) as bar, closing(results):
                for case_id, status, payload in results:  # closing() ends the pool on any exit
                    _record(manifest, report, cases_dir, case_id, status, payload, strict)
                    bar.update(1)
                    if time.monotonic() - last_write >= _MANIFEST_EVERY_S:
                        _atomic_json(out / MANIFEST, manifest)
                        last_write = time.monotonic()
        finally:
            manifest["cases"] = dict(sorted(manifest["cases"].items()))
            manifest["skipped"] = dict(sorted(manifest["skipped"].items()))
            try:
                _atomic_json(out / MANIFEST, manifest)  # may fail too on a full disk: the last one written stays
            finally:
                _remove_temporaries(cases_dir)
    report.prepared.sort()
    return report


def _record(manifest: dict, report: PrepareReport, cases_dir: Path, case_id: str, status: str, payload: Any, strict: bool) -> None:
    if status == "done":
        manifest["cases"][case_id] = payload
        manifest["skipped"].pop(case_id, None)
        report.prepared.append(case_id)
        return
    if strict:
        more = f" (+{len(payload) - 1} more)" if len(payload) > 1 else ""
        raise UserError(f"{payload[0]}{more}; stopped by --strict")
    manifest["cases"].pop(case_id, None)
    shutil.rmtree(cases_dir / case_id, ignore_errors=True)
    manifest["skipped"][case_id] = payload
    report.skipped[case_id] = payload
    for line in payload:
        log.debug("skipped %s", line)


def _params_of(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("roi", "spacing", "modalities", "version")}


def _same_sources(old: dict, new: dict) -> bool:
    """Same files by name, size and mtime (the absolute path may differ if the data folder moved)."""
    if set(old) != set(new):
        return False
    for key, now in new.items():
        was = old[key]
        if (Path(was.get("path", "")).name, was.get("size"), was.get("mtime_ns")) != (Path(now["path"]).name, now["size"], now["mtime_ns"]):
            return False
    return True


def _update_clinical(meta_path: Path, entry: dict, info: dict) -> None:
    entry.update(info)
    meta = json.loads(meta_path.read_text())
    meta.update(info)
    _atomic_json(meta_path, meta)


# ---------------------------------------------------------------- reading


def _load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read store manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path.parent}: not a bratsbench store (manifest.json has no format '{FORMAT}')")
    if manifest.get("version") != VERSION:
        raise UserError(f"{path.parent}: store version {manifest.get('version')} is not this bratsbench's {VERSION}; "
                        f"run `bratsbench prepare --data DIR --out {path.parent}` again to rewrite it")
    return manifest


class Store:
    """Read access to a prepared store; the manifest is read once at open."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._meta: dict[str, dict] = {}

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.manifest["cases"])

    @property
    def labelled_ids(self) -> list[str]:
        return [c for c in self.case_ids if self.manifest["cases"][c].get("has_label")]

    @property
    def roi(self) -> tuple[int, int, int]:
        return tuple(self.manifest["roi"])  # type: ignore[return-value]

    @property
    def spacing(self) -> float | None:
        return self.manifest.get("spacing")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.manifest["modalities"])

    def entry(self, case_id: str) -> dict:
        """The manifest's summary of a case (has_label, grade, age, sources)."""
        try:
            return self.manifest["cases"][case_id]
        except KeyError:
            raise UserError(f"{self.path}: no case '{case_id}' in this store") from None

    def case_dir(self, case_id: str) -> Path:
        self.entry(case_id)
        return self.path / CASES / case_id

    def meta(self, case_id: str) -> dict:
        if case_id not in self._meta:
            self._meta[case_id] = json.loads((self.case_dir(case_id) / "meta.json").read_text())
        return self._meta[case_id]

    def check_modalities(self, modalities: Sequence[str]) -> tuple[str, ...]:
        mods = parse_modalities(modalities)
        missing = [m for m in mods if m not in self.modalities]
        if missing:
            raise UserError(f"{self.path}: store has no {','.join(missing)} (it holds {','.join(self.modalities)})")
        return mods

    def array_path(self, case_id: str, name: str) -> Path:
        return self.case_dir(case_id) / f"{name}.npy"

    def channels(self, modalities: Sequence[str]) -> list[int]:
        """Positions of `modalities` on the image's last axis."""
        return [self.modalities.index(m) for m in self.check_modalities(modalities)]

    def image_codes(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(the case's image as stored: int16 codes (X,Y,Z,C), memory-mapped; scale float32 (C,)): z = code * scale."""
        codes = np.load(self.array_path(case_id, IMAGE), mmap_mode="r")
        scale = np.asarray(self.meta(case_id)["image_scale"], np.float32)
        if codes.dtype != IMAGE_DTYPE or codes.shape[-1:] != scale.shape or scale.size != len(self.modalities):
            raise UserError(f"{self.array_path(case_id, IMAGE)}: {codes.dtype} {codes.shape} is not this store's "
                            f"int16 image of {len(self.modalities)} modalities; run `bratsbench prepare` again")
        return codes, scale

    def load(self, case_id: str, modalities: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(image (X,Y,Z,C) float32 z-scores in the order of `modalities`, label uint8 (X,Y,Z) in 0..3 or None)."""
        channels = self.channels(modalities or self.modalities)
        image = decode(*self.image_codes(case_id), channels)
        label_path = self.array_path(case_id, "label")
        label = np.load(label_path) if label_path.exists() else None
        return image, label

    def load_mask(self, case_id: str) -> np.ndarray:
        return np.load(self.array_path(case_id, "mask"))

    def raw_label(self, case_id: str) -> tuple[np.ndarray, tuple[float, float, float], dict]:
        """The case's raw label file as prepared from (BraTS labels {0,1,2,4}, its own grid), its voxel size in mm
        and the case's meta (to map store-grid predictions back): what BraTS scores against."""
        seg = self.entry(case_id).get("sources", {}).get("seg") or self.meta(case_id).get("sources", {}).get("seg")
        if not seg:
            raise UserError(f"{self.path}: case {case_id} was prepared without a label file")
        path = Path(seg["path"])
        try:
            st = path.stat()
        except OSError:
            raise UserError(f"case {case_id}: raw label file {path} is gone (the store was prepared from it)") from None
        if st.st_size != seg.get("size") or st.st_mtime_ns != seg.get("mtime_ns"):
            raise UserError(f"case {case_id}: raw label file {path} changed since the store was prepared; "
                            "run `bratsbench prepare` again")
        data, problems = read_case(CaseFiles(case_id, path.parent, {}, path, False), (), need_label=True)
        if data is None:
            raise UserError(problems[0])
        return data.label, tuple(float(z) for z in data.zooms), self.meta(case_id)


def open_store(path: Path) -> Store:
    """Open a store written by `bratsbench prepare`; anything else is a UserError naming the path."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{path}: not a bratsbench store (no {MANIFEST}; run `bratsbench prepare --out {path}`)")
    return Store(path, _load_manifest(manifest_path))
