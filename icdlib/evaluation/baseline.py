"""The TF-IDF low-rank baseline for multi-label ICD coding, sized for MIMIC-III full.

Why this module exists: an LLM2Vec coder is only interesting next to a cheap,
well-understood reference trained on exactly the same split and label space. The
classical one is a bag of n-grams with a linear classifier (CAML's "LR" baseline).

Design, and why it is not sklearn's ``TfidfVectorizer`` + one-vs-rest logistic regression
-------------------------------------------------------------------------------------
The target is MIMIC-III full (47k training notes of ~1,500 words, 8,922 codes) in about
ten minutes on two CPU cores and a few GB of RAM.

* **Features.** Word unigrams and bigrams (tokens ``\\w\\w+`` of the lower-cased text,
  sklearn's default token pattern), sublinear tf ``1 + ln(count)``, smooth idf
  ``ln((1 + n) / (1 + df)) + 1`` and l2-normalised rows: sklearn's ``TfidfVectorizer``
  formulas. Its implementation, though, keeps every distinct bigram of the corpus in a
  Python dict before ``min_df`` prunes it: millions of entries for real notes, tens of
  millions for random text (several GB of Python objects either way). Here unigrams get exact ids and bigrams are
  hashed (a fixed 64-bit mixer, so runs are reproducible) into 2**24 buckets, so pass one
  holds a fixed-size document-frequency table; features with ``df >= min_df`` are ranked by
  df and the top ``max_features`` kept. A bucket shared by two bigrams is one feature (the
  hashing trick, as in sklearn's ``HashingVectorizer``): with 16.8M buckets a kept, frequent
  bigram rarely shares its bucket with anything but rare ones.
* **Classifier.** One-vs-rest logistic regression means 8,922 separate solver runs
  (hours). A full-rank linear layer trained jointly is too big instead: 100k features x
  8,922 codes is 3.6 GB in fp32 (7 GB with its gradient, more with optimiser state), and
  every step would stream it through memory. The classifier is therefore a *low-rank*
  linear model, ``logits = (X @ U) @ V + b`` with ``U`` (features x rank) and ``V``
  (rank x labels): still linear in the TF-IDF features (the weight matrix is ``U @ V``, of
  rank <= ``rank``), trained jointly for all codes with one multi-label BCE loss and
  mini-batches. The shared projection lets rare codes borrow directions learnt for
  frequent ones, as in low-rank label-embedding methods (LEML). ``b`` starts at each
  code's log prior odds. ``X @ U`` is an ``embedding_bag`` over the sparse rows (weights =
  tf-idf values) and its gradient ``X^T @ dH`` a scipy sparse product, so nothing dense of
  size features x labels exists.
* **Optimiser: SGD with momentum, not Adam.** Adam (and Adagrad) rescale every weight's
  step to about ``lr`` whatever its gradient, so the thousands of uninformative n-grams of a
  note move as fast as the few informative ones; on a toy keyword problem a linear model
  trained with Adam reached 0.73 AUROC where plain SGD and sklearn's logistic regression
  reach 0.999. SGD keeps the steps proportional to the evidence. The loss is summed over
  codes and averaged over documents, so the step size does not depend on the size of the
  label space; the learning rate warms up briefly, then decays linearly to 0.
* **Cost** (defaults; measured on a synthetic MIMIC-III-full-sized set, 47,723 notes of 1,500
  random words, 8,922 codes, two shared CPU cores): features 2 minutes (tokenising is pure
  Python), training 5.7 minutes (4 epochs of 187 steps of 256 notes, ~0.45 s a step),
  scoring 5,000 notes 10 s; 7.8 minutes in all, peak memory 3.0 GB for the whole process
  (of which 0.6 GB were the input texts; a dense float32 ``y_train`` adds 1.7 GB).
  **Memory** (fp32): ``U`` 200k x 256 = 205 MB, three times that with its gradient and
  momentum (0.6 GB); ``V`` 9 MB; the TF-IDF matrix ~8 bytes per non-zero (~0.6 GB for
  MIMIC-III full); pass one keeps ~6 bytes per distinct (note, n-gram) pair until the
  vocabulary is cut (~0.8 GB). Labels without a positive in train are not trained and get
  the constant score ``UNSEEN_SCORE``.

Deterministic for a given seed (and number of torch threads): the vocabulary order, the
hash, the initialisation and the batch order depend on nothing else.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from itertools import chain, repeat

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

__all__ = ["fit_predict", "TfidfFeatures", "UNSEEN_SCORE"]

UNSEEN_SCORE = 0.0
"""Score given to every label that has no positive example in the training split."""

_TOKEN = re.compile(r"\w\w+")  # == sklearn's r"(?u)\b\w\w+\b" (greedy runs of >= 2 word chars)
_BUCKET_BITS = 24
_N_BUCKETS = 1 << _BUCKET_BITS  # bigram buckets occupy feature ids [0, 2**24)
_FEATURE_BITS = 40  # (doc, feature) packed as doc << 40 | feature
_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_MIX3 = np.uint64(0x94D049BB133111EB)


def _bigram_bucket(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Bucket in [0, 2**24) of each (left, right) pair of unigram ids (splitmix64 finaliser)."""
    h = (left.astype(np.uint64) << np.uint64(32)) | right.astype(np.uint64)
    h = h * _MIX1  # uint64 arithmetic wraps around, which is what a hash wants
    h ^= h >> np.uint64(30)
    h *= _MIX2
    h ^= h >> np.uint64(27)
    h *= _MIX3
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(64 - _BUCKET_BITS)).astype(np.int64)


