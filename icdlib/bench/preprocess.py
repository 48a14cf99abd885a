"""`preprocess` suite: step 01 against the pandas pipeline of the reference projects.

The reference reads the whole NOTEEVENTS with `pd.read_csv`, filters it, and joins each
admission's notes with a groupby; here it does the same filtering and ordering as icdlib (so the
two outputs can be compared note for note) and writes the result to parquet as step 01 does. Both
run on the same synthetic twins, at several sizes up to MIMIC-III's 58,976 admissions, each run in
a fresh process so its peak RSS is its own. Twins are generated once into `benchmarks/data/`.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from icdlib.bench.harness import ensure_twin, isolated, ratios, read_through, summary

SCALES = {"full": (5_000, 20_000, 58_976), "smoke": (60, 120, 240)}
TARGET_SPEEDUP = 2.5
TARGET_RSS_MB = 2000.0
FULL_SIZE = 58_976


def digest(notes: pd.DataFrame) -> str:
    """A hash of (hadm_id, text, codes) over admissions in hadm_id order."""
    h = hashlib.sha256()
    for hadm, text, codes in notes.sort_values("hadm_id")[["hadm_id", "text", "codes"]].itertuples(index=False):
        h.update(f"{int(hadm)}\x00{text}\x00{','.join(codes)}\x01".encode())
    return h.hexdigest()[:16]


def icdlib_step(mimic_dir: str, out_dir: str) -> dict:
    """Step 01 as the notebooks run it (params/tiny.yaml's preprocessing), into a fresh run folder."""
    from icdlib.run import config
    from icdlib.data import preprocess

    cfg = config.resolve("tiny", {"mimic_dir": mimic_dir, "output_root": out_dir, "run": "bench"})
    result = preprocess.run(cfg, progress=False)
    return {"admissions": len(result.notes), "notes": str(cfg.run_dir / preprocess.STEP / "notes.parquet")}


def pandas_reference(mimic_dir: str, out_dir: str) -> dict:
    """The read-everything pandas pipeline, with icdlib's filters so the outputs can be compared."""
    from icdlib.data.codes import DIAGNOSIS, PROCEDURE, dot

    mimic = Path(mimic_dir)
    notes = pd.read_csv(mimic / "NOTEEVENTS.csv")
    notes = notes[(notes["CATEGORY"] == "Discharge summary") & (notes["ISERROR"] != 1) & notes["HADM_ID"].notna()]
    notes = notes[notes["DESCRIPTION"].isin(["Report", "Addendum"])].copy()
    notes["ADDENDUM"] = notes["DESCRIPTION"] != "Report"
    notes = notes.sort_values(["HADM_ID", "ADDENDUM", "CHARTDATE", "CHARTTIME", "ROW_ID"], na_position="first")
    texts = notes.groupby("HADM_ID")["TEXT"].agg("\n\n".join)
    frames = []
    for table, kind in (("DIAGNOSES_ICD", DIAGNOSIS), ("PROCEDURES_ICD", PROCEDURE)):
        rows = pd.read_csv(mimic / f"{table}.csv", dtype={"ICD9_CODE": str}).dropna(subset=["HADM_ID", "ICD9_CODE"])
        rows["CODE"] = rows["ICD9_CODE"].str.strip().map(lambda c: dot(c, kind))
        frames.append(rows[rows["CODE"] != ""])
    codes = pd.concat(frames).drop_duplicates(["HADM_ID", "CODE"]).sort_values(["HADM_ID", "CODE"])
    codes = codes.groupby("HADM_ID")["CODE"].agg(list)
    out = pd.DataFrame({"text": texts}).join(codes.rename("codes"), how="inner").reset_index()
    out = out.rename(columns={"HADM_ID": "hadm_id"})
    out["hadm_id"] = out["hadm_id"].astype("int64")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out.to_parquet(Path(out_dir) / "notes.parquet", index=False)
    return {"admissions": len(out), "notes": str(Path(out_dir) / "notes.parquet")}


SYSTEMS = {"icdlib step 01": "icdlib.bench.preprocess:icdlib_step",
           "pandas read_csv + groupby": "icdlib.bench.preprocess:pandas_reference"}


def run(scale: str = "full", repeats: int = 3, warmup: int = 1, data_dir: Path | None = None,
        progress: bool = True, figure: Path | None = None, dataset: str = "mimic3", **_) -> dict:
    if dataset != "mimic3":  # MIMIC-IV: step 01 against Edin et al.'s pandas preparation
        from icdlib.bench import preprocess4

        return preprocess4.run(scale=scale, repeats=repeats, warmup=warmup, data_dir=data_dir, progress=progress,
                               figure=figure, dataset=dataset)
    data_dir = Path(data_dir)
    sizes = SCALES[scale]
    twins = {n: ensure_twin(data_dir, n, progress) for n in sizes}
    scratch = data_dir / "scratch"
    rows, comparisons, checks, curve = [], [], [], {}
    for n in sizes:
        twin = twins[n]
        mb = (twin / "NOTEEVENTS.csv").stat().st_size / 1e6
        read_through(twin / "NOTEEVENTS.csv")
        runs = {name: [] for name in SYSTEMS}
        for i in range(warmup + repeats):
            for name, target in SYSTEMS.items():
                shutil.rmtree(scratch, ignore_errors=True)
                r = isolated(target, mimic_dir=str(twin), out_dir=str(scratch))
                r["result"]["digest"] = digest(pd.read_parquet(r["result"]["notes"], columns=["hadm_id", "text", "codes"]))
                if i >= warmup:
                    runs[name].append(r)
                if progress:
                    kind = "warm-up" if i < warmup else f"run {i - warmup + 1}/{repeats}"
                    print(f"[bench preprocess] {n:,} admissions, {name}, {kind}: {r['seconds']:.1f} s, "
                          f"{r['peak_rss_mb']:,.0f} MB", flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
        case = f"{n:,} admissions, NOTEEVENTS {mb / 1e3:.2f} GB"
        for name, rs in runs.items():
            secs = [r["seconds"] for r in rs]
            rows.append({"case": case, "system": name, "seconds": summary(secs),
                         "mb_per_s": summary([mb / s for s in secs]),
                         "peak_rss_mb": summary([r["peak_rss_mb"] for r in rs]),
                         "admissions": rs[-1]["result"]["admissions"]})
            curve.setdefault(name, []).append((mb / 1e3, summary(secs), summary([r["peak_rss_mb"] for r in rs])))
        ours, theirs = runs["icdlib step 01"], runs["pandas read_csv + groupby"]
        full = n == FULL_SIZE
        speedup = ratios([r["seconds"] for r in theirs], [r["seconds"] for r in ours])
        comparisons.append({"what": f"speed-up at {n:,} admissions (pandas / icdlib wall time)", "ratio": speedup,
                            "target": f"≥ {TARGET_SPEEDUP:g}×" if full else "",
                            "met": speedup["median"] >= TARGET_SPEEDUP if full else None})
        comparisons.append({"what": f"peak RSS at {n:,} admissions (pandas / icdlib)",
                            "ratio": ratios([r["peak_rss_mb"] for r in theirs], [r["peak_rss_mb"] for r in ours])})
        if full:
            rss = max(r["peak_rss_mb"] for r in ours)
            checks.append({"what": f"icdlib peak RSS at full size ≤ {TARGET_RSS_MB:,.0f} MB", "ok": rss <= TARGET_RSS_MB,
                           "detail": f"largest of {len(ours)} runs: {rss:,.0f} MB"})
        same = {(r["result"]["admissions"], r["result"]["digest"]) for r in ours + theirs}
        checks.append({"what": f"same admissions, texts and codes from both at {n:,} admissions", "ok": len(same) == 1,
                       "detail": f"{ours[-1]['result']['admissions']:,} admissions"})
    per_gb = {name: [s["median"] / gb for gb, s, _ in pts] for name, pts in curve.items()}
    for name, costs in per_gb.items():
        comparisons.append({"what": f"linearity, {name}: s/GB at the largest size ÷ s/GB at the smallest",
                            "ratio": summary([costs[-1] / costs[0]]), "target": "≈ 1 (linear)"})
    doc = {
        "description": "Wall time of the whole step in a fresh process (imports excluded), NOTEEVENTS MB/s, "
                       "and the process's peak RSS. icdlib streams NOTEEVENTS with pyarrow and keeps only "
                       "discharge summaries; the reference reads all of it with pandas first.",
        "columns": [["seconds", "wall s", 1], ["mb_per_s", "NOTEEVENTS MB/s", 0], ["peak_rss_mb", "peak RSS MB", 0]],
        "rows": rows, "comparisons": comparisons, "checks": checks,
    }
    if figure is not None:
        doc["figures"] = [str(plot(curve, Path(figure)))]
    return doc


def plot(curve: dict, path: Path) -> Path:
    """Wall time and peak RSS against NOTEEVENTS size, medians with min–max bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    for name, pts in curve.items():
        gb = np.array([p[0] for p in pts])
        for ax, k in ((ax_t, 1), (ax_m, 2)):
            med = np.array([p[k]["median"] for p in pts])
            err = np.array([[p[k]["median"] - p[k]["min"], p[k]["max"] - p[k]["median"]] for p in pts]).T
            ax.errorbar(gb, med if k == 1 else med / 1e3, yerr=err if k == 1 else err / 1e3, marker="o", capsize=3,
                        label=name)
    ax_t.set(xlabel="NOTEEVENTS.csv (GB)", ylabel="wall time (s)", title="step 01 time")
    ax_m.set(xlabel="NOTEEVENTS.csv (GB)", ylabel="peak RSS (GB)", title="step 01 memory")
    for ax in (ax_t, ax_m):
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
