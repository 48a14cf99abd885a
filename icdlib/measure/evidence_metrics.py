"""How well an explanation method's token scores point at a code's evidence: plausibility, faithfulness and
how often the top token sits on a negated or family-history mention, with bootstrap intervals over notes.

Why this module exists: step 05 draws highlights, and a coder trusts them only if they are measured. The
inputs are (note, code) *pairs*, each with one float score per token the model reads (higher = more
evidence; `icdlib.model.explain.token_scores`) and 0/1 masks over the same tokens (the code's evidence; the
negated/family mentions, `icdlib.data.evidence`). Everything here is numpy in, numbers out: no model, no files.
Faithfulness needs the model, so it takes a callable (`faithfulness`), or the masks and the model's
probabilities separately (`perturbation_masks`, `faithfulness_scores`) for callers that batch across pairs.

Definitions follow Edin et al. 2024 (EMNLP, "An Unsupervised Approach to Achieve Supervised-Level
Explainability in Healthcare Records"), JoakimEdin/explainable-medical-coding at commit 2c58d41; below,
``plaus:`` is ``explainable_medical_coding/eval/plausibility_metrics.py``, ``faith:`` is
``explainable_medical_coding/eval/faithfulness_metrics.py``, ``helper:`` is
``explainable_medical_coding/explainability/helper_functions.py`` and ``eval:`` is ``eval_explanations.py``.

What they do, and this module with them:

* Pairs (plaus:415-428, 447-460): every code of a note that is true or predicted, minus the pairs whose
  evidence has no token in the model's input (truncated away); test is then reported on all pairs, on the
  predicted ones (y_prob > the model's decision boundary: with evidence, the true positives) and on the
  others (plaus:483-493). The caller picks the pairs; the issue asks for the model's true positives on test.
  Plausibility ignores pairs without an evidence token, as they filter them out.
* Scores are normalised per pair to sum to one, ``x / (sum(x) + 1e-11)`` (plaus:441-445, 473-477), after
  dropping the start and end tokens (plaus:430-439, the caller's business here). Every explainer of theirs
  returns non-negative scores (L2 norms of embedding attributions, absolute values, softmaxed attention;
  ``explainability/explanation_methods.py``); here negative scores are set to 0 before normalising
  (`normalize`), which is their formula for their inputs and keeps a method with signed scores from
  flipping its ranking when its sum is negative.
* Token precision, recall and F1 at a threshold (plaus:23-93): a token is predicted when its normalised
  score is *strictly* above the threshold (plaus:35); TP, FP and FN are summed over all pairs (micro) and
  P = TP / (TP + FP + 1e-11), R = TP / (TP + FN + 1e-11), F1 = 2PR / (P + R + 1e-11) (plaus:87-92).
  The threshold is tuned on *validation* pairs (eval:479-481): the F1-maximising value of
  ``np.linspace(0, 0.1, 101)`` on the normalised scale, the first (lowest) one on ties (np.argmax,
  plaus:335-350): `tune_threshold`. Edin et al. tune on every validation pair with evidence, predicted or
  not (plaus:415-428: no filter on y_prob); the caller may pass the validation pairs it likes.
* Recall@k (plaus:96-122): per pair, the k top-scored tokens (``np.argsort(x)[-k:]``: all tokens of a pair
  shorter than k); recall = sum over pairs of evidence tokens among them / sum of evidence tokens (micro).
  They compute k = 1, 5, 10, 50, 100 (plaus:282-290); the default here is ``RECALL_K = 5``.
  *Difference:* numpy's argsort breaks ties arbitrarily (its default sort is not stable); here tokens tied
  at the k-th score share the remaining places, each tied evidence token counting ``places / tied`` (the
  expectation over tie orders), so the figure does not depend on token order (all-equal scores give
  k / n of the evidence, not the first k tokens'). Ranking uses the raw scores (the same order as the
  normalised ones for non-negative scores).
* AUPRC (plaus:254-274): micro precision and recall (the formulas above) at the 101 thresholds
  ``np.linspace(0, 1, 101)`` on the normalised scale, integrated by the trapezoid rule in recall
  (``sklearn.metrics.auc(recall, precision)``). It is their figure, not scikit-learn's average precision:
  at threshold 1 nothing is predicted, so the curve ends at (recall 0, precision 0) and the last trapezoid
  counts; with long notes most normalised scores sit far below 0.01, so the grid is coarse.
* Comprehensiveness and sufficiency (faith:120-215, 313-424, 427-510; helper:154-283): only for predicted
  pairs (y_prob > the decision boundary, faith:470-472). Token scores are summed per word (``word_level=True``,
  faith:361-364, 481; helper:122-151) and words ranked by that sum; `groups` passes a word index per token
  (None: every token its own feature). With ``max_features=100`` and ``step_size=2`` (faith:374-378,
  388-392) there are ``ceil(100 / 2) = 50`` perturbed inputs per pair (helper:210-211):
  comprehensiveness removes the top ``0, 2, ..., 98`` words (helper:234-237; the first removes nothing),
  sufficiency removes the lowest ``max(F - 100, 0) + 0, 2, ..., 98`` of the F words, i.e. keeps the top
  ``min(F, 100) - 0, 2, ..., 98`` (helper:227-233); a removal past the last word removes every word.
  Removed tokens are *replaced* by the mask token, not deleted (faith:373, helper:261-263): the masks here
  say which tokens keep their id, and the caller's `score_fn` replaces the others. With p the code's
  probability on the whole input and p_i on perturbed input i (faith:180-215):
  comprehensiveness = mean_i (p - p_i) / p (faith:492-496) and sufficiency = mean_i clip(p - p_i, 0, 100) / p
  (faith:484-491), per pair, then the mean over pairs (faith:500-503). Higher comprehensiveness and lower
  sufficiency are better. *Difference:* torch.argsort breaks tied words arbitrarily; here one stable
  ranking (score descending, the earlier word first) serves both, so sufficiency removes words in exactly
  the reverse of comprehensiveness' order.
* Sparsity (``eval/sparsity_metrics.py``: normalised entropy, the share of pairs with no token above the
  threshold, of all-zero attributions): not computed here.

Negation share (ours; neither Edin et al. nor MDACE have negated mentions): over the pairs with at least
one token in a negated or family-history mention (`negated`: one mask per pair, the union of both kinds),
the share whose top-scored token lies in such a mention and not in the code's evidence. Tokens tied at
the maximum share the credit (a pair whose max is tied over t tokens, m of them in a mention, counts m/t),
as recall@k treats ties. On the twin such mentions are written only for codes the admission does *not*
have (contract A), so the pairs to pass here are (admission, absent code) pairs with a mention, e.g.
the ones the model scores highest or predicts; on MDACE there are none and the share is undefined.

Intervals (as `icdlib.measure.uncertainty` does for 04's metrics): the notes are resampled with replacement
(`uncertainty.resample_counts` over the distinct note ids in sorted order, ``n_resamples=1000``,
``seed=0``), each note bringing all its pairs; every metric is recomputed on each resample at the fixed
threshold (the tuning is not repeated) and the interval is the 2.5th and 97.5th percentile; it is
(None, None) when the metric is undefined on any resample (no evidence token, no negation pair, ...).
Every metric is a ratio of sums over pairs, so per-note sums are taken once and a resample is one
matrix product with its note multiplicities; `replicates` gives the values on each resample.

Undefined values are ``None`` in `evaluate_method`'s dict (as 04 writes NaN into metrics.json) and NaN
elsewhere. Precision, recall and F1 keep Edin et al.'s 1e-11 (precision is 0, not undefined, when no
token is predicted), but all plausibility figures are undefined without any evidence token, a case
Edin et al. never reach because they drop such pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from icdlib.measure import uncertainty

__all__ = [
    "EPS", "TUNING_THRESHOLDS", "AUPRC_THRESHOLDS", "RECALL_K", "MAX_FEATURES", "STEP", "METRICS", "FAMILIES",
    "NAMES", "normalize", "precision_recall_f1", "tune_threshold", "recall_at_k", "auprc", "perturbation_masks",
    "faithfulness_scores", "faithfulness", "top_token_share", "negation_share", "replicates", "evaluate_method",
    "table",
]

EPS = 1e-11  # Edin et al.'s guard in every plausibility ratio (plaus:90-92, 443)
TUNING_THRESHOLDS = np.linspace(0, 0.1, 101)  # plaus:344, on the normalised scale
AUPRC_THRESHOLDS = np.linspace(0, 1, 101)  # plaus:264
RECALL_K = 5  # plaus:282-290 compute 1, 5, 10, 50, 100
MAX_FEATURES = 100  # faith:378, 392: words perturbed at most
STEP = 2  # faith:374, 388: words per perturbation step

# Keys of `evaluate_method`'s dict (recall@k is f"recall_at_{k}"), the family each belongs to (one table
# and figure per family in 05) and its human name.
FAMILIES = {
    "plausibility": ("token_precision", "token_recall", "token_f1", "recall_at_k", "token_auprc"),
    "faithfulness": ("comprehensiveness", "sufficiency"),
    "negation": ("negation_share",),
}
METRICS = tuple(m for family in FAMILIES.values() for m in family)
NAMES = {
    "token_precision": "Token precision", "token_recall": "Token recall", "token_f1": "Token F1",
    "recall_at_k": "Recall@{k} tokens", "token_auprc": "Token AUPRC",
    "comprehensiveness": "Comprehensiveness (higher is better)", "sufficiency": "Sufficiency (lower is better)",
    "negation_share": "Top token on a negated/family mention",
}


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #
def _scores(scores, i: int = 0) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise ValueError(f"pair {i}: token scores must be a 1-d array of finite numbers, got shape {s.shape}")
    return s


def _mask(mask, n: int, i: int = 0, what: str = "evidence") -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != (n,) or not np.isin(m, (0, 1)).all():
        raise ValueError(f"pair {i}: the {what} mask must be 0/1 over the pair's {n} tokens, got shape {m.shape}")
    return m.astype(bool)


def _pairs(scores: Sequence, masks: Sequence, what: str = "evidence") -> tuple[list, list]:
    if len(scores) != len(masks):
        raise ValueError(f"{len(scores)} score arrays but {len(masks)} {what} masks: one of each per pair")
    s = [_scores(x, i) for i, x in enumerate(scores)]
    return s, [_mask(m, x.size, i, what) for i, (x, m) in enumerate(zip(s, masks))]


def normalize(scores) -> np.ndarray:
    """Scores on Edin et al.'s plausibility scale: negatives set to 0, then divided by their sum + 1e-11
    (plaus:441-445; module docstring: why the clip)."""
    s = np.maximum(_scores(scores), 0.0)
    return s / (s.sum() + EPS)


# --------------------------------------------------------------------------- #
# Plausibility: per-pair counts, then micro ratios
# --------------------------------------------------------------------------- #
def _above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of values are strictly above each threshold."""
    return values.size - np.searchsorted(np.sort(values), thresholds, side="right")


