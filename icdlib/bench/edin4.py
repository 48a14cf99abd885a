"""Edin et al.'s MIMIC-IV preparation, the pandas way, for one dataset per call.

The reference `bench preprocess --dataset mimic4_icd9|mimic4_icd10` measures step 01 against.
It follows `prepare_data/prepare_mimiciv.py` and `prepare_data/utils.py` of
JoakimEdin/medical-coding-reproducibility (commits 98d18ab, 1087eac) step by step, written anew:

1. `pd.read_csv` of `hosp/procedures_icd.csv.gz` and `hosp/diagnoses_icd.csv.gz` whole
   (`icd_code` as str), each code dotted by a row-wise `DataFrame.apply` by its version
   (`reformat_icd`: ICD-9 as MIMIC-III, ICD-10-CM after the 3rd character, so `I10` becomes
   `I10.`, ICD-10-PCS undotted);
2. per table `dropna(icd_code)`, `drop_duplicates([hadm_id, icd_code])` (both versions at once)
   and a `groupby([subject_id, hadm_id, icd_version]).apply` making each group's sorted code list;
3. `pd.read_csv` of `note/discharge.csv.gz` whole, `dropna(text)`, `drop_duplicates([hadm_id, text])`;
4. the notes left-merged with the version's procedure and diagnosis lists, notes with neither
   dropped, missing lists made empty;
5. `filter_codes`: per column, codes seen in fewer than `min_count` (10) rows dropped; the target
   is procedures + diagnoses, and rows with an empty target dropped;
6. the TextPreprocessor as set for MIMIC-IV (lower case, `[^A-Za-z0-9]+` → space, `(\\s\\d+)+\\s`
   → space, `\\s+` → space, strip), plus its `num_words` and `num_targets` columns;
7. the result written with `to_feather`.

Where this port differs from their script, all in the pandas way's favour or a no-op:

- One dataset (ICD version) per call, so a call compares with one step 01 run; their script builds
  both from one read of the tables (a call here reads them once for its one dataset).
- Their TextPreprocessor runs in vaex (`vaex.from_pandas`, its `.str` kernels, `to_pandas_df`);
  vaex is not installed with icdlib (its wheels pin old numpy/pandas), so the same regexes run
  through pandas' `.str` methods. Under pandas ≥ 3 text columns are pyarrow-backed and those
  methods run in arrow's kernels (RE2), which is as fast as vaex's and not the slow Python `re`.
- `load_gz_file_into_df` also writes a `.feather` copy of each table beside it (and reads that on
  later runs); not done here: every call reads the `.csv.gz`, as a first run does, without paying
  for that extra write.
- Rows with a missing `icd_code` are dropped before the codes are dotted (their script dots first
  and would fail on one; MIMIC-IV has none). `tidy_codes=True` strips and upper-cases codes first
  (icdlib.data.mimic4's one deliberate change, a no-op on MIMIC-IV's clean codes), for the hand-made
  test fixture; off by default.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

MIN_TARGET_COUNT = 10
VERSIONS = {"mimic4_icd9": 9, "mimic4_icd10": 10}
ID, SUBJECT, TEXT, TARGET = "_id", "subject_id", "text", "target"  # their column names


def reformat_icd9(code: str, is_diag: bool) -> str:
    """ICD-9 dotted as MIMIC-III's: diagnoses after 3 characters (E codes after 4), procedures after 2."""
    code = code.replace(".", "")
    cut = (4 if code.startswith("E") else 3) if is_diag else 2
    return f"{code[:cut]}.{code[cut:]}" if len(code) > cut else code


def reformat_icd10(code: str, is_diag: bool) -> str:
    """ICD-10 as their script dots it: CM always after the 3rd character (`I10` → `I10.`), PCS undotted."""
    code = code.replace(".", "")
    return f"{code[:3]}.{code[3:]}" if is_diag else code


def reformat_icd(code: str, version: int, is_diag: bool) -> str:
    if version == 9:
        return reformat_icd9(code, is_diag)
    if version == 10:
        return reformat_icd10(code, is_diag)
    raise ValueError("version must be 9 or 10")


def read_codes(path: Path, is_diag: bool, tidy_codes: bool = False) -> pd.DataFrame:
    """One code table as their script leaves it: rows (subject_id, _id, icd_version, icd_code: the
    admission's sorted list of dotted codes of that version)."""
    df = pd.read_csv(path, dtype={"icd_code": str})
    df = df.dropna(subset=["icd_code"])  # theirs dots first, and would fail on a missing code
    if tidy_codes:
        df["icd_code"] = df["icd_code"].str.strip().str.upper()
    df["icd_code"] = df.apply(lambda row: reformat_icd(row["icd_code"], row["icd_version"], is_diag), axis=1)
    df = df.rename(columns={"hadm_id": ID})
    df = df.dropna(subset=["icd_code"]).drop_duplicates(subset=[ID, "icd_code"])
    grouped = df.groupby([SUBJECT, ID, "icd_version"]).apply(
        lambda group: pd.Series({"icd_code": group["icd_code"].sort_values().tolist()}))
    return grouped.reset_index()


