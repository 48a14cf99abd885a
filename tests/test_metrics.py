"""Tests for icdlib.measure.metrics: hand-computed cases and equality with scikit-learn loops."""

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from icdlib.measure import metrics

NAN = float("nan")


# --------------------------------------------------------------------------- #
# Reference implementation: scikit-learn / numpy loops over labels and documents
# --------------------------------------------------------------------------- #
def _mean_or_nan(values):
    return float(np.mean(values)) if len(values) else NAN


def reference(y_true, y_score, threshold=0.5, ks=(5, 8, 15)):
    y = np.asarray(y_true) != 0
    s = np.asarray(y_score, dtype=np.float64)
    n, m = y.shape
    pred = s >= threshold
    ref = {}

    flat_y, flat_s = y.ravel(), s.ravel()
    ref["auroc_micro"] = roc_auc_score(flat_y, flat_s) if 0 < flat_y.sum() < flat_y.size else NAN
    ref["auprc_micro"] = average_precision_score(flat_y, flat_s) if flat_y.any() else NAN
    scored = [j for j in range(m) if 0 < y[:, j].sum() < n]
    ref["auroc_macro"] = _mean_or_nan([roc_auc_score(y[:, j], s[:, j]) for j in scored])
    ref["auprc_macro"] = _mean_or_nan([average_precision_score(y[:, j], s[:, j]) for j in scored])
    ref["n_labels_scored"] = len(scored)

    # Micro scores = binary scores over all cells (sklearn reads an (n, 1) matrix
    # as binary, not multilabel, so flatten explicitly).
    yi, pi = y.astype(int), pred.astype(int)
    flat_pred = pi.ravel()
    ref["f1_micro"] = f1_score(flat_y, flat_pred, zero_division=0) if (y | pred).any() else NAN
    ref["precision_micro"] = precision_score(flat_y, flat_pred) if pred.any() else NAN
    ref["recall_micro"] = recall_score(flat_y, flat_pred) if y.any() else NAN
    with_positive = [j for j in range(m) if y[:, j].any()]
    ref["f1_macro"] = _mean_or_nan(
        [f1_score(yi[:, j], pi[:, j], zero_division=0) for j in with_positive]
    )
    # Per-label precision / recall with 0/0 := 0, one sklearn call for all labels
    # (an (n, 1) matrix is read as binary: ask for the positive class only).
    label_p, label_r, _, _ = precision_recall_fscore_support(
        yi, pi, average=None, zero_division=0, labels=[1] if m == 1 else None
    )
    macro_p, macro_r = np.mean(label_p), np.mean(label_r)
    ref["f1_macro_caml"] = 0.0 if macro_p + macro_r == 0 else 2 * macro_p * macro_r / (macro_p + macro_r)
    ref["exact_match"] = np.mean([accuracy_score(yi[i], pi[i]) == 1 for i in range(n)])

    order = np.argsort(s, axis=1)[:, ::-1]  # CAML's ranking
    with_label = [i for i in range(n) if y[i].any()]  # P@k, R-precision and MAP: the same documents
    for k in ks:
        ref[f"p_at_{k}"] = _mean_or_nan([y[i, order[i, :k]].sum() / k for i in with_label])
    ref["r_precision"] = _mean_or_nan(
        [y[i, order[i, : y[i].sum()]].sum() / y[i].sum() for i in with_label]
    )
    ref["map"] = _mean_or_nan([average_precision_score(y[i], s[i]) for i in with_label])
    ref["n_docs"], ref["n_labels"], ref["threshold"] = n, m, threshold
    return ref


def assert_same(got, ref, tol=1e-6):
    assert set(ref) <= set(got)
    for key, expected in ref.items():
        value = got[key]
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(value), f"{key}: expected nan, got {value}"
        else:
            assert value == pytest.approx(expected, abs=tol), f"{key}: {value} != {expected}"


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #
def _random(n, m, p, seed, decimals=None):
    rng = np.random.default_rng(seed)
    y = rng.random((n, m)) < p
    s = rng.random((n, m))
    s[y] = np.minimum(1.0, s[y] + 0.25)  # some signal
    if decimals is not None:
        s = np.round(s, decimals)
    return y, s


