"""Evaluation metrics for multi-label ICD coding.

Why this module exists: papers on MIMIC-III ICD coding (CAML, Mullenbach et al.
2018; Edin et al. 2023) report a fixed family of metrics, and small differences in
their definitions (two macro-F1 variants, tie handling, which labels enter a macro
average) move the numbers. The definitions are implemented here once, matching
scikit-learn wherever scikit-learn has an equivalent, and vectorised with numpy so
that the full MIMIC-III label space (3,372 test documents x 8,922 codes) is scored
in seconds rather than by a Python loop over labels.

Conventions
-----------
* ``y_true``: (n_docs, n_labels) 0/1 matrix (bool, int or float);
  ``y_score``: float matrix of the same shape (probabilities).
* AUROC and AUPRC (average precision) treat tied scores as a single threshold,
  exactly as ``sklearn.metrics.roc_auc_score`` / ``average_precision_score``.
* Top-k metrics (P@k, R-precision) rank with ``np.argsort(score)[::-1]`` like
  CAML, so ties at the cut-off are broken by that order.
* Per-document metrics (P@k, R-precision, MAP) average over the same documents:
  those with at least one positive label in the label set. A document without
  one (possible when the label space is pruned, e.g. ``labels: observed``) has no
  defined R-precision or average precision, and counting its P@k as 0 would mix two
  document sets in one table. Edin et al. drop these documents too (below); their
  P@k is hits/k as here. On CAML's full label space every document has a positive.
* Label set (``label_set`` of ``compute``), the columns a split is scored over. Two
  conventions give different numbers for the same predictions, because a code with no
  positive in the split still takes top-k places and adds false positives:

  - ``"all"`` (the default): every column, i.e. every code of the run's label space:
    the convention Edin et al. attribute to CAML (Mullenbach et al.), their
    ``*_mullenbach`` metrics (``filter_codes: false`` in
    ``configs/metrics/reproducibility.yaml``).
  - ``"edin"``: what Edin et al.'s code (JoakimEdin/medical-coding-reproducibility)
    reports for a split. ``src/lookups.py`` ``get_split2code_indices`` takes, per
    split, the codes occurring in that split's targets (``Data.split_targets``: codes
    with a positive there); ``src/factories.py`` ``get_metric_collections`` gives
    them to the split's ``MetricCollection`` as ``code_indices``; in ``src/metrics.py``
    ``MetricCollection.update`` passes every metric with ``filter_codes`` (the default
    of all but the loss) through ``filter_batch``, which keeps those columns and drops
    the documents without a positive among them. So F1 micro/macro, precision,
    recall, exact match, P@k, R@k, R-precision (``PrecisionAtRecall``) and MAP rank
    and count over the split's codes and documents with a positive. AUROC is the
    exception: ``MetricCollection.compute`` scores the non-batch metrics (``AUC``)
    on the filtered columns, then overwrites them with scores on the unfiltered
    logits and targets, so their micro AUROC counts every code and document, and
    their macro AUROC, which skips codes without a positive (``AUC.roc_curve``),
    is the same either way. ``"edin"`` does the same: AUROC as ``"all"``, every
    other metric (AUPRC and ``f1_macro_caml`` too, which Edin et al. do not report)
    over the split's codes with a positive and its documents with a positive.

  ``f1_macro``, the macro AUROC and the macro AUPRC average over labels with a
  positive, so the label set changes them only through dropped documents. Their
  threshold is tuned on the unfiltered validation matrix (``src/trainer/trainer.py``
  ``Trainer.calculate_metrics``, ``f1_score_db_tuning``), as ``tune_threshold`` does.
* Two macro-F1 definitions: ``f1_macro`` is the mean per-label F1 over labels with
  a positive (Edin et al.); ``f1_macro_caml`` is the F1 of macro-precision and
  macro-recall over all labels (CAML; the macro-F1 of CAML, LAAT, MSMN, PLM-ICD).
* Undefined values (AUROC of a label without negatives, recall without positives,
  an empty macro average, ...) are ``nan``; they never raise.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["compute", "tune_threshold", "per_label", "LABEL_SETS", "THRESHOLD_KEYS"]

# `label_set` of `compute` → what its output records as "label_set" (see the module docstring).
LABEL_SETS = {
    "all": "every code of the label space",
    "edin": "codes with a positive in the split, documents with a positive (Edin et al.); "
            "AUROC over every code and document, as their code",
}


# --------------------------------------------------------------------------- #
# Input handling and small numeric helpers
# --------------------------------------------------------------------------- #
def _validate(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """Return (bool labels, float scores), both (n_docs, n_labels)."""
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(
            f"y_true and y_score must be 2-D arrays of the same shape, got {y.shape} and {s.shape}"
        )
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("y_score contains NaN")
    return y != 0, s


def _divide(num, den) -> np.ndarray:
    """Element-wise num / den as float, nan where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _mean(values: np.ndarray) -> float:
    """Mean as a python float; nan (without a warning) for an empty array."""
    return float(np.mean(values)) if values.size else float("nan")