class TfidfFeatures:
    """Word 1-2 gram TF-IDF (sublinear tf, smooth idf, l2 rows) with hashed bigrams.

    ``fit_transform`` on the training texts, then ``transform`` on any other split;
    both return a float32 ``scipy.sparse.csr_matrix`` with sorted column indices.
    """

    def __init__(self, min_df: int = 2, max_features: int = 200_000, chunk_docs: int = 1000,
                 progress: bool = False):
        self.min_df = int(min_df)
        self.max_features = int(max_features)
        self.chunk_docs = int(chunk_docs)
        self.progress = progress
        self.vocabulary: dict[str, int] = {}
        self.lookup: np.ndarray | None = None  # feature id -> column, -1 if dropped
        self.idf: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return 0 if self.idf is None else int(self.idf.size)

    # ------------------------------------------------------------------ counting
    def _count(self, texts: list[str], grow: bool):
        """(nnz per doc, feature ids, counts) of one chunk, sorted by (doc, feature)."""
        tokens = [_TOKEN.findall(text.lower()) for text in texts]
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        flat = list(chain.from_iterable(tokens))
        del tokens
        vocab = self.vocabulary
        if grow:
            new = set(flat)
            new.difference_update(vocab)
            for word in sorted(new):  # sorted: ids do not depend on set order
                vocab[word] = len(vocab)
            ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
        else:
            ids = np.fromiter(map(vocab.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        del flat
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        known = ids >= 0
        pair = (doc[:-1] == doc[1:]) & known[:-1] & known[1:]
        features = np.concatenate([
            (_N_BUCKETS + ids[known]) | (doc[known] << _FEATURE_BITS),
            _bigram_bucket(ids[:-1][pair], ids[1:][pair]) | (doc[:-1][pair] << _FEATURE_BITS),
        ])
        keys, counts = np.unique(features, return_counts=True)
        rows = keys >> _FEATURE_BITS
        feature = keys & ((1 << _FEATURE_BITS) - 1)
        nnz = np.bincount(rows, minlength=len(texts))
        return nnz, feature, np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16)

    def _chunks(self, texts, desc: str):
        from tqdm import tqdm  # not tqdm.auto, which warns in a notebook without ipywidgets

        starts = range(0, len(texts), self.chunk_docs)
        for start in tqdm(starts, desc=desc, disable=not self.progress, leave=False):
            yield list(texts[start:start + self.chunk_docs])

    # ------------------------------------------------------------------ weighting
    def _weigh(self, parts) -> sp.csr_matrix:
        """Stack counted chunks into the l2-normalised tf-idf CSR matrix of kept features."""
        indptr = [np.zeros(1, dtype=np.int64)]
        indices, data = [], []
        offset = 0
        for nnz, feature, counts in parts:
            column = self.lookup[feature]
            keep = column >= 0
            rows = np.repeat(np.arange(nnz.size), nnz)[keep]
            column = column[keep]
            value = (1.0 + np.log(counts[keep].astype(np.float32))) * self.idf[column]
            norm = np.sqrt(np.bincount(rows, weights=value.astype(np.float64) ** 2, minlength=nnz.size))
            value /= np.where(norm > 0, norm, 1.0)[rows].astype(np.float32)
            kept_nnz = np.bincount(rows, minlength=nnz.size)
            indptr.append(offset + np.cumsum(kept_nnz))
            offset += int(kept_nnz.sum())
            indices.append(column)
            data.append(value.astype(np.float32))
        n_docs = sum(p.size for p in indptr) - 1
        matrix = sp.csr_matrix(
            (np.concatenate(data) if data else np.zeros(0, np.float32),
             np.concatenate(indices) if indices else np.zeros(0, np.int32),
             np.concatenate(indptr)),
            shape=(n_docs, self.n_features),
        )
        matrix.has_sorted_indices = True  # columns are increasing in feature id, as keys were sorted
        return matrix

    # ------------------------------------------------------------------ public
    def fit_transform(self, texts) -> sp.csr_matrix:
        self.vocabulary = {}
        parts, df = [], np.zeros(_N_BUCKETS, dtype=np.int64)
        for chunk in self._chunks(texts, "tf-idf fit"):
            nnz, feature, counts = self._count(chunk, grow=True)
            chunk_df = np.bincount(feature, minlength=df.size)
            if chunk_df.size > df.size:
                df = np.concatenate([df, np.zeros(chunk_df.size - df.size, dtype=np.int64)])
            df += chunk_df
            parts.append((nnz, feature.astype(np.int32), counts))
        n_docs = len(texts)
        candidates = np.flatnonzero(df >= self.min_df)
        order = candidates[np.argsort(-df[candidates], kind="stable")]  # df desc, then id
        kept = np.sort(order[: self.max_features])
        self.lookup = np.full(df.size, -1, dtype=np.int32)
        self.lookup[kept] = np.arange(kept.size, dtype=np.int32)
        self.idf = (np.log((1.0 + n_docs) / (1.0 + df[kept])) + 1.0).astype(np.float32)
        self.n_unigrams_ = int(np.count_nonzero(kept >= _N_BUCKETS))
        return self._weigh(_drain(parts))

    def transform(self, texts) -> sp.csr_matrix:
        if self.lookup is None:
            raise RuntimeError("call fit_transform first")
        parts = (self._count(chunk, grow=False) for chunk in self._chunks(texts, "tf-idf"))
        return self._weigh((n, f.astype(np.int32), c) for n, f, c in parts)


def _drain(parts: list):
    """Yield and forget the items of a list, so each chunk is freed once weighed."""
    parts.reverse()
    while parts:
        yield parts.pop()


# ---------------------------------------------------------------------- the classifier

def _label_matrix(y) -> sp.csr_matrix:
    """Targets as a CSR 0/1 matrix (accepts dense arrays or scipy sparse)."""
    if sp.issparse(y):
        y = sp.csr_matrix(y, dtype=np.float32)
        y.data = (y.data != 0).astype(np.float32)
        y.eliminate_zeros()
        return y
    y = np.asarray(y)
    rows, cols = np.nonzero(y)
    return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=y.shape)


