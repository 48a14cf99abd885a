"""Document-level bootstrap intervals for every metric of `icdlib.measure.metrics.compute`.

Why this module exists: a table of test metrics says nothing about how much the figures would move
with another test set of the same size, and a verdict "the model beats the baseline" needs the
interval of the difference, not two point estimates. The bootstrap resamples test *documents* (the
unit that was sampled), recomputes every metric on each resample, and reads percentile intervals;
the paired bootstrap scores two models on the *same* resamples, so what both find easy or hard
cancels out of their difference.

How it stays fast (1,000 resamples of MIMIC-III full's 3,372 × 8,922 in seconds, `bench metrics`):
a resample is a vector of multiplicities over documents (`resample_counts`), never a copy of the
matrix, and every metric is rewritten as a function of document weights:

* P@k, R-precision, MAP, exact match: per-document values that resampling does not change (a
  document's ranking of codes is its own), so each resample's figure is a weighted mean, a matmul.
* F1 micro/macro/CAML, precision, recall: per-code TP, FP, FN counts are weighted sums of 0/1
  columns, a (resamples × docs) @ sparse (docs × codes) product; the F1s follow from the counts.
* AUROC and AUPRC, micro and macro: the distinct scores of the positives of a ranking (all cells
  for micro, one code's column for macro) are its *levels*; every cell falls in one bin (tied with
  a level, or strictly between two levels), and all either metric needs is, per level, the
  weighted number of positives and of cells at or above it. Per (bin, document) counts form a
  sparse matrix built once per score matrix; each resample's weighted counts are one sparse
  matmul, cumulative sums give the counts at or above each level, and AUROC (Mann-Whitney with
  ties as one half) and AUPRC (step-wise average precision, ties as one threshold, as scikit-learn)
  follow exactly. Cells below a ranking's lowest positive never enter a bin: AUROC reads them
  from the weighted cell total.

Nothing is approximated: with all weights one every figure equals `metrics.compute` (up to float
summation order), and on each resample it equals `compute` on the matrix whose rows are repeated
by their multiplicity (tests/test_uncertainty.py checks both). Counts are integers, summed in
float32 only where they stay below 2**24 and in float64 otherwise.

Label sets (`label_set`, as `metrics.compute`):

* ``"all"``: every code and document, on every resample.
* ``"edin"``: the codes are fixed to those with a positive in the *full* split, the set the point
  estimate uses, and stay fixed across resamples (recomputing the set per resample would change
  every document's ranking of codes from one resample to the next, which no weighted sum can
  express; the codes a resample misses take top-k places and count FPs there, as a code without a
  positive does under ``"all"``). The documents are those with a positive, a property of the
  document that resampling cannot change. AUROC is over every code and document, as `compute`.
* In each resample, a macro average skips the codes that have no positive there (F1 macro) or
  lack a positive or a negative there (AUROC, AUPRC macro), as `compute` skips them in the split;
  F1 macro CAML averages over every code of the label set, as `compute`.

Undefined figures: an interval is (nan, nan) when its metric is undefined on any resample or on the
data (no positive, no prediction, ...): a percentile of the resamples where it happens to be
defined would describe another statistic.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from icdlib.measure import metrics

__all__ = ["INTERVAL_METRICS", "resample_counts", "replicates", "intervals", "paired", "excludes_zero"]

KS = (5, 8, 15)  # compute's default cut-offs: the P@k figures of every table
INTERVAL_METRICS: tuple[str, ...] = (
    "auroc_micro", "auroc_macro", "auprc_micro", "auprc_macro",
    "f1_micro", "f1_macro", "f1_macro_caml", "precision_micro", "recall_micro", "exact_match",
    *(f"p_at_{k}" for k in KS), "r_precision", "map",
)
_F32_EXACT = 2.0 ** 24  # float32 holds every integer below this
_BLOCK_CELLS = 1 << 22  # cells per block when binning: bounds the temporary arrays (~100 MB)
_CHUNK_BYTES = 3e8  # float64 bytes of the per-level arrays of one chunk of resamples (each thread)
_THREADS = 2
_SCAN_ROWS = 512  # rows per block of a cumulative sum


# --------------------------------------------------------------------------- #
# Resamples
# --------------------------------------------------------------------------- #
def resample_counts(n_docs: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_docs) int64 multiplicities; each row one bootstrap resample of the documents.

    A row is a multinomial draw of n_docs documents with replacement: document i appears
    ``counts[r, i]`` times in resample r, and every row sums to n_docs."""
    if n_docs < 1 or n_resamples < 1:
        raise ValueError(f"n_docs and n_resamples must be >= 1, got {n_docs} and {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=n_resamples).astype(np.int64)


# --------------------------------------------------------------------------- #
# Rankings: levels, bins and the sparse (bin × document) counts built once per score matrix
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Counts:
    """A (rows × documents) matrix of float32 counts, sparse or dense, and its largest row sum."""

    matrix: sp.csr_matrix | np.ndarray
    row_max: float


@dataclass(frozen=True)
class _Ranking:
    """One family of rankings (micro: one ranking of every cell; macro: one per code).

    Levels are the distinct scores of a ranking's positives, ascending within a ranking, rankings
    one after another (``starts``: each ranking's first level). Bin 2l counts the cells tied with
    level l, bin 2l + 1 the cells strictly between level l and the next level of the ranking (above
    its top level for the last); cells below a ranking's lowest level are in no bin."""

    starts: np.ndarray  # (n_rankings,) first level of each ranking
    next_start: np.ndarray  # (n_levels,) first level of the following ranking (n_levels for the last)
    positives: _Counts  # (n_levels, n_docs) positives of each document at each level
    cells: _Counts  # (2 n_levels, n_docs) cells of each document in each bin: AUPRC and AUROC
    extra: _Counts | None  # the same for cells that AUROC alone counts ("edin": outside its set)
    cells_per_doc: np.ndarray  # (n_docs,) cells of each document in every ranking, for AUPRC
    cells_per_doc_all: np.ndarray  # the same, counting the AUROC-only cells too

    @property
    def n_levels(self) -> int:
        return self.positives.matrix.shape[0]


def _times(c: _Counts, wt: np.ndarray, wt32: np.ndarray) -> np.ndarray:
    """c.matrix @ wt (weights: documents × resamples). Summed in float32 when every sum is an integer
    below 2**24, exact there and twice as fast; in float64 otherwise."""
    if c.row_max * float(wt.max(initial=0.0)) < _F32_EXACT:
        return c.matrix @ wt32
    return c.matrix.astype(np.float64) @ wt


def _csr(rows, docs, counts, shape) -> _Counts:
    """Counts from lists of (row, doc, count) arrays; repeated (row, doc) pairs are summed."""
    rows, docs, counts = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (rows, docs, counts))
    matrix = sp.csr_matrix((counts.astype(np.float32), (rows, docs)), shape=shape)
    return _Counts(matrix, float(np.asarray(matrix.sum(axis=1)).max(initial=0.0)))


