"""Reading MIMIC-IV v2.2 + MIMIC-IV-Note v2.2 (as PhysioNet ships them) into admissions, as Edin et al. did.

Layout: `mimic_dir/hosp/` holds diagnoses_icd, procedures_icd, d_icd_diagnoses and d_icd_procedures;
`note_dir/note/` (note_dir defaults to mimic_dir) holds discharge; each `.csv.gz` or `.csv`, lower-case
columns. Codes are text (`icd_code`) with `icd_version` 9 or 10: one dataset per version
(`mimic4_icd9`, `mimic4_icd10`). The integrity checks are icdlib.data.mimic's (a cut `.csv`, a
truncated or damaged `.csv.gz` are refused in one line); discharge is streamed with pyarrow, only
the columns needed and the notes of the wanted admissions kept.

Edin et al.'s preparation (JoakimEdin/medical-coding-reproducibility, `prepare_data/prepare_mimiciv.py`
and `prepare_data/utils.py`, read at commits 98d18ab and 1087eac), and where this module follows it:

- Codes: `icd_code` read as str; dots by version and table (`reformat_icd`): ICD-9 as MIMIC-III
  (`reformat_icd9` = icdlib.data.codes.dot), ICD-10 diagnoses (CM) after the 3rd character, ICD-10
  procedures (PCS) left undotted (`reformat_icd10`). Then, per table, `dropna(icd_code)` and
  `drop_duplicates([hadm_id, icd_code])` over the *dotted* code and *both versions* (the first row
  in file order wins, and its version decides which dataset keeps the code), then grouping by
  (subject_id, hadm_id, icd_version) — an admission coded in both versions is in both datasets
  (7 admissions of Edin's published splits are). Followed exactly.
- Notes: all of `note/discharge.csv.gz` (no note_type filter), `dropna(text)`, then
  `drop_duplicates([hadm_id, text])`. Notes left-merged with each version's codes; notes with no
  code of that version dropped (`dropna(how="all")` on the two code columns). Followed.
- Rare codes: `filter_codes` counts each code over the dataset's admissions (every split, before
  any split file) and keeps those seen >= 10 times (MIN_TARGET_COUNT), then admissions with no
  code left are dropped. Here that is step 01's `preprocess.rare_codes`, the rule of every Edin
  preset, applied only for `edin_mimic4_icd9` / `edin_mimic4_icd10` (Edin applies it to both
  MIMIC-IV datasets unconditionally). The rare codes leave the label space and stay in the
  admission's code list (counted as outside the label space), so the targets are Edin's.
- Text: Edin lower-cases, replaces `[^A-Za-z0-9]+` by a space, drops digit-only tokens
  (`(\\s\\d+)+\\s`), squeezes whitespace and strips. `prepare` returns the text untouched (`___`
  de-identification marks kept); `clean_edin` is that cleaning, for step 01 to apply.

Where this module differs, or could not check:

- Edin keeps one row per distinct (hadm_id, text) and never joins notes. Edin's published MIMIC-IV
  split files hold each `_id` once (checked: 209,326 and 122,279 unique ids), so on v2.2 an
  admission has one distinct discharge note and the join here is a no-op; should one have several,
  they are joined in note_seq (then charttime, note_id) order by a blank line, not repeated as rows.
- ICD-10-CM codes of 3 characters: Edin's `reformat_icd10` writes `I10.` (a trailing dot); here
  `I10`, as ICD-10-CM writes it. One-to-one, so counts and the label space are the same.
- Edin's `pd.read_csv` reads empty text and pandas' NA strings (`NA`, `NULL`, ...) as missing; here
  only a missing or empty text is. Edin does not strip or upper-case codes; here they are (a no-op
  on clean data). Edin crashes on an icd_version other than 9/10; here a `DataError`, and so are
  code tables without a row of the dataset's version (`_check_version_found`: the other dataset named).
- The published dataset sizes (Edin: 209,326 / 122,279 admissions) were not reproduced: no MIMIC-IV
  copy was at hand. Edin runs its text cleaning in vaex; `clean_edin_all` computes what the same
  regexes give (checked against Python's `re` on random texts) over the texts' UTF-8 bytes in
  numpy, after arrow's lower-casing, whose mapping of a few non-ASCII letters may differ from
  Python's (those letters are removed anyway).
- Memory: the texts stay in arrow buffers from the CSV reader to the result (never one Python
  string per note), are copied once into hadm_id order, and are cleaned a few MB at a time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from icdlib.data import mimic
from icdlib.data.admissions import group_codes, join_texts, run_starts
from icdlib.data.codes import DIAGNOSIS, PROCEDURE, dot, normalise
from icdlib.run.errors import ConfigError, DataError, MimicSchemaError
from icdlib.data.icd10 import DATASET_VERSIONS

DATASETS = {name: v for name, v in DATASET_VERSIONS.items() if name.startswith("mimic4_")}  # name: ICD version
TABLES = {  # name: (folder, columns)
    "diagnoses_icd": ("hosp", ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]),
    "procedures_icd": ("hosp", ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"]),
    "d_icd_diagnoses": ("hosp", ["icd_code", "icd_version", "long_title"]),
    "d_icd_procedures": ("hosp", ["icd_code", "icd_version", "long_title"]),
    "discharge": ("note", ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime",
                           "text"]),
}
CODE_TABLES = {DIAGNOSIS: "diagnoses_icd", PROCEDURE: "procedures_icd"}
DICTIONARIES = {DIAGNOSIS: "d_icd_diagnoses", PROCEDURE: "d_icd_procedures"}
NOTE_TYPES = {"NOTE_ID": pa.string(), "SUBJECT_ID": pa.int64(), "HADM_ID": pa.int64(), "NOTE_TYPE": pa.string(),
              "NOTE_SEQ": pa.int64(), "CHARTTIME": pa.string(), "TEXT": pa.binary()}
# a discharge record starts a line with note_id (`10000032-DS-21`), subject_id: a note line never does
NOTE_START = re.compile(rb'\n(?="?\d+-[A-Z]{2}-\d+"?,"?\d+"?,)')


def dot10(code: str, kind: str) -> str:
    """ICD-10 as Edin et al. wrote it: CM after the 3rd character (`I509`→`I50.9`, `e119`→`E11.9`,
    `I10`→`I10`), PCS undotted (`0dtj4zz`→`0DTJ4ZZ`); normalised first (`codes.normalise`)."""
    code = normalise(code)
    if kind == DIAGNOSIS:
        return f"{code[:3]}.{code[3:]}" if len(code) > 3 else code
    if kind == PROCEDURE:
        return code
    raise ValueError(f"kind must be {DIAGNOSIS!r} or {PROCEDURE!r}, got {kind!r}")


def dot_version(code: str, kind: str, version: int) -> str:
    """`codes.dot` for ICD-9, `dot10` for ICD-10."""
    return dot(code, kind) if version == 9 else dot10(code, kind)


def _version(dataset: str) -> int:
    if dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    return DATASETS[dataset]


def table_path(folder: Path, table: str) -> Path:
    """`<folder>/<table>.csv.gz` or `.csv`; one line naming what is missing otherwise."""
    for name in (f"{table}.csv.gz", f"{table}.csv"):
        if (folder / name).is_file():
            return folder / name
    raise MimicSchemaError(f"{folder} lacks {table}.csv.gz (or {table}.csv)")


def check_schema(mimic_dir: Path, note_dir: Path | None = None) -> dict[str, Path]:
    """Paths of the five tables (keys: TABLES), after checking each exists, has MIMIC-IV's columns
    and, for a plain CSV, ends with a complete record. Fails at the first problem, in one line."""
    roots = {"hosp": Path(mimic_dir).expanduser(), "note": Path(note_dir if note_dir else mimic_dir).expanduser()}
    for what, root in (("mimic_dir", roots["hosp"]), ("note_dir", roots["note"])):
        if not root.is_dir():
            raise MimicSchemaError(f"{what} {root} is not a folder (expected MIMIC-IV v2.2's hosp/ and "
                                   f"MIMIC-IV-Note v2.2's note/)")
    for sub, root in roots.items():
        if not (root / sub).is_dir():
            raise MimicSchemaError(f"{root} has no {sub}/ folder (expected "
                                   f"{'MIMIC-IV v2.2' if sub == 'hosp' else 'MIMIC-IV-Note v2.2'}'s {sub}/)")
    paths = {}
    for table, (sub, columns) in TABLES.items():
        path = table_path(roots[sub] / sub, table)
        header = [c.lower() for c in mimic.read_header(path)]
        missing = [c for c in columns if c not in header]
        if missing:
            raise MimicSchemaError(
                f"{sub}/{path.name} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(has: {', '.join(header)}; expected: {', '.join(columns)})")
        if table == "discharge":
            _check_discharge_complete(path)
        else:
            mimic.check_complete(path)
        paths[table] = path
    return paths


def _check_discharge_end(path: Path, tail: bytes, from_start: bool, columns: int) -> None:
    """`mimic.check_end` for discharge, anchored at its last record start (found by note_id).

    mimic's generic record start (digits then a comma) does not match a note_id, and a note line
    such as `2, then ...` would; so the check starts at the last NOTE_START instead."""
    if from_start:
        return mimic.check_end(path, tail, True, columns)
    starts = [m.start() for m in NOTE_START.finditer(tail)]
    if not starts:  # no record start in the tail (a note longer than TAIL_BYTES): the final line break only
        if tail and not tail.endswith(b"\n"):
            raise DataError(f"{path} ends in the middle of a record (no line break after it): {mimic.TRUNCATED}")
        return
    mimic.check_end(path, tail[starts[-1]:], True, columns)  # its "header" is the empty line before the record


def _check_discharge_complete(path: Path) -> None:
    """A plain discharge.csv must end with a complete record (its last TAIL_BYTES read); a .gz is
    checked as it streams."""
    if path.name.endswith(".gz"):
        return
    size = path.stat().st_size
    start = max(0, size - mimic.TAIL_BYTES)
    with open(path, "rb") as f:
        f.seek(start)
        tail = f.read()
    _check_discharge_end(path, tail, start == 0, len(mimic.read_header(path)))


class _DischargeGunzip(mimic._Gunzip):
    """mimic's checked gzip stream, its end checked as discharge's."""

    def check_end(self, columns: int) -> None:
        tail = b"".join(b.to_pybytes() for b in self._kept)
        _check_discharge_end(self.path, tail, self.total == len(tail), columns)


def _isin_sorted(values: pa.Array, sorted_set: np.ndarray) -> np.ndarray:
    """values (int64, nulls allowed: never in) in `sorted_set` (sorted unique int64), by binary search:
    unlike `pc.is_in`, no hash table of the whole set is built for each batch."""
    v = pc.fill_null(values, 0).to_numpy()
    if not len(sorted_set):
        return np.zeros(len(v), bool)
    at = np.minimum(np.searchsorted(sorted_set, v), len(sorted_set) - 1)
    return (sorted_set[at] == v) & pc.is_valid(values).to_numpy(zero_copy_only=False)


def _count(mask) -> int:
    """True values of a boolean arrow array (0 for an empty one)."""
    return pc.sum(mask).as_py() or 0


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _versions(path: Path, values: pd.Series) -> np.ndarray:
    """icd_version as int 9/10, or a one-line DataError naming the file and the values found."""
    bad = ~values.isin([9, 10])
    if bad.any():
        found = sorted({str(v) for v in values[bad].tolist()})
        raise DataError(f"{_label(path)}: icd_version must be 9 or 10, found {', '.join(found[:5])} "
                        f"in {int(bad.sum())} rows")
    return values.to_numpy(dtype=np.int64)


def _dotted(raw: pd.Series, version: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Each raw code dotted by its row's version, computed once per distinct code and version:
    (the dotted codes, distinct; each row's position among them)."""
    index, uniques = pd.factorize(raw)
    both = [dot(c, kind) for c in uniques] + [dot10(c, kind) for c in uniques]
    ids, names = pd.factorize(np.array(both, dtype=object))
    return np.asarray(names, dtype=object), np.where(version == 9, ids[index], ids[len(uniques) + index])