def _with_constant_columns(seed):
    y, s = _random(30, 12, 0.3, seed, decimals=1)
    y[:, 0] = False  # no positives
    y[:, 1] = True  # no negatives
    y[:, 2] = False
    s[:, 2] = 0.9  # no positives, all predicted
    s[:, 3] = 0.5  # one score for the whole column
    return y, s


CASES = {
    "random_dense": lambda: _random(30, 20, 0.3, 0),
    "random_sparse": lambda: _random(40, 60, 0.05, 1),
    "ties_1_decimal": lambda: _random(30, 30, 0.3, 2, decimals=1),
    "ties_binary_scores": lambda: _random(40, 15, 0.4, 3, decimals=0),
    "all_scores_equal": lambda: (_random(20, 10, 0.3, 4)[0], np.full((20, 10), 0.5)),
    "constant_columns": lambda: _with_constant_columns(5),
    "single_document": lambda: _random(1, 25, 0.3, 6, decimals=1),
    "single_label": lambda: _random(40, 1, 0.3, 7, decimals=1),
    "int_labels_float32_scores": lambda: tuple(
        a.astype(t) for a, t in zip(_random(30, 20, 0.3, 8, decimals=2), (np.int64, np.float32))
    ),
    "float_labels": lambda: tuple(
        a.astype(np.float64) for a in _random(30, 20, 0.3, 9, decimals=2)
    ),
}


# --------------------------------------------------------------------------- #
# Hand-computed cases
# --------------------------------------------------------------------------- #
# 3 documents x 4 labels. Rankings (descending score, T = true label):
#   doc 0: l0 .9 T, l2 .6 T, l1 .2 F, l3 .1 F  -> AP = (1/1 + 2/2) / 2 = 1
#   doc 1: l2 .8 F, l3 .5 F, l1 .4 T, l0 .3 F  -> AP = (1/3) / 1 = 1/3
#   doc 2: l3 .9 T, l2 .8 F, l0 .7 T, l1 .3 T  -> AP = (1 + 2/3 + 3/4) / 3 = 29/36
HAND_Y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]])
HAND_S = np.array([[0.9, 0.2, 0.6, 0.1], [0.3, 0.4, 0.8, 0.5], [0.7, 0.3, 0.8, 0.9]])


def test_hand_computed_ranking_metrics():
    got = metrics.compute(HAND_Y, HAND_S, ks=(1, 2, 5))
    assert got["map"] == pytest.approx((1 + 1 / 3 + 29 / 36) / 3)  # = 77/108
    # P@1: T, F, T -> 2/3.  P@2: 2/2, 0/2, 1/2 -> 1/2.
    assert got["p_at_1"] == pytest.approx(2 / 3)
    assert got["p_at_2"] == pytest.approx(0.5)
    # P@5 with only 4 labels still divides by 5 (CAML): (2 + 1 + 3) / 5 / 3 = 0.4.
    assert got["p_at_5"] == pytest.approx(0.4)
    # R-precision: doc 0 top-2 = 2/2, doc 1 top-1 = 0/1, doc 2 top-3 = 2/3.
    assert got["r_precision"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_hand_computed_threshold_metrics():
    # Predicted at 0.5: doc 0 {0, 2} (exact), doc 1 {2, 3}, doc 2 {0, 2, 3}.
    # Per label (TP, FP, FN): l0 (2, 0, 0), l1 (0, 0, 2), l2 (1, 2, 0), l3 (1, 1, 0).
    got = metrics.compute(HAND_Y, HAND_S, threshold=0.5)
    assert got["precision_micro"] == pytest.approx(4 / 7)  # TP 4, FP 3
    assert got["recall_micro"] == pytest.approx(4 / 6)  # FN 2
    assert got["f1_micro"] == pytest.approx(8 / 13)  # 2TP / (2TP + FP + FN)
    # Per-label F1: 1, 0, 2/4, 2/3 (every label has a positive).
    assert got["f1_macro"] == pytest.approx((1 + 0 + 0.5 + 2 / 3) / 4)  # 13/24
    # CAML: macro P = (1 + 0 + 1/3 + 1/2) / 4 = 11/24, macro R = 3/4 -> 33/58.
    assert got["f1_macro_caml"] == pytest.approx(33 / 58)
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["n_docs"] == 3 and got["n_labels"] == 4 and got["threshold"] == 0.5


def test_threshold_keys_are_exactly_what_the_threshold_changes():
    low, high = metrics.compute(HAND_Y, HAND_S, threshold=0.3), metrics.compute(HAND_Y, HAND_S, threshold=0.9)
    changed = {k for k in low if k != "threshold" and low[k] != high[k]}
    assert changed == set(metrics.THRESHOLD_KEYS)  # every one moves on the hand case, no ranking metric does


def test_hand_computed_ties_auroc_auprc():
    # One label, scores (.8 T, .8 F, .5 T, .2 F).
    # AUROC: positive .8 beats .2 and ties .8 (1.5), positive .5 beats .2 (1) -> 2.5/4.
    # AP: threshold .8 -> P 1/2, R 1/2; threshold .5 -> P 2/3, R 1;
    #     AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12 (no interpolation, tie = one threshold).
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.8], [0.8], [0.5], [0.2]])
    row = metrics.per_label(y, s).iloc[0]
    assert row["auroc"] == pytest.approx(0.625)
    assert row["auprc"] == pytest.approx(7 / 12)
    got = metrics.compute(y, s)
    assert got["auroc_macro"] == pytest.approx(0.625)
    assert got["auprc_micro"] == pytest.approx(7 / 12)


