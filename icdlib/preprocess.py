"""Step 01: MIMIC-III tables → `01_preprocess/notes.parquet` and `labels.parquet`.

One row per admission: its discharge summary (report first, then addenda by CHARTDATE,
CHARTTIME, ROW_ID), its dotted, unique, sorted codes and its split. Every filter is counted in
`stats.json`, so the 01 report says what was dropped and why. The step folder is written under
a temporary name and renamed when complete, and is reused as is while the inputs (sizes and
mtimes) and the preprocessing parameters are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from icdlib import labels as labelspace
from icdlib import mimic, splits
from icdlib.config import Config
from icdlib.errors import DataError
from icdlib.runfolder import atomic_path

STEP = "01_preprocess"
VERSION = 1  # bump when the output of this step changes for the same inputs
PARAMS = ("note_categories", "note_descriptions", "text_cleaning", "split", "split_dir", "labels",
          "top50_file", "min_count")


@dataclass
class Preprocessed:
    notes: pd.DataFrame  # hadm_id, subject_id, split, text, codes
    labels: pd.DataFrame  # code, kind, short_title, long_title, n_train
    stats: dict  # counts at every filter, in order


def mimic_dir(cfg: Config, progress: bool = True) -> Path:
    """The MIMIC-III folder of the run: the user's, or the synthetic twin (generated once)."""
    if cfg.mimic_dir:
        return Path(cfg.mimic_dir).expanduser()
    from icdlib import synth

    out = cfg.run_dir / "synthetic_mimic"
    if not (out / "NOTEEVENTS.csv").is_file():
        with atomic_path(out) as tmp:
            synth.generate(tmp, admissions=cfg.synth_admissions, seed=cfg.synth_seed,
                           short=cfg.synth_short, progress=progress)
    return out


def clean_caml(text: str) -> str:
    """CAML's cleaning: lower case, `\\w+` tokens, all-digit tokens dropped."""
    return " ".join(t for t in re.findall(r"\w+", text.lower()) if not t.isdigit())


def join_notes(notes: pd.DataFrame, descriptions: list[str]) -> tuple[pd.DataFrame, dict]:
    """Per admission: the selected notes concatenated, reports first, then by time and ROW_ID."""
    stats = {"notes of the selected categories": len(notes)}
    err = mimic.iserror(notes["iserror"])
    stats["notes with ISERROR=1 (dropped)"] = int(err.sum())
    notes = notes[~err]
    no_hadm = notes["hadm_id"].isna()
    stats["notes without HADM_ID (dropped)"] = int(no_hadm.sum())
    notes = notes[~no_hadm]
    wrong = ~notes["description"].isin(descriptions)
    stats["notes of other descriptions (dropped)"] = int(wrong.sum())
    notes = notes[~wrong].copy()
    notes["is_addendum"] = notes["description"] != "Report"
    notes = notes.sort_values(["hadm_id", "is_addendum", "chartdate", "charttime", "row_id"], na_position="first")
    joined = notes.groupby("hadm_id", sort=True).agg(subject_id=("subject_id", "first"), text=("text", "\n\n".join),
                                                     n_notes=("text", "size"))
    joined = joined.reset_index()
    joined["hadm_id"] = joined["hadm_id"].astype("int64")
    joined["subject_id"] = joined["subject_id"].astype("int64")
    stats["admissions with a selected note"] = len(joined)
    return joined, stats


def group_codes(code_rows: pd.DataFrame) -> pd.DataFrame:
    """hadm_id → sorted unique codes (MIMIC repeats some codes within an admission)."""
    dedup = code_rows.drop_duplicates(["hadm_id", "code"]).sort_values(["hadm_id", "code"])
    return dedup.groupby("hadm_id")["code"].agg(list).rename("codes").reset_index()


