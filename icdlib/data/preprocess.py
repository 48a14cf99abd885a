"""Step 01: a MIMIC folder → `01_preprocess/notes.parquet`, `labels.parquet`, `stats.json` (and
`evidence.parquet`).

One row per admission: its discharge summary (report first, then addenda by CHARTDATE,
CHARTTIME, ROW_ID), its dotted, unique, sorted codes and its split. `build` is the step, top to
bottom, each stage a function taking and returning data:

    read_tables    the MIMIC-III tables or Edin et al.'s MIMIC-IV admissions (and the evidence spans)
    apply_filters  the benchmark preset's whole-dataset rare-code filter
    assign_splits  the split, admissions without one dropped
    place_evidence the spans placed in the joined texts (before `take_texts` releases the notes)
    take_texts     the kept admissions' texts, joined
    clean_notes    text_cleaning, the spans carried along
    count_splits   admissions per split (none left, or no train admission: one line)
    label_space    the label space and what lies outside it
    leakage        val and test admissions whose patient is in train

Every filter is counted in `stats.json`, in that order, so the 01 report says what was dropped
and why. `run` is the one place of caching and record around it: under the run folder's lock
(`record.step`, which writes `01_preprocess/manifest.json`, the data parameters every later step
is checked against), the step folder is reused as is while its cache key is unchanged: the
preprocessing parameters and the inputs (the synthetic twin's own key; a real MIMIC table's size
and mtime, since hashing 4 GB of NOTEEVENTS on every run would cost more than it saves); else it
is built and written under a temporary name, renamed when complete (`write`).

Step 01 reads a folder and makes nothing else: a run without `mimic_dir` has its synthetic twin
made before the step starts (`icdlib.twin.ensure`, where `source_dir` says), and the backbone's
files are checked before it too (`icdlib.steps.s01_preprocess` does both).

A benchmark preset (`config.BENCHMARKS`) brings its paper's filters here: `caml_full` takes its
labels from train, val and test together; `edin_clean` drops the codes seen in fewer than
`min_count` (10) admissions of the whole dataset (every coded admission with a discharge summary,
before the split file is applied, as Edin et al. did), then the admissions left without codes.
`benchmark_check` sets the counts beside the published ones; `split_notes` says what the split
is (the seed's: no test set, val picks the threshold and the model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from icdlib.data import evidence as spans
from icdlib.data import labels as labelspace
from icdlib.data import mimic, mimic4, splits
from icdlib.data.admissions import group_codes, join_texts, note_layout, run_starts
from icdlib.run import record
from icdlib.data.codes import PROCEDURE, caml_procedure
from icdlib.run.config import Config
from icdlib.run.errors import DataError
from icdlib.run.runfolder import Run, atomic_path, content_key, read_key, write_key

STEP = "01_preprocess"
VERSION = 3  # bump when the output of this step changes for the same inputs
PARAMS = ("dataset", "note_categories", "note_descriptions", "text_cleaning", "split", "split_dir", "labels",
          "top50_file", "min_count", "benchmark", "seed_test_share", "evidence", "evidence_dir")
WHOLE_DATASET_PRESETS = ("edin_clean", "edin_mimic4_icd9", "edin_mimic4_icd10")  # rare codes counted over all splits
SYNTH_PARAMS = ("synth_admissions", "synth_seed", "synth_short")
SEED_SHARE = "share of val admissions whose patient is in train"  # stats.json key, a number in [0, 1]
COLUMNS = ["hadm_id", "subject_id", "split", "text", "codes"]  # notes.parquet, in this order
# the published counts of each preset on its release: train, val, test admissions and labels (None: unpublished)
EXPECTED = {"caml_full": ("CAML full (Mullenbach et al.)", 47723, 1631, 3372, 8922),
            "caml_50": ("CAML top-50 (Mullenbach et al.)", 8066, 1573, 1729, 50),
            "edin_clean": ("MIMIC-III clean (Edin et al.)", 38401, 5577, 8734, 3681),
            # MIMIC-IV v2.2: the admissions of Edin et al.'s split files (files/data/mimiciv_icd{9,10}/
            # mimiciv_icd{9,10}_split.feather, counted by split). Labels: not found in a source at hand: the
            # paper's tables could not be read here, and the repository (README, prepare_data/prepare_mimiciv.py,
            # which only prints them, the split files, which hold `_id` and `split`) records none; see LABELS_V3.
            "edin_mimic4_icd9": ("MIMIC-IV ICD-9 (Edin et al.)", 154542, 21980, 32804, None),
            "edin_mimic4_icd10": ("MIMIC-IV ICD-10 (Edin et al.)", 89099, 13378, 19802, None)}
# What a source does give where EXPECTED has no label count, shown beside it and never compared: Edin et
# al.'s prepare_mimiciv.py run on MIMIC-IV v3.0, a later release than the v2.2 of their paper and split
# files, printed 1,360 procedure + 4,787 diagnosis ICD-9 codes and 2,138 + 5,802 ICD-10 codes after its
# >= 10 filter (JoakimEdin/medical-coding-reproducibility, issue #17, 2024-09-08).
LABELS_V3 = {"edin_mimic4_icd9": 6147, "edin_mimic4_icd10": 7940}
RELEASES = {"mimic3": "MIMIC-III v1.4", "mimic4_icd9": "MIMIC-IV v2.2", "mimic4_icd10": "MIMIC-IV v2.2"}


def data_params(cfg: Config) -> tuple[str, ...]:
    """The parameters step 01's output depends on (its manifest's `params`, which every later step
    is checked against): the source (the MIMIC folders, or the twin's parameters) and PARAMS."""
    folders = ("mimic_dir",) if cfg.dataset == "mimic3" else ("mimic_dir", "note_dir")
    return (*folders, *(SYNTH_PARAMS if cfg.synthetic else ()), *PARAMS)


@dataclass
class Preprocessed:
    notes: pd.DataFrame  # hadm_id, subject_id, split, text, codes
    labels: pd.DataFrame  # code, kind, short_title, long_title, n_train
    stats: dict  # counts at every filter, in order
    evidence: pd.DataFrame | None = None  # evidence spans in the notes' text (evidence.COLUMNS); None: no source


# ---------------------------------------------------------------- the step: cache and record around `build`

def run(cfg: Config, progress: bool = True) -> Preprocessed:
    """Step 01: `build` the run's dataset into `01_preprocess/`, or reuse the folder when its cache key
    matches and its files are as its manifest recorded them (`reusable`). Holds the run folder's
    lock; writes `01_preprocess/manifest.json` (kept as it is on reuse). Reads the MIMIC folder
    `source_dir` only: a synthetic twin is made before (`icdlib.twin.ensure`)."""
    with record.step(cfg, STEP, data_params(cfg)) as step:
        run_, key = Run.of(cfg), cache_key(cfg)
        step.extra["source"] = {"mimic_dir": "" if cfg.synthetic else str(source_dir(cfg)), **sources(cfg)}
        step.extra["cache_key"] = key
        if reusable(run_, key):
            step.reuse()
            return load(cfg.run_dir, cached=True)
        result = build(cfg, progress)
        step.wrote(*write(run_, result, key))
        if result.evidence is not None:
            step.extra["evidence"] = {k: v for k, v in result.stats.items() if k.startswith("evidence spans")}
    result.stats = {"reused from cache": False, **result.stats}
    return result


def source_dir(cfg: Config) -> Path:
    """The MIMIC folder step 01 reads: the user's `mimic_dir`, or the run's synthetic twin of its
    dataset (MIMIC-III's five tables, or MIMIC-IV's hosp/ and note/ folders in one), which
    `icdlib.twin.ensure` makes there before the step."""
    if cfg.mimic_dir:
        return Path(cfg.mimic_dir).expanduser()
    run_ = Run.of(cfg)
    return run_.synthetic_mimic if cfg.dataset == "mimic3" else run_.synthetic_mimic4


def _no_twin(cfg: Config) -> DataError:
    """The one line for a synthetic run whose twin was not made before step 01."""
    return DataError(f"no synthetic twin in {source_dir(cfg)}: step 01 reads a MIMIC folder, so make the twin "
                     "first (icdlib.twin.ensure, which steps.s01_preprocess calls) or set mimic_dir")


def sources(cfg: Config) -> dict:
    """What step 01 reads, as its cache key and manifest name it: the twin by its key (`icdlib.twin.key`,
    written beside it), a real MIMIC table (and split / top-50 files) by name, size and mtime."""
    parts = {}
    if cfg.mimic_dir and cfg.dataset != "mimic3":
        source = Path(cfg.mimic_dir).expanduser()
        paths = mimic4.check_schema(source, cfg.note_dir or None)  # empty: note/ beside hosp/
        parts["files"] = {f"{p.parent.name}/{p.name}": [p.stat().st_size, p.stat().st_mtime_ns] for p in paths.values()}
    elif cfg.mimic_dir:
        paths = mimic.check_schema(Path(cfg.mimic_dir).expanduser())
        parts["files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths.values()}
    else:
        parts["synthetic_mimic"] = read_key(source_dir(cfg))
        if not parts["synthetic_mimic"]:
            raise _no_twin(cfg)
    if cfg.evidence == "mdace" and cfg.evidence_dir:
        parts["evidence"] = spans.fingerprint(cfg.evidence_dir)
    for extra in (cfg.split_dir, cfg.top50_file):
        if extra and Path(extra).exists():
            files = sorted(Path(extra).glob("*")) if Path(extra).is_dir() else [Path(extra)]
            parts.setdefault("extra", {}).update({str(f.name): [f.stat().st_size, f.stat().st_mtime_ns] for f in files})
    return parts


def cache_key(cfg: Config) -> str:
    """The hash of what step 01's output is made from: its code version, parameters and `sources`."""
    return content_key({"version": VERSION, "params": {k: getattr(cfg, k) for k in data_params(cfg)},
                        **sources(cfg)})


def reusable(run: Run, key: str) -> bool:
    """Step 01's folder was built with cache key `key` and is as its manifest recorded it."""
    if read_key(run.step(STEP)) != key:
        return False
    try:
        manifest = record.read_manifest(run, STEP)
    except record.RecordError:
        return False
    return manifest is not None and all(record.artifact_hash(run.dir / rel) == h for rel, h in manifest["outputs"].items())


def write(run: Run, result: Preprocessed, key: str) -> list[Path]:
    """Write step 01's folder whole (under a temporary name, renamed when complete), with its cache
    key; returns the files written, for the manifest."""
    with atomic_path(run.step(STEP)) as tmp:
        tmp.mkdir(parents=True)
        result.notes.to_parquet(tmp / "notes.parquet", index=False)
        result.labels.to_parquet(tmp / "labels.parquet", index=False)
        (tmp / "stats.json").write_text(json.dumps(result.stats, indent=2) + "\n")
        if result.evidence is not None:
            result.evidence.to_parquet(tmp / run.evidence.name, index=False)
        write_key(tmp, key)
    return [run.notes, run.labels, run.stats, *([run.evidence] if result.evidence is not None else [])]


# ---------------------------------------------------------------- the pipeline

def build(cfg: Config, progress: bool = True) -> Preprocessed:
    """Step 01's dataset from the run's MIMIC folder, nothing cached or written; each stage returns
    its counts, which `stats.json` keeps in this order."""
    notes, tables = read_tables(cfg, progress)
    notes, whole, filtered = apply_filters(notes, cfg)
    notes, split = assign_splits(notes, cfg)
    placed, where = place_evidence(notes, tables)
    notes, texts = take_texts(notes, tables)
    notes["text"], found, carried = clean_notes(texts, placed, where, tables, cfg)  # `texts` is emptied
    counted = count_splits(notes, cfg)
    labels, labelled = label_space(notes, tables, whole, cfg)
    stats = {**tables.stats, **filtered, **split, **carried, **counted, **labelled, **leakage(notes)}
    return Preprocessed(notes=notes[COLUMNS], labels=labels, stats=stats, evidence=found)


# ---------------------------------------------------------------- 1. read

@dataclass
class Tables:
    """What `read_tables` gives besides the admissions: how to take their texts, the code
    dictionary, every code's kind, the counts of the reading, and the raw evidence spans."""

    texts: Callable[[pd.DataFrame], pd.Series]  # the kept admissions' texts, in their order (called once)
    dictionary: pd.DataFrame  # code, kind, short_title, long_title
    kinds: dict[str, str]  # every code seen in the data -> diagnosis / procedure
    stats: dict
    # where the notes of some kept admissions start in their texts (`note_layout`'s columns); before `texts`
    layout: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    spans: pd.DataFrame | None = None  # the raw evidence spans (`evidence.read`); None: no source
    span_source: str = ""  # their source's name, for the counts


def read_tables(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, Tables]:
    """The dataset's coded admissions before the split (hadm_id, subject_id, codes, and what
    `Tables.texts` needs) and the rest of what `source_dir` holds (`Tables`): MIMIC-III's tables
    (`read_mimic3`) or Edin et al.'s MIMIC-IV admissions (`read_mimic4`), with the run's evidence
    spans (`evidence.read`: the twin's own, or MDACE's), read first."""
    source = source_dir(cfg)
    if cfg.synthetic and not source.is_dir():
        raise _no_twin(cfg)
    raw_spans, span_source = spans.read(cfg, source)
    reader = read_mimic3 if cfg.dataset == "mimic3" else read_mimic4
    notes, tables = reader(cfg, source, progress, layout=raw_spans is not None)
    tables.spans, tables.span_source = raw_spans, span_source
    return notes, tables


def read_mimic3(cfg: Config, source: Path, progress: bool, layout: bool = False) -> tuple[pd.DataFrame, Tables]:
    """MIMIC-III: discharge summaries (report, then addenda) of admissions with codes. The texts are
    joined only for the admissions that survive the filters (`join_texts`), and where their notes
    start in them told on demand (`note_layout`; the ROW_IDs are kept for it, 8 bytes a note, so
    `layout` changes nothing here)."""
    paths = mimic.check_schema(source)
    code_rows, coded, dictionary, code_stats = read_code_tables(paths)
    raw_notes, note_stats = mimic.read_notes(paths["NOTEEVENTS"], cfg.note_categories, progress=progress)
    stats = {**code_stats, **note_stats}
    joined, note_rows, join_stats = order_notes(raw_notes, cfg.note_descriptions)
    stats.update(join_stats)
    notes = joined.merge(coded, on="hadm_id", how="left")
    no_codes = notes["codes"].isna()
    stats["admissions with notes but no codes (dropped)"] = int(no_codes.sum())
    stats["coded admissions without a selected note (dropped)"] = int((~coded["hadm_id"].isin(joined["hadm_id"])).sum())
    text_chunks, row_ids = raw_notes.column("text").chunks, raw_notes.column("row_id")
    del raw_notes  # join_texts releases the notes' texts chunk by chunk

    def texts(kept: pd.DataFrame) -> pd.Series:
        return join_texts(text_chunks, note_rows, kept.pop("first").to_numpy(), kept.pop("n_notes").to_numpy())

    distinct = code_rows.drop_duplicates("code", keep="last")
    kinds = dict(zip(distinct["code"].tolist(), distinct["kind"].tolist()))
    return notes[~no_codes].reset_index(drop=True), Tables(
        texts, dictionary, kinds, stats, lambda kept: note_layout(text_chunks, note_rows, row_ids, kept))


def read_mimic4(cfg: Config, source: Path, progress: bool, layout: bool = False) -> tuple[pd.DataFrame, Tables]:
    """MIMIC-IV: Edin et al.'s preparation of the dataset's ICD version (`icdlib.data.mimic4.prepare`);
    with `layout`, where each discharge note starts in its admission's text (`mimic4.read_notes`)."""
    notes, dictionary, stats, *where = mimic4.prepare(source, cfg.note_dir or None, cfg.dataset, progress=progress,
                                                      layout=layout)
    kinds = dict(zip(dictionary["code"].tolist(), dictionary["kind"].tolist()))
    notes_of = (lambda kept: where[0][where[0]["hadm_id"].isin(kept["hadm_id"])]) if layout else None
    return notes, Tables(lambda kept: kept.pop("text"), dictionary, kinds, stats, notes_of)


def order_notes(notes: pa.Table, descriptions: list[str]) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Which notes make each admission's text, in order: reports first, then by time and ROW_ID.

    Returns the admissions (hadm_id, subject_id, n_notes, first), `rows` (positions in `notes`,
    admission after admission: admission i's notes are rows[first_i : first_i + n_notes_i]) and
    the counts of dropped notes. Only the small columns are touched; `join_texts` builds the text.
    """
    stats = {"notes of the selected categories": notes.num_rows}
    err = mimic.iserror(notes.column("iserror"))
    stats["notes with ISERROR=1 (dropped)"] = int(err.sum())
    no_hadm = pc.is_null(notes.column("hadm_id")).to_numpy(zero_copy_only=False) & ~err
    stats["notes without HADM_ID (dropped)"] = int(no_hadm.sum())
    described = pc.is_in(notes.column("description"), value_set=pa.array(descriptions, pa.string()))
    wrong = ~pc.fill_null(described, False).to_numpy(zero_copy_only=False) & ~err & ~no_hadm
    stats["notes of other descriptions (dropped)"] = int(wrong.sum())
    kept = np.flatnonzero(~(err | no_hadm | wrong))
    keys = notes.select(["hadm_id", "subject_id", "description", "chartdate", "charttime", "row_id"]).take(kept)
    keys = keys.append_column("is_addendum", pc.not_equal(keys.column("description"), "Report"))
    order = pc.sort_indices(keys, sort_keys=[(k, "ascending", "at_start") for k in
                                             ("hadm_id", "is_addendum", "chartdate", "charttime", "row_id")]).to_numpy()
    hadm = keys.column("hadm_id").to_numpy()[order]
    subject = keys.column("subject_id").to_numpy()[order]
    starts = run_starts(hadm)
    admissions = pd.DataFrame({"hadm_id": hadm[starts].astype("int64"), "subject_id": subject[starts].astype("int64"),
                               "n_notes": np.diff(np.r_[starts, len(hadm)]), "first": starts})
    stats["admissions with a selected note"] = len(admissions)
    return admissions, kept[order], stats


def read_code_tables(paths: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """(code rows, codes grouped per admission, dictionary, counts) from the four small tables."""
    code_rows, stats = mimic.read_codes(paths)
    dictionary = mimic.read_dictionary(paths)
    stats["duplicated codes within an admission (counted once)"] = int(code_rows.duplicated(["hadm_id", "code"]).sum())
    known = set(dictionary["code"].tolist())
    stats["distinct codes absent from the dictionaries (kept, no title)"] = sum(
        c not in known for c in code_rows["code"].unique().tolist())
    return code_rows, group_codes(code_rows), dictionary, stats


# ---------------------------------------------------------------- 2. filter

def apply_filters(notes: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, pd.Series | None, dict]:
    """The preset's filters on the admissions before the split: for Edin et al.'s presets
    (WHOLE_DATASET_PRESETS) their rare-code rule (`rare_codes`). Returns the admissions left, the
    admissions per code over the whole dataset (None for the other presets: `label_space` counts
    train's) and the counts dropped."""
    if cfg.benchmark not in WHOLE_DATASET_PRESETS:
        return notes, None, {}
    return rare_codes(notes, cfg.min_count, cfg.benchmark)


def rare_codes(notes: pd.DataFrame, min_count: int, preset: str) -> tuple[pd.DataFrame, pd.Series, dict]:
    """Edin et al.'s rule: codes seen in fewer than `min_count` admissions of the whole dataset (every
    coded admission, before the split file) leave the label space, then the admissions left without
    a code in it are dropped. Returns those admissions (their code lists as they were), every code's
    whole-dataset count and the counts dropped."""
    whole = labelspace.all_counts(notes)
    keep = set(whole.index[whole >= min_count].tolist())
    left = notes["codes"].map(lambda codes: any(c in keep for c in codes)).to_numpy(dtype=bool)  # bool when empty too
    stats = {f"codes in < {min_count} admissions of the whole dataset (dropped, {preset})": int(
        (whole < min_count).sum()), f"admissions without codes left (dropped, {preset})": int((~left).sum())}
    return notes[left].reset_index(drop=True), whole, stats


# ---------------------------------------------------------------- 3. split

def assign_splits(notes: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, dict]:
    """Each admission's split (`splits.assign`: the run's split rule or files); the admissions
    without one (not in the split files) are dropped. Returns them and the split's counts."""
    notes["split"], stats = splits.assign(notes, cfg.split, cfg.split_dir, cfg.seed_test_share, cfg.seed)
    return notes[notes["split"].notna()].reset_index(drop=True), stats


# ---------------------------------------------------------------- 4. texts, with the evidence spans

def place_evidence(notes: pd.DataFrame, tables: Tables) -> tuple[pd.DataFrame | None, dict]:
    """The raw evidence spans placed in the admissions' joined, uncleaned texts, and the counts of
    those left out (`evidence.place`); (None, {}) without spans. Before `take_texts`: MIMIC-III's
    note layout reads the notes' text chunks, which joining the texts releases."""
    if tables.spans is None:
        return None, {}
    mine = notes["hadm_id"].isin(tables.spans["hadm_id"])
    layout = tables.layout(notes.loc[mine, [c for c in ("hadm_id", "first", "n_notes") if c in notes.columns]])
    return spans.place(tables.spans, layout, notes["hadm_id"])


def take_texts(notes: pd.DataFrame, tables: Tables) -> tuple[pd.DataFrame, list[str]]:
    """The admissions without their texts, and the texts, in their order (`Tables.texts`: MIMIC-III's
    joined now, MIMIC-IV's taken out of `notes`). The admissions are a copy: pandas keeps a popped
    column alive in its block's array, so only the list holds the texts, released as they are cleaned."""
    texts = tables.texts(notes).tolist()
    return notes.copy(), texts


def clean_notes(texts: list[str], placed: pd.DataFrame | None, where: dict, tables: Tables,
                cfg: Config) -> tuple[list[str], pd.DataFrame | None, dict]:
    """The texts cleaned by `text_cleaning` (`clean_texts`; none keeps them as written), batch by
    batch, `texts` emptied as they go; with evidence spans (`placed`), the spans carried along
    (`clean_carrying`). Returns the texts, the spans in them (None without spans) and their counts."""
    if placed is None:
        return (clean_texts(texts, cfg.text_cleaning) if cfg.text_cleaning in CLEANERS else texts), None, {}
    cleaned, parts, lost = clean_carrying(texts, cfg.text_cleaning, placed, trimmed=cfg.evidence == "mdace")
    found, repeated = spans.finish(parts)
    return cleaned, found, spans.counts(tables.span_source, cfg.text_cleaning, len(tables.spans), where, lost,
                                        repeated, len(found))


def clean_caml(text: str) -> str:
    """CAML's cleaning: lower case, `\\w+` tokens, all-digit tokens dropped."""
    return " ".join(t for t in re.findall(r"\w+", text.lower()) if not t.isdigit())


# text_cleaning (none keeps the text as written): a list of texts -> the cleaned list, in step 01 and predict
CLEANERS = {"caml": lambda texts: [clean_caml(t) for t in texts], "edin": mimic4.clean_edin_all}
CLEAN_BATCH = 5_000  # texts cleaned at a time: a cleaner's copies are a batch's, not the dataset's


def clean_batches(texts: list[str], how: str):
    """(first position, raw texts, cleaned texts) of CLEAN_BATCH texts at a time, cleaned by
    CLEANERS[how]; each batch of `texts` is released (set to None) as it is taken, so the texts are
    held about once, not once per copy a cleaner makes (full MIMIC-IV ICD-9: 2.2 GB of text, ~4
    times that when cleaned in one piece)."""
    for start in range(0, len(texts), CLEAN_BATCH):
        stop = min(start + CLEAN_BATCH, len(texts))
        raw = texts[start:stop]
        texts[start:stop] = [None] * (stop - start)
        yield start, raw, CLEANERS[how](raw)


def clean_texts(texts: list[str], how: str) -> list[str]:
    """`texts` cleaned by CLEANERS[how], batch by batch (`clean_batches`)."""
    out: list[str] = []
    for _, _, cleaned in clean_batches(texts, how):
        out += cleaned
    return out


def cleaned_origins(text: str, how: str) -> np.ndarray:
    """Where each character of `text` cleaned by CLEANERS[how] comes from: an int64 array as long as
    the cleaned text, the position in `text` of each character (-1 for the single space the
    cleaning puts between two words), so offsets into the cleaned text map back to the user's text
    (`predict --evidence`). The kept words are step 01's (`evidence.kept_tokens`, which also carries
    step 01's spans), checked against the cleaner's own output; a text they do not rebuild is
    refused in one line (`DataError`)."""
    codes, starts, ends, index = spans.kept_tokens(text, how)
    lowered = codes.tobytes().decode("utf-32-le")
    cleaned = CLEANERS[how]([text])[0]
    if " ".join(lowered[b:e] for b, e in zip(starts.tolist(), ends.tolist())) != cleaned:
        raise DataError(f"text_cleaning={how} cannot carry character offsets for this text "
                        f"(its cleaned words are not found in it): use text_cleaning=none")
    raw = np.arange(len(lowered)) if index is None else np.searchsorted(index, np.arange(len(lowered)), "right") - 1
    out = np.full(len(cleaned), -1, np.int64)
    at = 0
    for b, e in zip(starts.tolist(), ends.tolist()):
        out[at:at + e - b] = raw[b:e]
        at += e - b + 1
    return out


def clean_carrying(texts: list[str], how: str, placed: pd.DataFrame, trimmed: bool) -> tuple[
        list[str], list[pd.DataFrame], int]:
    """`texts` cleaned as `clean_texts` (or kept, how="none") with the evidence spans `placed` in
    them (`evidence.place`) carried along, batch by batch while each batch's raw texts are at hand:
    (the texts, the carried spans batch by batch, how many spans the cleaning erased)."""
    batches = clean_batches(texts, how) if how in CLEANERS else [(0, texts, None)]
    out, parts, lost = [], [], 0
    for start, raw, cleaned in batches:
        carried, erased = spans.carry(placed, start, raw, cleaned, how, trimmed)
        parts.append(carried)
        lost += erased
        out += raw if cleaned is None else cleaned
    return out, parts, lost


# ---------------------------------------------------------------- 5. counts and the label space

def count_splits(notes: pd.DataFrame, cfg: Config) -> dict:
    """Admissions per split; none left, or none in train, is one line (`DataError`)."""
    if notes.empty:
        raise DataError("no admission is left after filtering: check note_categories, note_descriptions and split")
    counts = {f"{s} admissions": int((notes["split"] == s).sum()) for s in splits.SPLITS}
    if counts["train admissions"] == 0:
        raise DataError(f"split {cfg.split!r} leaves no train admission")
    return counts


def label_space(notes: pd.DataFrame, tables: Tables, whole: pd.Series | None,
                cfg: Config) -> tuple[pd.DataFrame, dict]:
    """The label table (`labels.build`: the run's `labels`, `min_count` and top-50 file) and its counts:
    labels, those never seen in train, code assignments outside it per split. The admissions per code
    that `observed` and `min_count` count are train's, or the preset's: every split's for `caml_full`,
    the whole dataset's (`whole`, from `apply_filters`) for Edin et al.'s."""
    counts = None
    if cfg.benchmark == "caml_full":
        counts = labelspace.all_counts(notes)
    elif whole is not None:
        counts = whole.reindex(labelspace.all_counts(notes).index)
    table = labelspace.build(notes, tables.dictionary, tables.kinds, cfg.labels, cfg.min_count, cfg.top50_file, counts)
    in_space = set(table["code"].tolist())
    stats = {"labels": len(table), "labels never seen in train": int((table["n_train"] == 0).sum())}
    for s in splits.SPLITS:
        lists = notes.loc[notes["split"] == s, "codes"].tolist()
        stats[f"{s} code assignments outside the label space"] = sum(c not in in_space for codes in lists for c in codes)
    return table, stats


def leakage(notes: pd.DataFrame) -> dict:
    """Leakage through patients: val and test admissions whose patient has train admissions (0 for a
    patient-level split), and the share of val's (SEED_SHARE)."""
    stats = {f"{s} admissions whose patient is in train": splits.patients_in_train(notes, s) for s in ("val", "test")}
    n_val = int((notes["split"] == "val").sum())
    stats[SEED_SHARE] = round(stats["val admissions whose patient is in train"] / n_val, 4) if n_val else 0.0
    return stats


def load(run_dir: Path, cached: bool = False, columns: list[str] | None = None) -> Preprocessed:
    """Read a finished 01 step from the run folder (no checks: see `read`); `columns`: only these
    columns of notes.parquet (the text is most of its size)."""
    run = Run(run_dir)
    if not run.notes.is_file():
        raise DataError(f"{run.step(STEP)} has no notes.parquet: run 01_preprocess for this run first")
    notes = pd.read_parquet(run.notes, columns=columns)
    notes["codes"] = notes["codes"].map(list)
    stats = json.loads(run.stats.read_text())
    if cached:
        stats = {"reused from cache": True, **stats}
    found = pd.read_parquet(run.evidence) if run.evidence.is_file() else None
    return Preprocessed(notes=notes, labels=pd.read_parquet(run.labels), stats=stats, evidence=found)


def read(cfg: Config) -> Preprocessed:
    """Step 02 (reads only): step 01's output, after checking that it was built with the run's data
    parameters and is intact (`record.check`, one line otherwise)."""
    record.check(cfg, "02_label_stats")
    return load(cfg.run_dir)


def stats_table(stats: dict) -> pd.DataFrame:
    """The step's counts as a two-column table for the report (what, count: integers only). The other
    entries of `stats` are not counts: whether the data was reused from the cache goes into the table's
    caption (`attrs`, which `report.table` shows), the share of val admissions whose patient is in train
    is `split_notes`'s sentence."""
    counts = {k: v for k, v in stats.items() if isinstance(v, (int, np.integer)) and not isinstance(v, bool)}
    table = pd.DataFrame({"what": list(counts), "count": pd.Series(list(counts.values()), dtype="int64")})
    reused = stats.get("reused from cache")
    if reused is not None:
        table.attrs["caption"] = ("Reused from the cache: an earlier preparation with the same data parameters and "
                                  "inputs." if reused else "Built from the source tables (not reused from the cache).")
    return table


EXCERPT_FROM = re.compile(r"chief complaint\s*:", re.IGNORECASE)
HEADER_LINE = re.compile(r"\s*(admission date|discharge date|date of birth|sex|service|name|unit no|allergies|"
                         r"attending)\b", re.IGNORECASE)


def excerpt(text: str, words: int = 40) -> str:
    """The first `words` words of a note's clinical text, whitespace collapsed: from its Chief Complaint
    (MIMIC-III's and MIMIC-IV's discharge summaries have one), else after its header lines. A note
    opens with the same de-identified header (admission and discharge dates, birth date, sex,
    service) whatever the admission, so its first characters tell one note from another by nothing."""
    found = EXCERPT_FROM.search(text)
    if found:
        body = text[found.start():]
    else:
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if line.strip() and not HEADER_LINE.match(line)), len(lines))
        body = "\n".join(lines[start:])
    return " ".join(body.split()[:words])


def sample(notes: pd.DataFrame, share_safe: bool, n: int = 5, words: int = 40) -> pd.DataFrame:
    """A few rows to look at: ids, split and codes; an `excerpt` of the text only when share_safe is off."""
    rows = notes.head(n)[["hadm_id", "subject_id", "split", "codes"]].copy()
    rows["codes"] = rows["codes"].map(lambda c: ", ".join(c))
    if not share_safe:
        rows[f"text (first {words} words from the Chief Complaint)"] = notes.head(n)["text"].map(
            lambda text: excerpt(text, words))
    return rows


def _markdown(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def observed_counts(stats: dict) -> tuple[int, int, int, int]:
    """train, val, test admissions and labels, as `stats` counted them."""
    return tuple(int(stats.get(k, 0)) for k in ("train admissions", "val admissions", "test admissions", "labels"))


def expected_counts(dataset: str) -> dict[str, tuple]:
    """The presets of `dataset` with their published counts (EXPECTED)."""
    from icdlib.run.config import BENCHMARKS

    return {k: v for k, v in EXPECTED.items() if BENCHMARKS[k]["dataset"] == dataset}


def _count(value: int | None) -> str:
    """A count for `benchmark_check`'s table: `1,234`, or a dash where none was published."""
    return "–" if value is None else f"{value:,}"


def caml_folded(labels: pd.DataFrame) -> int:
    """How many codes of the label table `labels` CAML's reading folds into another
    (`codes.caml_procedure`: procedure codes read as integers lose their leading zeros)."""
    made = [caml_procedure(c) if k == PROCEDURE else c for c, k in zip(labels["code"], labels["kind"])]
    return len(made) - len(set(made))


def caml_labels(observed: int, published: int, folded: int) -> str:
    """Why a `caml_full` run's label count differs from CAML's published one, with the run's numbers:
    `folded` of its `observed` codes merge under CAML's integer reading (`caml_folded`)."""
    text = (f"labels {observed:,} against CAML's {published:,}: icdlib keeps ICD9_CODE as text, while CAML's "
            "notebook read PROCEDURES_ICD with pandas' default types, so procedure codes became integers and lost "
            "their leading zeros (01.10 was written 11.0, another procedure's code; 00.66 became 66.), which folds "
            f"{folded:,} of this run's codes into others: {observed - folded:,} labels")
    if observed - folded == published:
        return text + ", as published."
    return text + (". CAML then re-read its code file with pandas, which parsed part of it as floats (66.0 for "
                   "66., 13.9 for 13.90): that moves its count further, by an amount that depends on the file's "
                   "row order and cannot be replayed from the labels.")


def benchmark_check(cfg: Config, result: Preprocessed):
    """Markdown: this run's admissions per split and labels beside the published counts of its
    dataset's presets, and whether the run's own preset matches them (on real data; the twin has no
    published split). A count nobody published is shown as a dash and not compared.

    The admissions are chosen by the preset's split files, so equal split counts say only that none
    is missing; the label count is what checks the filters. Where it is unpublished (MIMIC-IV), the
    verdict says so rather than "matches"; for `caml_full` a label count off CAML's 8,922 is explained
    in the line (`caml_labels`)."""
    seen, n = observed_counts(result.stats), _count
    release, presets = RELEASES[cfg.dataset], expected_counts(cfg.dataset)
    rows = [f"| this run (dataset={cfg.dataset}, benchmark={cfg.benchmark}, split={cfg.split}, labels={cfg.labels}) | "
            + " | ".join(n(v) for v in seen) + " |"]
    for key, (name, *counts) in presets.items():
        rows.append(f"| {name}: expected | " + " | ".join(n(v) for v in counts) + " |")
        if key in LABELS_V3:
            rows.append(f"| {name}: labels Edin et al.'s code gave on MIMIC-IV v3.0 (their issue #17), not expected "
                        f"here | – | – | – | {n(LABELS_V3[key])} |")
    table = "| | train | val | test | labels |\n|---|---:|---:|---:|---:|\n" + "\n".join(rows)
    if cfg.synthetic:
        verdict = (f"The expected counts are {release}'s; they do not apply to the synthetic twin, which "
                   "has no published split.")
    elif cfg.benchmark in presets:
        verdict = _verdict(cfg, result, seen, presets[cfg.benchmark], release)
    elif cfg.benchmark == "seed":
        verdict = (f"This run uses the original project's rule (benchmark=seed), which published no counts; the "
                   f"expected rows are what each preset gives on {release}.")
    else:
        verdict = (f"This run uses no published benchmark (benchmark={cfg.benchmark}); the expected rows are what "
                   f"each preset gives on {release}.")
    return _markdown(table + "\n\n" + verdict)


def _verdict(cfg: Config, result: Preprocessed, seen: tuple, preset: tuple, release: str) -> str:
    """The sentence under `benchmark_check`'s table for a run of a preset with published counts."""
    n, (name, *want) = _count, preset
    off = [f"{what} {n(a)} (expected {n(b)})" for what, a, b in zip(("train", "val", "test"), seen, want) if a != b]
    if off:
        if want[3] is not None and seen[3] != want[3]:
            off.append(f"labels {n(seen[3])} (expected {n(want[3])})")
        return (f"The preparation differs from {name}: " + ", ".join(off) + f". Check that the data is {release}, "
                "and the split files in split_dir" + (" and the top-50 file." if cfg.dataset == "mimic3" else "."))
    if want[3] is not None and seen[3] == want[3]:
        return (f"The preparation matches {name}: every admission of its split files was found, and the "
                f"{n(want[3])} labels are as published.")
    admissions = (f"The admissions per split match {name}: its split files choose them, so this says only that none "
                  "of theirs is missing, not that the filters are the paper's")
    if want[3] is None:
        v3 = LABELS_V3.get(cfg.benchmark)
        return (admissions + f"; the label count would test them, but none was published for {release} in a source "
                f"at hand, so this run's {n(seen[3])} labels are not compared" + (
                    f" (Edin et al.'s code gave {n(v3)} on MIMIC-IV v3.0, a later release: their issue #17)." if v3
                    else "."))
    if cfg.benchmark == "caml_full":
        return admissions + "; " + caml_labels(seen[3], want[3], caml_folded(result.labels))
    return (admissions + f"; the labels differ: {n(seen[3])} (expected {n(want[3])}). Check that the data is "
            f"{release}" + (" and the top-50 file." if cfg.benchmark == "caml_50" else "."))


def evidence_note(cfg: Config, result: Preprocessed):
    """Markdown, one line: how many evidence spans the run carries into `evidence.parquet` and how
    many it dropped (and why), or why it has none."""
    st = result.stats
    read = next((k for k in st if k.startswith("evidence spans read (")), None)
    if read is None:
        why = ("evidence=none" if cfg.evidence == "none" else "the twin wrote no evidence file" if cfg.synthetic
               else "evidence=auto carries the synthetic twin's own spans only")
        return _markdown(f"No evidence spans in this run ({why}). With MIMIC-III, `-p evidence=mdace -p "
                         "evidence_dir=...` carries MDACE's.")
    dropped = [f"{st[k]:,} {k.removeprefix('evidence spans ').removesuffix(' (dropped)')}" for k in st
               if k.startswith("evidence spans") and k not in (read, spans.KEPT)]
    source = read.removeprefix("evidence spans read (").removesuffix(")")
    return _markdown(f"Evidence spans ({source}): {st[spans.KEPT]:,} of {st[read]:,} kept in `evidence.parquet` "
                     f"(offsets into the text); dropped: {'; '.join(dropped)}.")


def split_notes(cfg: Config, result: Preprocessed):
    """Markdown: what the split is, in plain words; for the seed's rule, that it has no test set (or
    the held-out one), that val chooses the threshold and the model, and how many val admissions
    belong to a patient who also has train admissions."""
    st = result.stats
    n_val, shared = st.get("val admissions", 0), st.get("val admissions whose patient is in train", 0)
    share = f"{st.get(SEED_SHARE, 0.0):.1%} of val admissions ({shared:,} of {n_val:,}) belong to a patient " \
            "who also has train admissions."
    if cfg.split != "seed":
        return _markdown(f"Split `{cfg.split}`: {share}")
    rule = "Split `seed` (the original project's rule): admissions whose HADM_ID ends in 8 or 9 are val, the rest train."
    if cfg.seed_test_share > 0:
        held = st.get("seed train patients held out as test (seed_test_share)", 0)
        test = (f" A patient-disjoint test set holds out {cfg.seed_test_share:.0%} of the seed's train patients "
                f"({held:,} patients, {st.get('test admissions', 0):,} admissions; none has train admissions); "
                "val still chooses the decision threshold and the model (`best/`), and test is scored once.")
    else:
        test = (" **There is no test set**: val chooses the decision threshold and the model (`best/`) and gives "
                "the reported numbers, so they are in-sample, not a held-out estimate (set `seed_test_share` "
                "to hold out a patient-disjoint test set).")
    return _markdown(rule + test + " " + share)