def test_output_types_and_keys():
    got = metrics.compute(HAND_Y, HAND_S, ks=(1, 3))
    expected = {
        "auroc_micro", "auroc_macro", "auprc_micro", "auprc_macro", "f1_micro", "f1_macro",
        "f1_macro_caml", "precision_micro", "recall_micro", "p_at_1", "p_at_3",
        "r_precision", "map", "exact_match", "n_labels_scored", "n_docs", "n_labels",
        "threshold", "label_set",
    }  # fmt: skip
    assert set(got) == expected
    for key, value in got.items():
        expected_type = int if key.startswith("n_") else str if key == "label_set" else float
        assert type(value) is expected_type, key


# --------------------------------------------------------------------------- #
# Equality with scikit-learn
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", sorted(CASES))
def test_compute_matches_sklearn(name):
    y, s = CASES[name]()
    assert_same(metrics.compute(y, s), reference(y, s))


@pytest.mark.parametrize("threshold", [0.3, 0.7, 1.01])
def test_compute_matches_sklearn_other_thresholds(threshold):
    y, s = CASES["ties_1_decimal"]()  # 0.3 and 0.7 are tied score values
    assert_same(metrics.compute(y, s, threshold=threshold), reference(y, s, threshold))


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_label_matches_sklearn(name):
    y, s = CASES[name]()
    y, s = np.asarray(y) != 0, np.asarray(s, dtype=np.float64)
    n, m = y.shape
    pred = s >= 0.5
    frame = metrics.per_label(y, s, 0.5)
    assert list(frame.columns) == [
        "auroc", "auprc", "f1", "precision", "recall", "support", "n_predicted",
    ]  # fmt: skip
    assert len(frame) == m
    for j in range(m):
        row, support, n_pred = frame.iloc[j], int(y[:, j].sum()), int(pred[:, j].sum())
        assert row["support"] == support and row["n_predicted"] == n_pred
        if 0 < support < n:
            assert row["auroc"] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-6)
        else:
            assert math.isnan(row["auroc"])
        if support > 0:
            assert row["auprc"] == pytest.approx(average_precision_score(y[:, j], s[:, j]), abs=1e-6)
            assert row["recall"] == pytest.approx(recall_score(y[:, j], pred[:, j]), abs=1e-6)
        else:
            assert math.isnan(row["auprc"]) and math.isnan(row["recall"])
        if n_pred > 0:
            assert row["precision"] == pytest.approx(precision_score(y[:, j], pred[:, j]), abs=1e-6)
        else:
            assert math.isnan(row["precision"])
        if support + n_pred > 0:
            expected_f1 = f1_score(y[:, j], pred[:, j], zero_division=0)
            assert row["f1"] == pytest.approx(expected_f1, abs=1e-6)
        else:
            assert math.isnan(row["f1"])


