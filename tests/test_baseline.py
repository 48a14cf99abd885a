"""icdlib.evaluation.baseline: the TF-IDF features and the classifier on a small keyword problem."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import roc_auc_score

from icdlib.evaluation import baseline


def keyword_problem(n_docs=400, n_labels=12, seed=0):
    """Each label has two keywords; a positive document mentions one of them twice."""
    rng = np.random.default_rng(seed)
    filler = [f"filler{i}" for i in range(500)]
    keywords = [[f"key{j}a", f"key{j}b"] for j in range(n_labels)]
    y = (rng.random((n_docs, n_labels)) < 0.2).astype(np.float32)
    y[:, -1] = 0.0  # a label without positives
    texts = []
    for row in y:
        words = list(rng.choice(filler, 40))
        for j in np.flatnonzero(row):
            words += [keywords[j][rng.integers(2)]] * 2
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, y


@pytest.fixture(scope="module")
def problem():
    texts, y = keyword_problem()
    kwargs = dict(seed=0, progress=False, rank=16, epochs=1, min_steps=40, batch_size=32)
    info = {}
    out = baseline.fit_predict(texts[:300], y[:300], {"val": texts[300:350], "test": texts[350:]},
                               info=info, **kwargs)
    return texts, y, out, info, kwargs


def test_learns_keywords_micro_auroc(problem):
    texts, y, out, info, _ = problem
    assert set(out) == {"val", "test"}
    assert out["val"].shape == (50, 12) and out["test"].shape == (50, 12)
    assert out["test"].dtype == np.float32
    assert np.all((out["test"] >= 0) & (out["test"] <= 1))
    trained = y[:300].sum(axis=0) > 0
    held_out = np.concatenate([out["val"], out["test"]])
    micro = roc_auc_score(y[300:, trained].ravel(), held_out[:, trained].ravel())
    assert micro > 0.9, micro
    assert info["n_labels_trained"] == 11
    assert info["train_loss"][-1] < info["train_loss"][0]


def test_label_without_positive_gets_constant(problem):
    _, _, out, _, _ = problem
    assert np.all(out["test"][:, -1] == baseline.UNSEEN_SCORE)


def test_deterministic(problem):
    texts, y, out, _, kwargs = problem
    again = baseline.fit_predict(texts[:300], sp.csr_matrix(y[:300]), {"test": texts[350:]}, **kwargs)
    np.testing.assert_array_equal(out["test"], again["test"])  # sparse targets give the same run


def test_tfidf_matches_sklearn_without_hash_collisions():
    texts, _ = keyword_problem(n_docs=120, seed=3)
    texts = [t + " Key0a, key0a; x y" for t in texts[:60]] + texts[60:]
    ours = baseline.TfidfFeatures(min_df=2, max_features=10**6)
    x = ours.fit_transform(texts)
    ref = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, dtype=np.float32)
    r = ref.fit_transform(texts)
    assert x.shape == r.shape  # same number of kept features (no bucket collisions here)
    # Same values up to column order: compare each row's sorted non-zeros.
    for i in range(0, len(texts), 17):
        np.testing.assert_allclose(np.sort(x[i].data), np.sort(r[i].data), rtol=1e-5)
    unseen = ours.transform(["completely unseen words only", ""])
    assert unseen.shape == (2, x.shape[1]) and unseen.nnz == 0


def test_max_features_and_y_validation():
    texts, y = keyword_problem(n_docs=80, seed=1)
    features = baseline.TfidfFeatures(min_df=1, max_features=50)
    x = features.fit_transform(texts)
    assert x.shape == (80, 50)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        baseline.fit_predict(texts, y[:10], {"test": texts}, progress=False)
