"""Reading the five MIMIC-III v1.4 tables icdlib needs, from `.csv` or `.csv.gz`.

The schema is checked before any work starts, so a wrong folder fails in a second with the
file and the columns it lacks. NOTEEVENTS (~2.08M rows, ~4 GB, quoted multi-line TEXT) is
streamed with pyarrow and filtered batch by batch: only the selected notes are ever held.
ICD9_CODE is always text (`0389` and `389` differ), normalised before dotting (`v824`→`V82.4`).

A half-finished copy is refused in one line (`DataError`) rather than read as fewer notes: a
plain `.csv` must end with a complete record (its last few MB are checked before reading: the
last record's quotes balanced, a line break after it, all its fields there), and a `.csv.gz` is
checked while it streams — the gzip stream must reach its end-of-stream marker, its size and
CRC-32 must match its trailer (ISIZE, CRC32; zlib checks both for every member), and the
decompressed text must end with a complete record too.
"""

from __future__ import annotations

import collections
import gzip
import io
import os
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from icdlib.data.codes import DIAGNOSIS, PROCEDURE, dot
from icdlib.run.errors import DataError, MimicSchemaError

TABLES = {
    "NOTEEVENTS": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME",
                   "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT"],
    "DIAGNOSES_ICD": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
    "PROCEDURES_ICD": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
    "D_ICD_DIAGNOSES": ["ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
    "D_ICD_PROCEDURES": ["ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
}
CODE_TABLES = {DIAGNOSIS: "DIAGNOSES_ICD", PROCEDURE: "PROCEDURES_ICD"}
DICTIONARIES = {DIAGNOSIS: "D_ICD_DIAGNOSES", PROCEDURE: "D_ICD_PROCEDURES"}
NOTE_COLUMNS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "CATEGORY",
                "DESCRIPTION", "ISERROR", "TEXT"]


def table_path(mimic_dir: Path, table: str) -> Path:
    """`<mimic_dir>/<TABLE>.csv.gz` or `.csv`; a clear error when neither exists."""
    mimic_dir = Path(mimic_dir)
    if not mimic_dir.is_dir():
        raise MimicSchemaError(f"mimic_dir {mimic_dir} is not a folder (expected the MIMIC-III v1.4 files)")
    for name in (f"{table}.csv.gz", f"{table}.csv"):
        if (mimic_dir / name).is_file():
            return mimic_dir / name
    raise MimicSchemaError(f"{mimic_dir} lacks {table}.csv.gz (or {table}.csv)")


def read_header(path: Path) -> list[str]:
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            line = f.readline().decode("utf-8")
    except EOFError:  # gzip: "Compressed file ended before the end-of-stream marker was reached"
        raise _truncated_gzip(path) from None
    except (OSError, zlib.error, UnicodeDecodeError) as e:
        raise MimicSchemaError(f"{path.name}: cannot read the header ({e})") from None
    return [c.strip().strip('"').upper() for c in line.rstrip("\r\n").split(",")]


# Input integrity: a truncated copy must not read as a shorter table.
TRUNCATED = "the file looks truncated (an unfinished copy?); copy it again"
TAIL_BYTES = 4 << 20  # the end of a file that is checked: dozens of records even of the longest notes
# where a record starts, to find the last records in a file's tail without reading it whole:
# NOTEEVENTS' TEXT holds newlines, so its records are told by ROW_ID,SUBJECT_ID,HADM_ID,CHARTDATE
RECORD_STARTS = {"NOTEEVENTS": re.compile(rb'\n(?="?\d+"?,"?\d+"?,"?[\d.]*"?,"?\d{4}-\d{2}-\d{2})')}
ROW_START = re.compile(rb'\n(?="?\d+"?,)')  # the other tables: one record a line, ROW_ID first
ANCHORS = 16  # record starts in the tail voting on the quote state at the end