def _first_of_each(key: np.ndarray) -> np.ndarray:
    """For each row, the position of the first row with its key."""
    group, _ = pd.factorize(key)
    first = np.empty(group.max() + 1 if len(group) else 0, np.int64)
    first[group[::-1]] = np.arange(len(group) - 1, -1, -1)  # the last write, the earliest row, wins
    return first[group]


def _check_version_found(paths: dict[str, Path], version: int, found: dict[str, dict[int, int]]) -> None:
    """A one-line DataError when neither code table has a row of `version` (`found`: table ->
    {icd_version: rows with a code and hadm_id}).

    Why: MIMIC-IV data of the other ICD version (an extract, or the wrong dataset chosen) would
    otherwise give an empty dataset, and step 01 would blame its later filters (note_categories,
    split). The message names the files, counts their rows by icd_version and names the dataset
    that reads them."""
    if any(counts[version] for counts in found.values()):
        return
    other = 19 - version
    dx, px = (paths[table] for table in CODE_TABLES.values())
    dx_rows, px_rows = (_rows_of(found[table][other], other) for table in CODE_TABLES.values())
    what = (f"for these ICD-{other} codes use dataset={_dataset(other)}" if any(c[other] for c in found.values())
            else "check that mimic_dir holds MIMIC-IV v2.2's hosp/ tables")
    raise DataError(f"{dx} has no ICD-{version} codes ({dx_rows}), nor has {px.name} ({px_rows}): "
                    f"dataset={_dataset(version)} reads icd_version {version} rows only; {what}")