def _threshold_counts(scores: list, evidence: list, thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_pairs, T) true positives and predicted tokens at each threshold, (n_pairs,) evidence tokens."""
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    tp = np.zeros((len(scores), t.size))
    predicted = np.zeros((len(scores), t.size))
    for i, (s, e) in enumerate(zip(scores, evidence)):
        x = normalize(s)
        predicted[i] = _above(x, t)
        tp[i] = _above(x[e], t)
    return tp, predicted, np.array([e.sum() for e in evidence], dtype=np.float64)


def _prf(tp, predicted, n_evidence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edin et al.'s micro precision, recall and F1 (plaus:87-92) from summed counts; nan where there is
    no evidence token."""
    tp, predicted, n_evidence = (np.asarray(a, dtype=np.float64) for a in (tp, predicted, n_evidence))
    precision = tp / (predicted + EPS)
    recall = tp / (n_evidence + EPS)
    f1 = 2 * precision * recall / (precision + recall + EPS)
    undefined = n_evidence == 0
    return tuple(np.where(undefined, np.nan, v) for v in (precision, recall, f1))


def precision_recall_f1(scores: Sequence, evidence: Sequence, threshold: float) -> dict[str, float]:
    """Micro token precision, recall and F1 over the pairs at `threshold` on the normalised scale
    (a token is predicted when its normalised score is strictly above it; plaus:23-93)."""
    s, e = _pairs(scores, evidence)
    tp, predicted, n_evidence = _threshold_counts(s, e, threshold)
    p, r, f = _prf(tp.sum(0)[0], predicted.sum(0)[0], n_evidence.sum())
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def tune_threshold(scores: Sequence, evidence: Sequence, thresholds=TUNING_THRESHOLDS) -> float:
    """The threshold of `thresholds` with the highest micro token F1 on these (validation) pairs, the
    lowest on ties (plaus:335-350). Raises ValueError when the pairs have no evidence token."""
    s, e = _pairs(scores, evidence)
    t = np.asarray(thresholds, dtype=np.float64)
    tp, predicted, n_evidence = _threshold_counts(s, e, t)
    f1 = _prf(tp.sum(0), predicted.sum(0), np.full(t.size, n_evidence.sum()))[2]
    if np.isnan(f1).all():
        raise ValueError("cannot tune the explanation threshold: the pairs have no evidence token")
    return float(t[int(np.argmax(f1))])


