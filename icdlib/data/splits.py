"""Train/val/test assignment of admissions.

`seed` is the original project's rule (HADM_ID ending in 8 or 9 → val, no test); `patient` a
deterministic patient-level 75/10/15 split by a hash of SUBJECT_ID (stable whatever else is in
the data); `caml_full`, `caml_50` and `clean` (MIMIC-III), `mimic4_icd9` and `mimic4_icd10` (Edin
et al.'s MIMIC-IV files) read the public ID files from `split_dir`. IDs in
a split file but absent from the data, and admissions in the data but in no split file, are
counted and reported, never silently dropped.

`seed` has no test set. `seed_test_share` > 0 holds one out: that share of the patients with seed
train admissions (chosen with the run's `seed`) becomes a patient-disjoint test set, their train
admissions moving to test; val keeps the HADM_ID rule, so a test patient may still have val
admissions, and val patients may still have train admissions (`patients_in_train` counts them).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from icdlib.run.errors import DataError

SPLITS = ("train", "val", "test")
CAML_FILES = {"train": "train_{}_hadm_ids.csv", "val": "dev_{}_hadm_ids.csv", "test": "test_{}_hadm_ids.csv"}
EDIN_FILES = {"caml_full": "mimiciii_full_splits.feather", "caml_50": "mimiciii_50_splits.feather",
              "clean": "mimiciii_clean_splits.feather", "mimic4_icd9": "mimiciv_icd9_split.feather",
              "mimic4_icd10": "mimiciv_icd10_split.feather"}


def seed_rule(hadm_ids: np.ndarray) -> np.ndarray:
    return np.where(np.isin(np.asarray(hadm_ids) % 10, (8, 9)), "val", "train")


def hold_out_patients(assigned: np.ndarray, subject_ids: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, int]:
    """`assigned` with round(share × the train patients) of its train patients, drawn with `seed`,
    moved to test (all their train admissions), and how many patients moved."""
    assigned = np.asarray(assigned, dtype=object).copy()
    subject_ids = np.asarray(subject_ids)
    train = assigned == "train"
    patients = np.unique(subject_ids[train])
    k = int(round(share * len(patients)))
    chosen = np.random.default_rng(seed).permutation(patients)[:k]
    assigned[train & np.isin(subject_ids, chosen)] = "test"
    return assigned, k


def patients_in_train(notes: pd.DataFrame, split: str = "val") -> int:
    """Admissions of `split` whose patient also has train admissions."""
    train = set(notes.loc[notes["split"] == "train", "subject_id"].tolist())
    return int(notes.loc[notes["split"] == split, "subject_id"].isin(train).sum())


def patient_rule(subject_ids: np.ndarray) -> np.ndarray:
    """75/10/15 by crc32 of the SUBJECT_ID: a patient's admissions always share a split."""
    bucket = np.array([zlib.crc32(str(int(s)).encode()) % 100 for s in subject_ids])
    return np.select([bucket < 75, bucket < 85], ["train", "val"], "test")


def read_caml_ids(path: Path) -> list[int]:
    """One HADM_ID a line, no header; a non-integer line is an error naming the line."""
    ids = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise DataError(f"{Path(path).name} line {n}: expected an integer HADM_ID, got {line[:40]!r}")
        ids.append(int(line))
    return ids


def read_split_files(name: str, split_dir: Path) -> pd.DataFrame:
    """The public split `name` as rows (hadm_id, split), from CAML csv files or Edin's feather."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"split_dir {str(split_dir)!r} is not a folder (split {name!r} needs the public split files)")
    if name in ("caml_full", "caml_50"):
        suffix = name.split("_")[1]
        paths = {s: split_dir / f.format(suffix) for s, f in CAML_FILES.items()}
        if all(p.is_file() for p in paths.values()):
            return pd.DataFrame([(i, s) for s, p in paths.items() for i in read_caml_ids(p)], columns=["hadm_id", "split"])
    feather = split_dir / EDIN_FILES[name]
    if feather.is_file():
        df = pd.read_feather(feather)
        if not {"_id", "split"} <= set(df.columns):
            raise DataError(f"{feather.name}: expected columns _id, split; has {', '.join(df.columns)}")
        bad = sorted(set(df["split"]) - set(SPLITS))
        if bad:
            raise DataError(f"{feather.name}: split values must be train, val, test; found {bad[:5]}")
        return pd.DataFrame({"hadm_id": df["_id"].astype("int64"), "split": df["split"].astype(str)})
    expected = ", ".join(f.format(name.split('_')[-1]) for f in CAML_FILES.values()) if name.startswith("caml") else ""
    raise DataError(
        f"split_dir {split_dir} lacks the files of split {name!r}: "
        + (f"{expected} or " if expected else "") + EDIN_FILES[name]
    )


def assign(admissions: pd.DataFrame, split: str, split_dir: str = "", seed_test_share: float = 0.0,
           seed: int = 0) -> tuple[pd.Series, dict]:
    """Split names for admissions (columns hadm_id, subject_id) and counts worth reporting.

    Admissions outside a file-based split get no split (None) and are dropped by the caller.
    `seed_test_share` (split seed only) holds out a patient-disjoint test set: `hold_out_patients`.
    """
    stats: dict = {}
    if split == "seed":
        out = seed_rule(admissions["hadm_id"].to_numpy())
        if seed_test_share > 0:
            out, moved = hold_out_patients(out, admissions["subject_id"].to_numpy(), seed_test_share, seed)
            stats["seed train patients held out as test (seed_test_share)"] = moved
    elif split == "patient":
        out = patient_rule(admissions["subject_id"].to_numpy())
    else:
        ids = read_split_files(split, Path(split_dir))
        dup = ids["hadm_id"].duplicated()
        if dup.any():
            raise DataError(f"split {split!r}: HADM_ID {int(ids.loc[dup, 'hadm_id'].iloc[0])} is listed twice")
        mapping = dict(zip(ids["hadm_id"], ids["split"]))
        present = set(admissions["hadm_id"])
        for s in SPLITS:
            listed = ids.loc[ids["split"] == s, "hadm_id"]
            stats[f"{s} ids in split files but not in the data"] = int((~listed.isin(present)).sum())
        out = admissions["hadm_id"].map(mapping).to_numpy(dtype=object)
        stats["admissions in no split file (dropped)"] = int(pd.isna(out).sum())
    return pd.Series(out, index=admissions.index, name="split", dtype=object), stats