class _SparseProjection(torch.autograd.Function):
    """h = X @ U for a scipy CSR batch X; the gradient X^T @ dh is a scipy CSR @ dense product.

    The forward pass is an ``embedding_bag`` (weights = tf-idf values); its own backward is
    several times slower on CPU than the transposed sparse product used here.
    """

    @staticmethod
    def forward(ctx, U: torch.Tensor, x: sp.csr_matrix) -> torch.Tensor:  # noqa: N803
        ctx.x = x
        return F.embedding_bag(torch.from_numpy(x.indices.astype(np.int64)), U,
                               torch.from_numpy(x.indptr[:-1].astype(np.int64)), mode="sum",
                               per_sample_weights=torch.from_numpy(x.data.astype(np.float32, copy=False)))

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        grad_u = ctx.x.T.tocsr() @ grad_h.contiguous().numpy()
        return torch.from_numpy(np.ascontiguousarray(grad_u, dtype=np.float32)), None


class LowRankLinear(torch.nn.Module):
    """logits = (X @ U) @ V + b for sparse X: a linear classifier with a rank-r weight matrix."""

    def __init__(self, n_features: int, n_labels: int, rank: int, prior: np.ndarray,
                 generator: torch.Generator, init_u: float = 0.01, init_v: float | None = None):
        super().__init__()
        self.U = torch.nn.Parameter(torch.randn(n_features, rank, generator=generator) * init_u)
        init_v = 1.0 / math.sqrt(rank) if init_v is None else init_v
        self.V = torch.nn.Parameter(torch.randn(rank, n_labels, generator=generator) * init_v)
        p = np.clip(prior, 1e-6, 1 - 1e-6)
        self.b = torch.nn.Parameter(torch.from_numpy(np.log(p / (1 - p)).astype(np.float32)))

    def forward(self, x: sp.csr_matrix) -> torch.Tensor:
        return torch.addmm(self.b, _SparseProjection.apply(self.U, x), self.V)


