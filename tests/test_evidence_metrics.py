"""Tests for icdlib.measure.evidence_metrics: every metric on hand-made pairs equal to the arithmetic written beside
it, Edin et al.'s own formulas transcribed as references, edge cases (no evidence, equal scores, ties),
faithfulness against a hand-made linear model, and the note bootstrap against a slow loop."""

import json
import math

import numpy as np
import pytest
import sklearn.metrics

from icdlib.measure import evidence_metrics as em
from icdlib.measure import uncertainty

TOL = 1e-9  # Edin et al.'s 1e-11 guards move hand values by less than this


# Two pairs used throughout.
# A: scores 4, 3, 2, 1 -> normalised 0.4, 0.3, 0.2, 0.1; evidence on tokens 0 and 2.
# B: scores 1, 1, 2 -> normalised 0.25, 0.25, 0.5; evidence on token 2.
A = (np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 0, 1, 0]))
B = (np.array([1.0, 1.0, 2.0]), np.array([0, 0, 1]))


def test_normalize_clips_negatives_and_sums_to_one():
    # [1, 3, -2, 0] -> [1, 3, 0, 0] / 4
    np.testing.assert_allclose(em.normalize([1.0, 3.0, -2.0, 0.0]), [0.25, 0.75, 0.0, 0.0], atol=TOL)
    np.testing.assert_array_equal(em.normalize([0.0, 0.0]), [0.0, 0.0])


def test_precision_recall_f1_by_hand():
    # threshold 0.22. A predicts 0.4, 0.3 (tokens 0, 1): TP 1 (token 0), FP 1, FN 1 (token 2).
    # B predicts 0.25, 0.25, 0.5 (all): TP 1, FP 2, FN 0. Sums TP 2, FP 3, FN 1.
    # P = 2 / 5 = 0.4, R = 2 / 3, F1 = 2 * 0.4 * 2/3 / (0.4 + 2/3) = (1.6/3) / (3.2/3) = 0.5
    out = em.precision_recall_f1([A[0], B[0]], [A[1], B[1]], 0.22)
    assert out == pytest.approx({"precision": 0.4, "recall": 2 / 3, "f1": 0.5}, abs=TOL)


def test_a_token_at_the_threshold_is_not_predicted():
    # A at t = token 0's normalised score (0.4, the highest): no token is strictly above it, so none is
    # predicted -> P = 0 / 1e-11 = 0, R = 0, F1 = 0 (Edin's guards)
    t = float(em.normalize(A[0])[0])
    assert em.precision_recall_f1([A[0]], [A[1]], t) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # just below it, token 0 is predicted: P = 1/1, R = 1/2, F1 = 2/3
    out = em.precision_recall_f1([A[0]], [A[1]], t - 1e-6)
    assert out == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3}, abs=TOL)


def test_tune_threshold_picks_the_first_best_grid_point():
    # scores sum to 1000, normalised 0.4 (E), 0.3, 0.12, 0.0755 (E), 0.0535, 0.051; two evidence tokens.
    #   t < 0.051            : all 6 predicted, TP 2 FP 4 -> P 1/3, R 1, F1 0.5
    #   0.051 <= t < 0.0535  : TP 2 FP 3 -> P 2/5, R 1, F1 0.8/1.4 = 4/7
    #   0.0535 <= t < 0.0755 : TP 2 FP 2 -> P 1/2, R 1, F1 2/3   <- best, first grid point 0.054
    #   t >= 0.0755          : TP 1 FP 2 -> P 1/3, R 1/2, F1 (1/3)/(5/6) = 0.4
    scores = [np.array([400.0, 300.0, 120.0, 75.5, 53.5, 51.0])]
    evidence = [np.array([1, 0, 0, 1, 0, 0])]
    t = em.tune_threshold(scores, evidence)
    assert t == pytest.approx(0.054, abs=1e-12)
    assert em.precision_recall_f1(scores, evidence, t)["f1"] == pytest.approx(2 / 3, abs=TOL)
    assert em.precision_recall_f1(scores, evidence, 0.053)["f1"] == pytest.approx(4 / 7, abs=TOL)
    assert em.precision_recall_f1(scores, evidence, 0.08)["f1"] == pytest.approx(0.4, abs=TOL)
    # Edin et al.'s grid: 101 points from 0 to 0.1
    assert em.TUNING_THRESHOLDS.size == 101 and em.TUNING_THRESHOLDS[-1] == 0.1


