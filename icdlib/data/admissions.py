"""An admission's rows gathered from sorted note and code tables, shared by the MIMIC-III and
MIMIC-IV readers (`icdlib.data.mimic4`) and step 01 (`icdlib.data.preprocess`): where runs of equal
keys start, the notes of each admission joined into one text straight from arrow's buffers, where
each note starts in that text, and each admission's codes grouped, sorted and unique."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Positions where a run of equal (sorted) keys begins: 0, then wherever any key changes."""
    if not len(keys[0]):
        return np.zeros(0, np.int64)
    change = np.zeros(len(keys[0]) - 1, bool)
    for key in keys:
        change |= key[1:] != key[:-1]
    return np.flatnonzero(np.r_[True, change])


def admission_rows(rows: np.ndarray, first: np.ndarray, n_notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where each admission's notes start in the output, the notes' rows in output order): admission
    i's notes are rows[first[i] : first[i] + n_notes[i]], admission after admission."""
    note_start = np.r_[0, np.cumsum(n_notes)].astype(np.int64)
    order = np.repeat(first - note_start[:-1], n_notes) + np.arange(note_start[-1])
    return note_start, np.asarray(rows, np.int64)[order]


def chunk_positions(chunks: list[pa.Array], note_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each chunk's first row, the chunk each of `note_rows` falls in) for rows counted across `chunks`."""
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    return bounds, np.searchsorted(bounds, note_rows, side="right") - 1


def note_layout(chunks: list[pa.Array], rows: np.ndarray, note_ids: pa.ChunkedArray,
                kept: pd.DataFrame) -> pd.DataFrame:
    """Where each note of the `kept` admissions (hadm_id, first, n_notes: `preprocess.order_notes`'
    frame) starts in the admission's text as `join_texts` joins it: hadm_id, note_id (str; `note_ids`
    holds every note's id, by row), start and length in characters.

    Reads only the lengths of these notes (arrow's utf8_length of their rows), so it must run before
    `join_texts` releases `chunks`. Meant for the few admissions with evidence spans: their note ids
    become Python strings, no other note's does."""
    n_notes = kept["n_notes"].to_numpy(np.int64)
    note_start, note_rows = admission_rows(rows, kept["first"].to_numpy(np.int64), n_notes)
    bounds, chunk_of = chunk_positions(chunks, note_rows)
    length = np.zeros(len(note_rows), np.int64)
    for c in np.unique(chunk_of).tolist():
        mine = np.flatnonzero(chunk_of == c)
        taken = chunks[c].take(pa.array(note_rows[mine] - bounds[c]))
        length[mine] = pc.fill_null(pc.utf8_length(taken), 0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(length + 2)  # each note and the blank line after it
    start = ends - length - 2 - np.repeat(np.r_[0, ends][note_start[:-1]], n_notes)
    ids = pc.take(note_ids, pa.array(note_rows)).to_pylist() if len(note_rows) else []
    return pd.DataFrame({"hadm_id": np.repeat(kept["hadm_id"].to_numpy(np.int64), n_notes),
                         "note_id": [str(i) for i in ids], "start": start, "length": length})


def join_texts(chunks: list[pa.Array], rows: np.ndarray, first: np.ndarray, n_notes: np.ndarray) -> pd.Series:
    """Admission i's text: its notes rows[first[i] : first[i] + n_notes[i]] joined by a blank line.

    `chunks` are the notes' texts (large_string arrays; row r is in the chunk where it falls).
    The bytes are copied once, straight from the notes' arrow buffers into the joined texts'
    buffer, chunk after chunk; each chunk is dropped from `chunks` once copied, so the caller's
    memory for the notes is released while the joined texts grow (full MIMIC-III: ~0.6 GB).
    No Python string is made per note.
    """
    first, n_notes = np.asarray(first, np.int64), np.asarray(n_notes, np.int64)
    note_start, note_rows = admission_rows(rows, first, n_notes)
    bounds, chunk_of = chunk_positions(chunks, note_rows)
    by_chunk = np.argsort(chunk_of, kind="stable")  # notes grouped by chunk: (chunk, start, stop) in by_chunk
    present, lo = np.unique(chunk_of[by_chunk], return_index=True)
    groups = list(zip(present.tolist(), lo.tolist(), np.r_[lo[1:], len(by_chunk)].astype(np.int64).tolist()))
    begin, end = np.zeros(len(note_rows), np.int64), np.zeros(len(note_rows), np.int64)
    for c, a, b in groups:
        chunk, mine = chunks[c], by_chunk[a:b]
        offsets = np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        local = note_rows[mine] - bounds[c]
        begin[mine], end[mine] = offsets[local], offsets[local + 1]
    length = end - begin
    within = np.arange(len(note_rows)) - np.repeat(note_start[:-1], n_notes)  # 0 for an admission's first note
    # a note lands after all notes before it and the separators before it (one per earlier non-first note)
    dest = np.r_[0, np.cumsum(length)][:-1] + 2 * (np.arange(len(note_rows)) - np.repeat(np.arange(len(n_notes)), n_notes))
    # from the system allocator: pages become resident as they are written (numpy's own large
    # allocations ask for huge pages, which made the whole output resident at the first writes)
    size = int(length.sum()) + 2 * int((within > 0).sum())
    out_buffer = pa.allocate_buffer(size, memory_pool=pa.system_memory_pool())
    out = np.frombuffer(out_buffer, np.uint8) if size else np.zeros(0, np.uint8)
    pool, freed = pa.default_memory_pool(), 0
    dest_at, first_byte, last_byte = dest.tolist(), begin.tolist(), end.tolist()
    for c, a, b in groups:
        buf = chunks[c].buffers()[2]
        data = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
        for k in by_chunk[a:b].tolist():
            d = dest_at[k]
            out[d:d + last_byte[k] - first_byte[k]] = data[first_byte[k]:last_byte[k]]
        freed += chunks[c].nbytes
        data = buf = chunks[c] = None
        if freed >= 64 << 20:  # arrow's allocator keeps freed memory until asked to give it back
            pool.release_unused()
            freed = 0
    chunks[:] = [None] * len(chunks)
    pool.release_unused()
    sep = dest[within > 0] - 2
    out[sep], out[sep + 1] = ord("\n"), ord("\n")
    offsets = np.r_[dest[note_start[:-1]] if len(n_notes) else np.zeros(0, np.int64), len(out)].astype(np.int64)
    joined = pa.LargeStringArray.from_buffers(len(n_notes), pa.py_buffer(offsets), out_buffer)
    return pa.table({"text": joined}).to_pandas()["text"]


def group_codes(code_rows: pd.DataFrame) -> pd.DataFrame:
    """hadm_id → sorted unique codes (MIMIC repeats some codes within an admission). For MIMIC-IV as
    well: Edin et al. sort each table's codes and put procedures first; the order carries no meaning
    for multi-label targets."""
    code_id, codes = pd.factorize(code_rows["code"], sort=True)  # integer ids in code order
    hadm = code_rows["hadm_id"].to_numpy()
    order = np.lexsort((code_id, hadm))
    hadm, code_id = hadm[order], code_id[order]
    distinct = run_starts(hadm, code_id)
    hadm, code_id = hadm[distinct], code_id[distinct]
    starts = run_starts(hadm)
    names = np.asarray(codes, dtype=object)[code_id]
    return pd.DataFrame({"hadm_id": hadm[starts], "codes": [g.tolist() for g in np.split(names, starts[1:])]
                         if len(hadm) else []})