def _rows_of(n: int, version: int) -> str:
    """`12,345 rows, all icd_version 9`, or `no rows`."""
    return f"{n:,} rows, all icd_version {version}" if n else "no rows"


def _dataset(version: int) -> str:
    """The dataset of an ICD version (DATASETS inverted)."""
    return next(name for name, v in DATASETS.items() if v == version)


def read_codes(paths: dict[str, Path], version: int) -> tuple[pd.DataFrame, dict]:
    """The ICD-`version` code rows (hadm_id, subject_id, code, kind), dotted and de-duplicated as Edin.

    Per table, rows with an empty icd_code or no hadm_id are dropped, then repeats of a dotted code
    within an admission, whatever their version, the first row in file order kept: a later row of
    `version` repeating an earlier row of the other version is dropped (counted apart). Returns the
    rows and the counts of each drop.
    """
    if version not in (9, 10):
        raise ConfigError(f"version must be 9 or 10; got {version!r}")
    other = 19 - version
    frames, stats, found = [], {}, {}
    for kind, table in CODE_TABLES.items():
        path = paths[table]
        df = mimic._read_csv(path, {"SUBJECT_ID": pa.int64(), "HADM_ID": pa.int64(), "ICD_CODE": pa.string(),
                                    "ICD_VERSION": pa.int64()})
        raw = df["ICD_CODE"].fillna("").astype(str)
        index, uniques = pd.factorize(raw)  # normalised once per distinct code
        empty = np.array([normalise(c) == "" for c in uniques], dtype=bool)[index] if len(raw) else np.zeros(0, bool)
        no_hadm = df["HADM_ID"].isna().to_numpy() & ~empty
        stats[f"{table} rows"] = len(df)
        stats[f"{table} rows with empty icd_code (dropped)"] = int(empty.sum())
        stats[f"{table} rows without hadm_id (dropped)"] = int(no_hadm.sum())
        keep = ~empty & ~no_hadm
        rows = pd.DataFrame({"hadm_id": df.loc[keep, "HADM_ID"].astype("int64").to_numpy(),
                             "subject_id": df.loc[keep, "SUBJECT_ID"].to_numpy(),
                             "version": _versions(path, df.loc[keep, "ICD_VERSION"])})
        names, code_id = _dotted(raw[keep], rows["version"].to_numpy(), kind)
        rows["code"] = names[code_id]
        first = _first_of_each(rows["hadm_id"].to_numpy() * max(len(names), 1) + code_id)  # (hadm_id, code) as one int
        first_version = rows["version"].to_numpy()[first]
        repeat = first != np.arange(len(rows))
        mine = rows["version"].to_numpy() == version
        cross = mine & (first_version != version)
        found[table] = {version: int(mine.sum()), other: int((~mine).sum())}
        stats[f"{table} rows of ICD-{other} (the other dataset)"] = found[table][other]
        stats[f"{table} ICD-{version} codes repeated within an admission (dropped)"] = int(
            (repeat & mine & ~cross).sum())
        stats[f"{table} ICD-{version} codes an earlier ICD-{other} row of the admission has (dropped, as Edin)"] = int(
            cross.sum())
        rows = rows[mine & ~repeat]
        frames.append(pd.DataFrame({"hadm_id": rows["hadm_id"].to_numpy(),
                                    "subject_id": rows["subject_id"].astype("int64").to_numpy(),
                                    "code": rows["code"].to_numpy(dtype=object), "kind": kind}))
    _check_version_found(paths, version, found)
    out = pd.concat(frames, ignore_index=True)
    stats[f"ICD-{version} code rows kept"] = len(out)
    return out, stats