def test_tune_threshold_refuses_pairs_without_evidence():
    with pytest.raises(ValueError, match="no evidence token"):
        em.tune_threshold([np.array([1.0, 2.0])], [np.array([0, 0])])


def test_recall_at_k_by_hand():
    # k = 2. A: top 2 are tokens 0, 1 -> 1 evidence token (0). B: token 2 (0.5) and one of the tied
    # tokens 0, 1 (no evidence) -> 1. Recall = (1 + 1) / (2 + 1) = 2/3
    assert em.recall_at_k([A[0], B[0]], [A[1], B[1]], k=2) == pytest.approx(2 / 3, abs=1e-15)
    # a pair shorter than k gives all its tokens: [1, 2] with both evidence, k = 5 -> 2/2
    assert em.recall_at_k([np.array([1.0, 2.0])], [np.array([1, 1])], k=5) == 1.0
    # k = 1 on A: token 0 -> 1 of 2
    assert em.recall_at_k([A[0]], [A[1]], k=1) == 0.5


def test_recall_at_k_ties_share_the_places():
    # 4 equal scores, evidence on token 0, k = 2: each tied token gets 2/4 of a place -> 0.5 of 1
    assert em.recall_at_k([np.full(4, 5.0)], [np.array([1, 0, 0, 0])], k=2) == 0.5
    # 1 above the tie (token 1 = 9), 3 tied at 5 with evidence on tokens 0 and 3, k = 2:
    # token 1 (no evidence) takes one place, the last place is shared: 1 * 2/3 -> recall (2/3) / 2 = 1/3
    assert em.recall_at_k([np.array([5.0, 9.0, 5.0, 5.0])], [np.array([1, 0, 0, 1])], k=2) == pytest.approx(1 / 3)


def test_recall_at_k_without_evidence_is_undefined():
    assert math.isnan(em.recall_at_k([np.array([1.0, 2.0])], [np.array([0, 0])], k=1))
    with pytest.raises(ValueError, match="positive whole number"):
        em.recall_at_k([A[0]], [A[1]], k=0)


def test_auprc_by_hand():
    # A alone at thresholds 0, 0.25, 0.35, 1 (normalised 0.4, 0.3, 0.2, 0.1; evidence 0.4 and 0.2):
    #   t=0    : all 4 predicted, TP 2 -> P 0.5, R 1
    #   t=0.25 : 0.4, 0.3          TP 1 -> P 0.5, R 0.5
    #   t=0.35 : 0.4               TP 1 -> P 1,   R 0.5
    #   t=1    : none              -> P 0, R 0
    # trapezoids in recall: (1 - 0.5)(0.5 + 0.5)/2 + 0 + (0.5 - 0)(1 + 0)/2 = 0.25 + 0.25 = 0.5
    assert em.auprc([A[0]], [A[1]], thresholds=[0, 0.25, 0.35, 1]) == pytest.approx(0.5, abs=TOL)
    with pytest.raises(ValueError, match="ascending"):
        em.auprc([A[0]], [A[1]], thresholds=[0.5, 0.2])


# --------------------------------------------------------------------------- Edin et al.'s code, transcribed
def _edin_counts(attributions, evidence_ids, boundary):
    """plausibility_metrics.py:23-72 on one pair: token ids above the boundary vs evidence ids."""
    predicted = set(np.where(np.array(attributions) > boundary)[0].tolist())
    evidence = set(evidence_ids)
    return len(predicted & evidence), len(predicted - evidence), len(evidence - predicted)


