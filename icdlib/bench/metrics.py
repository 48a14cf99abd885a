"""`metrics` suite: icdlib.measure.metrics.compute against the scikit-learn loop a user would write, and the
bootstrap intervals of icdlib.measure.uncertainty against `compute` on each resample's repeated rows.

Both compute the same figures on the same matrices: macro AUROC and AUPRC (one sklearn call per
label), micro AUROC and AUPRC, micro and macro F1, MAP (one sklearn call per note) and P@k. The
data are MIMIC-III full test shaped: 3,372 notes × 8,922 codes, ~15.9 codes per note drawn from a
Zipf-like frequency curve, scores from a noisy model in float32.

The bootstrap rows time `uncertainty.intervals` (1,000 resamples of the notes, every metric) and
`uncertainty.paired` (the same resamples for a second, weaker model on the same notes: issue 22 asks
for both "well under a minute" at this size), and the straightforward way per resample: index the
rows by their multiplicity and call `metrics.compute`, timed on a few resamples (1,000 of them would
take most of an hour) whose values the check compares with the vectorised ones.
"""

from __future__ import annotations

import time

import numpy as np

from icdlib.measure import metrics, uncertainty
from icdlib.bench.harness import ratios, summary

SCALES = {"full": (3372, 8922), "smoke": (200, 400)}
COMPARED = ("auroc_macro", "auroc_micro", "auprc_macro", "auprc_micro", "f1_micro", "f1_macro", "map",
            "p_at_5", "p_at_8", "p_at_15")
TARGET = 20.0
RESAMPLES = 1000  # bootstrap resamples timed (issue 22: 1,000 "well under a minute")
BOOTSTRAP_TARGET = 60.0  # seconds
REFERENCE_RESAMPLES = {"full": 2, "smoke": 20}  # resamples the per-resample `compute` reference scores


def _share(n_labels: int, codes_per_doc: float) -> np.ndarray:
    popularity = 1.0 / (np.arange(n_labels) + 10.0) ** 1.35  # ~4,300 of 8,922 codes occur (MIMIC test: 4,075)
    return np.minimum(popularity / popularity.sum() * codes_per_doc, 0.6)