def _top_k_hits(s: np.ndarray, e: np.ndarray, k: int) -> float:
    """Evidence tokens among the k top-scored, tokens tied at the k-th score sharing the places left."""
    if s.size <= k:
        return float(e.sum())
    kth = np.partition(s, s.size - k)[s.size - k]
    above, tied = s > kth, s == kth
    places = k - int(above.sum())
    return float(e[above].sum() + places * e[tied].sum() / tied.sum())


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive whole number of tokens, got {k!r}")


def recall_at_k(scores: Sequence, evidence: Sequence, k: int = RECALL_K) -> float:
    """Micro recall of the k top-scored tokens of each pair: evidence tokens among them, summed over
    pairs, over all evidence tokens (plaus:96-122; ties: module docstring). NaN without evidence."""
    _check_k(k)
    s, e = _pairs(scores, evidence)
    total = float(sum(x.sum() for x in e))
    return sum(_top_k_hits(x, m, k) for x, m in zip(s, e)) / total if total else math.nan


def _trapezoid_auprc(tp, predicted, n_evidence) -> np.ndarray:
    """Edin et al.'s AUPRC from counts summed at each threshold (last axis, ascending thresholds):
    trapezoids between consecutive (recall, precision) points, as sklearn.metrics.auc (plaus:264-274)."""
    precision, recall, _ = _prf(tp, predicted, np.asarray(n_evidence, dtype=np.float64)[..., None])
    return np.sum((recall[..., :-1] - recall[..., 1:]) * (precision[..., :-1] + precision[..., 1:]) / 2, axis=-1)