def _edin_prf(pairs, boundary):
    """plausibility_metrics.py:75-93: micro P, R, F1 with their 1e-11."""
    tp, fp, fn = (sum(c) for c in zip(*[_edin_counts(a, e, boundary) for a, e in pairs]))
    precision = tp / (tp + fp + 1e-11)
    recall = tp / (tp + fn + 1e-11)
    return precision, recall, 2 * (precision * recall) / (precision + recall + 1e-11)


def _random_pairs(rng, n_pairs, ties=False):
    pairs = []
    for _ in range(n_pairs):
        n = int(rng.integers(3, 40))
        s = rng.integers(0, 4, n).astype(float) if ties else rng.random(n) ** 3
        e = (rng.random(n) < 0.3).astype(int)
        e[rng.integers(n)] = 1
        pairs.append((s, e))
    return pairs


def test_plausibility_equals_edin_et_al_code():
    rng = np.random.default_rng(3)
    pairs = _random_pairs(rng, 25)
    # plaus:441-445: attributions normalised by their sum + 1e-11 (non-negative here)
    edin = [((s / (s.sum() + 1e-11)).tolist(), np.flatnonzero(e).tolist()) for s, e in pairs]
    scores, evidence = [s for s, _ in pairs], [e for _, e in pairs]
    for t in (0.0, 0.01, 0.03, 0.07):
        got = em.precision_recall_f1(scores, evidence, t)
        np.testing.assert_allclose([got["precision"], got["recall"], got["f1"]], _edin_prf(edin, t), rtol=1e-12)
    # plaus:335-350
    f1 = [_edin_prf(edin, t)[2] for t in np.linspace(0, 0.1, 101)]
    assert em.tune_threshold(scores, evidence) == np.linspace(0, 0.1, 101)[int(np.argmax(f1))]
    # plaus:254-274
    curve = np.array([_edin_prf(edin, t)[:2] for t in np.linspace(0, 1, 101)])
    assert em.auprc(scores, evidence) == pytest.approx(sklearn.metrics.auc(curve[:, 1], curve[:, 0]), rel=1e-12)
    # plaus:96-122 (no ties here, so argsort's tie order does not matter)
    for k in (1, 5, 10):
        hits = sum(len(set(np.argsort(a)[-k:].tolist()) & set(e)) for a, e in edin)
        assert em.recall_at_k(scores, evidence, k) == pytest.approx(hits / sum(len(e) for _, e in edin), rel=1e-12)


def test_equal_and_zero_scores():
    # 4 equal scores -> normalised 0.25 each (minus the 1e-11 guard); evidence on 1 token.
    equal, ev = np.full(4, 2.0), np.array([0, 1, 0, 0])
    # below 0.25 all are predicted: TP 1, FP 3 -> P 1/4, R 1, F1 0.5/1.25 = 0.4; at 0.25 none is
    assert em.precision_recall_f1([equal], [ev], 0.2) == pytest.approx(
        {"precision": 0.25, "recall": 1.0, "f1": 0.4}, abs=TOL)
    assert em.precision_recall_f1([equal], [ev], 0.25)["f1"] == 0.0
    # all-zero scores: nothing is above any threshold >= 0 -> 0, 0, 0 (Edin's guards), AUPRC 0
    zero = np.zeros(3)
    assert em.precision_recall_f1([zero], [np.array([1, 0, 0])], 0.0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert em.auprc([zero], [np.array([1, 0, 0])]) == 0.0
    # AUPRC of the equal scores on Edin's grid: t = 0.00 .. 0.24 -> (R 1, P 1/4); t = 0.25 .. 1 -> (0, 0):
    # one trapezoid (1 - 0)(1/4 + 0)/2 = 0.125
    assert em.auprc([equal], [ev]) == pytest.approx(0.125, abs=TOL)


def test_no_evidence_is_undefined_not_zero():
    out = em.precision_recall_f1([np.array([1.0, 2.0])], [np.array([0, 0])], 0.1)
    assert all(math.isnan(v) for v in out.values())
    assert math.isnan(em.auprc([np.array([1.0, 2.0])], [np.array([0, 0])]))


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="one of each per pair"):
        em.precision_recall_f1([A[0], B[0]], [A[1]], 0.1)
    with pytest.raises(ValueError, match="pair 0: the evidence mask"):
        em.precision_recall_f1([A[0]], [np.array([1, 0])], 0.1)
    with pytest.raises(ValueError, match="pair 1: the evidence mask"):
        em.precision_recall_f1([A[0], B[0]], [A[1], np.array([0, 2, 1])], 0.1)
    with pytest.raises(ValueError, match="finite"):
        em.recall_at_k([np.array([1.0, np.nan])], [np.array([1, 0])])