# --------------------------------------------------------------------------- #
# Ranking: where each positive falls in its row once sorted by descending score
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _RankedPositives:
    """Positions of the positive cells of each row after sorting the row by score.

    Rows are sorted by descending score. Each per-positive array has one entry per
    positive cell. Positions are 0-based within the row. A *run* is a maximal block of
    equal scores; sklearn evaluates one threshold per run.
    """

    n_rows: int
    n_cols: int
    row: np.ndarray  # (n_pos_total,) row of each positive
    run_start: np.ndarray  # first position of the positive's run of tied scores
    run_end: np.ndarray  # last position of that run
    tp_at_end: np.ndarray  # positives of the row at positions <= run_end
    rank: np.ndarray | None = None  # tie-broken position (argsort order), rows only

    @property
    def n_pos(self) -> np.ndarray:
        """(n_rows,) number of positives per row."""
        return np.bincount(self.row, minlength=self.n_rows)


def _rank_rows(y: np.ndarray, s: np.ndarray) -> _RankedPositives:
    """Rank each row of s (n, m) by descending score and locate the positives of y.

    One argsort per row; the rest is flat index arithmetic on (n * m,) arrays. The
    work is done in ascending order (gathering through a reversed view is ~2x
    slower) and mirrored at the end: ascending position q is descending position
    m - 1 - q, which reproduces the ``np.argsort(score)[::-1]`` order used by CAML.
    """
    n, m = s.shape
    flat_order = np.argsort(s, axis=1)
    flat_order += (np.arange(n) * m)[:, None]
    s_sorted = s.ravel()[flat_order]
    y_sorted = y.ravel()[flat_order]
    del flat_order

    # Flat indices of run starts, plus the sentinel n * m. Every row start is a run
    # start, so the run after a positive's run starts in the same row or the next.
    new_run = np.ones(n * m + 1, dtype=bool)
    new_run[: n * m].reshape(n, m)[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]
    del s_sorted
    starts = np.flatnonzero(new_run)
    del new_run

    pos = np.flatnonzero(y_sorted)  # flat ascending indices of the positives
    run_idx = np.searchsorted(starts, pos, side="right") - 1
    row = pos // m
    row_offset = row * m
    asc_first = starts[run_idx] - row_offset  # ascending run bounds within the row
    asc_last = starts[run_idx + 1] - 1 - row_offset

    # Positives ranked at or above the run = row's positives not strictly below it.
    n_pos = np.bincount(row, minlength=n)
    below = np.searchsorted(pos, starts[run_idx]) - np.searchsorted(pos, row_offset)
    return _RankedPositives(
        n_rows=n,
        n_cols=m,
        row=row,
        run_start=m - 1 - asc_last,
        run_end=m - 1 - asc_first,
        tp_at_end=n_pos[row] - below,
        rank=m - 1 - (pos - row_offset),
    )


def _rank_columns(y: np.ndarray, s: np.ndarray) -> _RankedPositives:
    """_rank_rows over labels: each column of (n_docs, n_labels) s is one row."""
    return _rank_rows(np.ascontiguousarray(y.T), np.ascontiguousarray(s.T))