def build(cfg: Config, progress: bool = True) -> Preprocessed:
    paths = mimic.check_schema(mimic_dir(cfg, progress))
    code_rows, stats = mimic.read_codes(paths)
    dictionary = mimic.read_dictionary(paths)
    raw_notes, note_stats = mimic.read_notes(paths["NOTEEVENTS"], cfg.note_categories, progress=progress)
    stats.update(note_stats)
    stats["duplicated codes within an admission (counted once)"] = int(code_rows.duplicated(["hadm_id", "code"]).sum())
    stats["distinct codes absent from the dictionaries (kept, no title)"] = int(
        (~pd.Index(code_rows["code"].unique()).isin(dictionary["code"])).sum())
    joined, join_stats = join_notes(raw_notes, cfg.note_descriptions)
    stats.update(join_stats)
    coded = group_codes(code_rows)
    notes = joined.merge(coded, on="hadm_id", how="left")
    no_codes = notes["codes"].isna()
    stats["admissions with notes but no codes (dropped)"] = int(no_codes.sum())
    stats["coded admissions without a selected note (dropped)"] = int((~coded["hadm_id"].isin(joined["hadm_id"])).sum())
    notes = notes[~no_codes].reset_index(drop=True)
    if cfg.text_cleaning == "caml":
        notes["text"] = [clean_caml(t) for t in notes["text"]]
    notes["split"], split_stats = splits.assign(notes, cfg.split, cfg.split_dir)
    stats.update(split_stats)
    notes = notes[notes["split"].notna()].reset_index(drop=True)
    if notes.empty:
        raise DataError("no admission is left after filtering: check note_categories, note_descriptions and split")
    for s in splits.SPLITS:
        stats[f"{s} admissions"] = int((notes["split"] == s).sum())
    if stats["train admissions"] == 0:
        raise DataError(f"split {cfg.split!r} leaves no train admission")
    kinds = dict(zip(code_rows["code"], code_rows["kind"]))
    label_table = labelspace.build(notes, dictionary, kinds, cfg.labels, cfg.min_count, cfg.top50_file)
    in_space = set(label_table["code"])
    stats["labels"] = len(label_table)
    for s in splits.SPLITS:
        part = notes.loc[notes["split"] == s, "codes"].explode().dropna()
        stats[f"{s} code assignments outside the label space"] = int((~part.isin(in_space)).sum())
    notes = notes[["hadm_id", "subject_id", "split", "text", "codes"]]
    return Preprocessed(notes=notes, labels=label_table, stats=stats)


def cache_key(cfg: Config) -> str:
    """A hash of the input files' names, sizes and mtimes and of the preprocessing parameters."""
    parts = {"version": VERSION, "params": {k: getattr(cfg, k) for k in PARAMS}}
    if cfg.mimic_dir:
        paths = mimic.check_schema(Path(cfg.mimic_dir).expanduser())
        parts["files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths.values()}
    else:
        parts["synth"] = [cfg.synth_admissions, cfg.synth_seed, cfg.synth_short]
    for extra in (cfg.split_dir, cfg.top50_file):
        if extra and Path(extra).exists():
            files = sorted(Path(extra).glob("*")) if Path(extra).is_dir() else [Path(extra)]
            parts.setdefault("extra", {}).update({str(f.name): [f.stat().st_size, f.stat().st_mtime_ns] for f in files})
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(cfg: Config, progress: bool = True) -> Preprocessed:
    """Build the step's folder (or reuse it when the cache key matches) and return its content."""
    out = cfg.run_dir / STEP
    key = cache_key(cfg)
    if (out / "cache_key.txt").is_file() and (out / "cache_key.txt").read_text().strip() == key:
        return load(cfg.run_dir, cached=True)
    result = build(cfg, progress)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        result.notes.to_parquet(tmp / "notes.parquet", index=False)
        result.labels.to_parquet(tmp / "labels.parquet", index=False)
        (tmp / "stats.json").write_text(json.dumps(result.stats, indent=2) + "\n")
        (tmp / "cache_key.txt").write_text(key + "\n")
    result.stats = {"reused from cache": False, **result.stats}
    return result


def load(run_dir: Path, cached: bool = False) -> Preprocessed:
    """Read a finished 01 step from the run folder."""
    out = Path(run_dir) / STEP
    if not (out / "notes.parquet").is_file():
        raise DataError(f"{out} has no notes.parquet: run 01_preprocess for this run first")
    notes = pd.read_parquet(out / "notes.parquet")
    notes["codes"] = notes["codes"].map(list)
    stats = json.loads((out / "stats.json").read_text())
    if cached:
        stats = {"reused from cache": True, **stats}
    return Preprocessed(notes=notes, labels=pd.read_parquet(out / "labels.parquet"), stats=stats)


def stats_table(stats: dict) -> pd.DataFrame:
    """The step's counts as a two-column table for the report."""
    return pd.DataFrame({"what": list(stats), "count": list(stats.values())})


def sample(notes: pd.DataFrame, share_safe: bool, n: int = 5, chars: int = 300) -> pd.DataFrame:
    """A few rows to look at: ids, split and codes; the text's start only when share_safe is off."""
    rows = notes.head(n)[["hadm_id", "subject_id", "split", "codes"]].copy()
    rows["codes"] = rows["codes"].map(lambda c: ", ".join(c))
    if not share_safe:
        rows["text (start)"] = notes.head(n)["text"].str.slice(0, chars)
    return rows
