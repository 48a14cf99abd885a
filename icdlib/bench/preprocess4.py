"""`preprocess` suite, MIMIC-IV part (`--dataset mimic4_icd9|mimic4_icd10`): step 01 against Edin et al.

On a synthetic MIMIC-IV twin (`icdlib.twin.synth4`: `hosp/*.csv.gz`, `note/discharge.csv.gz`, as
PhysioNet ships them), step 01 runs with the real preset (`benchmark=edin_mimic4_*`,
`text_cleaning=edin`, a split file in Edin's format for the twin's admissions) beside Edin et al.'s
pandas preparation (`icdlib.bench.edin4`), each in a fresh process so its peak RSS is its own. Both
outputs are compared (admissions, cleaned texts, target codes after the rare-code rule); step 01
also runs on the same twin with discharge as a plain `.csv`, and `mimic4.read_notes` alone reads
either, to show what the `.gz` costs. The twin, its split files and its plain copy are made once
under the data folder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq

from icdlib.bench.harness import ensure_twin, isolated, ratios, read_through, summary
from icdlib.run.runfolder import atomic_path

SMOKE = (240, 240)  # ICD-9 and ICD-10 admissions of the smoke twin
SCALES = ("full", "smoke")  # full: synth4.FULL (≈ 331k discharge notes, both versions, full-length notes)
TARGET_SPEEDUP = 3.0
TARGET_RSS_MB = 8000.0
ICDLIB, EDIN = "icdlib step 01", "pandas, Edin et al.'s way"
ICDLIB_CSV = "icdlib step 01, discharge as plain .csv"
READ_GZ, READ_CSV = "mimic4.read_notes alone, .csv.gz", "mimic4.read_notes alone, .csv"


def twin_counts(scale: str) -> tuple[int, int]:
    """(ICD-9, ICD-10) admissions of the scale's twin."""
    if scale == "full":
        from icdlib.twin import synth4

        return tuple(synth4.FULL)
    return SMOKE


def ensure_splits(twin: Path) -> Path:
    """A folder beside the twin holding Edin's two split files for its admissions, made once.

    Every admission with a code of that version gets a split (`_id` = hadm_id, `split`), by
    patient 75/10/15 (`splits.patient_rule`, a hash of subject_id): deterministic, and a patient's
    admissions share a split, as in Edin's files."""
    from icdlib.data import mimic, mimic4, splits

    out = twin.parent / f"{twin.name}-splits"
    files = [out / splits.EDIN_FILES[d] for d in mimic4.DATASETS]
    if all(f.is_file() for f in files):
        return out
    frames = []
    for table in ("diagnoses_icd", "procedures_icd"):
        frames.append(mimic._read_csv(mimic4.table_path(twin / "hosp", table),
                                      {"SUBJECT_ID": pa.int64(), "HADM_ID": pa.int64(), "ICD_VERSION": pa.int64()}))
    rows = pd.concat(frames).dropna().astype("int64").drop_duplicates(["HADM_ID", "ICD_VERSION"])
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for dataset, version in mimic4.DATASETS.items():
            mine = rows[rows["ICD_VERSION"] == version].sort_values("HADM_ID")
            split = splits.patient_rule(mine["SUBJECT_ID"].to_numpy())
            pd.DataFrame({"_id": mine["HADM_ID"].to_numpy(), "split": split}).to_feather(tmp / splits.EDIN_FILES[dataset])
    return out


