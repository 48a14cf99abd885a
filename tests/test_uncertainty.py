"""Tests for icdlib.measure.uncertainty: weights of one equal metrics.compute, every resample equals compute on
the matrix whose rows are repeated by their multiplicity (the slow reference), hand cases."""

import math

import numpy as np
import pytest

from icdlib.measure import metrics, uncertainty

EXACT = 1e-12  # relative: the vectorised sums differ from compute's only in summation order


def _toy(seed: int, n: int = 30, m: int = 12):
    """Scores on a 0.1 grid (many ties, positives tied with negatives), a code without positive, a
    code positive in every document, documents without positive."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, m)) < 0.3
    y[:, 2] = False
    y[:, 5] = True
    y[[3, 11]] = False
    y[[3, 11], 5] = False  # two documents with no positive at all
    s = np.round(np.clip(rng.random((n, m)) * 0.7 + 0.3 * y, 0, 1), 1)
    return y, s


def _repeated(y, s, row):
    rows = np.repeat(np.arange(len(row)), row)
    return y[rows], s[rows]


def _reference_one(y, s, row, threshold, label_set):
    """metrics.compute on the resample as a matrix. "edin": the codes with a positive in the full split
    (fixed across resamples), the documents with a positive; AUROC over everything, as compute."""
    yr, sr = _repeated(y, s, row)
    everything = metrics.compute(yr, sr, threshold)
    if label_set == "all":
        return everything
    docs = yr.any(axis=1)
    codes = y.any(axis=0)
    out = metrics.compute(yr[docs][:, codes], sr[docs][:, codes], threshold)
    out["auroc_micro"], out["auroc_macro"] = everything["auroc_micro"], everything["auroc_macro"]
    return out


def _reference(y, s, counts, threshold, label_set):
    rows = [_reference_one(y, s, row, threshold, label_set) for row in counts]
    return {name: np.array([r[name] for r in rows]) for name in uncertainty.INTERVAL_METRICS}


def _assert_values(got, expected):
    for name in uncertainty.INTERVAL_METRICS:
        np.testing.assert_allclose(got[name], expected[name], rtol=EXACT, atol=0, equal_nan=True, err_msg=name)


def test_interval_metrics_are_the_scalar_metrics_of_compute():
    y, s = _toy(0)
    out = metrics.compute(y, s)
    scalars = {k for k, v in out.items() if isinstance(v, float)} - {"threshold"}
    assert set(uncertainty.INTERVAL_METRICS) == scalars


@pytest.mark.parametrize("label_set", ["all", "edin"])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.95])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_of_one_equal_compute(label_set, threshold, seed):
    y, s = _toy(seed)
    got = uncertainty.replicates(y, s, np.ones((1, len(y)), np.int64), threshold, label_set)
    expected = metrics.compute(y, s, threshold, label_set=label_set)
    for name in uncertainty.INTERVAL_METRICS:
        np.testing.assert_allclose(got[name][0], expected[name], rtol=EXACT, atol=0, err_msg=name)


@pytest.mark.parametrize("label_set", ["all", "edin"])
def test_weights_of_one_equal_compute_on_float32_scores_without_ties(label_set):
    rng = np.random.default_rng(7)
    y = rng.random((60, 40)) < 0.1
    s = rng.random((60, 40)).astype(np.float32)
    got = uncertainty.replicates(y, s, np.ones((1, 60), np.int64), 0.5, label_set)
    expected = metrics.compute(y, s, 0.5, label_set=label_set)
    for name in uncertainty.INTERVAL_METRICS:
        np.testing.assert_allclose(got[name][0], expected[name], rtol=EXACT, atol=0, err_msg=name)


def test_no_positive_at_all_gives_compute_values_not_an_exception():
    y = np.zeros((5, 4), dtype=bool)
    s = np.linspace(0.0, 1.0, 20).reshape(5, 4)
    got = uncertainty.replicates(y, s, np.ones((3, 5), np.int64), 0.5)
    expected = metrics.compute(y, s, 0.5)
    for name in uncertainty.INTERVAL_METRICS:
        np.testing.assert_allclose(got[name], expected[name], rtol=EXACT, atol=0, err_msg=name)
    assert math.isnan(expected["auroc_micro"]) and expected["f1_micro"] == 0.0 and expected["exact_match"] == 0.4


@pytest.mark.parametrize("label_set", ["all", "edin"])
@pytest.mark.parametrize("threshold", [0.5, 0.95])
def test_every_resample_equals_compute_on_the_repeated_rows(label_set, threshold):
    y, s = _toy(4)
    counts = uncertainty.resample_counts(len(y), 40, seed=3)
    got = uncertainty.replicates(y, s, counts, threshold, label_set)
    _assert_values(got, _reference(y, s, counts, threshold, label_set))


def test_edin_resample_holding_every_code_equals_compute_edin_on_the_repeated_rows():
    y, s = _toy(5)
    row = np.ones(len(y), np.int64)
    row[[0, 1, 2]] = [3, 0, 2]  # drops one document, doubles and triples others; keeps every code
    yr, sr = _repeated(y, s, row)
    assert (yr.any(axis=0) == y.any(axis=0)).all()
    got = uncertainty.replicates(y, s, row[None, :], 0.5, "edin")
    expected = metrics.compute(yr, sr, 0.5, label_set="edin")
    for name in uncertainty.INTERVAL_METRICS:
        np.testing.assert_allclose(got[name][0], expected[name], rtol=EXACT, atol=0, err_msg=name)


def test_chunked_blocks_and_float64_sums_give_the_same_values(monkeypatch):
    y, s = _toy(6, n=50, m=20)
    counts = uncertainty.resample_counts(50, 25, seed=2)
    whole = uncertainty.replicates(y, s, counts, 0.5, "edin")
    monkeypatch.setattr(uncertainty, "_BLOCK_CELLS", 30)  # several row blocks and code blocks
    monkeypatch.setattr(uncertainty, "_CHUNK_BYTES", 1.0)  # one resample per chunk
    monkeypatch.setattr(uncertainty, "_SCAN_ROWS", 3)  # cumulative sums in blocks of 3 levels
    monkeypatch.setattr(uncertainty, "_F32_EXACT", 0.0)  # every weighted count summed in float64
    _assert_values(uncertainty.replicates(y, s, counts, 0.5, "edin"), whole)


@pytest.mark.parametrize("label_set", ["all", "edin"])
def test_intervals_are_the_percentiles_of_the_reference(label_set):
    y, s = _toy(8)
    got = uncertainty.intervals(y, s, 0.5, n_resamples=60, seed=11, level=0.9, label_set=label_set)
    ref = _reference(y, s, uncertainty.resample_counts(len(y), 60, seed=11), 0.5, label_set)
    assert set(got) == set(uncertainty.INTERVAL_METRICS)
    for name, values in ref.items():
        assert not np.isnan(values).any(), name
        np.testing.assert_allclose(got[name], np.percentile(values, [5.0, 95.0]), rtol=EXACT, atol=0, err_msg=name)


@pytest.mark.parametrize("label_set", ["all", "edin"])
def test_paired_equals_the_reference_differences(label_set):
    y, a = _toy(9)
    _, b = _toy(10)
    got = uncertainty.paired(y, a, b, 0.5, 0.4, n_resamples=50, seed=4, label_set=label_set)
    counts = uncertainty.resample_counts(len(y), 50, seed=4)
    ref_a, ref_b = _reference(y, a, counts, 0.5, label_set), _reference(y, b, counts, 0.4, label_set)
    point_a = metrics.compute(y, a, 0.5, label_set=label_set)
    point_b = metrics.compute(y, b, 0.4, label_set=label_set)
    for name in uncertainty.INTERVAL_METRICS:
        diff = ref_a[name] - ref_b[name]
        d = got[name]
        np.testing.assert_allclose([d["a"], d["b"]], [point_a[name], point_b[name]], rtol=EXACT, err_msg=name)
        assert d["diff"] == pytest.approx(point_a[name] - point_b[name], rel=1e-9, abs=1e-14)
        np.testing.assert_allclose([d["lo"], d["hi"]], np.percentile(diff, [2.5, 97.5]), rtol=1e-9, atol=1e-14,
                                   err_msg=name)
        # share of differences <= 0; a difference within 1e-14 of 0 may fall either side of it
        assert np.mean(diff <= -1e-14) <= d["p"] <= np.mean(diff <= 1e-14), name


def test_paired_identical_scores_differ_by_exactly_zero():
    y, s = _toy(12)
    got = uncertainty.paired(y, s, s.copy(), n_resamples=30, seed=0)
    for name, d in got.items():
        assert (d["diff"], d["lo"], d["hi"], d["p"]) == (0.0, 0.0, 0.0, 1.0), name
        assert uncertainty.excludes_zero(d) == 0


def test_paired_perfect_against_reversed_ranking_by_hand():
    # Every document has a positive and a negative, so every resample does: model a ranks every
    # positive first (AUROC 1, P@1-like figures 1), model b every positive last (AUROC 0).
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=bool)
    a = np.where(y, 0.9, 0.1)
    b = np.where(y, 0.1, 0.9)
    got = uncertainty.paired(y, a, b, n_resamples=40, seed=1)
    for name in ("auroc_micro", "auroc_macro"):
        assert (got[name]["diff"], got[name]["lo"], got[name]["hi"], got[name]["p"]) == (1.0, 1.0, 1.0, 0.0)
        assert uncertainty.excludes_zero(got[name]) == 1
    # a predicts exactly the truth, b exactly its complement: F1 micro 1 against 0 on every resample
    assert (got["f1_micro"]["lo"], got["f1_micro"]["hi"]) == (1.0, 1.0)
    assert (got["exact_match"]["a"], got["exact_match"]["b"]) == (1.0, 0.0)
    reverse = uncertainty.paired(y, b, a, n_resamples=40, seed=1)
    assert (reverse["auroc_micro"]["lo"], reverse["auroc_micro"]["hi"], reverse["auroc_micro"]["p"]) == (-1.0, -1.0, 1.0)
    assert uncertainty.excludes_zero(reverse["auroc_micro"]) == -1


@pytest.mark.parametrize(("lo", "hi", "verdict"), [
    (0.01, 0.2, 1), (-0.3, -0.001, -1), (-0.1, 0.1, 0), (0.0, 0.2, 0), (-0.2, 0.0, 0),
    (float("nan"), float("nan"), 0),
])
def test_excludes_zero(lo, hi, verdict):
    assert uncertainty.excludes_zero({"diff": 0.05, "lo": lo, "hi": hi}) == verdict


def test_metric_undefined_on_some_resample_has_no_interval():
    # One document of three holds every positive: a resample without it has no AUROC, no recall.
    y = np.array([[1, 0], [0, 0], [0, 0]], dtype=bool)
    s = np.array([[0.9, 0.2], [0.4, 0.1], [0.3, 0.6]])
    counts = uncertainty.resample_counts(3, 200, seed=0)
    assert (counts[:, 0] == 0).any()
    got = uncertainty.intervals(y, s, n_resamples=200, seed=0)
    assert all(math.isnan(v) for v in got["auroc_micro"] + got["recall_micro"] + got["map"])
    assert not any(math.isnan(v) for v in got["exact_match"])


def test_resample_counts_are_seeded_multinomial_draws():
    counts = uncertainty.resample_counts(7, 500, seed=3)
    assert counts.shape == (500, 7) and counts.dtype == np.int64
    assert (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    np.testing.assert_array_equal(counts, uncertainty.resample_counts(7, 500, seed=3))
    assert not np.array_equal(counts, uncertainty.resample_counts(7, 500, seed=4))
    assert abs(counts.mean() - 1.0) < 1e-12  # each document once per resample on average
    with pytest.raises(ValueError, match="n_docs and n_resamples"):
        uncertainty.resample_counts(0, 10)


def test_intervals_and_paired_are_deterministic_for_a_seed():
    y, s = _toy(13)
    _, t = _toy(14)
    first = uncertainty.intervals(y, s, n_resamples=30, seed=5)
    assert first == uncertainty.intervals(y, s, n_resamples=30, seed=5)
    assert first != uncertainty.intervals(y, s, n_resamples=30, seed=6)
    assert uncertainty.paired(y, s, t, n_resamples=30, seed=5) == uncertainty.paired(y, s, t, n_resamples=30, seed=5)


def test_bad_arguments_are_refused():
    y, s = _toy(15)
    with pytest.raises(ValueError, match="label_set"):
        uncertainty.intervals(y, s, n_resamples=5, label_set="caml")
    with pytest.raises(ValueError, match="level"):
        uncertainty.intervals(y, s, n_resamples=5, level=95)
    with pytest.raises(ValueError, match="same shape"):
        uncertainty.paired(y, s, s[:, :3], n_resamples=5)
    with pytest.raises(ValueError, match="counts"):
        uncertainty.replicates(y, s, np.ones((2, 3)))