def auprc(scores: Sequence, evidence: Sequence, thresholds=AUPRC_THRESHOLDS) -> float:
    """Area under Edin et al.'s micro precision-recall curve of the normalised token scores at
    `thresholds` (ascending; plaus:254-274). NaN without evidence."""
    s, e = _pairs(scores, evidence)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size < 2 or np.any(np.diff(t) <= 0):
        raise ValueError(f"thresholds must be at least two ascending values, got {t}")
    tp, predicted, n_evidence = _threshold_counts(s, e, t)
    return float(_trapezoid_auprc(tp.sum(0), predicted.sum(0), n_evidence.sum()))


# --------------------------------------------------------------------------- #
# Faithfulness
# --------------------------------------------------------------------------- #
def _check_steps(max_features: int | None, step: int) -> None:
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be a positive whole number of words, got {step!r}")
    if max_features is not None and (not isinstance(max_features, (int, np.integer)) or max_features < 1):
        raise ValueError(f"max_features must be a positive whole number of words or None, got {max_features!r}")


def perturbation_masks(scores, groups=None, max_features: int | None = MAX_FEATURES,
                       step: int = STEP) -> tuple[np.ndarray, np.ndarray]:
    """The inputs Edin et al. perturb for one pair, as (steps, n_tokens) boolean masks of the tokens that
    keep their id (the others get the mask token): (comprehensiveness', sufficiency's).

    Args:
        scores: (n_tokens,) token scores of the pair.
        groups: (n_tokens,) feature (word) id of each token; a feature's score is the sum of its tokens'
            (helper:122-151). None: each token is its own feature.
        max_features, step: words perturbed at most and per step (faith:374-378); None: every word.

    Returns:
        ``ceil(max_features / step)`` rows each (helper:210-211): row i of the first removes the
        ``min(i * step, F)`` top-ranked of the F features, row i of the second removes the lowest
        ``min(max(F - max_features, 0) + i * step, F)`` (helper:227-237). Ranking: score descending,
        ties to the lower feature id, the same ranking for both."""
    _check_steps(max_features, step)
    s = _scores(scores)
    g = np.arange(s.size) if groups is None else np.asarray(groups)
    if g.shape != s.shape:
        raise ValueError(f"groups must give one feature id per token ({s.size}), got shape {g.shape}")
    _, feature = np.unique(g, return_inverse=True)
    feature = feature.reshape(-1)
    n_features = int(feature.max()) + 1 if s.size else 0
    order = np.argsort(-np.bincount(feature, weights=s, minlength=n_features), kind="stable")
    rank = np.empty(n_features, dtype=np.int64)
    rank[order] = np.arange(n_features)
    token_rank = rank[feature]
    considered = n_features if max_features is None else max_features
    moved = np.arange(math.ceil(considered / step)) * step
    removed_top = np.minimum(moved, n_features)
    removed_low = np.minimum(max(n_features - considered, 0) + moved, n_features)
    comprehensive = token_rank[None, :] >= removed_top[:, None]
    sufficient = token_rank[None, :] < (n_features - removed_low)[:, None]
    return comprehensive, sufficient