def _indicator(mask: np.ndarray, dense: bool = False) -> _Counts:
    """(n_codes, n_docs) 0/1 counts of a (n_docs, n_codes) boolean mask."""
    if dense:
        return _Counts(np.ascontiguousarray(mask.T, dtype=np.float32), float(mask.sum(axis=0).max(initial=0)))
    docs, codes = np.nonzero(mask)
    return _csr([codes], [docs], [np.ones(docs.size)], mask.shape[::-1])


def _bin_rows(levels: np.ndarray, s: np.ndarray, docs: np.ndarray, out: tuple[list, list, list]) -> None:
    """Append the (bin, doc, count) of every cell of s (rows = the documents `docs`) against `levels`.

    Each row is sorted, so its bins are non-decreasing, the cells in a bin are a run and the cells in
    no bin (below the lowest level) come first: a run ends where the next starts or at the row's end."""
    if not s.size:
        return
    m = s.shape[1]
    padded = np.append(levels, levels[-1])  # bins == len(levels) (above every level) reads this, never a tie
    step = max(1, _BLOCK_CELLS // m)
    for lo in range(0, s.shape[0], step):
        block = np.sort(s[lo:lo + step], axis=1)
        bins = np.searchsorted(levels, block)
        tie = padded[bins] == block
        tie &= bins < levels.size
        bins *= 2
        bins -= 1
        bins += tie  # tie with level l: 2l; between levels l - 1 and l: 2(l - 1) + 1; below all: -1
        del block, tie
        start = np.empty(bins.shape, dtype=bool)
        start[:, 0] = True
        np.not_equal(bins[:, 1:], bins[:, :-1], out=start[:, 1:])
        start &= bins >= 0
        first = np.flatnonzero(start)
        del start
        if not first.size:
            continue
        row = first // m
        end = np.minimum(np.append(first[1:], bins.size), (row + 1) * m)
        out[0].append(bins.ravel()[first])
        out[1].append(docs[lo + row])
        out[2].append(end - first)


def _micro(y: np.ndarray, s: np.ndarray, keep_docs: np.ndarray, keep_codes: np.ndarray) -> _Ranking:
    """All cells as one ranking: the core cells are kept documents × kept codes, the rest AUROC-only."""
    n, m = y.shape
    levels = np.unique(s[y])
    k = levels.size
    rows, cols = np.nonzero(y)
    positives = _csr([np.searchsorted(levels, s[rows, cols])], [rows], [np.ones(rows.size)], (k, n))
    kd, dd = np.flatnonzero(keep_docs), np.flatnonzero(~keep_docs)
    core, extra = ([], [], []), ([], [], [])
    if k:
        everything = keep_docs.all() and keep_codes.all()
        _bin_rows(levels, s if everything else s[np.ix_(kd, keep_codes)], kd, core)
        if not keep_codes.all():
            _bin_rows(levels, s[np.ix_(kd, ~keep_codes)], kd, extra)
        _bin_rows(levels, s[dd], dd, extra)
    per_doc = np.where(keep_docs, keep_codes.sum(), 0).astype(np.float64)
    has_extra = bool(dd.size) or not keep_codes.all()
    return _Ranking(starts=np.zeros(min(k, 1), np.intp), next_start=np.full(k, k, np.intp), positives=positives,
                    cells=_csr(*core, (2 * k, n)), extra=_csr(*extra, (2 * k, n)) if has_extra else None,
                    cells_per_doc=per_doc, cells_per_doc_all=np.full(n, float(m)))


def _macro(y: np.ndarray, s: np.ndarray, keep_docs: np.ndarray) -> _Ranking:
    """One ranking per code with a positive, over every document; kept documents' cells are core.

    Each column is sorted once; a run of tied scores holding a positive is a level."""
    n = y.shape[0]
    codes = np.flatnonzero(y.any(axis=0))
    core, extra = ([], [], []), ([], [], [])
    pos_rows, pos_docs, level_counts = [], [], []
    offset = 0
    step = max(1, _BLOCK_CELLS // n)
    for lo in range(0, codes.size, step):
        cols = codes[lo:lo + step]
        sc = np.ascontiguousarray(s[:, cols].T)
        order = np.argsort(sc, axis=1)  # any order of tied scores: ties are handled as runs
        ss = np.take_along_axis(sc, order, axis=1).ravel()
        ys = np.take_along_axis(np.ascontiguousarray(y[:, cols].T), order, axis=1).ravel()
        docs = order.ravel()
        del sc, order
        new_run = np.ones(ss.size, dtype=bool)
        new_run.reshape(cols.size, n)[:, 1:] = ss.reshape(cols.size, n)[:, 1:] != ss.reshape(cols.size, n)[:, :-1]
        run = np.cumsum(new_run) - 1
        run_pos = np.bincount(run, weights=ys) > 0  # runs holding a positive: the levels
        before = np.cumsum(run_pos) - run_pos  # levels before each run, over all columns so far
        row_first = before[run[::n]]  # levels before each column's first run
        lvl = before[run]  # per cell
        tie = run_pos[run]
        above_any = lvl > np.repeat(row_first, n)  # strictly above the column's lowest level
        bins = np.where(tie, 2 * (offset + lvl), 2 * (offset + lvl - 1) + 1)
        keep = tie | above_any
        for part, where in ((core, keep & keep_docs[docs]), (extra, keep & ~keep_docs[docs])):
            part[0].append(bins[where])
            part[1].append(docs[where])
            part[2].append(np.ones(int(where.sum())))
        pos_rows.append(offset + lvl[ys])
        pos_docs.append(docs[ys])
        level_counts.append(np.diff(np.r_[row_first, before[-1] + run_pos[-1]]))
        offset += int(before[-1] + run_pos[-1])
    k = offset
    counts = np.concatenate(level_counts) if level_counts else np.zeros(0, np.intp)
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.intp) if counts.size else np.zeros(0, np.intp)
    next_start = np.repeat(starts + counts, counts).astype(np.intp)
    positives = _csr(pos_rows, pos_docs, [np.ones(a.size) for a in pos_rows], (k, n))
    has_extra = not keep_docs.all()
    return _Ranking(starts=starts, next_start=next_start, positives=positives, cells=_csr(*core, (2 * k, n)),
                    extra=_csr(*extra, (2 * k, n)) if has_extra else None,
                    cells_per_doc=keep_docs.astype(np.float64), cells_per_doc_all=np.ones(n))


# --------------------------------------------------------------------------- #
# Weighted evaluation of one chunk of resamples (weights: (n_docs, chunk), documents as rows)
# --------------------------------------------------------------------------- #
def _suffix(x: np.ndarray, r: _Ranking) -> np.ndarray:
    """(n_levels, chunk) float64: per level, the sum of x over the levels at or above it in its ranking.

    Scanned in blocks of rows that stay in cache: numpy's cumsum down the rows of one large array
    is several times slower."""
    k, chunk = x.shape
    total = np.empty((k + 1, chunk))
    total[k] = 0.0
    for hi in range(k, 0, -_SCAN_ROWS):
        lo = max(0, hi - _SCAN_ROWS)
        block = total[lo:hi]
        np.cumsum(x[lo:hi][::-1], axis=0, dtype=np.float64, out=block[::-1])
        block += total[hi]
    if r.starts.size == 1:
        return total[:k]
    above = total[r.next_start]  # the sums of the rankings that follow
    return np.subtract(total[:k], above, out=above)


def _per_ranking(x: np.ndarray, r: _Ranking) -> np.ndarray:
    """(n_rankings, chunk) sums of x (n_levels, chunk) over each ranking's levels."""
    return x.sum(axis=0, keepdims=True) if r.starts.size == 1 else np.add.reduceat(x, r.starts, axis=0)


def _rank_metrics(r: _Ranking, wt: np.ndarray, wt32: np.ndarray) -> dict:
    """(n_rankings, chunk) AUROC, AUPRC, positives and negatives of every ranking of the family.

    With tp the weighted positives at a level, tp_ge those at or above it, ge the weighted cells at
    or above it and tie those tied with it (positives included):
    AUPRC = sum(tp * tp_ge / ge) / P; Mann-Whitney's count of (positive, negative) pairs ordered
    right, ties as one half, is 2U = 2NP + P^2 - sum(tp * (2 ge - tie)) (N negatives, P positives),
    all integers below 2**53 and exact in float64."""
    chunk = wt.shape[1]
    if not r.n_levels:
        empty = np.zeros((0, chunk))
        return {"auroc": empty, "auprc": empty, "pos": empty, "neg": empty, "neg_all": empty}
    tp = _times(r.positives, wt, wt32)
    tp_ge = _suffix(tp, r)
    pos = tp_ge[r.starts]

    binned = _times(r.cells, wt, wt32).reshape(r.n_levels, 2, chunk)
    tie, ge = binned[:, 0], _suffix(binned.sum(axis=1), r)
    precision = np.maximum(ge, 1.0)  # ge >= tp_ge >= 1 where tp > 0; elsewhere the term is 0
    np.divide(tp_ge, precision, out=precision)
    precision *= tp
    with np.errstate(invalid="ignore", divide="ignore"):
        auprc = _per_ranking(precision, r) / pos
    del precision, tp_ge
    neg = (r.cells_per_doc @ wt)[None, :] - pos

    if r.extra is not None:
        extra = _times(r.extra, wt, wt32).reshape(r.n_levels, 2, chunk)
        tie = tie + extra[:, 0]
        ge += _suffix(extra.sum(axis=1), r)
    neg_all = (r.cells_per_doc_all @ wt)[None, :] - pos
    ge *= 2.0
    ge -= tie
    ge *= tp
    twice_u = 2.0 * neg_all * pos + pos * pos - _per_ranking(ge, r)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = twice_u / (2.0 * pos * neg_all)
    return {"auroc": auroc, "auprc": auprc, "pos": pos, "neg": neg, "neg_all": neg_all}


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Column means of values over mask (rows = items, columns = resamples); nan where mask is empty."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, values, 0.0).sum(axis=0) / mask.sum(axis=0)


# --------------------------------------------------------------------------- #
# Per-document and thresholded metrics: fixed per document or code, weighted per resample
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Prepared:
    """Everything of one (y_true, y_score, threshold, label_set) that the resamples reuse."""

    docs: np.ndarray  # documents of the non-AUROC metrics (all, or those with a positive)
    per_doc: np.ndarray  # (len(docs), len(KS) + 2) P@k, R-precision, AP; 0 for a document without positive
    has_positive: np.ndarray  # (len(docs),) float 0/1
    exact: np.ndarray  # (len(docs),) float 0/1: the document's predicted codes are its true codes
    truth: _Counts  # (len(codes), len(docs)) positives
    hits: _Counts  # (len(codes), len(docs)) true positives at the threshold
    predicted: _Counts  # (len(codes), len(docs)) predictions, dense when not sparse
    micro: _Ranking
    macro: _Ranking


def _prepare(y_true, y_score, threshold: float, label_set: str) -> _Prepared:
    if label_set not in metrics.LABEL_SETS:
        raise ValueError(f"label_set must be one of {sorted(metrics.LABEL_SETS)}, got {label_set!r}")
    y, s = metrics._validate(y_true, y_score)
    n, m = y.shape
    keep_docs, keep_codes = (np.ones(n, bool), np.ones(m, bool)) if label_set == "all" else (y.any(1), y.any(0))
    everything = keep_docs.all() and keep_codes.all()
    yk, sk = (y, s) if everything else (y[np.ix_(keep_docs, keep_codes)], s[np.ix_(keep_docs, keep_codes)])
    # The three sorts are independent and release the GIL, as in metrics.compute.
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        micro = pool.submit(_micro, y, s, keep_docs, keep_codes)
        macro = pool.submit(_macro, y, s, keep_docs)
        per_doc, has = _per_document(yk, sk)
        micro, macro = micro.result(), macro.result()
    pred = sk >= threshold
    return _Prepared(docs=np.flatnonzero(keep_docs), per_doc=per_doc, has_positive=has.astype(np.float64),
                     exact=np.all(yk == pred, axis=1).astype(np.float64), truth=_indicator(yk),
                     hits=_indicator(yk & pred), predicted=_indicator(pred, dense=pred.mean() > 0.05),
                     micro=micro, macro=macro)


def _per_document(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((n_docs, len(KS) + 2) P@k, R-precision and average precision of each document, 0 for a
    document without positive; (n_docs,) whether it has one), ranked as metrics.compute ranks."""
    r = metrics._rank_rows(y, s)
    n_pos = r.n_pos
    has = n_pos > 0
    columns = [np.bincount(r.row[r.rank < k], minlength=r.n_rows) / k for k in KS]
    columns.append(metrics._divide(np.bincount(r.row[r.rank < n_pos[r.row]], minlength=r.n_rows), n_pos))
    columns.append(metrics._average_precision(r))
    return np.where(has[:, None], np.stack(columns, axis=1), 0.0), has


def _chunk_values(p: _Prepared, wt: np.ndarray) -> dict:
    """Every metric on each resample of one chunk; wt is (n_docs, chunk) float64 weights."""
    wt32 = wt.astype(np.float32)
    out = {}
    micro, macro = _rank_metrics(p.micro, wt, wt32), _rank_metrics(p.macro, wt, wt32)
    chunk = wt.shape[1]
    nan = np.full(chunk, np.nan)
    out["auroc_micro"] = micro["auroc"][0] if micro["auroc"].size else nan
    out["auprc_micro"] = micro["auprc"][0] if micro["auprc"].size else nan
    out["auroc_macro"] = _masked_mean(macro["auroc"], (macro["pos"] > 0) & (macro["neg_all"] > 0))
    out["auprc_macro"] = _masked_mean(macro["auprc"], (macro["pos"] > 0) & (macro["neg"] > 0))

    wk, wk32 = wt[p.docs], wt32[p.docs]
    tp, pos, predicted = (_times(c, wk, wk32).astype(np.float64) for c in (p.hits, p.truth, p.predicted))
    fp, fn = predicted - tp, pos - tp
    tp_sum, fp_sum, fn_sum = tp.sum(axis=0), fp.sum(axis=0), fn.sum(axis=0)
    out["f1_micro"] = metrics._f1(tp_sum, fp_sum, fn_sum)
    out["f1_macro"] = _masked_mean(metrics._f1(tp, fp, fn), pos > 0)
    out["f1_macro_caml"] = _caml(tp, fp, fn)
    out["precision_micro"] = metrics._divide(tp_sum, tp_sum + fp_sum)
    out["recall_micro"] = metrics._divide(tp_sum, tp_sum + fn_sum)
    out["exact_match"] = metrics._divide(p.exact @ wk, wk.sum(axis=0))

    docs_with_positive = p.has_positive @ wk
    per_doc = metrics._divide(p.per_doc.T @ wk, docs_with_positive[None, :])
    for i, name in enumerate([f"p_at_{k}" for k in KS] + ["r_precision", "map"]):
        out[name] = per_doc[i]
    return out


def _caml(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """metrics._caml_macro_f1 per column (codes as rows, resamples as columns)."""
    if not tp.shape[0]:
        return np.full(tp.shape[1], np.nan)
    precision = np.nan_to_num(metrics._divide(tp, tp + fp)).mean(axis=0)
    recall = np.nan_to_num(metrics._divide(tp, tp + fn)).mean(axis=0)
    total = precision + recall
    return np.where(total == 0, 0.0, metrics._divide(2 * precision * recall, total))


def _values(p: _Prepared, counts: np.ndarray) -> dict[str, np.ndarray]:
    """(n_resamples,) value of every metric, resamples taken in chunks that bound memory."""
    counts = np.asarray(counts)
    levels = max(p.micro.n_levels, p.macro.n_levels, 1)
    step = int(max(1, min(256, _CHUNK_BYTES // (levels * 8 * 12))))
    chunks = [np.ascontiguousarray(counts[lo:lo + step].T, dtype=np.float64)
              for lo in range(0, counts.shape[0], step)]
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:  # sparse products and ufuncs release the GIL
        parts = list(pool.map(lambda wt: _chunk_values(p, wt), chunks))
    return {name: np.concatenate([part[name] for part in parts]) for name in INTERVAL_METRICS}


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def replicates(y_true, y_score, counts, threshold: float = 0.5, label_set: str = "all") -> dict[str, np.ndarray]:
    """Every metric of INTERVAL_METRICS on each row of `counts` (n_resamples, n_docs): document
    weights, e.g. from `resample_counts`. A row of ones gives `metrics.compute`'s values."""
    counts = np.asarray(counts)
    n_docs = np.shape(y_true)[0] if np.ndim(y_true) == 2 else -1
    if counts.ndim != 2 or counts.shape[1] != n_docs:
        raise ValueError(f"counts must be (n_resamples, {n_docs}), got {counts.shape}")
    return _values(_prepare(y_true, y_score, threshold, label_set), counts)


def _bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval at `level` (numpy's linear interpolation); (nan, nan) when any value is undefined."""
    if not values.size or np.isnan(values).any():
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (0.95 for a 95% interval), got {level!r}")


def intervals(y_true, y_score, threshold: float = 0.5, *, n_resamples: int = 1000, seed: int = 0,
              level: float = 0.95, label_set: str = "all") -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric of INTERVAL_METRICS, resampling documents.

    Args:
        y_true, y_score, threshold, label_set: as `metrics.compute` (module docstring: how the
            ``"edin"`` code set and the macro averages behave in a resample).
        n_resamples, seed: the resamples, `resample_counts(n_docs, n_resamples, seed)`.
        level: coverage, 0.95 for the 2.5th and 97.5th percentiles.

    Returns:
        {metric: (lo, hi)}; (nan, nan) where the metric is undefined on some resample."""
    _check_level(level)
    y = np.asarray(y_true)
    values = replicates(y, y_score, resample_counts(y.shape[0], n_resamples, seed), threshold, label_set)
    return {name: _bounds(v, level) for name, v in values.items()}


def paired(y_true, score_a, score_b, threshold_a: float = 0.5, threshold_b: float = 0.5, *,
           n_resamples: int = 1000, seed: int = 0, level: float = 0.95, label_set: str = "all") -> dict[str, dict]:
    """Paired bootstrap of metric(a) - metric(b): both score matrices on the same resamples.

    Returns:
        {metric: {"diff": a - b on the data itself, "a": a's value, "b": b's value, "lo", "hi":
        percentile interval of the resampled differences at `level` (nan when a difference is
        undefined on some resample), "p": share of resamples where the difference is <= 0
        (small: a is reliably higher; near 1: reliably lower)}}."""
    _check_level(level)
    y = np.asarray(y_true)
    if np.shape(score_a) != y.shape or np.shape(score_b) != y.shape:
        raise ValueError(f"y_true, score_a and score_b must have the same shape, got "
                         f"{y.shape}, {np.shape(score_a)} and {np.shape(score_b)}")
    counts = np.vstack([np.ones((1, y.shape[0]), np.int64), resample_counts(y.shape[0], n_resamples, seed)])
    a = replicates(y, score_a, counts, threshold_a, label_set)
    b = replicates(y, score_b, counts, threshold_b, label_set)
    out = {}
    for name in INTERVAL_METRICS:
        diff = a[name][1:] - b[name][1:]
        lo, hi = _bounds(diff, level)
        out[name] = {"diff": float(a[name][0] - b[name][0]), "a": float(a[name][0]), "b": float(b[name][0]),
                     "lo": lo, "hi": hi, "p": float(np.mean(diff <= 0)) if not np.isnan(lo) else float("nan")}
    return out


def excludes_zero(d: dict) -> int:
    """+1 when the interval of a difference lies above 0, -1 when below, 0 when it holds 0 (or is nan)."""
    if d["lo"] > 0:
        return 1
    if d["hi"] < 0:
        return -1
    return 0