# --------------------------------------------------------------------------- faithfulness
def test_perturbation_masks_small_steps():
    # scores 0.1, 0.5, 0.3, 0.2 -> ranking tokens 1, 2, 3, 0. max_features 3, step 1 -> 3 rows.
    # comprehensiveness removes the top 0, 1, 2; sufficiency removes the lowest max(4 - 3, 0) + 0, 1, 2
    # = 1, 2, 3, i.e. keeps the top 3, 2, 1.
    comp, suff = em.perturbation_masks([0.1, 0.5, 0.3, 0.2], max_features=3, step=1)
    T, F = True, False
    np.testing.assert_array_equal(comp, [[T, T, T, T], [T, F, T, T], [T, F, F, T]])
    np.testing.assert_array_equal(suff, [[F, T, T, T], [F, T, T, F], [F, T, F, F]])


def test_perturbation_masks_edin_defaults_on_a_short_pair():
    # max 100 words, step 2 -> ceil(100/2) = 50 rows even for 4 tokens. Ranking tokens 1, 2, 3, 0.
    # comprehensiveness: row 0 removes nothing, row 1 the top 2 (tokens 1, 2), rows 2.. all 4.
    # sufficiency: removes the lowest 0, 2, 4, ... (F = 4 < 100): row 1 removes tokens 0, 3; rows 2.. all.
    comp, suff = em.perturbation_masks([0.1, 0.5, 0.3, 0.2])
    assert comp.shape == suff.shape == (50, 4)
    T, F = True, False
    np.testing.assert_array_equal(comp[:2], [[T, T, T, T], [T, F, F, T]])
    np.testing.assert_array_equal(suff[:2], [[T, T, T, T], [F, T, T, F]])
    assert not comp[2:].any() and not suff[2:].any()


def test_perturbation_masks_with_more_words_than_max_features():
    # 7 tokens, scores 7..1 (token 0 highest), max_features 4, step 2 -> 2 rows.
    # sufficiency removes the lowest max(7 - 4, 0) + 0, 2 = 3, 5 tokens: keeps the top 4, then 2.
    comp, suff = em.perturbation_masks(np.arange(7.0, 0.0, -1.0), max_features=4, step=2)
    np.testing.assert_array_equal(comp.sum(1), [7, 5])
    np.testing.assert_array_equal(suff, [[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]])


