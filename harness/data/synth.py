"""Realistic BraTS-layout cases made offline from the ICBM152 templates bundled in nilearn.

Recipe from docs/brats-data.md ("Realistic cases without downloads"): warped partial-volume anatomy
(synth_anatomy), an irregular glioma (synth_tumour), then MRI contrast per modality with softened label
blending, texture, bias field, blur and Rician noise. Every case depends only on (seed, split, case id),
so the bytes written do not depend on the number of worker processes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from harness.data.synth_anatomy import BRATS_SHAPE, cubic_upsample, voxel_size, warp_anatomy
from harness.data.synth_tumour import ED, ET, NCR, grow_tumour
from harness.data.workers import map_in_processes
from harness.errors import UserError
from harness.modalities import MODALITIES
from harness.outdir import ensure_output_dir

# Intensities relative to T1 white matter (brats-data.md table; BrainWeb agrees on the ordering).
CONTRAST: dict[str, dict[str, float]] = {
    "t1": {"csf": 0.30, "gm": 0.70, "wm": 1.00, "ncr": 0.35, "et": 0.75, "ed": 0.60},
    "t1ce": {"csf": 0.30, "gm": 0.72, "wm": 1.00, "ncr": 0.30, "et": 1.60, "ed": 0.60},
    "t2": {"csf": 2.50, "gm": 1.40, "wm": 1.00, "ncr": 2.30, "et": 1.60, "ed": 2.10},
    "flair": {"csf": 0.25, "gm": 1.20, "wm": 1.00, "ncr": 0.80, "et": 1.50, "ed": 2.00},
}
_LABEL_KEYS = ((NCR, "ncr"), (ED, "ed"), (ET, "et"))
TRAIN, VALIDATION = "train", "validation"
MARKER = ".bratsbench_synth.json"


@dataclass
class SynthCase:
    """One generated case; arrays are in BraTS storage order (LPS) on the output grid."""

    images: dict[str, np.ndarray]  # modality -> int16, background exactly 0
    seg: np.ndarray  # uint8, values in {0, 1, 2, 4}
    tissue: np.ndarray  # uint8: 0 background, 1 CSF, 2 GM, 3 WM (argmax of partial volume)
    grade: str  # "HGG" or "LGG" (LGG cases have no ET)
    affine: np.ndarray
    composition: str = ""
    info: dict = field(default_factory=dict)


def brats_affine(shape: tuple[int, int, int] = BRATS_SHAPE) -> np.ndarray:
    """LPS affine of the BraTS grid; reduced shapes keep the 240x240x155 mm field of view."""
    size = voxel_size(shape)
    half = size / 2.0 - 0.5  # centre of voxel 0 in 1 mm grid units
    return np.array([[-size[0], 0, 0, -half[0]], [0, -size[1], 0, BRATS_SHAPE[1] - 1 - half[1]],
                     [0, 0, size[2], half[2]], [0, 0, 0, 1]], dtype=np.float64)


def case_seed(seed: int, case_id: int, split: str = TRAIN) -> int:
    """Seed of one case: a hash of (seed, split, id), so cases are independent of each other and of order."""
    ss = np.random.SeedSequence([int(seed), 0 if split == TRAIN else 2, int(case_id)])
    return int(ss.generate_state(1, np.uint64)[0])


def _smooth_bias(rng: np.random.Generator, coarse) -> np.ndarray:
    """exp of a cubic-upsampled 4^3 random field, at most +-8..15 %, on the anatomy crop."""
    small = rng.standard_normal((4, 4, 4))
    big = cubic_upsample(small, coarse.shape)
    big *= np.log1p(rng.uniform(0.08, 0.15)) / max(float(np.abs(big).max()), 1e-6)
    return np.exp(coarse.upsample(big.astype(np.float32)))


def generate_case(case_seed: int, shape: tuple[int, int, int] = BRATS_SHAPE,
                  composition: str | None = None) -> SynthCase:
    """Generate one case from its seed; `composition` ('necrotic', 'solid', 'lgg') forces the tumour mix."""
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(case_seed)
    size = voxel_size(shape)
    anat = warp_anatomy(rng, shape)
    tum = grow_tumour(rng, anat, size, composition)
    crop = tuple(slice(o, o + n) for o, n in zip(anat.offset, anat.brain.shape))
    mask = anat.mask

    # Softened one-hot tumour labels (sigma ~1 mm, at least half a voxel) for the intensity blend.
    sigma = np.maximum(1.0 / size, 0.5)
    soft = {key: ndi.gaussian_filter((tum.labels == lab).astype(np.float32), sigma, truncate=3.0)
            for lab, key in _LABEL_KEYS}
    tumour_frac = soft["ncr"] + soft["ed"] + soft["et"]
    texture = ndi.gaussian_filter(rng.standard_normal(anat.brain.shape, dtype=np.float32),
                                  np.maximum(0.8 / size, 0.3), truncate=3.0)
    texture = 1.0 + 0.05 * texture / max(float(texture.std()), 1e-6)
    texture[tum.box] *= 1.0 + 0.08 * tum.texture * np.minimum(tumour_frac, 1.0)
    blur = 0.6 / size

    images = {}
    for mod in MODALITIES:
        val = {k: v * rng.uniform(0.96, 1.04) for k, v in CONTRAST[mod].items()}
        if tum.composition == "lgg":  # label 1 is non-enhancing tumour here, not necrosis: FLAIR-bright
            val["ncr"] = 0.5 * (val["ncr"] + val["ed"])
        img = anat.csf * val["csf"] + anat.gm * val["gm"] + anat.wm * val["wm"]
        brain_box = anat.brain[tum.box]
        img[tum.box] = img[tum.box] * (1.0 - tumour_frac) + brain_box * sum(soft[k] * val[k] for k in soft)
        img *= texture * _smooth_bias(rng, anat.coarse)
        if blur.max() >= 0.3:
            img = ndi.gaussian_filter(img, blur, truncate=3.0)
        inside = img[mask]  # background stays exactly 0, so noise is only drawn inside the brain
        noise = 0.03 * rng.standard_normal((2, inside.size), dtype=np.float32)
        inside = np.sqrt((inside + noise[0]) ** 2 + noise[1] ** 2) * rng.uniform(300.0, 600.0)
        out = np.zeros(shape, np.int16)
        out[crop][mask] = np.rint(inside).astype(np.int16)
        images[mod] = out

    seg = np.zeros(shape, np.uint8)
    seg_crop = np.zeros(anat.brain.shape, np.uint8)
    seg_crop[tum.box] = tum.labels
    seg[crop] = np.where(mask, seg_crop, 0)
    tissue = np.zeros(shape, np.uint8)
    wm_top = (anat.wm >= anat.gm) & (anat.wm >= anat.csf)
    tissue[crop] = np.where(mask, np.where(wm_top, 3, np.where(anat.gm >= anat.csf, 2, 1)), 0)
    info = {"centre_mm": [round(float(c), 2) for c in tum.centre_mm], "radius_mm": round(tum.radius_mm, 2)}
    return SynthCase(images, seg, tissue, tum.grade, brats_affine(shape), tum.composition, info)


# ----------------------------------------------------------------------------------------------------------
# Dataset layout (BraTS 2020 / 2021 folders, CSVs, the case-355 quirk) and parallel writing.

_ROOTS = {  # (year, split) -> (root folder, case folder pattern, case folder regex)
    (2020, TRAIN): ("MICCAI_BraTS2020_TrainingData", "BraTS20_Training_{:03d}", r"BraTS20_Training_\d{3}"),
    (2020, VALIDATION): ("MICCAI_BraTS2020_ValidationData", "BraTS20_Validation_{:03d}",
                         r"BraTS20_Validation_\d{3}"),
    (2021, TRAIN): ("BraTS2021_Training_Data", "BraTS2021_{:05d}", r"BraTS2021_\d{5}"),
}
_CSVS = {(2020, TRAIN): ("name_mapping.csv", "survival_info.csv"),
         (2020, VALIDATION): ("name_mapping_validation_data.csv", "survival_evaluation.csv"),
         (2021, TRAIN): ()}
QUIRK_ID, QUIRK_SEG = 355, "W39_1998.09.19_Segm"  # Kaggle copy of BraTS 2020: case 355's label name
ALIVE = "ALIVE (361 days later)"
_MAX_ID = {2020: 999, 2021: 99999}


def case_dir(out: Path, year: int, split: str, case_id: int) -> Path:
    root, pattern, _ = _ROOTS[(year, split)]
    return Path(out) / root / pattern.format(case_id)


def case_files(year: int, split: str, case_id: int, gzip: bool = True) -> dict[str, str]:
    """File names in a case folder: modality (and 'seg' for training) -> name."""
    name = _ROOTS[(year, split)][1].format(case_id)
    ext = ".nii.gz" if gzip else ".nii"
    files = {mod: f"{name}_{mod}{ext}" for mod in MODALITIES}
    if split == TRAIN:
        quirk = year == 2020 and case_id == QUIRK_ID
        files["seg"] = (QUIRK_SEG if quirk else f"{name}_seg") + ext
    return files


def _foreign_entry(out: Path) -> Path | None:
    """First path under `out` that synth output would not contain, or None."""
    nii = r"\.nii(\.gz)?"
    for entry in out.iterdir():
        if entry.name == MARKER and entry.is_file():
            continue
        match = [(key, spec) for key, spec in _ROOTS.items() if spec[0] == entry.name]
        if not match or not entry.is_dir():
            return entry
        (key, (_, _, case_re)), = match
        for sub in entry.iterdir():
            if sub.is_file() and sub.name in _CSVS[key]:
                continue
            if not (sub.is_dir() and re.fullmatch(case_re, sub.name)):
                return sub
            file_re = rf"({sub.name}_({'|'.join(MODALITIES)}|seg)|{re.escape(QUIRK_SEG)}){nii}"
            for item in sub.iterdir():
                if not (item.is_file() and re.fullmatch(file_re, item.name)):
                    return item
    return None


def _read_marker(out: Path) -> dict:
    """Refuse a non-empty --out unless it only holds earlier synth output; return its bookkeeping."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return {}
    marker = out / MARKER
    if not marker.is_file():
        raise UserError(f"--out {out}: folder is not empty and was not written by bratsbench synth; "
                        "choose an empty or new folder")
    stray = _foreign_entry(out)
    if stray is not None:
        raise UserError(f"--out {out}: holds {stray.relative_to(out)}, which bratsbench synth did not write; "
                        "choose an empty or new folder")
    try:
        return json.loads(marker.read_text()).get("cases", {})
    except (ValueError, OSError, AttributeError) as exc:
        raise UserError(f"{marker}: unreadable synth bookkeeping file ({exc}); remove --out and rerun") from exc


