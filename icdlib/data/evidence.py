"""Evidence spans: where a code's support is written in a note, carried into the run's text.

Two sources give spans as character offsets into ONE note's raw text (the *raw table*: hadm_id
int64, note_id str, code str, begin int64, end int64 as a Python slice [begin:end), kind str in
KINDS):

- the synthetic twins record their own (`read_twin`): `EVIDENCE.csv.gz` beside the MIMIC-III
  twin's NOTEEVENTS (HADM_ID, ROW_ID, CODE, BEGIN, END, KIND), `note/evidence.csv.gz` in the
  MIMIC-IV twin (hadm_id, note_id, code, begin, end, kind). "negated" and "family" spans are
  mentions of a code the admission does not have: text that is *not* evidence.
- MDACE (Cheng et al., ACL 2023; `read_mdace`): coders' evidence for 302 MIMIC-III inpatient
  charts, one JSON per admission, `note_id` = NOTEEVENTS ROW_ID.

Step 01 joins an admission's notes by a blank line and may clean the text (`text_cleaning`): the
spans follow (`place`: note offsets → offsets in the joined text; `carry`: joined raw text →
cleaned text, checked per text against the cleaner's own output) and land in
`01_preprocess/evidence.parquet` (COLUMNS, offsets into notes.parquet's `text`). A span the
cleaning erases (digits-only tokens, punctuation) and a span in a note or admission the run did
not select are dropped and counted.

MDACE's offsets, read against its authors' and Edin et al.'s code: `end` is exclusive. 3mcloud/
MDACE `inject-note-text.py` (`inject_note_text`) sets `covered_text = text[begin:end]` (its README's
example annotation: begin 0, end 3, I10). Edin et al.'s reader (JoakimEdin/explainable-medical-coding
at 2c58d41, `explainable_medical_coding/data/prepare_mdace.py:138-152`, `trim_annotations`) keeps
the offsets and trims one punctuation or whitespace character at each end; its token mapping
(`explainable_medical_coding/utils/tokenizer.py:237-240`, `spans_to_token_ids`) ends a span with
the token holding character `end - 1`, i.e. reads `end` as exclusive too. (Its `end -= 1` when `text[end]`, the character *after* the span, is punctuation,
turns the exclusive end into an inclusive one that `make_mdace_icd9_inpatient_evidence_only.py:139`
then reads as `text[begin:end + 1]`.) Here MDACE spans are trimmed of the characters of TRIM at both
ends (`trim`, applied when they are carried), as both codebases do, and stay [begin, end).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from icdlib.run.errors import DataError

KINDS = ("evidence", "negated", "family")
RAW_COLUMNS = ["hadm_id", "note_id", "code", "begin", "end", "kind"]
COLUMNS = ["hadm_id", "code", "begin", "end", "kind"]  # evidence.parquet
TRIM = frozenset(string.punctuation + "\n\t ")  # Edin et al.'s trim_annotations set
TWIN_FILES = {"mimic3": ("EVIDENCE.csv.gz", ["HADM_ID", "ROW_ID", "CODE", "BEGIN", "END", "KIND"]),
              "mimic4": ("note/evidence.csv.gz", ["hadm_id", "note_id", "code", "begin", "end", "kind"])}
MDACE_SYSTEMS = {9: ("ICD-9-CM", "ICD-9-PCS"), 10: ("ICD-10-CM", "ICD-10-PCS")}
MDACE_SPLITS = ("train", "val", "test")


def empty() -> pd.DataFrame:
    """A raw table without rows, with its dtypes."""
    return _typed(pd.DataFrame({c: [] for c in RAW_COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"hadm_id": df["hadm_id"].astype("int64"), "note_id": df["note_id"].astype(str),
                        "code": df["code"].astype(str).str.strip(), "begin": df["begin"].astype("int64"),
                        "end": df["end"].astype("int64"), "kind": df["kind"].astype(str)})
    return out.reset_index(drop=True)


# ---------------------------------------------------------------- reading the sources

def twin_file(source_dir: Path) -> Path | None:
    """The twin's evidence file in `source_dir` (a MIMIC-III or a MIMIC-IV twin), or None."""
    for name, _ in TWIN_FILES.values():
        for path in (Path(source_dir) / name, Path(source_dir) / name.removesuffix(".gz")):
            if path.is_file():
                return path
    return None