def read_dictionary(paths: dict[str, Path], version: int) -> pd.DataFrame:
    """The ICD-`version` dictionary codes, dotted: columns code, kind, short_title, long_title.

    MIMIC-IV has only long_title; short_title is the same text, untruncated (a cut title can read
    as another code's, and report.label_stats shortens titles for display itself).
    """
    frames = []
    for kind, table in DICTIONARIES.items():
        path = paths[table]
        df = mimic._read_csv(path, {"ICD_CODE": pa.string(), "ICD_VERSION": pa.int64(), "LONG_TITLE": pa.string()})
        df = df[df["ICD_CODE"].fillna("").map(normalise).ne("")]
        df = df[_versions(path, df["ICD_VERSION"]) == version]
        title = df["LONG_TITLE"].fillna("").to_numpy(dtype=object)
        frames.append(pd.DataFrame({"code": [dot_version(c, kind, version) for c in df["ICD_CODE"]], "kind": kind,
                                    "short_title": title, "long_title": title}))
    return pd.concat(frames, ignore_index=True).drop_duplicates("code").reset_index(drop=True)


def read_notes(paths: dict[str, Path], hadm_ids=None, progress: bool = False,
               block_size: int = 4 << 20, layout: bool = False) -> tuple[pd.DataFrame, dict]:
    """One row per admission of `note/discharge`: hadm_id, subject_id, text; and the counts dropped
    (with `layout`, a third item: `_admission_notes`' layout of the notes in the texts).

    Streamed batch by batch; only the notes of `hadm_ids` (all when None) are kept. Notes without
    hadm_id or with an empty text are dropped, and a note repeating another of its admission word
    for word (Edin's drop_duplicates). Several notes of one admission are joined by a blank line in
    note_seq, charttime, note_id order. Texts are as written (`___` marks kept); invalid UTF-8 is
    repaired with U+FFFD and counted, as icdlib.data.mimic does.
    """
    from tqdm import tqdm  # not tqdm.auto, which warns in a notebook without ipywidgets

    path = paths["discharge"]
    names = mimic.read_header(path)
    _check_discharge_complete(path)
    wanted = None if hadm_ids is None else np.unique(np.asarray(hadm_ids, dtype=np.int64))
    stats = {"discharge notes": 0, "discharge notes without hadm_id (dropped)": 0}
    if wanted is not None:
        stats["discharge notes of other admissions (dropped)"] = 0
    stats.update({"discharge notes with empty text (dropped)": 0, "notes with invalid UTF-8 (bytes replaced)": 0,
                  "discharge notes of note_type other than DS (kept, as Edin)": 0})
    source = _DischargeGunzip(path) if path.name.endswith(".gz") else path
    keys, texts = [], []  # per batch: the kept notes' small columns, and their texts (arrow, never copied to Python)
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_size),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=list(NOTE_TYPES), column_types=NOTE_TYPES,
                                                 strings_can_be_null=True),
        )
        with tqdm(unit=" notes", desc=path.name, disable=None if progress else True) as bar:
            for batch in reader:
                bar.update(batch.num_rows)
                stats["discharge notes"] += batch.num_rows
                hadm = batch.column("HADM_ID")
                keep = pc.is_valid(hadm)
                stats["discharge notes without hadm_id (dropped)"] += batch.num_rows - _count(keep)
                if wanted is not None:
                    mine = pc.and_(keep, pa.array(_isin_sorted(hadm, wanted)))
                    stats["discharge notes of other admissions (dropped)"] += (_count(keep)
                                                                                - _count(mine))
                    keep = mine
                text = batch.column("TEXT")
                filled = pc.and_(keep, pc.fill_null(pc.greater(pc.binary_length(text), 0), False))
                stats["discharge notes with empty text (dropped)"] += _count(keep) - _count(filled)
                kept = batch if _count(filled) == batch.num_rows else batch.filter(filled)
                del batch, hadm, text  # the batch's unkept notes go now
                if not kept.num_rows:
                    continue
                decoded, bad = mimic._text(kept.column("TEXT"))
                stats["notes with invalid UTF-8 (bytes replaced)"] += bad
                other = pc.fill_null(pc.not_equal(kept.column("NOTE_TYPE"), "DS"), True)
                stats["discharge notes of note_type other than DS (kept, as Edin)"] += _count(other)
                keys.append(kept.select(["HADM_ID", "SUBJECT_ID", "NOTE_SEQ", "CHARTTIME", "NOTE_ID"]))
                texts.append(decoded)
                del kept, decoded
        if isinstance(source, _DischargeGunzip):
            source.check_end(len(names))
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise mimic._read_error(path, e) from None
    finally:
        if isinstance(source, _DischargeGunzip):
            source.close()
    return _admission_notes(keys, texts, stats, layout)