def _subject_meta(seed: int, split: str, case_id: int, grade: str) -> dict:
    """CSV fields of one subject (IDs of earlier BraTS editions, age, survival), fixed by (seed, id)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1 if split == TRAIN else 3, int(case_id)]))
    site = str(rng.choice(["CBICA", "TCIA", "2013"], p=[0.5, 0.35, 0.15]))
    if site == "CBICA":
        token = "CBICA_" + "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 3))
    elif site == "TCIA":
        token = f"TCIA{int(rng.integers(1, 14)):02d}_{int(rng.integers(100, 700))}"
    else:
        token = f"2013_{int(rng.integers(0, 30))}"
    tcga = (f"TCGA-{rng.choice(['02', '06', '08', '12', '14', '19', '76', 'CS', 'DU', 'FG', 'HT'])}-"
            f"{int(rng.integers(0, 10000)):04d}") if site == "TCIA" else "NA"
    lgg = grade == "LGG"
    age = float(np.clip(rng.normal(42 if lgg else 61, 13 if lgg else 12), 18, 87))
    survival = int(np.clip(rng.lognormal(np.log(370.0), 0.75), 5, 1800))
    resection = str(rng.choice(["GTR", "STR", "NA"], p=[0.5, 0.05, 0.45]))
    seen_2018, seen_2019 = (285, 335) if split == TRAIN else (66, 125)
    return {"grade": grade, "age": f"{age:.3f}", "survival_days": str(survival), "resection": resection,
            "tcga": tcga, "2017": f"Brats17_{token}_1" if split == TRAIN and case_id <= seen_2018 else "NA",
            "2018": f"Brats18_{token}_1" if case_id <= seen_2018 else "NA",
            "2019": f"BraTS19_{token}_1" if case_id <= seen_2019 else "NA"}


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_csvs(out: Path, year: int, split: str, entries: dict, seed: int) -> None:
    """Write the BraTS 2020 CSVs for all synth cases present (this run's and earlier runs')."""
    if not _CSVS[(year, split)]:
        return
    present = sorted((int(k), v) for k, v in entries.items() if case_dir(out, year, split, int(k)).is_dir())
    pattern = _ROOTS[(year, split)][1]
    hgg = [(cid, m) for cid, m in present if m["grade"] == "HGG"]
    root = out / _ROOTS[(year, split)][0]
    if split == TRAIN:
        _write_csv(root / "name_mapping.csv",
                   ["Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                    "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"],
                   [[m["grade"], m["2017"], m["2018"], m["tcga"], m["2019"], pattern.format(cid)]
                    for cid, m in present])
        alive = int(np.random.default_rng([int(seed), 4]).integers(len(hgg))) if hgg else -1
        _write_csv(root / "survival_info.csv", ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"],
                   [[pattern.format(cid), m["age"], ALIVE if i == alive else m["survival_days"], m["resection"]]
                    for i, (cid, m) in enumerate(hgg)])
    else:
        _write_csv(root / "name_mapping_validation_data.csv",
                   ["BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                    "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"],
                   [[m["2017"], m["2018"], m["tcga"], m["2019"], pattern.format(cid)] for cid, m in present])
        _write_csv(root / "survival_evaluation.csv", ["BraTS20ID", "Age", "ResectionStatus"],
                   [[pattern.format(cid), m["age"], "GTR"] for cid, m in hgg])


def save_case(case: SynthCase, folder: Path, files: dict[str, str]) -> None:
    """Write a case's NIfTI files (int16 images, uint8 labels); gzip output is byte-deterministic."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for key, name in files.items():
        data = case.seg if key == "seg" else case.images[key]
        img = nib.Nifti1Image(data, case.affine)
        img.set_data_dtype(data.dtype)
        img.set_qform(case.affine, code=1)
        img.set_sform(case.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(folder / name))