def read_notes(path: Path) -> pd.DataFrame:
    """The whole discharge table, notes without text and repeats of (hadm_id, text) dropped."""
    df = pd.read_csv(path).rename(columns={"hadm_id": ID})
    return df.dropna(subset=[TEXT]).drop_duplicates(subset=[ID, TEXT])


def merge(notes: pd.DataFrame, proc: pd.DataFrame, diag: pd.DataFrame, version: int) -> pd.DataFrame:
    """Each note with the version's procedure and diagnosis lists; notes with neither dropped."""
    p, d = f"icd{version}_proc", f"icd{version}_diag"
    df = notes.merge(proc[proc["icd_version"] == version].rename(columns={"icd_code": p})[[ID, p]], on=ID, how="left")
    df = df.merge(diag[diag["icd_version"] == version].rename(columns={"icd_code": d})[[ID, d]], on=ID, how="left")
    df = df.dropna(subset=[p, d], how="all")
    for col in (p, d):
        df[col] = df[col].apply(lambda x: x if isinstance(x, list) else [])
    return df


def filter_codes(df: pd.DataFrame, columns: list[str], min_count: int) -> pd.DataFrame:
    """Per column, the codes seen in fewer than `min_count` rows dropped from every row."""
    for col in columns:
        counts = Counter(code for codes in df[col] for code in codes)
        keep = {code for code, n in counts.items() if n >= min_count}
        df[col] = df[col].apply(lambda codes: [c for c in codes if c in keep])
    return df


def clean(texts: pd.Series) -> pd.Series:
    """Their TextPreprocessor as set for MIMIC-IV, in pandas' `.str` methods (theirs: vaex's)."""
    texts = texts.str.lower()
    texts = texts.str.replace(r"[^A-Za-z0-9]+", " ", regex=True)
    texts = texts.str.replace(r"(\s\d+)+\s", " ", regex=True)
    texts = texts.str.replace(r"\s+", " ", regex=True)
    return texts.str.strip()


def _table(folder: Path, sub: str, table: str) -> Path:
    for name in (f"{table}.csv.gz", f"{table}.csv"):
        if (folder / sub / name).is_file():
            return folder / sub / name
    raise FileNotFoundError(folder / sub / f"{table}.csv.gz")


def prepare(mimic_dir: str, out_dir: str, dataset: str = "mimic4_icd9", note_dir: str = "",
            min_count: int = MIN_TARGET_COUNT, tidy_codes: bool = False) -> dict:
    """Their preparation of `dataset`, written to `out_dir/<dataset>.feather`.

    Returns the rows and admissions written, the file, and the seconds each phase took."""
    version = VERSIONS[dataset]
    hosp, note = Path(mimic_dir), Path(note_dir or mimic_dir)
    phases, t = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = round(now - t, 3)
        t = now

    proc = read_codes(_table(hosp, "hosp", "procedures_icd"), is_diag=False, tidy_codes=tidy_codes)
    diag = read_codes(_table(hosp, "hosp", "diagnoses_icd"), is_diag=True, tidy_codes=tidy_codes)
    lap("codes: read_csv, dot (apply), group (apply)")
    notes = read_notes(_table(note, "note", "discharge"))
    lap("notes: read_csv, dropna, drop_duplicates")
    df = merge(notes, proc, diag, version)
    del notes, proc, diag
    lap("merge")
    p, d = f"icd{version}_proc", f"icd{version}_diag"
    df = filter_codes(df, [p, d], min_count)
    df[TARGET] = df[p] + df[d]
    df = df[df[TARGET].apply(lambda x: len(x) > 0)].reset_index(drop=True)
    lap("rare codes, empty targets")
    df[TEXT] = clean(df[TEXT])
    df["num_words"] = df[TEXT].str.count(" ") + 1
    df["num_targets"] = df[TARGET].apply(len)
    lap("text cleaning")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dataset}.feather"
    df.to_feather(path)
    lap("write feather")
    return {"rows": len(df), "admissions": int(df[ID].nunique()), "out": str(path), "phases": phases}


def targets(path: str) -> tuple[np.ndarray, pd.Series, list[list[str]]]:
    """hadm_id, cleaned text and target codes of a written result, codes as icdlib writes them
    (a 3-character ICD-10-CM code's trailing dot dropped: `I10.` is `I10`), sorted."""
    df = pd.read_feather(path, columns=[ID, TEXT, TARGET])
    codes = [sorted(c.rstrip(".") for c in cs) for cs in df[TARGET]]
    return df[ID].to_numpy(dtype=np.int64), df[TEXT], codes