def _sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum, fused where this torch build has the CPU kernel."""
    try:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


_ATTEMPTS = 3  # a diverging run restarts from scratch at half the learning rate, twice at most


class _Diverged(ArithmeticError):
    """The training loss became inf/nan."""


SAY_EVERY_S = 10.0  # at most one terminal line per this many seconds of training (and the last epoch's)


def _train(x_train: sp.csr_matrix, y: sp.csr_matrix, prior: np.ndarray, seed: int, rank: int,
           epochs: int, batch_size: int, lr: float, momentum: float, weight_decay: float,
           progress: bool, say=None) -> tuple[LowRankLinear, list[float]]:
    """One training run from a fresh initialisation; returns the model and the mean loss per epoch.
    `say`: called with one line per epoch (the terminal of `icdlib run`), or None."""
    from tqdm import tqdm

    n_train = x_train.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    model = LowRankLinear(x_train.shape[1], y.shape[1], rank, prior, generator)
    optimizer = _sgd(model.parameters(), lr, momentum, weight_decay)
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    total = steps_per_epoch * epochs
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup + 1))))
    losses = []
    if not (y.shape[1] and x_train.shape[1]):
        return model, losses
    said = time.perf_counter()
    with tqdm(total=total, desc="baseline train", disable=not progress, leave=False) as bar:
        for epoch in range(epochs):
            order = torch.randperm(n_train, generator=generator).numpy()
            running = 0.0
            for start in range(0, n_train, batch_size):
                rows = order[start:start + batch_size]
                target = torch.from_numpy(y[rows].toarray())
                # summed over labels, averaged over documents: the step size does not shrink
                # with the size of the label space
                loss = F.binary_cross_entropy_with_logits(model(x_train[rows]), target,
                                                          reduction="sum") / rows.size
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise _Diverged(f"loss {value} at epoch {epoch + 1}, step {bar.n + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                running += value * rows.size
                bar.update(1)
            losses.append(running / n_train)
            if progress:
                bar.write(f"baseline epoch {epoch + 1}/{epochs}: train loss {losses[-1]:.4f}")
            if say and (time.perf_counter() - said >= SAY_EVERY_S or epoch + 1 == epochs):
                said = time.perf_counter()
                say(f"TF-IDF low-rank baseline: epoch {epoch + 1}/{epochs}, train loss {losses[-1]:.4f}")
    return model, losses


def fit_predict(train_texts, y_train, eval_texts: dict[str, list[str]], seed: int = 0,
                progress: bool = True, *, max_features: int = 200_000, min_df: int = 2,
                rank: int = 256, epochs: int = 4, min_steps: int = 200, batch_size: int = 256,
                lr: float = 2.0, momentum: float = 0.9, weight_decay: float = 0.0,
                info: dict | None = None, say=None) -> dict[str, np.ndarray]:
    """Train the TF-IDF + low-rank linear baseline and score other splits.

    Args:
        train_texts: training notes (sequence of str).
        y_train: (n_train, n_labels) 0/1 targets, dense array or scipy sparse matrix.
        eval_texts: split name -> notes to score (e.g. ``{"val": ..., "test": ...}``).
        seed: seeds initialisation and batch order; same inputs + seed = same scores.
        progress: show tqdm bars and the training loss after each epoch.
        max_features, min_df: TF-IDF vocabulary caps (see the module docstring).
        rank, epochs, batch_size, lr, momentum, weight_decay: the classifier and its SGD
            schedule (the learning rate warms up over the first 5% of the steps, then decays
            linearly to 0). A run whose loss turns inf/nan restarts at half the learning
            rate (twice at most, with a RuntimeWarning); ``info["lr"]`` is the rate used.
        min_steps: small training sets get more epochs, so that the run takes at least this
            many optimiser steps (MIMIC-III full: 187 steps an epoch, unaffected).
        info: optional dict filled with timings and sizes (for the notebook's log).

    Returns:
        split name -> (n_docs, n_labels) float32 probabilities, columns as ``y_train``;
        labels without a positive in ``y_train`` score ``UNSEEN_SCORE``.
    """
    t0 = time.perf_counter()
    y = _label_matrix(y_train)
    if y.shape[0] != len(train_texts):
        raise ValueError(f"y_train has {y.shape[0]} rows for {len(train_texts)} training texts")
    n_train, n_labels = y.shape
    positives = np.asarray(y.sum(axis=0)).ravel()
    active = np.flatnonzero(positives > 0)
    y = y[:, active].tocsr()

    vectorizer = TfidfFeatures(min_df=min_df, max_features=max_features, progress=progress)
    x_train = vectorizer.fit_transform(train_texts)
    t_features = time.perf_counter()

    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    epochs = max(int(epochs), math.ceil(min_steps / steps_per_epoch))
    prior = positives[active] / n_train
    for attempt in range(_ATTEMPTS):
        try:
            model, losses = _train(x_train, y, prior, seed, rank, epochs, batch_size, lr, momentum,
                                   weight_decay, progress, say)
            break
        except _Diverged as error:
            if attempt == _ATTEMPTS - 1:
                raise FloatingPointError(f"baseline training diverged {_ATTEMPTS} times, last at lr {lr}; "
                                         "pass a lower lr") from error
            warnings.warn(f"baseline training diverged at lr {lr} ({error}); restarting at lr {lr / 2}",
                          RuntimeWarning, stacklevel=2)
            lr /= 2
    t_train = time.perf_counter()

    out = {}
    model.eval()
    with torch.no_grad():
        for name, texts in eval_texts.items():
            x = vectorizer.transform(texts)
            scores = np.full((x.shape[0], n_labels), UNSEEN_SCORE, dtype=np.float32)
            if active.size:
                for start in range(0, x.shape[0], 1024):
                    stop = min(start + 1024, x.shape[0])
                    scores[start:stop, active] = torch.sigmoid(model(x[start:stop])).numpy()
            out[name] = scores
    if info is not None:
        info.update({
            "n_features": vectorizer.n_features,
            "n_unigram_features": vectorizer.n_unigrams_,
            "vocabulary_size": len(vectorizer.vocabulary),
            "train_nnz": int(x_train.nnz),
            "n_labels_trained": int(active.size),
            "train_loss": losses,
            "lr": lr,
            "epochs": epochs,
            "seconds_features": t_features - t0,
            "seconds_train": t_train - t_features,
            "seconds_predict": time.perf_counter() - t_train,
        })
    return out


def fit_for(cfg, ev, progress: bool = False, say=None) -> dict[str, np.ndarray]:
    """The baseline of a run: trained on its train split and label space, scoring the splits of
    `ev` (an `icdlib.evaluation.evaluate.Evaluation`). Returns split -> (n_docs, n_labels) probabilities.
    `say`: one line per epoch for the terminal of `icdlib run`."""
    from icdlib.data.labels import multi_hot

    train = ev.train
    y_train = multi_hot(train["codes"].tolist(), ev.labels["code"].tolist())
    return fit_predict(train["text"].tolist(), y_train, {k: s.notes["text"].tolist() for k, s in ev.splits.items()},
                       seed=cfg.seed, progress=progress, say=say)