def read_twin(source_dir: Path) -> pd.DataFrame:
    """The raw table the synthetic twin in `source_dir` wrote (MIMIC-III's EVIDENCE.csv.gz or
    MIMIC-IV's note/evidence.csv.gz; `.csv` also read). One-line DataError when it is missing, lacks
    a column, or holds a span that is not 0 <= begin < end or a kind outside KINDS."""
    path = twin_file(source_dir)
    if path is None:
        raise DataError(f"{source_dir} has no twin evidence file (expected "
                        f"{' or '.join(name for name, _ in TWIN_FILES.values())})")
    columns = TWIN_FILES["mimic4" if path.parent.name == "note" else "mimic3"][1]
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                        f"(has: {', '.join(df.columns)}; expected: {', '.join(columns)})")
    df = df[columns].set_axis(RAW_COLUMNS, axis=1)
    for c in ("hadm_id", "begin", "end"):
        bad = ~df[c].str.fullmatch(r"\s*-?\d+\s*")
        if bad.any():
            raise DataError(f"{path}: {columns[RAW_COLUMNS.index(c)]} must be an integer, got "
                            f"{df.loc[bad, c].iloc[0]!r} in row {int(np.flatnonzero(bad)[0]) + 1}")
    return check(_typed(df), str(path))


def check(raw: pd.DataFrame, where: str) -> pd.DataFrame:
    """`raw` if every span is 0 <= begin < end, of a kind in KINDS and has a code; else one line."""
    begin, end = raw["begin"].to_numpy(), raw["end"].to_numpy()
    bad = np.flatnonzero((begin < 0) | (end <= begin))
    if len(bad):
        r = raw.iloc[bad[0]]
        raise DataError(f"{where}: span {r['begin']}-{r['end']} of note {r['note_id']} (hadm_id {r['hadm_id']}) "
                        f"is not 0 <= begin < end ({len(bad)} such spans)")
    kinds = ~raw["kind"].isin(KINDS)
    if kinds.any():
        raise DataError(f"{where}: kind must be one of {', '.join(KINDS)}; got {raw.loc[kinds, 'kind'].iloc[0]!r}")
    if (raw["code"] == "").any():
        raise DataError(f"{where}: {int((raw['code'] == '').sum())} spans without a code")
    return raw