def _scores(y: np.ndarray, share: np.ndarray, rng: np.random.Generator, signal: float = 2.5) -> np.ndarray:
    logits = np.log(share / (1 - share)) + signal * y + rng.normal(0.0, 1.2, y.shape)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def make_data(n_docs: int, n_labels: int, codes_per_doc: float = 15.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(y_true bool, y_score float32) with a long-tailed label frequency and informative scores."""
    rng = np.random.default_rng(seed)
    share = _share(n_labels, codes_per_doc)
    y = rng.random((n_docs, n_labels)) < share
    return y, _scores(y, share, rng)


def rival_scores(y: np.ndarray, codes_per_doc: float = 15.9, seed: int = 1) -> np.ndarray:
    """A second, weaker model's float32 scores for make_data's y (the other arm of a paired bootstrap)."""
    return _scores(y, _share(y.shape[1], codes_per_doc), np.random.default_rng(seed), signal=2.0)


def repeated_rows_reference(y: np.ndarray, s: np.ndarray, counts: np.ndarray) -> dict:
    """The straightforward bootstrap: per resample, the rows repeated by multiplicity, scored by compute."""
    rows = [metrics.compute(y[r], s[r]) for r in (np.repeat(np.arange(len(y)), c) for c in counts)]
    return {k: np.array([r[k] for r in rows]) for k in uncertainty.INTERVAL_METRICS}


def sklearn_loop(y: np.ndarray, s: np.ndarray, threshold: float = 0.5, ks=(5, 8, 15)) -> dict:
    """The straightforward scikit-learn version of the same figures."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    n_pos = y.sum(0)
    scored = np.flatnonzero((n_pos > 0) & (n_pos < len(y)))
    auroc = [roc_auc_score(y[:, j], s[:, j]) for j in scored]
    auprc = [average_precision_score(y[:, j], s[:, j]) for j in scored]
    pred = s >= threshold
    with_pos = n_pos > 0
    docs = np.flatnonzero(y.any(1))
    out = {
        "auroc_macro": float(np.mean(auroc)),
        "auprc_macro": float(np.mean(auprc)),
        "auroc_micro": float(roc_auc_score(y.ravel(), s.ravel())),
        "auprc_micro": float(average_precision_score(y.ravel(), s.ravel())),
        "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y[:, with_pos], pred[:, with_pos], average="macro", zero_division=0)),
        "map": float(np.mean([average_precision_score(y[i], s[i]) for i in docs])),
    }
    top = np.argsort(s[docs], axis=1)[:, ::-1]  # P@k over the same notes as MAP (those with a code)
    for k in ks:
        out[f"p_at_{k}"] = float(np.mean(np.take_along_axis(y[docs], top[:, :k], 1).sum(1) / k))
    return out


def _clocked(fn, *args) -> tuple[float, float, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def run(scale: str = "full", repeats: int = 3, warmup: int = 1, progress: bool = True, **_) -> dict:
    n_docs, n_labels = SCALES[scale]
    y, s = make_data(n_docs, n_labels)
    small_y, small_s = make_data(100, 200, seed=1)
    for _ in range(warmup):
        metrics.compute(small_y, small_s)
        sklearn_loop(small_y, small_s)
    times = {"icdlib": ([], []), "sklearn": ([], [])}
    ours = theirs = None
    for i in range(repeats):
        wall, cpu, ours = _clocked(metrics.compute, y, s)
        times["icdlib"][0].append(wall)
        times["icdlib"][1].append(cpu)
        wall, cpu, theirs = _clocked(sklearn_loop, y, s)
        times["sklearn"][0].append(wall)
        times["sklearn"][1].append(cpu)
        if progress:
            print(f"[bench metrics] run {i + 1}/{repeats}: icdlib {times['icdlib'][0][-1]:.2f} s, "
                  f"sklearn {times['sklearn'][0][-1]:.2f} s", flush=True)
    boot = _bootstrap(y, s, scale, repeats, progress)
    diffs = {k: abs(ours[k] - theirs[k]) for k in COMPARED}
    case = f"{n_docs:,} × {n_labels:,} ({int(y.sum()):,} positives, {ours['n_labels_scored']:,} labels scored)"
    rows = [{"case": case, "system": name, "seconds": summary(w), "cpu_seconds": summary(c)}
            for name, (w, c) in (("icdlib.measure.metrics.compute", times["icdlib"]), ("scikit-learn loop", times["sklearn"]))]
    speedup = ratios(times["sklearn"][0], times["icdlib"][0])
    return {
        "description": "Same figures from the same matrices: " + ", ".join(COMPARED) + ". "
                       "icdlib sorts with numpy in two threads; scikit-learn runs one call per label and per note. "
                       f"Bootstrap: {RESAMPLES:,} resamples of the notes, every metric of "
                       "`uncertainty.INTERVAL_METRICS` (`paired`: two models on the same resamples), against "
                       "`metrics.compute` on each resample's repeated rows, per resample.",
        "columns": [["seconds", "wall s", 2], ["cpu_seconds", "CPU s", 2]],
        "rows": rows + boot["rows"],
        "comparisons": [
            {"what": "speed-up, wall time (scikit-learn / icdlib)", "ratio": speedup,
             "target": f"≥ {TARGET:g}×" if scale == "full" else "", "met": speedup["median"] >= TARGET if scale == "full" else None},
            {"what": "speed-up, CPU time (scikit-learn / icdlib)", "ratio": ratios(times["sklearn"][1], times["icdlib"][1])},
            *boot["comparisons"],
        ],
        "checks": [{"what": "equal values (|icdlib − scikit-learn| ≤ 1e-6 for every figure)",
                    "ok": max(diffs.values()) <= 1e-6, "detail": f"largest difference {max(diffs.values()):.1e}"},
                   *boot["checks"]],
        "values": {"icdlib": {k: ours[k] for k in COMPARED}, "sklearn": theirs, "intervals": boot["intervals"]},
    }


def _bootstrap(y: np.ndarray, s: np.ndarray, scale: str, repeats: int, progress: bool) -> dict:
    """Rows, comparisons, checks and the 95% intervals of the bootstrap part of the suite."""
    rival = rival_scores(y)
    n_ref = REFERENCE_RESAMPLES[scale]
    ref_counts = uncertainty.resample_counts(len(y), n_ref, seed=1)
    jobs = {"intervals": lambda: uncertainty.intervals(y, s, n_resamples=RESAMPLES),
            "paired": lambda: uncertainty.paired(y, s, rival, n_resamples=RESAMPLES),
            "reference": lambda: repeated_rows_reference(y, s, ref_counts)}
    scaled = {"intervals": 1.0, "paired": 1.0, "reference": RESAMPLES / n_ref}  # the reference: × to RESAMPLES
    times, last = {name: ([], []) for name in jobs}, {}
    for i in range(repeats):
        for name, job in jobs.items():
            wall, cpu, last[name] = _clocked(job)
            times[name][0].append(wall * scaled[name])
            times[name][1].append(cpu * scaled[name])
        if progress:
            print(f"[bench metrics] bootstrap {i + 1}/{repeats}: intervals {times['intervals'][0][-1]:.1f} s, paired "
                  f"{times['paired'][0][-1]:.1f} s, compute on repeated rows {times['reference'][0][-1] / RESAMPLES:.2f} s "
                  "per resample", flush=True)
    vectorised = uncertainty.replicates(y, s, ref_counts)
    largest = max(float(np.max(np.abs(vectorised[k] - last["reference"][k]))) for k in uncertainty.INTERVAL_METRICS)
    case = f"{RESAMPLES:,} resamples of {len(y):,} × {y.shape[1]:,}"
    names = (("intervals", "icdlib.measure.uncertainty.intervals"), ("paired", "icdlib.measure.uncertainty.paired (two models)"),
             ("reference", f"metrics.compute on repeated rows (timed on {n_ref}, × {RESAMPLES // n_ref:,})"))
    rows = [{"case": case, "system": system, "seconds": summary(times[k][0]), "cpu_seconds": summary(times[k][1])}
            for k, system in names]
    full = scale == "full"
    slowest = max(summary(times["intervals"][0])["median"], summary(times["paired"][0])["median"])
    return {
        "rows": rows,
        "comparisons": [{"what": "bootstrap speed-up, wall time (compute on repeated rows / intervals)",
                         "ratio": ratios(times["reference"][0], times["intervals"][0])}],
        "checks": [
            {"what": f"bootstrap values equal compute on the repeated rows (|Δ| ≤ 1e-9, {n_ref} resamples × "
                     f"{len(uncertainty.INTERVAL_METRICS)} metrics)", "ok": largest <= 1e-9,
             "detail": f"largest difference {largest:.1e}"},
            *([{"what": f"{RESAMPLES:,} resamples in under {BOOTSTRAP_TARGET:g} s (intervals and paired, median wall)",
                "ok": slowest < BOOTSTRAP_TARGET, "detail": f"slowest {slowest:.1f} s"}] if full else []),
        ],
        "intervals": {k: list(v) for k, v in last["intervals"].items()},
    }