def _admission_notes(keys: list[pa.RecordBatch], texts: list[pa.Array], stats: dict,
                     layout: bool = False) -> tuple[pd.DataFrame, dict]:
    """`read_notes`' rows from the kept notes: sorted by hadm_id, note_seq, charttime, note_id (missing
    first, ties in file order); a note repeating an earlier one of its admission word for word
    dropped; an admission's distinct notes joined by a blank line.

    Only the small columns are sorted; each text is copied once, from the batches' buffers straight
    into the result's, the batches released as they are copied (`admissions.join_texts`), so the
    notes are never held twice, nor as Python strings. Only the (few) admissions with several notes
    have their texts compared and joined in Python. `texts` is emptied.

    With `layout`, a third item says where each note starts in its admission's text (hadm_id,
    note_id, start, length; characters), for step 01's evidence spans: a note repeating another
    word for word starts where its twin does. The note ids stay in arrow (no Python string a note)."""
    table = pa.Table.from_batches(keys) if keys else None
    del keys
    n = table.num_rows if table is not None else 0
    by = [(c, "ascending", "at_start") for c in ("HADM_ID", "NOTE_SEQ", "CHARTTIME", "NOTE_ID")]  # missing first
    order = pc.sort_indices(table, sort_keys=by).to_numpy() if n else np.zeros(0, np.int64)
    hadm = table.column("HADM_ID").to_numpy()[order] if n else np.zeros(0, np.int64)
    if n and table.column("SUBJECT_ID").null_count:
        raise DataError(f"note/discharge: {table.column('SUBJECT_ID').null_count} notes without subject_id")
    subject = table.column("SUBJECT_ID").to_numpy()[order] if n else np.zeros(0, np.int64)
    note_ids = table.column("NOTE_ID").take(pa.array(order)) if layout and n else pa.array([], pa.string())
    del table
    starts = run_starts(hadm)
    sizes = np.diff(np.r_[starts, len(hadm)]).astype(np.int64)
    rows = order[starts].astype(np.int64)  # each admission's text: its first note, or its joined notes
    repeated, several = 0, 0
    multi = np.flatnonzero(sizes > 1)
    note_start = np.zeros(n, np.int64)  # each note's start in its admission's text, in sorted order
    length = np.zeros(n, np.int64)  # each note's characters
    if layout and n:
        length = np.concatenate([pc.fill_null(pc.utf8_length(t), 0).to_numpy(zero_copy_only=False)
                                 for t in texts])[order]
    if len(multi):
        bounds = np.cumsum([0] + [len(t) for t in texts])

        def text_of(row: int) -> str:
            c = int(np.searchsorted(bounds, row, side="right") - 1)
            return texts[c][row - int(bounds[c])].as_py()

        joined = []
        for a in multi.tolist():
            own = [text_of(int(r)) for r in order[starts[a]:starts[a] + sizes[a]]]
            distinct = list(dict.fromkeys(own))
            if layout:
                at = dict(zip(distinct, np.r_[0, np.cumsum([len(t) + 2 for t in distinct])].tolist()))
                note_start[starts[a]:starts[a] + sizes[a]] = [at[t] for t in own]
            repeated += int(sizes[a]) - len(distinct)
            several += len(distinct) > 1
            joined.append("\n\n".join(distinct))
        rows[multi] = n + np.arange(len(multi))  # the joined texts: one more chunk after the notes
        texts.append(pa.array(joined, pa.large_string()))
    stats["discharge notes repeating another of the admission word for word (dropped, as Edin)"] = repeated
    stats["admissions with several distinct discharge notes (joined in note_seq order)"] = several
    m = len(starts)
    text = (join_texts(texts, rows, np.arange(m, dtype=np.int64), np.ones(m, np.int64)) if m
            else pd.Series([], dtype=str))
    texts.clear()
    out = pd.DataFrame({"hadm_id": hadm[starts].astype(np.int64), "subject_id": subject[starts].astype(np.int64),
                        "text": text.array})
    stats["admissions with a discharge note"] = len(out)
    if layout:
        ids = note_ids.to_pandas(types_mapper=pd.ArrowDtype)
        where = pd.DataFrame({"hadm_id": hadm.astype(np.int64), "note_id": ids, "start": note_start, "length": length})
        return out, stats, where
    return out, stats