def check_complete(path: Path) -> None:
    """Refuse a plain CSV that does not end with a complete record (reads only its last TAIL_BYTES).

    `.gz` files are checked while they stream (`_Gunzip`), which is where their end is."""
    path = Path(path)
    if path.name.endswith(".gz"):
        return
    size = path.stat().st_size
    start = max(0, size - TAIL_BYTES)
    with open(path, "rb") as f:
        f.seek(start)
        tail = f.read()
    check_end(path, tail, from_start=start == 0)


def check_end(path: Path, tail: bytes, from_start: bool, columns: int | None = None) -> None:
    """Refuse, in one line, a table whose (decompressed) text ends mid-record.

    `tail` is the end of the text, its whole text when `from_start`. Where the tail starts
    mid-file, the quote state is taken from record starts found in it (the last ANCHORS vote: a
    note line that merely looks like a record start is outvoted)."""
    path = Path(path)
    if from_start:
        header_end = tail.find(b"\n")
        if header_end < 0:
            raise DataError(f"{path} ends inside its header line: {TRUNCATED}")
        starts = [header_end]
    else:
        pattern = RECORD_STARTS.get(path.name.split(".")[0].upper(), ROW_START)
        starts = [m.start() for m in pattern.finditer(tail)][-ANCHORS:]
    if not starts:  # no record start in the tail (not a MIMIC table?): only the final line break
        if tail and not tail.endswith(b"\n"):
            raise DataError(f"{path} ends in the middle of a record (no line break after it): {TRUNCATED}")
        return
    data = np.frombuffer(tail, np.uint8)
    quotes = np.flatnonzero(data == ord('"'))
    after = len(quotes) - np.searchsorted(quotes, starts)  # quotes from each record start to the end
    odd = int(np.sum(after % 2))
    if odd * 2 > len(starts) or (odd * 2 == len(starts) and after[-1] % 2):
        raise DataError(f"{path} ends inside a quoted field: {TRUNCATED}")
    anchor = starts[int(np.flatnonzero(after % 2 == 0)[-1])]
    body = data[anchor + 1:]
    if not len(body):
        return
    if body[-1] != ord("\n"):
        raise DataError(f"{path} ends in the middle of a record (no line break after it): {TRUNCATED}")
    content = np.flatnonzero((body != ord("\n")) & (body != ord("\r")))
    if not len(content):  # blank lines only
        return
    outside = (np.cumsum(body == ord('"')) % 2) == 0  # after each byte: outside quotes
    breaks = np.flatnonzero((body == ord("\n")) & outside)
    before = breaks[breaks < content[-1]]  # the last record: after the last line break before its text
    first, end = (int(before[-1]) + 1 if len(before) else 0), int(content[-1]) + 1
    fields = int(np.sum((body[first:end] == ord(",")) & outside[first:end])) + 1
    expected = columns if columns is not None else len(read_header(path))
    if fields != expected:
        raise DataError(f"{path}: its last record has {fields} of {expected} fields: {TRUNCATED}")


def _truncated_gzip(path: Path) -> DataError:
    return DataError(f"{path} ends before the end of its gzip stream: {TRUNCATED}")


def _read_error(path: Path, e: Exception) -> Exception:
    """The one-line error for a failed read: what is wrong with a damaged .gz, else the reader's message."""
    text = str(e)
    if path.name.endswith(".gz"):
        if isinstance(e, EOFError) or "Truncated compressed stream" in text or "end-of-stream marker" in text:
            return _truncated_gzip(path)
        if "incorrect length check" in text:
            return DataError(f"{path}: its uncompressed size does not match the size in its gzip trailer (ISIZE): "
                             f"{TRUNCATED}")
        if "incorrect data check" in text:
            return DataError(f"{path}: its data does not match the CRC-32 in its gzip trailer: the file is "
                             f"damaged; copy it again")
    return MimicSchemaError(f"{path.name}: {e}")