def test_perturbation_masks_group_tokens_into_words_and_break_ties_by_position():
    # words [0, 0, 1, 2, 2], token scores 0.1 0.2 | 0.25 | 0.1 0.05 -> word sums 0.3, 0.25, 0.15.
    # all words, step 1: comprehensiveness removes words {}, {0}, {0, 1}; sufficiency {}, {2}, {2, 1}.
    comp, suff = em.perturbation_masks([0.1, 0.2, 0.25, 0.1, 0.05], groups=[0, 0, 1, 2, 2], max_features=None, step=1)
    np.testing.assert_array_equal(comp, [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(suff, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    # equal scores: the earlier token ranks higher, in both directions (one ranking 0, 1, 2)
    comp, suff = em.perturbation_masks([1.0, 1.0, 1.0], max_features=None, step=1)
    np.testing.assert_array_equal(comp[1], [0, 1, 1])
    np.testing.assert_array_equal(suff[1], [1, 1, 0])
    # the same on a pair long enough for numpy's unstable sorts: scores 0, 1, 2 repeated 70 times; the
    # ranking is the 70 twos in position order, then the ones, then the zeros
    scores = np.tile([0.0, 1.0, 2.0], 70)
    ranking = np.r_[np.arange(2, 210, 3), np.arange(1, 210, 3), np.arange(0, 210, 3)]
    comp, suff = em.perturbation_masks(scores, max_features=None, step=10)
    for i in range(21):
        np.testing.assert_array_equal(np.flatnonzero(~comp[i]), np.sort(ranking[:10 * i]))
        np.testing.assert_array_equal(np.flatnonzero(suff[i]), np.sort(ranking[:210 - 10 * i]))


def _linear_model(weights, bias):
    """p(keep) = bias + sum of the kept tokens' weights: a 'model' whose answers are hand-computable."""
    w = np.asarray(weights)

    def score(pair, keep):
        return bias + keep.astype(float) @ w

    return score


def test_faithfulness_on_a_linear_model_by_hand():
    # p = 0.1 + 0.1 k0 + 0.4 k1 + 0.2 k2 - 0.05 k3; full input p = 0.75. max_features 4, step 1.
    model = _linear_model([0.1, 0.4, 0.2, -0.05], 0.1)
    # Explanation 1, scores = [0.1, 0.4, 0.2, 0] -> ranking t1, t2, t0, t3.
    #  comprehensiveness removes {}, {t1}, {t1,t2}, {t1,t2,t0}: p = .75, .35, .15, .05;
    #    deltas 0, .4, .6, .7 -> mean .425 / .75 = 0.566666...
    #  sufficiency keeps all, {t1,t2,t0}, {t1,t2}, {t1}: p = .75, .8, .7, .5;
    #    deltas 0, -.05 -> clipped 0, .05, .25 -> mean .075 / .75 = 0.1
    # Explanation 2, scores = [0, 0, 0, 1] -> ranking t3, t0, t1, t2 (ties by position).
    #  comprehensiveness removes {}, {t3}, {t3,t0}, {t3,t0,t1}: p = .75, .8, .7, .3;
    #    deltas 0, -.05 (not clipped), .05, .45 -> mean .1125 / .75 = 0.15
    #  sufficiency keeps all, {t3,t0,t1}, {t3,t0}, {t3}: p = .75, .55, .15, .05;
    #    deltas 0, .2, .6, .7 -> mean .375 / .75 = 0.5
    out = em.faithfulness([np.array([0.1, 0.4, 0.2, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])], model,
                          max_features=4, step=1)
    np.testing.assert_allclose(out["comprehensiveness"], [0.425 / 0.75, 0.15], atol=1e-12)
    np.testing.assert_allclose(out["sufficiency"], [0.1, 0.5], atol=1e-12)
    np.testing.assert_allclose(out["probability"], [0.75, 0.75], atol=1e-12)


def test_faithfulness_with_edin_defaults_and_distinct_calls():
    # Same model, scores [0.1, 0.4, 0.2, 0]: 50 steps of 2.
    #  comprehensiveness: removes {} (delta 0), {t1,t2} (p .15, delta .6), then everything (p .1, delta .65) x 48
    #    -> (0 + .6 + 48 * .65) / 50 / .75 = 0.636 / .75 = 0.848
    #  sufficiency: keeps all (0), {t1,t2} (p .7, delta .05), then nothing (.65) x 48
    #    -> (0 + .05 + 31.2) / 50 / .75 = 0.625 / .75 = 0.8333...
    calls = []
    model = _linear_model([0.1, 0.4, 0.2, -0.05], 0.1)

    def score(pair, keep):
        calls.append(keep.copy())
        return model(pair, keep)

    out = em.faithfulness([np.array([0.1, 0.4, 0.2, 0.0])], score)
    assert out["comprehensiveness"][0] == pytest.approx(0.848, abs=1e-12)
    assert out["sufficiency"][0] == pytest.approx(0.625 / 0.75, abs=1e-12)
    # one call, 4 distinct inputs: whole, {t0,t3}, {t1,t2}, nothing
    assert len(calls) == 1 and calls[0].shape == (4, 4)
    assert {tuple(r) for r in calls[0].astype(int)} == {(1, 1, 1, 1), (1, 0, 0, 1), (0, 1, 1, 0), (0, 0, 0, 0)}


def test_faithfulness_passes_the_pair_index():
    # pair 0 scored by model a, pair 1 by model b: score_fn must know which pair it scores
    a, b = _linear_model([0.5, 0.1], 0.2), _linear_model([0.1, 0.5], 0.2)
    out = em.faithfulness([np.array([1.0, 0.0]), np.array([1.0, 0.0])],
                          lambda pair, keep: (a, b)[pair](pair, keep), max_features=2, step=1)
    # pair 0: p .8; comp removes {}, {t0}: deltas 0, .5 -> .25/.8; pair 1: p .8; deltas 0, .1 -> .05/.8
    np.testing.assert_allclose(out["comprehensiveness"], [0.25 / 0.8, 0.05 / 0.8], atol=1e-12)
    with pytest.raises(ValueError, match="probabilities"):
        em.faithfulness([np.array([1.0, 0.0])], lambda pair, keep: np.zeros(1), max_features=2, step=1)


def test_faithfulness_scores_zero_probability_is_undefined():
    assert all(math.isnan(v) for v in em.faithfulness_scores(0.0, [0.1], [0.1]))


# --------------------------------------------------------------------------- negation share
def test_negation_share_by_hand():
    scores = [np.array([0.1, 0.9, 0.2]),        # top t1, in a negated mention            -> 1
              np.array([0.5, 0.5, 0.1, 0.5]),   # top tied over t0, t1, t3; t0 negated     -> 1/3
              np.array([0.3, 0.1]),             # top t0, not negated                      -> 0
              np.array([1.0, 0.0]),             # no negated mention                       -> not counted
              np.array([0.9, 0.1])]             # top t0 negated but also evidence         -> 0
    negated = [np.array([0, 1, 0]), np.array([1, 0, 0, 0]), np.array([0, 1]), np.array([0, 0]), np.array([1, 0])]
    evidence = [np.array([0, 0, 0]), np.zeros(4, int), np.array([1, 0]), np.array([1, 0]), np.array([1, 0])]
    # (1 + 1/3 + 0 + 0) / 4 = 1/3
    assert em.negation_share(scores, evidence, negated) == pytest.approx(1 / 3, abs=1e-15)
    assert em.top_token_share(np.full(4, 1.0), np.array([1, 1, 0, 0])) == 0.5
    assert math.isnan(em.negation_share(scores[:1], evidence[:1], [np.zeros(3, int)]))


# --------------------------------------------------------------------------- evaluate_method and intervals
def test_evaluate_method_point_values_and_json():
    no_evidence = (np.array([9.0, 9.0]), np.array([0, 0]))  # ignored by plausibility (plaus:426-428)
    scores, evidence = [A[0], B[0], no_evidence[0]], [A[1], B[1], no_evidence[1]]
    negated = [np.array([0, 1, 0, 0]), np.zeros(3, int), np.array([1, 0])]
    faithful = {"comprehensiveness": np.array([0.5, 0.1, np.nan]), "sufficiency": np.array([0.2, 0.4, np.nan])}
    out = em.evaluate_method(scores, evidence, ["n1", "n2", "n2"], 0.22, negated=negated, faithful=faithful,
                             k=2, n_resamples=0)
    # plausibility as test_precision_recall_f1_by_hand and test_recall_at_k_by_hand (the third pair adds nothing)
    assert out["token_precision"] == pytest.approx(0.4, abs=TOL)
    assert out["token_recall"] == pytest.approx(2 / 3, abs=TOL)
    assert out["token_f1"] == pytest.approx(0.5, abs=TOL)
    assert out["recall_at_2"] == pytest.approx(2 / 3, abs=1e-15)
    assert out["token_auprc"] == pytest.approx(em.auprc([A[0], B[0]], [A[1], B[1]]), abs=1e-15)
    # faithfulness: mean over the measured pairs (0.5 + 0.1)/2, (0.2 + 0.4)/2
    assert out["comprehensiveness"] == pytest.approx(0.3) and out["sufficiency"] == pytest.approx(0.3)
    # negation: pair 0's top token (t0 = 4) is not negated -> 0; pair 2's top is tied over t0, t1, t0 negated,
    # and not evidence -> 1/2. Mean 0.25
    assert out["negation_share"] == pytest.approx(0.25)
    assert out["n_pairs"] == {"plausibility": 2, "faithfulness": 2, "negation": 2}
    assert out["n_notes"] == 2 and out["threshold"] == 0.22 and out["k"] == 2
    assert "ci95" not in out
    json.dumps(out, allow_nan=False)


def test_evaluate_method_without_evidence_writes_none():
    out = em.evaluate_method([np.array([1.0, 2.0])], [np.array([0, 0])], [7], 0.01, n_resamples=20)
    assert out["token_f1"] is None and out["recall_at_5"] is None and out["token_auprc"] is None
    assert out["ci95"]["token_f1"] == [None, None]
    assert "comprehensiveness" not in out and "negation_share" not in out
    json.dumps(out, allow_nan=False)


def _toy_pairs(seed, n_notes=9):
    """1-3 pairs per note; negated masks on some pairs; faithfulness measured on most."""
    rng = np.random.default_rng(seed)
    scores, evidence, notes, negated = [], [], [], []
    for note in range(n_notes):
        for s, e in _random_pairs(rng, int(rng.integers(1, 4)), ties=note % 2 == 0):
            scores.append(s), evidence.append(e), notes.append(f"note{note}")
            neg = (rng.random(s.size) < 0.2).astype(int) if rng.random() < 0.6 else np.zeros(s.size, int)
            negated.append(neg)
    n = len(scores)
    faithful = {"comprehensiveness": rng.random(n), "sufficiency": rng.random(n)}
    faithful["comprehensiveness"][::4] = np.nan
    faithful["sufficiency"][::4] = np.nan
    return scores, evidence, notes, negated, faithful


def _slow_replicate(scores, evidence, notes, negated, faithful, row, threshold, k):
    """Every metric, from the point functions, on the pairs of each note repeated by its multiplicity."""
    note_ids = sorted(set(notes))
    idx = [i for j, note in enumerate(note_ids) for _ in range(row[j]) for i, x in enumerate(notes) if x == note]
    s, e, n = [scores[i] for i in idx], [evidence[i] for i in idx], [negated[i] for i in idx]
    prf = em.precision_recall_f1(s, e, threshold)
    out = {"token_precision": prf["precision"], "token_recall": prf["recall"], "token_f1": prf["f1"],
           f"recall_at_{k}": em.recall_at_k(s, e, k), "token_auprc": em.auprc(s, e),
           "negation_share": em.negation_share(s, e, n)}
    for key in ("comprehensiveness", "sufficiency"):
        measured = [faithful[key][i] for i in idx if not math.isnan(faithful[key][i])]
        out[key] = sum(measured) / len(measured) if measured else math.nan
    return out


def test_bootstrap_equals_a_slow_loop_over_resampled_notes():
    scores, evidence, notes, negated, faithful = _toy_pairs(5)
    threshold, k, seed, n_resamples = 0.02, 3, 11, 40
    counts = uncertainty.resample_counts(len(set(notes)), n_resamples, seed)
    fast = em.replicates(scores, evidence, notes, threshold, counts, negated=negated, faithful=faithful, k=k)
    slow = [_slow_replicate(scores, evidence, notes, negated, faithful, row, threshold, k) for row in counts]
    assert set(fast) == set(slow[0])
    for name, values in fast.items():
        expected = np.array([r[name] for r in slow])
        np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12, equal_nan=True, err_msg=name)
    # evaluate_method draws the same resamples for the same seed and reads their percentiles
    out = em.evaluate_method(scores, evidence, notes, threshold, negated=negated, faithful=faithful, k=k,
                             n_resamples=n_resamples, seed=seed)
    for name in fast:
        expected = np.array([r[name] for r in slow])
        if np.isnan(expected).any():
            assert out["ci95"][name] == [None, None], name
        else:
            np.testing.assert_allclose(out["ci95"][name], np.percentile(expected, [2.5, 97.5]), rtol=1e-10,
                                       err_msg=name)
    # a row of ones is the point estimate
    ones = em.replicates(scores, evidence, notes, threshold, np.ones((1, len(set(notes)))), negated=negated,
                         faithful=faithful, k=k)
    point = _slow_replicate(scores, evidence, notes, negated, faithful, [1] * len(set(notes)), threshold, k)
    for name in ones:
        assert out[name] == pytest.approx(point[name], rel=1e-10), name
        assert ones[name][0] == pytest.approx(point[name], rel=1e-10), name


def test_bootstrap_metric_undefined_on_some_resamples():
    # negated mentions only in note0's pairs: resamples without note0 have no negation pair
    scores, evidence, notes, negated, faithful = _toy_pairs(6)
    negated = [m if note == "note0" else np.zeros_like(m) for m, note in zip(negated, notes)]
    negated[0] = np.ones_like(negated[0])
    counts = uncertainty.resample_counts(len(set(notes)), 30, 2)
    fast = em.replicates(scores, evidence, notes, 0.02, counts, negated=negated, k=3)
    slow = np.array([_slow_replicate(scores, evidence, notes, negated, faithful, row, 0.02, 3)["negation_share"]
                     for row in counts])
    assert np.isnan(slow).sum() == (counts[:, 0] == 0).sum() > 0
    np.testing.assert_allclose(fast["negation_share"], slow, rtol=1e-12, equal_nan=True)
    out = em.evaluate_method(scores, evidence, notes, 0.02, negated=negated, n_resamples=30, seed=2)
    assert out["negation_share"] is not None and out["ci95"]["negation_share"] == [None, None]


def test_interval_holds_the_point_estimate_on_a_well_behaved_case():
    scores, evidence, notes, negated, faithful = _toy_pairs(8, n_notes=80)
    out = em.evaluate_method(scores, evidence, notes, 0.02, negated=negated, faithful=faithful)
    assert out["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95, "unit": "note"}
    for name in ("token_precision", "token_recall", "token_f1", "recall_at_5", "token_auprc",
                 "comprehensiveness", "sufficiency", "negation_share"):
        lo, hi = out["ci95"][name]
        assert lo < out[name] < hi, name
    assert out["ci95"] == em.evaluate_method(scores, evidence, notes, 0.02, negated=negated, faithful=faithful)["ci95"]


def test_replicates_checks_counts():
    with pytest.raises(ValueError, match=r"\(n_resamples, 2\)"):
        em.replicates([A[0], B[0]], [A[1], B[1]], [1, 2], 0.1, np.ones((3, 5)))


def test_table_one_row_per_method():
    a = {"token_f1": 0.5, "token_precision": 0.4, "token_recall": 0.7, "recall_at_5": 0.6, "token_auprc": 0.3,
         "threshold": 0.02, "k": 5, "ci95": {"token_f1": [0.45, 0.55]}}
    b = {"token_f1": None, "token_precision": 0.1, "token_recall": 0.2, "recall_at_5": 0.3, "token_auprc": 0.2,
         "comprehensiveness": 0.8, "threshold": 0.05, "k": 5}
    t = em.table({"attention": a, "occlusion": b})
    assert list(t.index) == ["attention", "occlusion"] and t.index.name == "method"
    assert list(t.columns) == ["Token precision", "Token recall", "Token F1", "Recall@5 tokens", "Token AUPRC",
                               "Comprehensiveness (higher is better)", "Threshold"]
    assert t.loc["attention", "Token F1"] == 0.5 and math.isnan(t.loc["occlusion", "Token F1"])
    assert math.isnan(t.loc["attention", "Comprehensiveness (higher is better)"])
    text = em.table({"attention": a, "occlusion": b}, intervals=True)
    assert text.loc["attention", "Token F1"] == "0.500 [0.450, 0.550]"
    assert text.loc["attention", "Token precision"] == "0.400"
    assert text.loc["occlusion", "Token F1"] == "–"
    with pytest.raises(ValueError, match="different k"):
        em.table({"a": a, "b": dict(b, k=10)})