def _sorted_pos_neg(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending-sorted scores of all positive cells and of all negative cells."""
    return np.sort(s[y], axis=None), np.sort(s[~y], axis=None)


def _count_ge(sorted_values: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Number of entries of sorted_values >= each v."""
    return sorted_values.size - np.searchsorted(sorted_values, v, side="left")


def _count_gt(sorted_values: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Number of entries of sorted_values > each v."""
    return sorted_values.size - np.searchsorted(sorted_values, v, side="right")


def _rank_flat(y: np.ndarray, s: np.ndarray) -> _RankedPositives:
    """Ranking of all cells pooled into one row (micro averaging).

    Sorting positives and negatives separately and counting with searchsorted is
    cheaper than an argsort of every cell.
    """
    pos, neg = _sorted_pos_neg(y, s)
    tp_ge = _count_ge(pos, pos)
    run_start = _count_gt(pos, pos) + _count_gt(neg, pos)
    run_end = tp_ge + _count_ge(neg, pos) - 1
    return _RankedPositives(
        n_rows=1,
        n_cols=y.size,
        row=np.zeros(pos.size, dtype=np.intp),
        run_start=run_start,
        run_end=run_end,
        tp_at_end=tp_ge,
    )


def _auroc(r: _RankedPositives) -> np.ndarray:
    """(n_rows,) AUROC per row via the Mann-Whitney U statistic with mid-ranks."""
    n_pos = r.n_pos
    n_neg = r.n_cols - n_pos
    # A run at descending positions [a, b] has ascending 1-based mid-rank m - (a + b) / 2.
    midrank = r.n_cols - 0.5 * (r.run_start + r.run_end)
    rank_sum = np.bincount(r.row, weights=midrank, minlength=r.n_rows)
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return _divide(u, n_pos * n_neg.astype(np.float64))


def _average_precision(r: _RankedPositives) -> np.ndarray:
    """(n_rows,) average precision per row, as sklearn (step-wise, ties grouped).

    AP = sum over thresholds of (recall increment) x precision; each positive adds
    1/n_pos recall at its run's threshold, where precision is tp_at_end / (run_end + 1).
    """
    precision_at_run = r.tp_at_end / (r.run_end + 1.0)
    total = np.bincount(r.row, weights=precision_at_run, minlength=r.n_rows)
    return _divide(total, r.n_pos)


# --------------------------------------------------------------------------- #
# Thresholded metrics
# --------------------------------------------------------------------------- #
def _confusion(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label (n_labels,) true positive, false positive, false negative counts."""
    tp = np.count_nonzero(y & pred, axis=0)
    fp = np.count_nonzero(pred, axis=0) - tp
    fn = np.count_nonzero(y, axis=0) - tp
    return tp, fp, fn


def _f1(tp, fp, fn) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN); nan when nothing is true or predicted."""
    return _divide(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn)


def _caml_macro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """CAML's macro F1: harmonic mean of macro precision and macro recall.

    Per-label precision and recall use 0/0 := 0 and are averaged over all labels.
    """
    if tp.size == 0:
        return float("nan")
    precision = float(np.nan_to_num(_divide(tp, tp + fp)).mean())
    recall = float(np.nan_to_num(_divide(tp, tp + fn)).mean())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# The metrics of `compute` that the decision threshold changes (the others rank the scores): a row of a
# report at another threshold repeats every other metric.
THRESHOLD_KEYS = ("f1_micro", "f1_macro", "f1_macro_caml", "precision_micro", "recall_micro", "exact_match")


def _threshold_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    tp, fp, fn = _confusion(y, pred)
    tp_sum, fp_sum, fn_sum = int(tp.sum()), int(fp.sum()), int(fn.sum())
    has_positive = (tp + fn) > 0
    return {
        "f1_micro": float(_f1(tp_sum, fp_sum, fn_sum)),
        "f1_macro": _mean(_f1(tp, fp, fn)[has_positive]),
        "f1_macro_caml": _caml_macro_f1(tp, fp, fn),
        "precision_micro": float(_divide(tp_sum, tp_sum + fp_sum)),
        "recall_micro": float(_divide(tp_sum, tp_sum + fn_sum)),
        "exact_match": _mean(np.all(y == pred, axis=1)),
    }


# --------------------------------------------------------------------------- #
# Per-document ranking metrics
# --------------------------------------------------------------------------- #
def _precision_at_k(r: _RankedPositives, k: int) -> float:
    """Mean over documents with a true label of (#true among the top k) / k."""
    hits = np.bincount(r.row[r.rank < k], minlength=r.n_rows)
    return _mean(hits[r.n_pos > 0] / k)


def _r_precision(r: _RankedPositives) -> float:
    """Mean over documents with R > 0 true labels of precision in the top R."""
    n_pos = r.n_pos
    hits = np.bincount(r.row[r.rank < n_pos[r.row]], minlength=r.n_rows)
    has_positive = n_pos > 0
    return _mean(hits[has_positive] / n_pos[has_positive])


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def compute(y_true, y_score, threshold: float = 0.5, ks=(5, 8, 15), label_set: str = "all") -> dict:
    """All evaluation metrics for one split.

    Args:
        y_true: (n_docs, n_labels) 0/1 array.
        y_score: (n_docs, n_labels) float scores (probabilities).
        threshold: a label is predicted when ``y_score >= threshold``.
        ks: cut-offs for precision@k (one ``p_at_{k}`` key each).
        label_set: ``"all"`` scores every column; ``"edin"`` Edin et al.'s rule: the
            columns with a positive and the documents with a positive, AUROC over all
            (module docstring).

    Returns:
        dict of python floats/ints: auroc_/auprc_ micro and macro, f1_micro,
        f1_macro (Edin et al.: labels with a positive), f1_macro_caml,
        precision_micro, recall_micro, p_at_{k}, r_precision, map (these three over
        the documents with a positive), exact_match, n_labels_scored (labels with a
        positive and a negative: those in the macro AUROC), n_docs and n_labels (the
        documents and codes scored), threshold; and label_set, a str
        (``LABEL_SETS[label_set]``).
    """
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
    y, s = _validate(y_true, y_score)
    out = _all_codes(y, s, threshold, ks) if label_set == "all" else _edin(y, s, threshold, ks)
    out["label_set"] = LABEL_SETS[label_set]
    return out


def _all_codes(y: np.ndarray, s: np.ndarray, threshold: float, ks) -> dict:
    """`compute` over every cell of (y, s)."""
    n_docs, n_labels = y.shape

    # The three rankings are independent and dominated by numpy sorts, which release
    # the GIL: two threads give ~1.7x on the full MIMIC-III label space.
    with ThreadPoolExecutor(max_workers=2) as pool:
        labels_job = pool.submit(_rank_columns, y, s)
        docs_job = pool.submit(_rank_rows, y, s)
        flat_job = pool.submit(_rank_flat, y, s)
        labels, docs, flat = labels_job.result(), docs_job.result(), flat_job.result()

    label_pos = labels.n_pos
    scored = (label_pos > 0) & (label_pos < n_docs)
    doc_has_positive = docs.n_pos > 0

    out = {
        "auroc_micro": float(_auroc(flat)[0]),
        "auroc_macro": _mean(_auroc(labels)[scored]),
        "auprc_micro": float(_average_precision(flat)[0]),
        "auprc_macro": _mean(_average_precision(labels)[scored]),
    }
    out.update(_threshold_metrics(y, s >= threshold))
    for k in ks:
        out[f"p_at_{k}"] = _precision_at_k(docs, k)
    out["r_precision"] = _r_precision(docs)
    out["map"] = _mean(_average_precision(docs)[doc_has_positive])
    out["n_labels_scored"] = int(scored.sum())
    out["n_docs"] = int(n_docs)
    out["n_labels"] = int(n_labels)
    out["threshold"] = float(threshold)
    return out


def _edin(y: np.ndarray, s: np.ndarray, threshold: float, ks) -> dict:
    """`compute` as Edin et al.'s code scores a split: the codes and documents with a
    positive, except AUROC, which their ``MetricCollection.compute`` takes over all."""
    docs, codes = y.any(axis=1), y.any(axis=0)
    if docs.all() and codes.all():
        return _all_codes(y, s, threshold, ks)
    keep = np.ix_(docs, codes)
    out = _all_codes(y[keep], s[keep], threshold, ks)
    out.update(_auroc_all(y, s))
    return out


def _auroc_all(y: np.ndarray, s: np.ndarray) -> dict:
    """Micro and macro AUROC over every cell, and the labels of the macro (n_labels_scored)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        labels_job = pool.submit(_rank_columns, y, s)
        flat = _rank_flat(y, s)
        labels = labels_job.result()
    scored = (labels.n_pos > 0) & (labels.n_pos < y.shape[0])
    return {"auroc_micro": float(_auroc(flat)[0]), "auroc_macro": _mean(_auroc(labels)[scored]),
            "n_labels_scored": int(scored.sum())}


def tune_threshold(y_true_val, y_score_val) -> float:
    """Threshold maximising micro-F1 on validation data, exact over distinct scores.

    Args:
        y_true_val, y_score_val: (n_docs, n_labels) labels and scores.

    Returns:
        A score value t such that ``y_score_val >= t`` attains the best micro-F1
        (the highest such t on ties); 0.5 if there are no positives.
    """
    y, s = _validate(y_true_val, y_score_val)
    pos, neg = _sorted_pos_neg(y, s)
    if pos.size == 0:
        return 0.5
    # Only thresholds equal to some positive's score can be optimal: moving a
    # threshold up past scores held only by negatives removes FPs and no TPs.
    candidates = np.unique(pos)[::-1]
    tp = _count_ge(pos, candidates)
    fp = _count_ge(neg, candidates)
    f1 = 2.0 * tp / (tp + fp + pos.size)
    return float(candidates[np.argmax(f1)])


def per_label(y_true, y_score, threshold: float = 0.5) -> pd.DataFrame:
    """Per-label metrics for per-code reports.

    Args:
        y_true, y_score: (n_docs, n_labels) labels and scores.
        threshold: a label is predicted when ``y_score >= threshold``.

    Returns:
        DataFrame indexed by label index (n_labels rows) with columns auroc, auprc,
        f1, precision, recall, support (positives), n_predicted; nan where
        undefined (auroc without positives or negatives, auprc without positives,
        precision without predictions, recall without positives, f1 with neither).
    """
    y, s = _validate(y_true, y_score)
    labels = _rank_columns(y, s)
    tp, fp, fn = _confusion(y, s >= threshold)
    frame = pd.DataFrame(
        {
            "auroc": _auroc(labels),
            "auprc": _average_precision(labels),
            "f1": _f1(tp, fp, fn),
            "precision": _divide(tp, tp + fp),
            "recall": _divide(tp, tp + fn),
            "support": (tp + fn).astype(np.int64),
            "n_predicted": (tp + fp).astype(np.int64),
        }
    )
    frame.index.name = "label"
    return frame