def faithfulness_scores(full, comprehensive, sufficient) -> tuple[float, float]:
    """One pair's comprehensiveness, mean (p - p_i) / p, and sufficiency, mean clip(p - p_i, 0, 100) / p,
    from the code's probability p on the whole input and on each perturbed input (faith:484-496).
    NaN when p is 0."""
    p = float(full)
    comp, suff = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (comprehensive, sufficient))
    if p == 0 or not comp.size or not suff.size:
        return math.nan, math.nan
    return float(np.mean(p - comp) / p), float(np.mean(np.clip(p - suff, 0, 100)) / p)


def faithfulness(scores: Sequence, score_fn: Callable[[int, np.ndarray], np.ndarray], groups: Sequence | None = None,
                 max_features: int | None = MAX_FEATURES, step: int = STEP) -> dict[str, np.ndarray]:
    """Comprehensiveness and sufficiency of every pair, scoring the perturbed inputs with the model.

    Args:
        scores: one (n_tokens,) score array per pair.
        score_fn: ``score_fn(pair, keep)`` with keep a (v, n_tokens) boolean array of the pair's tokens
            that keep their id (the others replaced by the mask token, as Edin et al.) returns the (v,)
            probabilities of the pair's code. It is called once per pair, with distinct rows only (the
            whole input among them; short notes repeat rows).
        groups: per pair, the word id of each token (`perturbation_masks`), or None.
        max_features, step: as `perturbation_masks`.

    Returns:
        {"comprehensiveness", "sufficiency", "probability" (the code's on the whole input)}: (n_pairs,)
        arrays, for `evaluate_method`'s `faithful`."""
    _check_steps(max_features, step)
    if groups is not None and len(groups) != len(scores):
        raise ValueError(f"{len(scores)} score arrays but {len(groups)} group arrays: one of each per pair")
    out = {key: np.full(len(scores), np.nan) for key in ("comprehensiveness", "sufficiency", "probability")}
    for i, s in enumerate(scores):
        if not np.size(s):
            continue  # nothing to perturb: the pair stays NaN
        comp, suff = perturbation_masks(_scores(s, i), None if groups is None else groups[i], max_features, step)
        variants = np.vstack([np.ones((1, comp.shape[1]), dtype=bool), comp, suff])
        distinct, where = np.unique(variants, axis=0, return_inverse=True)
        probs = np.asarray(score_fn(i, distinct), dtype=np.float64).reshape(-1)
        if probs.shape != (distinct.shape[0],):
            raise ValueError(f"score_fn returned {probs.size} probabilities for {distinct.shape[0]} inputs "
                             f"(pair {i})")
        p = probs[where.reshape(-1)]
        out["probability"][i] = p[0]
        out["comprehensiveness"][i], out["sufficiency"][i] = faithfulness_scores(
            p[0], p[1:1 + comp.shape[0]], p[1 + comp.shape[0]:])
    return out


# --------------------------------------------------------------------------- #
# Negation share
# --------------------------------------------------------------------------- #
def top_token_share(scores, mask) -> float:
    """The share of the tokens tied at the pair's maximum score that lie in `mask` (1 or 0 when the
    maximum is unique); NaN for a pair without tokens."""
    s = _scores(scores)
    if not s.size:
        return math.nan
    top = s == s.max()
    return float((_mask(mask, s.size, what="mention") & top).sum() / top.sum())


def _negation_values(scores: list, evidence: list, negated: list) -> np.ndarray:
    """Per pair, the top-token share on negated/family tokens outside the evidence; NaN for pairs
    without such a mention."""
    return np.array([top_token_share(s, n & ~e) if n.any() else math.nan
                     for s, e, n in zip(scores, evidence, negated)])