# --------------------------------------------------------------------------- #
# Undefined metrics
# --------------------------------------------------------------------------- #
def test_all_zero_labels_give_nan_not_exception():
    rng = np.random.default_rng(0)
    y = np.zeros((10, 6), dtype=int)
    s = rng.random((10, 6))
    got = metrics.compute(y, s)
    for key in ["auroc_micro", "auroc_macro", "auprc_micro", "auprc_macro", "f1_macro",
                "recall_micro", "r_precision", "map"]:  # fmt: skip
        assert math.isnan(got[key]), key
    assert got["n_labels_scored"] == 0
    assert math.isnan(got["p_at_5"])  # no document with a positive: P@k is undefined like MAP
    assert_same(got, reference(y, s))
    frame = metrics.per_label(y, s)
    assert frame[["auroc", "auprc", "recall"]].isna().all().all()


def test_nothing_true_and_nothing_predicted():
    y = np.zeros((4, 3))
    s = np.full((4, 3), 0.1)
    got = metrics.compute(y, s)
    assert math.isnan(got["f1_micro"]) and math.isnan(got["precision_micro"])
    assert got["exact_match"] == 1.0
    assert got["f1_macro_caml"] == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        metrics.compute(np.zeros((3, 4)), np.zeros((3, 5)))


# --------------------------------------------------------------------------- #
# Threshold tuning
# --------------------------------------------------------------------------- #
def _micro_f1(y, s, t):
    pred = s >= t
    tp = np.sum(pred & y)
    return 2 * tp / (pred.sum() + y.sum())


@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tune_threshold_matches_brute_force(decimals, seed):
    y, s = _random(60, 30, 0.1, seed, decimals=decimals)
    best = max(_micro_f1(y, s, t) for t in np.unique(s))
    t = metrics.tune_threshold(y, s)
    assert t in set(np.unique(s).tolist())
    assert _micro_f1(y, s, t) == pytest.approx(best, abs=1e-12)


def test_tune_threshold_hand_example():
    # Sorted cells: .9 T, .8 F, .7 T, .6 T, .2 F (P = 3).
    # F1 at t = .9: 2/(1+3) = .5; .8: 2/(2+3); .7: 4/(3+3) = .667; .6: 6/(4+3) = .857.
    y = np.array([[1, 0, 1], [0, 1, 0]])
    s = np.array([[0.9, 0.8, 0.7], [0.2, 0.6, 0.1]])
    assert metrics.tune_threshold(y, s) == 0.6


def test_tune_threshold_without_positives():
    assert metrics.tune_threshold(np.zeros((3, 4)), np.random.default_rng(0).random((3, 4))) == 0.5


# --------------------------------------------------------------------------- #
# Full MIMIC-III size
# --------------------------------------------------------------------------- #
def test_full_mimic_size_matches_sklearn_on_label_subset():
    n_docs, n_labels = 3372, 8922
    rng = np.random.default_rng(11)
    s = rng.random((n_docs, n_labels))
    y = np.zeros((n_docs, n_labels), dtype=bool)
    y.ravel()[rng.integers(0, y.size, size=int(15.9 * n_docs))] = True  # ~16 codes/doc
    s[y] = np.minimum(1.0, s[y] + 0.25)
    got = metrics.compute(y, s)
    assert got["n_docs"] == n_docs and got["n_labels"] == n_labels
    for key in ["auroc_micro", "auroc_macro", "auprc_micro", "auprc_macro", "map", "p_at_8"]:
        assert 0.0 < got[key] <= 1.0, key

    frame = metrics.per_label(y, s)
    scored = frame["auroc"].notna().to_numpy()
    assert got["n_labels_scored"] == scored.sum()
    assert got["auroc_macro"] == pytest.approx(frame["auroc"][scored].mean(), abs=1e-12)
    assert got["auprc_macro"] == pytest.approx(frame["auprc"][scored].mean(), abs=1e-12)

    subset = np.random.default_rng(0).choice(np.flatnonzero(scored), size=50, replace=False)
    for j in subset:
        assert frame["auroc"].iloc[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-6)
        assert frame["auprc"].iloc[j] == pytest.approx(
            average_precision_score(y[:, j], s[:, j]), abs=1e-6
        )
        assert frame["f1"].iloc[j] == pytest.approx(
            f1_score(y[:, j], s[:, j] >= 0.5, zero_division=0), abs=1e-6
        )