def _mdace_folder(evidence_dir: Path, icd_version: int) -> Path:
    """`evidence_dir`/Inpatient/ICD-<v>/<version>/ (the highest version present)."""
    root = Path(evidence_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"evidence_dir {root} is not a folder (expected MDACE's, holding "
                        f"Inpatient/ICD-{icd_version}/1.0/<hadm_id>-ICD-{icd_version}.json and splits/)")
    base = root / "Inpatient" / f"ICD-{icd_version}"
    versions = sorted((p for p in base.glob("*") if p.is_dir() and any(p.glob("*.json"))),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")])
    if not versions:
        raise DataError(f"{root} has no MDACE annotation files Inpatient/ICD-{icd_version}/<version>/*.json "
                        f"(expected MDACE's layout, e.g. Inpatient/ICD-{icd_version}/1.0/"
                        f"100197-ICD-{icd_version}.json)")
    return versions[-1]


def _field(obj, key: str, kind: type | tuple, path: Path, where: str):
    """obj[key], checked to be of `kind`; one-line DataError naming the file and place otherwise."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path.name}: {where or 'the top level'} lacks {key!r} (expected MDACE's inpatient format: "
                        f"hadm_id, notes[note_id, annotations[begin, end, code, code_system]])")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{path.name}: {where + '.' if where else ''}{key} must be {want}, got {value!r}")
    return value


def read_mdace(evidence_dir: Path, icd_version: int = 9) -> pd.DataFrame:
    """MDACE's inpatient evidence as a raw table (kind "evidence"; offsets into the NOTEEVENTS TEXT
    of ROW_ID note_id; codes dotted as MDACE writes them, which is icdlib's form).

    Annotations of another version's code systems (ICD-10's files hold two ICD-9-CM ones) are left
    out. One-line DataError for a missing folder, invalid JSON or a missing or mistyped key."""
    if icd_version not in MDACE_SYSTEMS:
        raise DataError(f"icd_version must be 9 or 10 for MDACE, got {icd_version!r}")
    folder = _mdace_folder(evidence_dir, icd_version)
    systems = MDACE_SYSTEMS[icd_version]
    rows = {c: [] for c in RAW_COLUMNS}
    for path in sorted(folder.glob("*.json")):
        try:
            chart = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path.name}: not valid JSON (line {e.lineno}: {e.msg}); expected one MDACE "
                            f"admission") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path.name}: cannot be read ({e})") from None
        hadm = _field(chart, "hadm_id", int, path, "")
        for i, note in enumerate(_field(chart, "notes", list, path, "")):
            note_id = _field(note, "note_id", int, path, f"notes[{i}]")
            for j, ann in enumerate(_field(note, "annotations", list, path, f"notes[{i}]")):
                where = f"notes[{i}].annotations[{j}]"
                begin, end = (_field(ann, k, int, path, where) for k in ("begin", "end"))
                code, system = (_field(ann, k, str, path, where) for k in ("code", "code_system"))
                if not 0 <= begin < end:
                    raise DataError(f"{path.name}: {where} spans {begin}-{end}; expected 0 <= begin < end")
                if system not in systems:
                    continue
                for c, v in zip(RAW_COLUMNS, (hadm, str(note_id), code, begin, end, "evidence")):
                    rows[c].append(v)
    return _typed(pd.DataFrame(rows)) if rows["hadm_id"] else empty()


def mdace_splits(evidence_dir: Path) -> dict[str, list[int]]:
    """MDACE's train/val/test admissions (`splits/MDace-ev-<split>.csv`, one HADM_ID a line; in
    3mcloud/MDACE's own repository `splits/Inpatient/`, beside the `data/` folder that holds
    `Inpatient/`, and that folder may be `evidence_dir`). The `-ev-` lists are the evidence task's
    302 charts (the paper's Table 8, middle row), the ones Edin et al. use
    (`make_mdace_icd9_inpatient.py:124-138`); the `-code-ev-` lists span all of MIMIC-III."""
    root = Path(evidence_dir).expanduser()
    out = {}
    for split in MDACE_SPLITS:
        name = f"MDace-ev-{split}.csv"
        places = (root / "splits" / name, root / "splits" / "Inpatient" / name,
                  root.parent / "splits" / "Inpatient" / name)
        path = next((p for p in places if p.is_file()), None)
        if path is None:
            raise DataError(f"{root} has no splits/{name} (expected MDACE's split lists, one HADM_ID a line)")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        bad = [line for line in lines if not line.isdigit()]
        if bad:
            raise DataError(f"{path.name}: expected one HADM_ID a line, got {bad[0]!r}")
        out[split] = [int(line) for line in lines]
    return out


# ---------------------------------------------------------------- what a run reads

def source(cfg, source_dir: Path) -> str:
    """Where step 01 takes its spans from: "mdace" (evidence=mdace), "twin" (evidence=auto on a
    synthetic twin that wrote its evidence file) or "none"."""
    if cfg.evidence == "mdace":
        return "mdace"
    if cfg.evidence == "auto" and cfg.synthetic and twin_file(source_dir) is not None:
        return "twin"
    return "none"


def read(cfg, source_dir: Path) -> tuple[pd.DataFrame | None, str]:
    """The raw table of the run's source (`source`) and its name for the counts; (None, "") for none."""
    which = source(cfg, source_dir)
    if which == "twin":
        return read_twin(source_dir), "the synthetic twin's"
    if which == "mdace":
        return read_mdace(cfg.evidence_dir, 9), "MDACE ICD-9"
    return None, ""


def fingerprint(evidence_dir: Path, icd_version: int = 9) -> dict:
    """What step 01's cache key knows of MDACE's files: how many, their bytes, the newest mtime (not
    each file: 302 of them would crowd the manifest)."""
    files = sorted(Path(evidence_dir).expanduser().glob(f"Inpatient/ICD-{icd_version}/*/*.json"))
    stats = [f.stat() for f in files]
    return {"files": len(files), "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


# ---------------------------------------------------------------- into the run's text

def place(raw: pd.DataFrame, layout: pd.DataFrame, hadm_ids) -> tuple[pd.DataFrame, dict]:
    """Raw spans → spans in the joined (uncleaned) text of the run's admissions.

    `layout`: where each selected note starts in its admission's joined text (hadm_id, note_id,
    start, length; characters), `hadm_ids`: the run's admissions in notes.parquet order. Returns
    (row: the admission's position in `hadm_ids`, hadm_id, code, begin, end, kind) and the counts of
    spans outside the run's admissions and in notes the run did not select. A span reaching past
    its note's end is a one-line DataError: the notes are not those the spans were made on."""
    run = pd.Index(np.asarray(hadm_ids, dtype=np.int64))
    inside = raw[run.get_indexer(raw["hadm_id"]) >= 0]
    notes = layout.assign(note_id=layout["note_id"].astype(str))[["hadm_id", "note_id", "start", "length"]]
    placed = inside.merge(notes, on=["hadm_id", "note_id"], how="inner", sort=False)
    past = placed["end"].to_numpy() > placed["length"].to_numpy()
    if past.any():
        r = placed[past].iloc[0]
        raise DataError(f"evidence span {r['begin']}-{r['end']} of note {r['note_id']} (hadm_id {r['hadm_id']}) "
                        f"reaches past the note's {r['length']} characters ({int(past.sum())} such spans): the notes "
                        f"are not those the spans were made on")
    out = pd.DataFrame({"row": run.get_indexer(placed["hadm_id"]).astype(np.int64), "hadm_id": placed["hadm_id"],
                        "code": placed["code"], "begin": placed["begin"] + placed["start"],
                        "end": placed["end"] + placed["start"], "kind": placed["kind"]})
    counts = {"outside": len(raw) - len(inside), "unselected": len(inside) - len(placed)}
    return out.sort_values(["row", "begin", "end", "code"], kind="stable").reset_index(drop=True), counts


def trim(text: str, begin: int, end: int) -> tuple[int, int]:
    """[begin, end) without the TRIM characters (punctuation, whitespace) at either end."""
    while begin < end and text[begin] in TRIM:
        begin += 1
    while end > begin and text[end - 1] in TRIM:
        end -= 1
    return begin, end


def _lower(texts: list[str], how: str) -> list[str]:
    """Each text lower-cased as cleaner `how` does it: caml with Python's str.lower, edin with
    arrow's utf8_lower (`mimic4.clean_edin_all`), which differ on a few letters ("İ")."""
    if how == "edin":
        return pc.utf8_lower(pa.array(texts, pa.large_string())).to_pylist()
    return [t.lower() for t in texts]


def lowered_index(text: str, how: str = "caml") -> tuple[str, np.ndarray | None]:
    """`text` lower-cased as cleaner `how` does (`_lower`) and where each position of `text` lands in
    it (None: the same positions, the usual case; a few letters lower-case to two characters, e.g.
    "İ" → "i̇" in Python). Each character's length is its own lower-cased length (context changes
    letters, not lengths: Python's final sigma); ValueError when those do not add up."""
    lowered = _lower([text], how)[0]
    if len(lowered) == len(text):  # no character grew, and none shrinks: position for position
        return lowered, None
    distinct = sorted(set(text))
    grown = dict(zip(distinct, (len(p) for p in _lower(distinct, how))))
    index = np.r_[0, np.cumsum([grown[c] for c in text])].astype(np.int64)
    if index[-1] != len(lowered):
        raise ValueError("lower-casing is not character by character")
    return lowered, index


def _codes(text: str) -> np.ndarray:
    """The code points of `text`, one uint32 a character (so positions are Python's)."""
    return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def _classes(codes: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """(characters of a kept token, digits) for cleaner `how`: edin's [a-z0-9] and 0-9; caml's `\\w`
    (str.isalnum() or "_", what Python's re means by it) and str.isdigit(), asked of each distinct
    non-ASCII character once."""
    digit = codes - np.uint32(48) < 10
    word = (codes - np.uint32(97) < 26) | digit
    if how == "caml":
        word |= (codes - np.uint32(65) < 26) | (codes == 95)
        wide = np.unique(codes[codes > 127])
        if len(wide):
            chars = [chr(c) for c in wide.tolist()]
            at = np.searchsorted(wide, codes).clip(0, len(wide) - 1)
            hit = (wide[at] == codes) & (codes > 127)
            word |= hit & np.array([ch.isalnum() for ch in chars])[at]
            digit |= hit & np.array([ch.isdigit() for ch in chars])[at]
    return word, digit


def kept_tokens(text: str, how: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The lower-cased text's code points and the [start, end) of the tokens cleaner `how` keeps in
    it, in order, with the position map of `lowered_index`. caml (`preprocess.clean_caml`): `\\w+`
    tokens, the all-digit ones dropped; edin (`mimic4.clean_edin_all`): runs of [a-z0-9], a
    digits-only one dropped unless it starts or ends the text. In numpy: a note of 10,000
    characters takes about a millisecond."""
    lowered, index = lowered_index(text, how)
    codes = _codes(lowered)
    word, digit = _classes(codes, how)
    edges = np.diff(np.r_[0, word.view(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    others = np.r_[0, np.cumsum(~digit)]
    drop = others[ends] - others[starts] == 0  # digits only
    if how == "edin":
        drop &= (starts > 0) & (ends < len(codes))
    return codes, starts[~drop], ends[~drop], index


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions of [starts[i], ends[i]), concatenated."""
    lengths = ends - starts
    return np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(lengths.sum()))


def joins_to(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray, cleaned: str) -> bool:
    """Whether the tokens [starts, ends) of `codes`, joined by one space, are `cleaned`."""
    lengths = ends - starts
    want = _codes(cleaned)
    if len(want) != int(lengths.sum()) + max(len(starts) - 1, 0):
        return False
    at = np.cumsum(lengths + 1) - lengths - 1  # each token's start in the cleaned text
    same = (want[_ranges(at, at + lengths)] == codes[_ranges(starts, ends)]).all()
    return bool(same and (want[at[1:] - 1] == 32).all())


def cleaned_spans(begin: np.ndarray, end: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """[begin, end) in the lower-cased text → in the cleaned text (kept tokens `starts`/`ends`,
    joined by one space). A span keeps the kept tokens it overlaps, cut where it cuts them; one that
    overlaps none vanishes. Returns (begin, end, kept mask)."""
    at = np.r_[0, np.cumsum(ends - starts + 1)][:-1]  # each kept token's start in the cleaned text
    first = np.searchsorted(ends, begin, side="right")  # the first kept token ending after begin
    last = np.searchsorted(starts, end, side="left") - 1  # the last one starting before end
    kept = first <= last
    i, j = first[kept], last[kept]
    new_begin = at[i] + np.maximum(begin[kept] - starts[i], 0)
    new_end = at[j] + np.minimum(end[kept], ends[j]) - starts[j]
    return new_begin, new_end, kept


def carry(placed: pd.DataFrame, first_row: int, raw: list[str], cleaned: list[str] | None, how: str,
          trimmed: bool = False) -> tuple[pd.DataFrame, int]:
    """The spans of admissions first_row .. first_row + len(raw) - 1 (`place`'s rows) carried from their
    joined raw texts `raw` to the cleaned texts `cleaned` (None: no cleaning, how="none").

    `trimmed`: spans are first cut to their words (`trim`, MDACE's). For a cleaned text, the
    tokens the cleaner keeps are found again with their positions (`kept_tokens`), and their
    join must equal the cleaner's output for that text: otherwise a one-line DataError (which
    cleaning, which admission). Returns the carried spans (COLUMNS) and how many vanished."""
    rows = placed["row"].to_numpy()
    lo, hi = np.searchsorted(rows, [first_row, first_row + len(raw)])
    part = placed.iloc[lo:hi]
    if part.empty:
        return pd.DataFrame({c: part[c] for c in COLUMNS}), 0
    begin, end = part["begin"].to_numpy().copy(), part["end"].to_numpy().copy()
    keep = np.ones(len(part), bool)
    bounds = np.flatnonzero(np.r_[True, np.diff(rows[lo:hi]) != 0, True])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        k = int(rows[lo + a]) - first_row
        text = raw[k]
        if trimmed:
            for s in range(a, b):
                begin[s], end[s] = trim(text, int(begin[s]), int(end[s]))
            keep[a:b] = end[a:b] > begin[a:b]
        if cleaned is None:
            continue
        hadm = int(part["hadm_id"].iloc[a])
        try:
            codes, starts, ends, index = kept_tokens(text, how)
        except ValueError:
            raise DataError(_refusal(how, hadm, "its lower-casing changes lengths in a way not traced")) from None
        if not joins_to(codes, starts, ends, cleaned[k]):
            raise DataError(_refusal(how, hadm, "the cleaner's output could not be traced back to the note's "
                                                "characters"))
        mine = np.flatnonzero(keep[a:b]) + a
        lb, le = (begin[mine], end[mine]) if index is None else (index[begin[mine]], index[end[mine]])
        new_begin, new_end, ok = cleaned_spans(lb, le, starts, ends)
        begin[mine[ok]], end[mine[ok]] = new_begin, new_end
        keep[mine[~ok]] = False
    out = pd.DataFrame({"hadm_id": part["hadm_id"].to_numpy(), "code": part["code"].to_numpy(), "begin": begin,
                        "end": end, "kind": part["kind"].to_numpy()})[keep]
    return out, int((~keep).sum())


def _refusal(how: str, hadm: int, why: str) -> str:
    return (f"text_cleaning={how} cannot carry evidence offsets for admission {hadm}: {why}; use "
            f"text_cleaning=none, or evidence=none to go without evidence spans")


KEPT = "evidence spans kept (evidence.parquet)"


def counts(label: str, how: str, read: int, where: dict, lost: int, repeated: int, kept: int) -> dict:
    """Step 01's counts of the spans, in order; read = the dropped ones + the repeats + the kept ones."""
    return {f"evidence spans read ({label})": read,
            "evidence spans of admissions outside the run (dropped)": where["outside"],
            "evidence spans in notes the run did not select (dropped)": where["unselected"],
            f"evidence spans that text_cleaning={how} leaves empty (dropped)": lost,
            "evidence spans repeating another (counted once)": repeated,
            KEPT: kept}


def finish(parts: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """The carried spans as evidence.parquet holds them (COLUMNS, typed, sorted by hadm_id, begin,
    end, code, kind) with repeats counted once; and how many repeats were dropped."""
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in COLUMNS})
    df = pd.DataFrame({"hadm_id": df["hadm_id"].astype("int64"), "code": df["code"].astype(str),
                       "begin": df["begin"].astype("int64"), "end": df["end"].astype("int64"),
                       "kind": df["kind"].astype(str)})
    unique = df.drop_duplicates(COLUMNS)
    out = unique.sort_values(["hadm_id", "begin", "end", "code", "kind"], kind="stable").reset_index(drop=True)
    return out, len(df) - len(unique)
