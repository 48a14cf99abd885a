"""`metrics` suite: icdlib.metrics.compute against the scikit-learn loop a user would write.

Both compute the same figures on the same matrices: macro AUROC and AUPRC (one sklearn call per
label), micro AUROC and AUPRC, micro and macro F1, MAP (one sklearn call per note) and P@k. The
data are MIMIC-III full test shaped: 3,372 notes × 8,922 codes, ~15.9 codes per note drawn from a
Zipf-like frequency curve, scores from a noisy model in float32.
"""

from __future__ import annotations

import time

import numpy as np

from icdlib import metrics
from icdlib.bench.harness import ratios, summary

SCALES = {"full": (3372, 8922), "smoke": (200, 400)}
COMPARED = ("auroc_macro", "auroc_micro", "auprc_macro", "auprc_micro", "f1_micro", "f1_macro", "map",
            "p_at_5", "p_at_8", "p_at_15")
TARGET = 20.0


def make_data(n_docs: int, n_labels: int, codes_per_doc: float = 15.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(y_true bool, y_score float32) with a long-tailed label frequency and informative scores."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (np.arange(n_labels) + 10.0) ** 1.35  # ~4,300 of 8,922 codes occur (MIMIC test: 4,075)
    share = np.minimum(popularity / popularity.sum() * codes_per_doc, 0.6)
    y = rng.random((n_docs, n_labels)) < share
    logits = np.log(share / (1 - share)) + 2.5 * y + rng.normal(0.0, 1.2, (n_docs, n_labels))
    return y, (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


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
    diffs = {k: abs(ours[k] - theirs[k]) for k in COMPARED}
    case = f"{n_docs:,} × {n_labels:,} ({int(y.sum()):,} positives, {ours['n_labels_scored']:,} labels scored)"
    rows = [{"case": case, "system": name, "seconds": summary(w), "cpu_seconds": summary(c)}
            for name, (w, c) in (("icdlib.metrics.compute", times["icdlib"]), ("scikit-learn loop", times["sklearn"]))]
    speedup = ratios(times["sklearn"][0], times["icdlib"][0])
    return {
        "description": "Same figures from the same matrices: " + ", ".join(COMPARED) + ". "
                       "icdlib sorts with numpy in two threads; scikit-learn runs one call per label and per note.",
        "columns": [["seconds", "wall s", 2], ["cpu_seconds", "CPU s", 2]],
        "rows": rows,
        "comparisons": [
            {"what": "speed-up, wall time (scikit-learn / icdlib)", "ratio": speedup,
             "target": f"≥ {TARGET:g}×" if scale == "full" else "", "met": speedup["median"] >= TARGET if scale == "full" else None},
            {"what": "speed-up, CPU time (scikit-learn / icdlib)", "ratio": ratios(times["sklearn"][1], times["icdlib"][1])},
        ],
        "checks": [{"what": "equal values (|icdlib − scikit-learn| ≤ 1e-6 for every figure)",
                    "ok": max(diffs.values()) <= 1e-6, "detail": f"largest difference {max(diffs.values()):.1e}"}],
        "values": {"icdlib": {k: ours[k] for k in COMPARED}, "sklearn": theirs},
    }