def negation_share(scores: Sequence, evidence: Sequence, negated: Sequence) -> float:
    """Over the pairs with a negated/family mention, the mean share of their top-scored token(s) on such a
    mention rather than on the code's evidence (module docstring). NaN when no pair has a mention."""
    s, e = _pairs(scores, evidence)
    _, n = _pairs(s, negated, "negated")
    values = _negation_values(s, e, n)
    return float(np.nanmean(values)) if not np.isnan(values).all() else math.nan


# --------------------------------------------------------------------------- #
# Everything at once, with intervals: per-note sums, one matrix product per resample
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _NoteSums:
    """Sums over each note's pairs of everything a metric is a ratio of; rows are notes."""

    sums: dict[str, np.ndarray]  # name -> (n_notes,) or (n_notes, T)
    k: int


def _note_sums(scores, evidence, notes, threshold, negated, faithful, k) -> tuple[np.ndarray, _NoteSums]:
    _check_k(k)
    s, e = _pairs(scores, evidence)
    if len(notes) != len(s):
        raise ValueError(f"{len(s)} pairs but {len(notes)} note ids: one per pair")
    note_ids, row = np.unique(np.asarray(notes), return_inverse=True)
    row = row.reshape(-1)
    has = np.array([m.any() for m in e], dtype=np.float64)  # plausibility: pairs with evidence (plaus:426-428)
    tp, predicted, n_evidence = _threshold_counts(s, e, np.r_[float(threshold), AUPRC_THRESHOLDS])
    predicted *= has[:, None]  # tp, evidence and hits are 0 on the other pairs anyway
    per_pair = {"tp": tp[:, 0], "predicted": predicted[:, 0], "n_evidence": n_evidence,
                "hits": np.array([_top_k_hits(x, m, k) for x, m in zip(s, e)]),
                "curve_tp": tp[:, 1:], "curve_predicted": predicted[:, 1:]}
    if negated is not None:
        _, n = _pairs(s, negated, "negated")
        _add_mean(per_pair, "negation_share", _negation_values(s, e, n))
    if faithful is not None:
        for key in ("comprehensiveness", "sufficiency"):
            values = np.asarray(faithful[key], dtype=np.float64).reshape(-1)
            if values.size != len(s):
                raise ValueError(f"faithful[{key!r}] has {values.size} values for {len(s)} pairs (NaN: not measured)")
            _add_mean(per_pair, key, values)
    sums = {name: np.zeros((note_ids.size,) + v.shape[1:]) for name, v in per_pair.items()}
    for name, v in per_pair.items():
        np.add.at(sums[name], row, v)
    return note_ids, _NoteSums(sums, k)


def _add_mean(per_pair: dict, name: str, values: np.ndarray) -> None:
    """A per-pair mean metric: its sum and count over the pairs where it is defined (not NaN)."""
    defined = ~np.isnan(values)
    per_pair[name] = np.where(defined, values, 0.0)
    per_pair[name + "/n"] = defined.astype(np.float64)