def prepare(mimic_dir: Path, note_dir: Path | None = None, dataset: str = "mimic4_icd9",
            progress: bool = False, layout: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Edin et al.'s MIMIC-IV `dataset` before its rare-code filter (`preprocess.rare_codes`).

    Returns the admissions (hadm_id, subject_id, text, codes: sorted unique dotted codes), sorted
    by hadm_id; every admission with a discharge note and at least one code of the dataset's
    version; the dictionary of that version (`read_dictionary`), plus the codes seen in the data
    that it lacks, with their kind and empty titles (so it gives every code's kind); and the
    counts of each step, in order. The text is raw: `clean_edin` is Edin's cleaning. With `layout`,
    a fourth item: where each note starts in its admission's text (`read_notes`).
    """
    version = _version(dataset)
    paths = check_schema(mimic_dir, note_dir)
    rows, stats = read_codes(paths, version)
    coded = group_codes(rows)
    stats[f"admissions with ICD-{version} codes"] = len(coded)
    notes, note_stats, *where = read_notes(paths, hadm_ids=coded["hadm_id"].to_numpy(), progress=progress,
                                           layout=layout)
    stats.update({f"discharge notes of admissions without ICD-{version} codes (dropped)"
                  if k == "discharge notes of other admissions (dropped)" else k: v for k, v in note_stats.items()})
    stats[f"admissions with ICD-{version} codes but no discharge note (dropped)"] = int(
        (~coded["hadm_id"].isin(notes["hadm_id"])).sum())
    # every note's admission is coded (read_notes kept only those): its codes by position, so the texts are not copied
    at = pd.Index(coded["hadm_id"]).get_indexer(notes["hadm_id"])
    if (at < 0).any():
        notes, at = notes[at >= 0].reset_index(drop=True), at[at >= 0]
    notes["codes"] = coded["codes"].to_numpy()[at]
    stats["admissions"] = len(notes)
    dictionary = read_dictionary(paths, version)
    seen = rows.drop_duplicates("code")
    absent = seen[~seen["code"].isin(dictionary["code"]) & seen["code"].isin(set(notes["codes"].explode()))]
    stats["distinct codes absent from the dictionaries (kept, no title)"] = len(absent)
    untitled = pd.DataFrame({"code": absent["code"].to_numpy(), "kind": absent["kind"].to_numpy(),
                             "short_title": "", "long_title": ""})
    dictionary = pd.concat([dictionary, untitled], ignore_index=True)
    return (notes.reset_index(drop=True), dictionary, stats, *where)


def clean_edin(text: str) -> str:
    """Edin et al.'s TextPreprocessor as set for MIMIC-IV, for one text: `clean_edin_all`."""
    return clean_edin_all([text])[0]


def clean_edin_all(texts, piece_bytes: int = 8 << 20, threads: int | None = None):
    """Edin et al.'s TextPreprocessor as set for MIMIC-IV: lower case, every run of characters other
    than ASCII letters and digits a space (`___` marks and accented letters go), digit-only tokens
    between spaces dropped, whitespace squeezed and stripped (`_clean_piece`: the same result as
    their regexes, in numpy over the texts' bytes, which cleans a full MIMIC-IV dataset in seconds
    rather than the minutes of Python's `re` or arrow's RE2).

    `texts`: a list of str (a list is returned), a pandas Series (a str Series on the same index,
    arrow-backed: no Python string is made) or an arrow string array (a large_string ChunkedArray).
    Cleaned `piece_bytes` of text at a time, so the intermediate arrays stay that small (and reused
    by the allocator), on `threads` threads (default: the CPU count, at most 4; numpy releases the
    GIL)."""
    if isinstance(texts, list):
        out = []
        for piece in _pieces(texts, piece_bytes):
            out.extend(_clean_piece(pa.array(piece, pa.large_string())).to_pylist())
        return out
    if isinstance(texts, pd.Series):
        arr = texts.array.__arrow_array__() if hasattr(texts.array, "__arrow_array__") else \
            pa.array(texts.to_numpy(dtype=object), pa.large_string())
        cleaned = clean_edin_all(arr, piece_bytes, threads)
        return pd.Series(pa.table({"text": cleaned}).to_pandas()["text"].array, index=texts.index, name=texts.name)
    pieces = []
    for chunk in texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]:
        chunk = chunk.cast(pa.large_string())
        if not len(chunk):
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        cuts = np.unique(np.r_[0, np.searchsorted(offsets, np.arange(offsets[0], offsets[-1], piece_bytes)[1:]),
                               len(chunk)])
        pieces += [chunk.slice(a, b - a) for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist())]
    threads = min(os.cpu_count() or 1, 4) if threads is None else threads
    if threads > 1 and len(pieces) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            cleaned = list(pool.map(_clean_piece, pieces))
    else:
        cleaned = [_clean_piece(p) for p in pieces]
    return pa.chunked_array(cleaned, pa.large_string())