def ensure_plain(twin: Path) -> Path:
    """The twin with discharge as a plain `.csv` (decompressed once, streamed), hosp/ linked to the twin's."""
    out = twin.parent / f"{twin.name}-plain"
    if not (out / "note" / "discharge.csv").is_file():
        with atomic_path(out) as tmp:
            (tmp / "note").mkdir(parents=True)
            (tmp / "hosp").symlink_to((twin / "hosp").resolve(), target_is_directory=True)
            with gzip.open(twin / "note" / "discharge.csv.gz", "rb") as src, \
                    open(tmp / "note" / "discharge.csv", "wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
    return out


def icdlib_step(mimic_dir: str, out_dir: str, dataset: str, split_dir: str) -> dict:
    """Step 01 with Edin et al.'s preset for `dataset` and their text cleaning, into a fresh run folder."""
    from icdlib.run import config
    from icdlib.data import preprocess

    cfg = config.resolve("tiny", {"mimic_dir": mimic_dir, "dataset": dataset, "benchmark": f"edin_{dataset}",
                                  "split_dir": split_dir, "text_cleaning": "edin", "output_root": out_dir,
                                  "run": "bench"})
    result = preprocess.run(cfg, progress=False)
    step = cfg.run_dir / preprocess.STEP
    return {"admissions": len(result.notes), "notes": str(step / "notes.parquet"),
            "labels": str(step / "labels.parquet")}


def edin_way(mimic_dir: str, out_dir: str, dataset: str) -> dict:
    """Edin et al.'s preparation of `dataset` in pandas (`edin4.prepare`), codes stripped and upper-cased
    first (`tidy_codes`: the twin plants a few lower-case and space-padded codes, which MIMIC-IV has not
    and icdlib tidies; a vectorised pass over the code column, well under a second at full size)."""
    from icdlib.bench import edin4

    return edin4.prepare(mimic_dir, out_dir, dataset, tidy_codes=True)


def read_notes_only(mimic_dir: str) -> dict:
    """`mimic4.read_notes` of every discharge note (the reading step 01 does, alone)."""
    from icdlib.data import mimic4

    notes, stats = mimic4.read_notes(mimic4.check_schema(Path(mimic_dir)))
    size = pc.sum(pc.binary_length(pa.array(notes["text"].array))).as_py() or 0
    return {"admissions": len(notes), "text_bytes": int(size)}


def digests(hadm: np.ndarray, texts: pa.ChunkedArray | pa.Array, codes: list[list[str]]) -> dict:
    """Hashes of the admissions (hadm_ids in order), their texts and their target codes, each over the
    rows in hadm_id order: equal when both systems wrote the same rows, texts and codes."""
    order = np.argsort(hadm, kind="stable")
    texts = pc.take(texts, pa.array(order)).cast(pa.large_string())
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    h_text = hashlib.sha256()
    if len(texts):
        offsets = np.frombuffer(texts.buffers()[1], np.int64)[texts.offset:texts.offset + len(texts) + 1]
        h_text.update((offsets - offsets[0]).tobytes())
        h_text.update(memoryview(texts.buffers()[2])[offsets[0]:offsets[-1]])
    h_codes = hashlib.sha256("\x01".join(",".join(codes[i]) for i in order).encode())
    return {"rows": len(hadm), "admissions": int(len(np.unique(hadm))),
            "ids": hashlib.sha256(np.asarray(hadm, np.int64)[order].tobytes()).hexdigest()[:16],
            "texts": h_text.hexdigest()[:16], "codes": h_codes.hexdigest()[:16]}


def icdlib_digests(result: dict) -> dict:
    """step 01's output as targets: each admission's codes in the label space (the rare codes stay in
    its code list, outside the label space), sorted."""
    table = pq.read_table(result["notes"], columns=["hadm_id", "text", "codes"])
    space = set(pq.read_table(result["labels"], columns=["code"]).column("code").to_pylist())
    codes = [sorted(c for c in cs if c in space) for cs in table.column("codes").to_pylist()]
    return digests(table.column("hadm_id").to_numpy(), table.column("text"), codes)


def edin_digests(result: dict) -> dict:
    """Edin's output as targets, its codes as icdlib writes them (`I10.` → `I10`), sorted."""
    from icdlib.bench import edin4

    table = feather.read_table(result["out"], columns=[edin4.ID, edin4.TEXT, edin4.TARGET])
    codes = [sorted(c.rstrip(".") for c in cs) for cs in table.column(edin4.TARGET).to_pylist()]
    hadm = table.column(edin4.ID).to_numpy().astype(np.int64)
    return digests(hadm, table.column(edin4.TEXT), codes)


def _same(a: dict, b: dict) -> tuple[bool, str]:
    differ = [k for k in ("rows", "admissions", "ids", "texts", "codes") if a[k] != b[k]]
    if not differ:
        return True, f"{a['admissions']:,} admissions"
    return False, "differ in " + ", ".join(differ) + f" ({a['rows']:,} and {b['rows']:,} rows)"


def run(scale: str = "full", repeats: int = 3, warmup: int = 1, data_dir: Path | None = None,
        progress: bool = True, figure: Path | None = None, dataset: str = "mimic4_icd9", **_) -> dict:
    from icdlib.data import mimic4
    from icdlib.run.errors import IcdlibError

    if dataset not in mimic4.DATASETS:
        raise IcdlibError(f"bench preprocess --dataset must be mimic3, {' or '.join(mimic4.DATASETS)}; got {dataset!r}")
    data_dir = Path(data_dir)
    counts = twin_counts(scale)
    twin = ensure_twin(data_dir, counts, progress, dataset=dataset)
    split_dir, plain = ensure_splits(twin), ensure_plain(twin)
    gz_path, csv_path = twin / "note" / "discharge.csv.gz", plain / "note" / "discharge.csv"
    gz_mb, csv_mb = gz_path.stat().st_size / 1e6, csv_path.stat().st_size / 1e6
    scratch = data_dir / "scratch4"
    jobs = {  # name: (target, kwargs, digest of its output)
        ICDLIB: ("icdlib.bench.preprocess4:icdlib_step",
                 {"mimic_dir": str(twin), "dataset": dataset, "split_dir": str(split_dir)}, icdlib_digests),
        EDIN: ("icdlib.bench.preprocess4:edin_way", {"mimic_dir": str(twin), "dataset": dataset}, edin_digests),
        ICDLIB_CSV: ("icdlib.bench.preprocess4:icdlib_step",
                     {"mimic_dir": str(plain), "dataset": dataset, "split_dir": str(split_dir)}, icdlib_digests),
        READ_GZ: ("icdlib.bench.preprocess4:read_notes_only", {"mimic_dir": str(twin)}, None),
        READ_CSV: ("icdlib.bench.preprocess4:read_notes_only", {"mimic_dir": str(plain)}, None),
    }
    load = [os.getloadavg()[0]]  # the machine may be shared: its load beside the figures
    for path in (gz_path, csv_path):
        read_through(path)  # every system starts from the same warm page cache
    runs = {name: [] for name in jobs}
    for i in range(warmup + repeats):
        for name, (target, kwargs, digest) in jobs.items():
            shutil.rmtree(scratch, ignore_errors=True)
            extra = {"out_dir": str(scratch)} if digest else {}
            r = isolated(target, **kwargs, **extra)
            if digest:
                r["digest"] = digest(r["result"])
            if i >= warmup:
                runs[name].append(r)
            if progress:
                kind = "warm-up" if i < warmup else f"run {i - warmup + 1}/{repeats}"
                print(f"[bench preprocess {dataset}] {name}, {kind}: {r['seconds']:.1f} s, "
                      f"{r['peak_rss_mb']:,.0f} MB", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    load.append(os.getloadavg()[0])
    size = f"{gz_mb / 1e3:.2f} GB" if gz_mb >= 100 else f"{gz_mb:.1f} MB"
    case = f"{dataset}, twin of {counts[0]:,} + {counts[1]:,} admissions, discharge.csv.gz {size}"
    rows = []
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        rows.append({"case": case, "system": name, "seconds": summary(secs),
                     "gz_mb_per_s": summary([gz_mb / s for s in secs]),
                     "mb_per_s": summary([csv_mb / s for s in secs]),
                     "peak_rss_mb": summary([r["peak_rss_mb"] for r in rs]),
                     "admissions": rs[-1]["result"]["admissions"]})
    sec = {name: [r["seconds"] for r in rs] for name, rs in runs.items()}
    rss = {name: [r["peak_rss_mb"] for r in rs] for name, rs in runs.items()}
    full = scale == "full"
    speedup = ratios(sec[EDIN], sec[ICDLIB])
    comparisons = [
        {"what": "speed-up, step 01 on the .csv.gz (pandas / icdlib wall time)", "ratio": speedup,
         "target": f"≥ {TARGET_SPEEDUP:g}×" if full else "",
         "met": speedup["median"] >= TARGET_SPEEDUP if full else None},
        {"what": "peak RSS (pandas / icdlib)", "ratio": ratios(rss[EDIN], rss[ICDLIB])},
        {"what": "step 01 wall time, discharge .csv.gz / plain .csv", "ratio": ratios(sec[ICDLIB], sec[ICDLIB_CSV])},
        {"what": "step 01 peak RSS, discharge .csv.gz / plain .csv", "ratio": ratios(rss[ICDLIB], rss[ICDLIB_CSV])},
        {"what": "read_notes wall time, .csv.gz / plain .csv", "ratio": ratios(sec[READ_GZ], sec[READ_CSV])},
        {"what": "read_notes peak RSS, .csv.gz / plain .csv", "ratio": ratios(rss[READ_GZ], rss[READ_CSV])},
    ]
    checks = []
    ours = [r["digest"] for r in runs[ICDLIB]]
    for name, what in ((EDIN, "same admissions, cleaned texts and target codes from icdlib and pandas"),
                       (ICDLIB_CSV, "same output from step 01 on the .csv.gz and on the plain .csv")):
        results = [_same(a, b["digest"]) for a, b in zip(ours, runs[name])]
        ok = all(r[0] for r in results) and len({str(d) for d in ours}) == 1
        checks.append({"what": what, "ok": ok, "detail": next((d for good, d in results if not good), results[-1][1])})
    if full:
        peak = max(rss[ICDLIB])
        checks.append({"what": f"icdlib peak RSS at full size ≤ {TARGET_RSS_MB:,.0f} MB", "ok": peak <= TARGET_RSS_MB,
                       "detail": f"largest of {len(rss[ICDLIB])} runs: {peak:,.0f} MB"})
    phases = pd.DataFrame([r["result"]["phases"] for r in runs[EDIN]]).median()
    text_mb = runs[READ_GZ][-1]["result"]["text_bytes"] / 1e6
    notes = [f"The twin: `icdlib.twin.synth4` ({counts[0]:,} ICD-9 and {counts[1]:,} ICD-10 admissions, full-length "
             f"notes), discharge.csv.gz {gz_mb:,.0f} MB, {csv_mb:,.0f} MB as plain .csv, "
             f"{runs[READ_GZ][-1]['result']['admissions']:,} admissions with a discharge note, {text_mb:,.0f} MB of "
             f"note text (UTF-8). Split: Edin's file format, every coded admission of the version by patient 75/10/15.",
             "pandas, Edin et al.'s way: their prepare_mimiciv.py for one dataset (`icdlib.bench.edin4`), its text "
             "cleaning through pandas' `.str` methods (pyarrow-backed under pandas 3) instead of vaex, codes "
             "stripped and upper-cased first as icdlib does (the twin plants a few messy codes); phases "
             "(median s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + ".",
             f"MB/s: discharge.csv.gz MB ({gz_mb:,.0f}) or plain discharge.csv MB ({csv_mb:,.0f}) over the wall time, "
             "for every row (the same notes, so the rows compare).",
             f"Load average (1 min) of the {os.cpu_count()}-core machine: {load[0]:.1f} before the runs, "
             f"{load[1]:.1f} after (above 0, other work shared it; the ratios pair runs made minutes apart)."]
    doc = {
        "description": f"MIMIC-IV ({dataset}): wall time of the whole step in a fresh process (imports excluded), "
                       "discharge MB/s and the process's peak RSS. icdlib streams discharge.csv.gz through pyarrow "
                       "(never inflated whole) with Edin et al.'s preset (`benchmark=edin_" + dataset + "`, "
                       "`text_cleaning=edin`); the reference reads every table whole with `pd.read_csv`.",
        "dataset": dataset,
        "columns": [["seconds", "wall s", 1], ["gz_mb_per_s", "discharge.csv.gz MB/s", 1],
                    ["mb_per_s", "discharge.csv MB/s", 0], ["peak_rss_mb", "peak RSS MB", 0]],
        "rows": rows, "comparisons": comparisons, "checks": checks, "notes": notes,
        "phases_edin": phases.round(3).to_dict(),
    }
    return doc