# --------------------------------------------------------------------------- #
# P@k, R-precision and MAP over the same documents; the two macro-F1s
# --------------------------------------------------------------------------- #
def test_document_without_positive_is_left_out_of_p_at_k_map_and_r_precision_alike():
    # HAND_Y/HAND_S plus doc 3 with no true label (scores .95 .1 .1 .1): it changes none of
    # P@k, R-precision, MAP; before, P@1 would have been (1 + 0 + 1 + 0) / 4 = 1/2.
    y = np.vstack([HAND_Y, [0, 0, 0, 0]])
    s = np.vstack([HAND_S, [0.95, 0.1, 0.1, 0.1]])
    got = metrics.compute(y, s, ks=(1, 2, 5))
    assert got["p_at_1"] == pytest.approx(2 / 3)
    assert got["p_at_2"] == pytest.approx(0.5)
    assert got["p_at_5"] == pytest.approx(0.4)
    assert got["r_precision"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert got["map"] == pytest.approx(77 / 108)
    assert got["n_docs"] == 4
    assert_same(got, reference(y, s, ks=(1, 2, 5)))


def test_p_at_k_map_and_r_precision_exact_with_two_empty_documents():
    # doc 0: l1 .9 T, l0 .5 F, l2 .1 F -> P@1 1, P@2 1/2, R-prec 1/1, AP 1
    # doc 1: no positive; doc 2: l0 .8 F, l2 .6 T, l1 .3 T -> P@1 0, P@2 1/2, R-prec 1/2,
    #        AP = (1/2 + 2/3) / 2 = 7/12; doc 3: no positive.
    y = np.array([[0, 1, 0], [0, 0, 0], [0, 1, 1], [0, 0, 0]])
    s = np.array([[0.5, 0.9, 0.1], [0.9, 0.8, 0.7], [0.8, 0.3, 0.6], [0.2, 0.3, 0.4]])
    got = metrics.compute(y, s, ks=(1, 2))
    assert got["p_at_1"] == pytest.approx(1 / 2)
    assert got["p_at_2"] == pytest.approx(1 / 2)
    assert got["r_precision"] == pytest.approx(3 / 4)
    assert got["map"] == pytest.approx((1 + 7 / 12) / 2)


def test_both_macro_f1_definitions_by_hand():
    # 4 documents x 3 labels, threshold 0.5. Per label (TP, FP, FN):
    #   l0 (2, 0, 1): P 1, R 2/3, F1 4/5;  l1 (1, 1, 1): P 1/2, R 1/2, F1 1/2;
    #   l2 no positive, 1 FP: P 0, R 0/0 := 0, F1 0 (left out of the Edin mean).
    # Edin: mean(4/5, 1/2) = 13/20.  CAML: macro P = (1 + 1/2 + 0)/3 = 1/2,
    #   macro R = (2/3 + 1/2 + 0)/3 = 7/18 -> F1 = 2 * 1/2 * 7/18 / (1/2 + 7/18) = 7/16.
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.2], [0.3, 0.1, 0.9], [0.1, 0.2, 0.3]])
    got = metrics.compute(y, s, threshold=0.5)
    assert got["f1_macro"] == pytest.approx(13 / 20)
    assert got["f1_macro_caml"] == pytest.approx(7 / 16)
    assert got["n_labels_scored"] == 2  # l0 and l1 have a positive and a negative; l2 no positive
    assert_same(got, reference(y, s))


# --------------------------------------------------------------------------- #
# Label sets: every code of the label space, or Edin et al.'s codes with a positive
# --------------------------------------------------------------------------- #
# 4 documents x 6 codes; c4 and c5 have no positive in the split (T = true, F = false).
#   doc 0: c0 .9 T, c4 .8 F, c5 .4 F, c1 .3 T, c2 .2 F, c3 .1 F
#   doc 1: c5 .9 F, c0 .75 F, c2 .7 T, c4 .3 F, c3 .2 F, c1 .1 F
#   doc 2: c3 .8 T, c4 .6 F, c0 .4 T, c5 .3 F, c1 .2 F, c2 .1 F
#   doc 3: c4 .9 F, c3 .7 T, c0 .65 F, c1 .6 T, c2 .3 T, c5 .1 F
TOY_Y = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0], [0, 1, 1, 1, 0, 0]])
TOY_S = np.array([[0.9, 0.3, 0.2, 0.1, 0.8, 0.4], [0.75, 0.1, 0.7, 0.2, 0.3, 0.9],
                  [0.4, 0.2, 0.1, 0.8, 0.6, 0.3], [0.65, 0.6, 0.3, 0.7, 0.9, 0.1]])