def _build(task: tuple) -> tuple[int, str, int, str]:
    """Worker: generate and write one case."""
    out, year, split, cid, seed, shape, gzip = task
    case = generate_case(case_seed(seed, cid, split), shape)
    save_case(case, case_dir(out, year, split, cid), case_files(year, split, cid, gzip))
    return year, split, cid, case.grade


def _check_args(cases: int, seed: int, year: int, validation: int, shape: tuple, first_id: int,
                workers: int | None) -> None:
    if year not in _MAX_ID:
        raise UserError(f"--year {year}: choose 2020 or 2021")
    if cases < 0 or validation < 0 or cases + validation < 1:
        raise UserError(f"--cases {cases} / --validation {validation}: need counts >= 0 and at least one case")
    if validation and year != 2020:
        raise UserError(f"--validation {validation}: the validation folder exists only for --year 2020")
    if seed < 0:
        raise UserError(f"--seed {seed}: must be >= 0")
    if len(shape) != 3 or not all(16 <= int(n) <= 512 for n in shape):
        raise UserError(f"--shape {' '.join(map(str, shape))}: need three sizes between 16 and 512")
    low = 0 if year == 2021 else 1
    if first_id < low or first_id + cases - 1 > _MAX_ID[year]:
        raise UserError(f"--first-id {first_id}: case ids must lie in {low}..{_MAX_ID[year]} for {year}")
    if validation > _MAX_ID[2020]:
        raise UserError(f"--validation {validation}: at most {_MAX_ID[2020]} cases")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")