def _pieces(texts: list[str], piece_bytes: int):
    """Consecutive slices of `texts` of about `piece_bytes` characters (at least one text each)."""
    start = 0
    while start < len(texts):
        stop, size = start, 0
        while stop < len(texts) and (size < piece_bytes or stop == start):
            size += len(texts[stop])
            stop += 1
        yield texts[start:stop]
        start = stop


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions of the ranges [starts[i], ends[i]), concatenated."""
    lengths = ends - starts
    return np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(lengths.sum()))


def _clean_piece(arr: pa.Array) -> pa.Array:
    """`clean_edin_all` of one arrow string array, on its UTF-8 bytes in numpy (no regex).

    After arrow's `utf8_lower`, a token is a run of bytes in [a-z0-9] within one text; every
    other byte (a multi-byte character's included) separates tokens, as `[^a-z0-9]+` does. Edin's
    `(\\s\\d+)+\\s` then drops the digit-only tokens with a separator on both sides (not a text's
    first token unless the text starts with a separator, nor its last unless it ends with one), and
    the squeezing and stripping leave the other tokens joined by one space: what is built here,
    with byte masks and one compaction, faster than RE2's substitutions (which match at every
    separator)."""
    if arr.null_count:  # a missing text stays missing
        return pc.if_else(pc.is_valid(arr), _clean_piece(pc.fill_null(arr, "")), pa.scalar(None, pa.large_string()))
    arr = pc.utf8_lower(arr.cast(pa.large_string()))
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    off = offsets - offsets[0]
    data = arr.buffers()[2]
    b = (np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None and off[-1]
         else np.zeros(0, np.uint8))
    alnum = (b - np.uint8(97) < 26) | (b - np.uint8(48) < 10)
    step = np.diff(alnum.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(step[:-1] == 1)
    ends = np.flatnonzero(step[1:] == -1) + 1
    inner = off[1:-1]
    split = inner[(inner > 0) & (inner < len(b))]
    split = np.unique(split[alnum[split] & alnum[split - 1]])  # texts meeting inside a run: two tokens
    if len(split):
        starts = np.insert(starts, np.searchsorted(starts, split), split)
        ends = np.insert(ends, np.searchsorted(ends, split), split)
    edge = np.zeros(len(b) + 1, bool)  # a text starts here (or the last one ends)
    edge[off] = True
    digit_first = np.flatnonzero(b[starts] - np.uint8(48) < 10)  # the only tokens that can be digits only
    if len(digit_first):
        first, last = starts[digit_first], ends[digit_first]
        lengths = last - first
        letters = np.logical_or.reduceat(b[_ranges(first, last)] - np.uint8(97) < 26, np.r_[0, np.cumsum(lengths)[:-1]])
        dropped = digit_first[~letters & ~edge[first] & ~edge[last]]  # digits only, a separator on each side
    else:
        dropped = digit_first
    emit = alnum  # the bytes written: those of the kept tokens, and one separator before each but a text's first
    if len(dropped):
        emit[_ranges(starts[dropped], ends[dropped])] = False
        kept = np.ones(len(starts), bool)
        kept[dropped] = False
        starts, ends = starts[kept], ends[kept]
    first = np.searchsorted(starts, off)  # text i's kept tokens: starts[first[i]:first[i + 1]]
    count = np.diff(first)
    later = np.ones(len(starts), bool)
    later[first[:-1][count > 0]] = False
    emit[starts[later] - 1] = True
    out = b[emit]
    lengths = ends - starts
    out[(np.cumsum(lengths + later) - lengths)[later] - 1] = ord(" ")
    total = np.r_[0, np.cumsum(lengths)]
    per_text = total[first[1:]] - total[first[:-1]] + np.maximum(count - 1, 0)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.r_[0, np.cumsum(per_text)].astype(np.int64)),
                                            pa.py_buffer(out))