def test_label_sets_by_hand_on_a_toy_with_two_codes_without_positive():
    every = metrics.compute(TOY_Y, TOY_S, ks=(1, 2, 3))
    edin = metrics.compute(TOY_Y, TOY_S, ks=(1, 2, 3), label_set="edin")
    # Ranking over all 6 codes. Hits in the top 1/2/3 and AP per document:
    #   doc 0: 1, 1, 1 -> AP (1/1 + 2/4) / 2 = 3/4;  doc 1: 0, 0, 1 -> AP 1/3
    #   doc 2: 1, 1, 2 -> AP (1 + 2/3) / 2 = 5/6;    doc 3: 0, 1, 1 -> AP (1/2 + 2/4 + 3/5) / 3 = 8/15
    assert every["p_at_1"] == pytest.approx(2 / 4)
    assert every["p_at_2"] == pytest.approx((1 + 0 + 1 + 1) / 2 / 4)  # 3/8
    assert every["p_at_3"] == pytest.approx((1 + 1 + 2 + 1) / 3 / 4)  # 5/12
    assert every["map"] == pytest.approx((3 / 4 + 1 / 3 + 5 / 6 + 8 / 15) / 4)  # 49/80
    # R-precision (R = 2, 1, 2, 3): 1/2, 0/1, 1/2, 1/3.
    assert every["r_precision"] == pytest.approx((1 / 2 + 0 + 1 / 2 + 1 / 3) / 4)  # 1/3
    # Edin et al.: only c0-c3, the codes with a positive. Rankings:
    #   doc 0: c0 T, c1 T, c2, c3 -> 1, 2, 2, AP 1;  doc 1: c0 F, c2 T, c3, c1 -> 0, 1, 1, AP 1/2
    #   doc 2: c3 T, c0 T, c1, c2 -> 1, 2, 2, AP 1;  doc 3: c3 T, c0 F, c1 T, c2 T -> 1, 1, 2,
    #   AP (1 + 2/3 + 3/4) / 3 = 29/36
    assert edin["p_at_1"] == pytest.approx(3 / 4)
    assert edin["p_at_2"] == pytest.approx((2 + 1 + 2 + 1) / 2 / 4)  # 3/4
    assert edin["p_at_3"] == pytest.approx((2 + 1 + 2 + 2) / 3 / 4)  # 7/12
    assert edin["map"] == pytest.approx((1 + 1 / 2 + 1 + 29 / 36) / 4)  # 119/144
    assert edin["r_precision"] == pytest.approx((1 + 0 + 1 + 2 / 3) / 4)  # 2/3

    # Threshold 0.5: predicted doc 0 {c0, c4}, doc 1 {c0, c2, c5}, doc 2 {c3, c4},
    # doc 3 {c0, c1, c3, c4}. Per code (TP, FP, FN): c0 (1, 2, 1), c1 (1, 0, 1), c2 (1, 0, 1),
    # c3 (2, 0, 0), c4 (0, 3, 0), c5 (0, 1, 0).
    # All codes: TP 5, FP 6, FN 3 -> micro F1 10/19, P 5/11.  Edin: c4, c5 out -> FP 2: 10/15, P 5/7.
    assert every["f1_micro"] == pytest.approx(10 / 19) and every["precision_micro"] == pytest.approx(5 / 11)
    assert edin["f1_micro"] == pytest.approx(2 / 3) and edin["precision_micro"] == pytest.approx(5 / 7)
    assert every["recall_micro"] == edin["recall_micro"] == pytest.approx(5 / 8)
    # Macro F1 over codes with a positive (2/5, 2/3, 2/3, 1) is the same under both: 41/60.
    assert every["f1_macro"] == edin["f1_macro"] == pytest.approx(41 / 60)
    # CAML's macro F1: per-code P (1/3, 1, 1, 1, 0, 0), R (1/2, 1/2, 1/2, 1, 0, 0).
    #   All: P 5/9, R 5/12 -> 10/21.  Edin's four codes: P 5/6, R 5/8 -> 5/7.
    assert every["f1_macro_caml"] == pytest.approx(10 / 21)
    assert edin["f1_macro_caml"] == pytest.approx(5 / 7)
    assert every["exact_match"] == edin["exact_match"] == 0.0

    # AUROC is over every code under both (Edin et al.'s MetricCollection.compute rescoring AUC
    # unfiltered). Micro: 8 positive and 16 negative cells; negatives below (ties half) each
    # positive: .9 15, .8 13.5, .7 12, .7 12, .6 10.5, .4 9.5, .3 8, .3 8 -> 88.5 / 128 = 177/256
    # (over c0-c3 alone it would be 54/64). Macro over c0-c3 (c4, c5 have no positive):
    # c0 2/4, c1 1, c2 1, c3 1 -> 7/8.
    assert every["auroc_micro"] == edin["auroc_micro"] == pytest.approx(177 / 256)
    assert every["auroc_macro"] == edin["auroc_macro"] == pytest.approx(7 / 8)
    assert metrics.compute(TOY_Y[:, :4], TOY_S[:, :4])["auroc_micro"] == pytest.approx(54 / 64)

    assert (every["n_labels"], every["n_docs"], every["n_labels_scored"]) == (6, 4, 4)
    assert (edin["n_labels"], edin["n_docs"], edin["n_labels_scored"]) == (4, 4, 4)
    assert every["label_set"] == metrics.LABEL_SETS["all"] == "every code of the label space"
    assert edin["label_set"] == metrics.LABEL_SETS["edin"]