def write_dataset(out: str | os.PathLike, cases: int, seed: int, year: int = 2020, validation: int = 0,
                  gzip: bool = True, shape: tuple[int, int, int] | None = None, first_id: int = 1,
                  workers: int | None = None) -> Path:
    """Write a BraTS-layout data set of synthetic cases in parallel; returns the training folder."""
    from tqdm import tqdm

    shape = tuple(int(n) for n in (shape or BRATS_SHAPE))
    _check_args(cases, seed, year, validation, shape, first_id, workers)
    out = Path(out)
    book = _read_marker(out)
    ensure_output_dir(out)  # before any case is removed or generated
    tasks = [(out, year, TRAIN, cid, seed, shape, gzip) for cid in range(first_id, first_id + cases)]
    tasks += [(out, 2020, VALIDATION, vid, seed, shape, gzip) for vid in range(1, validation + 1)]
    for task in tasks:  # overwrite earlier synth cases of the same ids (checked to be synth output)
        shutil.rmtree(case_dir(out, *task[1:4]), ignore_errors=True)
    died = "a synth worker process died (out of memory?): run synth again, with fewer --workers"
    with tqdm(total=len(tasks), desc="synth", unit="case") as bar, \
            closing(map_in_processes(_build, tasks, workers, died)) as built:
        results = []
        for res in built:
            results.append(res)
            bar.update()

    for yr, split, cid, grade in results:
        book.setdefault(f"{yr}/{split}", {})[str(cid)] = _subject_meta(seed, split, cid, grade)
    for key, entries in book.items():
        yr, split = key.split("/")
        _write_csvs(out, int(yr), split, entries, seed)
    (out / MARKER).write_text(json.dumps({"tool": "bratsbench synth", "cases": book}, indent=1, sort_keys=True))
    return out / _ROOTS[(year, TRAIN)][0]