class _Gunzip(io.RawIOBase):
    """A .gz file's decompressed bytes as a stream (pyarrow's zlib, which checks each member's
    CRC-32 and ISIZE), keeping the last TAIL_BYTES it handed out for `check_end`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._src = pa.input_stream(str(path), compression="gzip")
        self._kept: collections.deque = collections.deque()
        self._n_kept = 0
        self.total = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> pa.Buffer:
        buf = self._src.read_buffer(None if n is None or n < 0 else n)
        if buf.size:
            self.total += buf.size
            self._kept.append(buf)
            self._n_kept += buf.size
            while self._n_kept - self._kept[0].size >= TAIL_BYTES:
                self._n_kept -= self._kept.popleft().size
        return buf

    def check_end(self, columns: int) -> None:
        tail = b"".join(b.to_pybytes() for b in self._kept)
        check_end(self.path, tail, from_start=self.total == len(tail), columns=columns)

    def close(self) -> None:
        self._src.close()
        super().close()


def _source(path: Path):
    """What pyarrow reads: the path of a plain CSV (checked to end with a complete record), or a
    `_Gunzip` stream of a .gz (checked by `_Gunzip.check_end` once read)."""
    if path.name.endswith(".gz"):
        return _Gunzip(path)
    check_complete(path)
    return path


def check_schema(mimic_dir: Path) -> dict[str, Path]:
    """Paths of the five tables, after checking each exists, has MIMIC-III's columns and, for a plain
    CSV, ends with a complete record (`check_complete`)."""
    paths = {}
    for table, columns in TABLES.items():
        path = table_path(mimic_dir, table)
        header = read_header(path)
        missing = [c for c in columns if c not in header]
        if missing:
            raise MimicSchemaError(
                f"{path.name} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(has: {', '.join(header)}; expected: {', '.join(columns)})"
            )
        check_complete(path)  # a cut plain CSV fails here, in a second; a .gz as it streams
        paths[table] = path
    return paths


def _read_csv(path: Path, dtypes: dict) -> pd.DataFrame:
    """A small MIMIC table with the given columns as given arrow types (others skipped)."""
    names = read_header(path)
    convert = pacsv.ConvertOptions(
        include_columns=[n for n in names if n in dtypes],
        column_types={c: t for c, t in dtypes.items()},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    source = _source(path)
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=convert,
        )
        if isinstance(source, _Gunzip):
            source.check_end(len(names))
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as e:
        raise _read_error(path, e) from None
    finally:
        if isinstance(source, _Gunzip):
            source.close()
    return table.to_pandas()


def read_codes(paths: dict[str, Path]) -> tuple[pd.DataFrame, dict]:
    """Coded admissions as rows (hadm_id, subject_id, code, kind), dotted, before de-duplication.

    Returns the rows and counts of what was dropped (empty ICD9_CODE, missing HADM_ID).
    """
    frames, stats = [], {}
    for kind, table in CODE_TABLES.items():
        df = _read_csv(paths[table], {"SUBJECT_ID": pa.int64(), "HADM_ID": pa.int64(), "ICD9_CODE": pa.string()})
        code = df["ICD9_CODE"].fillna("").astype(str).str.strip()
        empty = code.eq("")
        no_hadm = df["HADM_ID"].isna()
        stats[f"{table} rows"] = len(df)
        stats[f"{table} rows with empty ICD9_CODE (dropped)"] = int(empty.sum())
        stats[f"{table} rows without HADM_ID (dropped)"] = int((no_hadm & ~empty).sum())
        keep = ~empty & ~no_hadm
        frames.append(pd.DataFrame({
            "hadm_id": df.loc[keep, "HADM_ID"].astype("int64").to_numpy(),
            "subject_id": df.loc[keep, "SUBJECT_ID"].astype("int64").to_numpy(),
            "code": _dotted(code[keep], kind),
            "kind": kind,
        }))
    return pd.concat(frames, ignore_index=True), stats


def _dotted(codes: pd.Series, kind: str) -> np.ndarray:
    """`dot` once per distinct code: MIMIC-III has ~7,000 distinct codes among ~650,000 rows."""
    index, uniques = pd.factorize(codes)
    return np.array([dot(c, kind) for c in uniques], dtype=object)[index]


def read_dictionary(paths: dict[str, Path]) -> pd.DataFrame:
    """Every dictionary code, dotted: columns code, kind, short_title, long_title."""
    frames = []
    for kind, table in DICTIONARIES.items():
        df = _read_csv(paths[table], {"ICD9_CODE": pa.string(), "SHORT_TITLE": pa.string(), "LONG_TITLE": pa.string()})
        df = df.dropna(subset=["ICD9_CODE"])
        frames.append(pd.DataFrame({
            "code": [dot(c, kind) for c in df["ICD9_CODE"]],
            "kind": kind,
            "short_title": df["SHORT_TITLE"].fillna("").to_numpy(),
            "long_title": df["LONG_TITLE"].fillna("").to_numpy(),
        }))
    return pd.concat(frames, ignore_index=True).drop_duplicates("code").reset_index(drop=True)


NOTE_TYPES = {"ROW_ID": pa.int64(), "SUBJECT_ID": pa.int64(), "HADM_ID": pa.int64(), "CHARTDATE": pa.string(),
              "CHARTTIME": pa.string(), "CATEGORY": pa.string(), "DESCRIPTION": pa.string(), "ISERROR": pa.string(),
              "TEXT": pa.binary()}
# a NOTEEVENTS record starts a line with ROW_ID,SUBJECT_ID,HADM_ID,CHARTDATE
RECORD_START = re.compile(rb"\n(?=\d+,\d+,[\d.]*,\"?\d{4}-\d{2}-\d{2})")
MIN_PART_BYTES = 256 << 20


def read_notes(path: Path, categories: list[str], block_size: int = 4 << 20, progress: bool = True,
               parts: int | None = None) -> tuple[pa.Table, dict]:
    """The notes of the given categories, streamed: an arrow table of NOTE_COLUMNS in lower case.

    pyarrow parses the CSV and filters it on its own threads; only the selected notes are kept,
    with `text` as large_string (no Python object per note). Finding where records end is serial
    in pyarrow when values hold newlines, so a plain CSV is cut into `parts` byte ranges at record
    starts (default: one per core, at least 256 MB each) read side by side. Should a cut land
    inside a note, its range cannot parse as 11 typed columns and the file is read again in one
    piece. Each reader parses about a dozen blocks ahead, so the block size bounds memory: 4 MB
    keeps that under ~0.2 GB per reader. TEXT is read as bytes and checked as UTF-8; a note with
    invalid UTF-8 is repaired with U+FFFD and counted rather than failing the whole file.
    """
    from tqdm import tqdm  # not tqdm.auto, which warns in a notebook without ipywidgets

    names = read_header(path)
    check_complete(path)  # plain CSV: its end, before reading it (a .gz: as it streams)
    size = path.stat().st_size
    if parts is None:
        parts = max(1, min(os.cpu_count() or 1, size // MIN_PART_BYTES))
    ranges = _record_ranges(path, parts) if not path.name.endswith(".gz") and parts > 1 else [None]
    with tqdm(total=size, unit="B", unit_scale=True, desc=path.name,
              disable=None if progress else True) as bar:  # None: no bar off a terminal (a notebook, a log)
        try:
            try:
                results = _read_ranges(path, names, categories, ranges, block_size, bar)
            except pa.ArrowInvalid:
                if ranges == [None]:
                    raise
                bar.reset()
                results = _read_ranges(path, names, categories, [None], block_size, bar)
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as e:
            raise _read_error(path, e) from None
    schema = pa.schema([pa.field(c.lower(), pa.large_string() if c == "TEXT" else NOTE_TYPES[c]) for c in NOTE_COLUMNS])
    table = pa.Table.from_batches([b for _, batches, _ in results for b in batches], schema)
    pa.default_memory_pool().release_unused()  # the parsers' blocks
    return table, {"NOTEEVENTS rows": sum(r[0] for r in results),
                   "notes with invalid UTF-8 (bytes replaced)": sum(r[2] for r in results)}


def _record_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """Byte ranges of records (header excluded), cut at record starts near equal fractions."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        cuts = [len(f.readline())]
        for k in range(1, parts):
            f.seek(size * k // parts)
            found = RECORD_START.search(f.read(1 << 20))
            if found:
                cuts.append(size * k // parts + found.start() + 1)
    cuts = sorted(set(cuts)) + [size]
    return list(zip(cuts[:-1], cuts[1:]))


class _ByteRange(io.RawIOBase):
    """A file's bytes [start, end) as a read-only stream.

    Reads land in arrow buffers rather than Python bytes: the C allocator keeps freed
    multi-megabyte blocks of the reader threads (~0.5 GB at full MIMIC-III size), arrow's pool
    gives them back.
    """

    def __init__(self, path: Path, start: int, end: int):
        self._file = open(path, "rb")
        self._file.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> pa.Buffer:
        buf = pa.allocate_buffer(self._left if n < 0 else min(n, self._left), resizable=True)
        got = self._file.readinto(memoryview(buf)) or 0
        buf.resize(got)
        self._left -= got
        return buf

    def close(self) -> None:
        self._file.close()
        super().close()


def _read_ranges(path, names, categories, ranges, block_size, bar) -> list[tuple[int, list, int]]:
    """(rows, kept batches, repaired notes) for each byte range (None: the whole file), side by side."""
    import pyarrow.dataset as ds

    lock = threading.Lock()

    def read(span):
        if span is None:
            source, skip = (_Gunzip(path) if path.name.endswith(".gz") else path), 1
        else:
            source, skip = _ByteRange(path, *span), 0
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=block_size),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=NOTE_COLUMNS, column_types=NOTE_TYPES,
                                                 strings_can_be_null=True),
        )
        n_rows, n_bad, kept = 0, 0, []

        def blocks():
            nonlocal n_rows
            for batch in reader:
                n_rows += batch.num_rows
                with lock:
                    bar.update(min(block_size, bar.total - bar.n))
                yield batch

        selected = ds.Scanner.from_batches(blocks(), schema=reader.schema, columns=NOTE_COLUMNS,
                                           filter=pc.field("CATEGORY").isin(categories))
        for batch in selected.to_batches():
            text, bad = _text(batch.column("TEXT"))
            n_bad += bad
            kept.append(pa.RecordBatch.from_arrays([text if c == "TEXT" else batch.column(c) for c in NOTE_COLUMNS],
                                                   names=[c.lower() for c in NOTE_COLUMNS]))
        if isinstance(source, _Gunzip):
            source.check_end(len(names))
            source.close()
        return n_rows, kept, n_bad

    if len(ranges) == 1:
        return [read(ranges[0])]
    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        return list(pool.map(read, ranges))


def _text(raw: pa.Array) -> tuple[pa.Array, int]:
    """TEXT bytes as large_string (missing TEXT becomes ""), and how many notes needed repair."""
    try:
        text = raw.cast(pa.large_string())
        return (pc.fill_null(text, "") if text.null_count else text), 0
    except pa.ArrowInvalid:
        pass
    out, bad = [], 0
    for b in raw.to_pylist():
        if b is None:
            out.append("")
            continue
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(b.decode("utf-8", errors="replace"))
            bad += 1
    return pa.array(out, pa.large_string()), bad


def iserror(values: pa.ChunkedArray) -> np.ndarray:
    """ISERROR is 1 for notes flagged wrong by a caregiver; empty otherwise."""
    flagged = pc.is_in(pc.utf8_trim_whitespace(values), value_set=pa.array(["1", "1.0"]))
    return pc.fill_null(flagged, False).to_numpy(zero_copy_only=False)