def test_edin_label_set_drops_documents_without_positive_but_not_from_auroc():
    # doc 4 has no positive: it adds an FP (c0 .9) to every threshold metric over all documents;
    # Edin et al.'s filter_batch drops it from all but AUROC (scored on every document).
    y = np.vstack([TOY_Y, np.zeros(6, dtype=int)])
    s = np.vstack([TOY_S, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]])
    edin = metrics.compute(y, s, ks=(1, 2, 3), label_set="edin")
    four = metrics.compute(TOY_Y, TOY_S, ks=(1, 2, 3), label_set="edin")
    every = metrics.compute(y, s, ks=(1, 2, 3))
    assert every["f1_micro"] == pytest.approx(10 / 20)  # TP 5, FP 7, FN 3
    for key in four:
        if key.startswith("auroc") or key == "n_labels_scored":
            assert edin[key] == every[key], key
        else:
            assert edin[key] == four[key], key
    # c0's AUROC over 5 documents: positives .9 (beats .75, .65; ties .9) and .4 (none) -> 2.5/6.
    assert edin["auroc_macro"] == pytest.approx((2.5 / 6 + 1 + 1 + 1) / 4)


@pytest.mark.parametrize("name", ["random_sparse", "constant_columns", "single_document", "single_label", "random_dense"])
def test_edin_label_set_is_every_code_scoring_of_the_codes_and_documents_with_a_positive(name):
    y, s = CASES[name]()
    y, s = np.asarray(y) != 0, np.asarray(s, dtype=np.float64)
    docs, codes = y.any(axis=1), y.any(axis=0)
    assert not (docs.all() and codes.all())  # each case has codes or documents without a positive
    kept = reference(y[np.ix_(docs, codes)], s[np.ix_(docs, codes)])
    auroc = reference(y, s)
    expected = {**kept, **{k: auroc[k] for k in ("auroc_micro", "auroc_macro", "n_labels_scored")}}
    assert_same(metrics.compute(y, s, label_set="edin"), expected)


def test_every_code_is_still_the_default_and_other_label_sets_are_refused():
    assert metrics.compute(TOY_Y, TOY_S) == metrics.compute(TOY_Y, TOY_S, label_set="all")
    assert_same(metrics.compute(TOY_Y, TOY_S, label_set="all"), reference(TOY_Y, TOY_S))
    with pytest.raises(ValueError, match="label_set"):
        metrics.compute(TOY_Y, TOY_S, label_set="split")