def _values(ns: _NoteSums, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric on each row of counts (resamples × notes multiplicities)."""
    w = np.asarray(counts, dtype=np.float64)
    x = {name: w @ v for name, v in ns.sums.items()}
    out = {}
    out["token_precision"], out["token_recall"], out["token_f1"] = _prf(x["tp"], x["predicted"], x["n_evidence"])
    with np.errstate(invalid="ignore", divide="ignore"):
        out[f"recall_at_{ns.k}"] = np.where(x["n_evidence"] > 0, x["hits"] / x["n_evidence"], np.nan)
        out["token_auprc"] = _trapezoid_auprc(x["curve_tp"], x["curve_predicted"], x["n_evidence"])
        for name in ("comprehensiveness", "sufficiency", "negation_share"):
            if name in x:
                out[name] = np.where(x[name + "/n"] > 0, x[name] / x[name + "/n"], np.nan)
    return out


def replicates(scores: Sequence, evidence: Sequence, notes: Sequence, threshold: float, counts, *,
               negated: Sequence | None = None, faithful: dict | None = None,
               k: int = RECALL_K) -> dict[str, np.ndarray]:
    """Every metric of `evaluate_method` on each row of `counts` (n_resamples, n_notes): multiplicities of
    the distinct note ids in sorted order, e.g. `uncertainty.resample_counts`. A row of ones gives the
    point estimates."""
    note_ids, ns = _note_sums(scores, evidence, notes, threshold, negated, faithful, k)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != note_ids.size:
        raise ValueError(f"counts must be (n_resamples, {note_ids.size}) for {note_ids.size} notes, got {counts.shape}")
    return _values(ns, counts)


def _plain(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def evaluate_method(scores: Sequence, evidence: Sequence, notes: Sequence, threshold: float, *,
                    negated: Sequence | None = None, faithful: dict | None = None, k: int = RECALL_K,
                    n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Plausibility, faithfulness and negation share of one explanation method, with bootstrap intervals.

    Args:
        scores: one (n_tokens,) float array per (note, code) pair.
        evidence: per pair, a 0/1 array over the same tokens: the code's evidence. Plausibility uses the
            pairs with at least one evidence token.
        notes: per pair, its note (admission) id: the unit the bootstrap resamples.
        threshold: on the normalised scale, tuned on validation with `tune_threshold`.
        negated: per pair, a 0/1 array of the tokens in negated or family-history mentions, or None (no
            ``negation_share``). The share uses the pairs with at least one such token.
        faithful: `faithfulness`'s dict for the same pairs in the same order (NaN: not measured), or None
            (no comprehensiveness or sufficiency).
        k: recall@k's k.
        n_resamples, seed, level: the bootstrap (0 resamples: no ``ci95``).

    Returns:
        A JSON-ready dict: ``token_precision``, ``token_recall``, ``token_f1``, ``recall_at_<k>``,
        ``token_auprc``, and when given ``comprehensiveness``, ``sufficiency``, ``negation_share`` (float,
        or None where undefined); ``threshold``; ``k``; ``n_notes``; ``n_pairs`` {"plausibility",
        "faithfulness", "negation"}; with resamples ``ci95`` {metric: [lo, hi]} (the percentiles at
        `level`; [None, None] where a resample leaves the metric undefined) and ``bootstrap``
        {"resamples", "seed", "level", "unit": "note"}."""
    note_ids, ns = _note_sums(scores, evidence, notes, threshold, negated, faithful, k)
    point = {name: float(v[0]) for name, v in _values(ns, np.ones((1, note_ids.size))).items()}
    out: dict = {name: _plain(v) for name, v in point.items()}
    out.update(threshold=float(threshold), k=int(k), n_notes=int(note_ids.size), n_pairs={
        "plausibility": int(sum(np.count_nonzero(m) > 0 for m in evidence)),
        "faithfulness": int(ns.sums["comprehensiveness/n"].sum()) if faithful is not None else 0,
        "negation": int(ns.sums["negation_share/n"].sum()) if negated is not None else 0})
    if n_resamples:
        uncertainty._check_level(level)
        values = _values(ns, uncertainty.resample_counts(note_ids.size, n_resamples, seed))
        out["ci95"] = {name: [_plain(b) for b in uncertainty._bounds(v, level)] for name, v in values.items()}
        out["bootstrap"] = {"resamples": int(n_resamples), "seed": int(seed), "level": float(level), "unit": "note"}
    return out


def key(metric: str, k: int) -> str:
    return f"recall_at_{k}" if metric == "recall_at_k" else metric


def table(results: dict[str, dict], intervals: bool = False, digits: int = 3) -> pd.DataFrame:
    """One row per method (`results`: method → `evaluate_method`'s dict), columns the metrics' human
    names (`NAMES`) in `METRICS` order, then ``Threshold``; a metric no method has is left out.

    Numbers (NaN where undefined) by default; with `intervals`, text such as ``0.820 [0.801, 0.838]``
    (`digits` decimals; the value alone where it has no interval, ``–`` where undefined)."""
    ks = {int(r.get("k", RECALL_K)) for r in results.values()}
    if len(ks) > 1:
        raise ValueError(f"the methods were measured with different k for recall@k ({sorted(ks)}): use one")
    k = ks.pop() if ks else RECALL_K
    present = [m for m in METRICS if any(key(m, k) in r for r in results.values())]
    columns = [NAMES[m].format(k=k) for m in present] + ["Threshold"]

    def cell(r: dict, key: str):
        value = r.get(key)
        if not intervals:
            return math.nan if value is None else float(value)
        if value is None:
            return "–"
        lo, hi = (r.get("ci95") or {}).get(key) or (None, None)
        text = f"{value:.{digits}f}"
        return text if lo is None or hi is None else f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"

    rows = {method: [cell(r, key(m, k)) for m in present] + [float(r.get("threshold", math.nan))]
            for method, r in results.items()}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    out.index.name = "method"
    return out
