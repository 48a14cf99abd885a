"""Why the coder suggests a code: per-token explanation scores, word-level highlights, evidence spans.

`token_scores(coder, notes, labels, method, ...)` scores every note token the model reads (after
truncation; the segment format's BOS / instruction tokens excluded) for one code per note, higher
meaning more evidence for that code. The methods follow Edin et al. 2024 ("An Unsupervised Approach
to Achieve Supervised-Level Explainability in Healthcare Records", EMNLP; their repository
JoakimEdin/explainable-medical-coding, files `explainability/explanation_methods.py` (EM) and
`explainability/helper_functions.py` (HF) below). z_c is the code's logit (their target is the
model's logit output, HF:32-50), e_t the input embedding of token t (the word embedding; Llama's
positions enter through RoPE), a_tc the label attention of the LAAT head:

- `attention`: a_tc, the label-attention weights ("laat", EM:439-471; what 05's highlights show).
- `attingrad`: a_tc · ‖e_t ⊙ ∂z_c/∂e_t‖₂ — AttInGrad, the attention times input × gradient
  ("grad_attention", EM:475-540, named AttInGrad in config/explainability.yaml:17), their most
  plausible method on MDACE.
- `input_x_gradient`: ‖e_t ⊙ ∂z_c/∂e_t‖₂ (EM:670-711; the embedding → token reduction is the L2
  norm over the embedding, HF:107-119).
- `integrated_gradients`: ‖(e_t − e'_t) ⊙ ∫₀¹ ∂z_c/∂e_t(e' + α(e − e')) dα‖₂ (EM:714-767), the
  baseline e' one content-free embedding at every note token, the format tokens kept as their
  baseline keeps CLS/EOS (HF:66-86). The integral is a Gauss–Legendre sum of `ig_steps` points
  (captum's default rule, which EM calls). Two deviations. EM:734 passes
  `multiply_by_inputs=False`, leaving out the factor (e − e'); it is kept here, so that with
  `reduce="sum"` the scores add up to z_c(note) − z_c(baseline) (completeness). And e' is not
  the pad token's embedding (HF:83) but `baseline_embedding`, the average token: Llama's and
  Mistral's RMSNorm is singular at the zero vector, and an untrained pad row (the tiny model's
  has norm 6e-7) puts a step at the start of the path that no
  affordable quadrature resolves (on the tiny demo model, from the pad row the completeness
  error of one pair stayed at 40-57% of z(note) − z(baseline) from 8 to 64 points).
- `occlusion` (of sentences): every token carries z_c(note) − z_c(note without the token's
  sentence), the sentence's tokens deleted from the note and the rest re-segmented, as EM's
  faithfulness code removes tokens (HF:248-260; EM:327-366 occludes single tokens instead).
  Sentences come from `sentence_ids`.

Two choices are left to the caller: `reduce` ("l2", Edin's norm, or "sum", the signed sum over
the embedding whose negative values say "against the code") for the three gradient methods, and
`normalize` (Edin divides each pair's scores by their L1 norm before thresholding, EM:538, 709,
765). Gradients are taken with respect to the input embeddings only: the model is put in eval
mode, its parameters' `requires_grad` switched off and restored, its weights untouched.

Text side: `token_spans` gives the tokens the model reads with their character offsets,
`word_scores` sums subword pieces into whitespace-delimited words ("Diphtheria", not
"D iph theria"), `top_spans` picks evidence spans from the words, `words_html` / `page_html`
render highlighted words with a colour legend and the code and its title beside each example.

Only for reports that may show note text: with `share_safe` on (the default for real MIMIC-III)
`highlight` replaces the highlights with a one-line notice, so no note text reaches a shared report.
"""

from __future__ import annotations

import html
import re
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from icdlib.run.config import Config
from icdlib.model.encoding import PLAIN, SegmentFormat, collate, cut, tokenize
from icdlib.run.errors import IcdlibError
from icdlib.model.inference import autocast
from icdlib.model.models import LabelAttentionHead

METHODS = ("attention", "attingrad", "input_x_gradient", "integrated_gradients", "occlusion")
NEEDS_ATTENTION = ("attention", "attingrad")
DESCRIPTIONS = {"attention": "label attention",
                "attingrad": "AttInGrad: label attention × input × gradient (Edin et al. 2024)",
                "input_x_gradient": "input × gradient",
                "integrated_gradients": "integrated gradients",
                "occlusion": "sentence occlusion: the code's logit drop without the sentence"}
IG_STEPS = 32  # Gauss–Legendre points: the fewest whose completeness error on the tiny demo model was below
# 1e-4 of z(note) − z(baseline) for the median pair and 1e-2 for the worst (README: Evidence)
SENTENCE_TOKENS = 64  # a longer "sentence" (a cleaned text has no punctuation) is cut into pieces of this many tokens
REDUCTIONS = ("l2", "sum")


def _module(coder) -> torch.nn.Module:
    """The ICDCoder of a loaded `trained.Coder`, or the ICDCoder itself."""
    return coder.model if hasattr(coder, "model") else coder


@contextmanager
def _inference(model: torch.nn.Module):
    """Eval mode and no parameter gradients for the block; both restored after it."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return autocast(device, dtype or torch.float32)  # float32: no autocast, the weights' own dtype


def _batch(notes: list[np.ndarray], segment_length: int, fmt: SegmentFormat, pad_id: int, device):
    """Collated (B, S, L) ids and mask on `device`, and each row's note-token positions in the
    flattened S·L (the format tokens and the padding left out)."""
    batch = collate([(np.asarray(n), np.zeros(0, np.float32), i) for i, n in enumerate(notes)],
                    segment_length, pad_id, fmt=fmt)
    seg_len, body = batch["input_ids"].shape[-1], fmt.body(segment_length)
    positions = []
    for n in notes:
        j = np.arange(len(n))
        positions.append((j // body) * seg_len + len(fmt.prefix) + j % body)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device), positions


def _no_token_logits(model) -> torch.Tensor:
    """The logits of a note with no token left (every sentence occluded): the head's bias, what
    both heads give when nothing is attended to or pooled."""
    bias = model.head.bias if isinstance(model.head, LabelAttentionHead) else model.head.out.bias
    return bias.detach().float()


def logits(coder, notes: list[np.ndarray], segment_length: int, fmt: SegmentFormat = PLAIN, pad_id: int = 0,
           batch_size: int = 8, dtype: torch.dtype | None = None) -> np.ndarray:
    """(n_notes, n_labels) logits, the model in eval mode under no_grad (what occlusion compares)."""
    model = _module(coder)
    device = next(model.parameters()).device
    out = np.zeros((len(notes), model.n_labels), np.float32)
    with _inference(model), torch.no_grad():
        order = np.argsort([len(n) for n in notes], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            empty = [i for i in idx if not len(notes[i])]  # collate writes no segment, format tokens included
            for i in empty:
                out[i] = _no_token_logits(model).cpu().numpy()
            idx = [i for i in idx if i not in empty]
            if not idx:
                continue
            ids, mask, _ = _batch([notes[i] for i in idx], segment_length, fmt, pad_id, device)
            with _autocast(device, dtype):
                out[idx] = model(ids, mask).float().cpu().numpy()
    return out


def _embed(model, ids: torch.Tensor) -> torch.Tensor:
    return model.encoder.get_input_embeddings()(ids)


def _gradient(model, embeds, mask, labels, dtype):
    """z (B,), ∂z/∂embeds (B, S, L, E) and the label attention (B, S·L) of each row's own label."""
    embeds = embeds.detach().requires_grad_(True)
    with torch.enable_grad(), _autocast(embeds.device, dtype):  # as ICDCoder.forward runs under inference.score
        states, flat_mask = model.encode(None, mask, inputs_embeds=embeds)
        states = states.float()
        z = model.head(states, flat_mask).float().gather(1, labels[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(z.sum(), embeds)
    attention = None
    if isinstance(model.head, LabelAttentionHead):
        with torch.no_grad(), _autocast(embeds.device, dtype):
            weights = model.head.attention(states.detach(), flat_mask).float()
            attention = weights.gather(2, labels[:, None, None].expand(-1, weights.shape[1], 1)).squeeze(2)
    return z.detach(), grad, attention


def baseline_embedding(model) -> torch.Tensor:
    """Integrated gradients' baseline: the average token, the mean of the input-embedding rows
    rescaled to their root-mean-square norm (a direction with no token's content, at a typical
    token's scale, away from RMSNorm's singularity at zero; the RMS, not the median, as a tiny
    model's embedding has many all-zero rows, for tokens its notes never use). Float32, shape
    (E,); read in chunks of rows so an 8B model's embedding is not copied whole."""
    weight = model.encoder.get_input_embeddings().weight.detach()
    total = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    squares = torch.zeros((), dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], 8192):
        rows = weight[start:start + 8192].float()
        total += rows.sum(0)
        squares += rows.pow(2).sum()
    mean = total / weight.shape[0]
    return mean / mean.norm().clamp(min=torch.finfo(torch.float32).tiny) * (squares / weight.shape[0]).sqrt()


def _gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points α in (0, 1) and weights (summing to 1) of the `steps`-point Gauss–Legendre rule."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return (x + 1) / 2, w / 2


def _per_token(values: torch.Tensor, positions: list[np.ndarray], reduce: str) -> list[np.ndarray]:
    """(B, S, L, E) attributions → per row, one score per note token (norm or sum over E)."""
    b, s, length, e = values.shape
    flat = values.float().reshape(b, s * length, e)
    reduced = flat.norm(dim=-1) if reduce == "l2" else flat.sum(-1)
    reduced = reduced.cpu().numpy()
    return [reduced[row, pos] for row, pos in enumerate(positions)]


def _gradient_scores(model, notes, labels, method, segment_length, fmt, pad_id, ig_steps, reduce, dtype):
    """One batch of (note, label) rows of a gradient method."""
    device = next(model.parameters()).device
    ids, mask, positions = _batch(notes, segment_length, fmt, pad_id, device)
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    embeds = _embed(model, ids).detach()
    if method == "integrated_gradients":
        baseline = embeds.clone()
        note = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        for row, pos in enumerate(positions):
            note.view(len(notes), -1)[row, torch.as_tensor(pos, device=device)] = True
        baseline[note] = baseline_embedding(model).to(baseline.dtype)
        total = torch.zeros(embeds.shape, dtype=torch.float32, device=device)
        for alpha, weight in zip(*_gauss_legendre(ig_steps)):
            path = baseline + float(alpha) * (embeds - baseline)
            _, grad, _ = _gradient(model, path, mask, target, dtype)
            total += float(weight) * grad.float()
        return _per_token((embeds.float() - baseline.float()) * total, positions, reduce)
    _, grad, attention = _gradient(model, embeds, mask, target, dtype)
    scores = _per_token(embeds.float() * grad.float(), positions, reduce)
    if method == "attingrad":
        weights = attention.cpu().numpy()
        scores = [weights[row, pos] * s for row, (pos, s) in enumerate(zip(positions, scores))]
    return scores


def _attention_scores(model, notes, wanted, segment_length, fmt, pad_id, dtype) -> list[np.ndarray]:
    """Label attention over the note tokens, (tokens, len(wanted[i])) for note i and its `wanted`
    labels: one forward pass per batch of notes, under no_grad (all labels' weights stay on the
    device: 8.9k labels × 4,096 tokens are 146 MB a note)."""
    device = next(model.parameters()).device
    ids, mask, positions = _batch(notes, segment_length, fmt, pad_id, device)
    with torch.no_grad(), _autocast(device, dtype):
        states, flat_mask = model.encode(ids, mask)
        weights = model.head.attention(states.float(), flat_mask)
        return [weights[row][torch.as_tensor(pos, device=device)][:, torch.as_tensor(labels, device=device)]
                .float().cpu().numpy() for row, (pos, labels) in enumerate(zip(positions, wanted))]


def _distinct(notes: list[np.ndarray], *more) -> tuple[list[int], list[int]]:
    """The first pair of each distinct note (with `more`, e.g. its sentences), and each pair's
    position among those: a note explained for several codes is read once where the code does not
    change the pass (attention, occlusion)."""
    seen, first, which = {}, [], []
    for i, note in enumerate(notes):
        key = (note.tobytes(), *(np.asarray(m[i]).tobytes() for m in more))
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        which.append(seen[key])
    return first, which


def _occlusion_scores(coder, notes, labels, sentences, segment_length, fmt, pad_id, batch_size, dtype):
    """Each note once, then once per sentence without it (all labels at a time); every token gets
    z(note) − z(note without its sentence) for its pair's label."""
    first, which = _distinct(notes, sentences)
    variants, starts = [], []
    for i in first:
        sent = np.asarray(sentences[i])
        starts.append(len(variants))
        variants += [notes[i]] + [notes[i][sent != s] for s in np.unique(sent)]
    z = logits(coder, variants, segment_length, fmt, pad_id, batch_size, dtype)
    out = []
    for at, sent, label in zip(which, sentences, labels):
        sent = np.asarray(sent)
        without = z[starts[at] + 1 + np.searchsorted(np.unique(sent), sent), label]
        out.append((z[starts[at], label] - without).astype(np.float32))
    return out


def check_method(method: str) -> str:
    """`method`, refused in one line unless it is one of METHODS."""
    if method not in METHODS:
        raise IcdlibError(f"explanation method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def token_scores(coder, notes: list[np.ndarray], labels, method: str, segment_length: int,
                 fmt: SegmentFormat = PLAIN, pad_id: int = 0, ig_steps: int = IG_STEPS, batch_size: int = 8,
                 sentences: list[np.ndarray] | None = None, reduce: str = "l2", normalize: bool = False,
                 dtype: torch.dtype | None = None) -> list[np.ndarray]:
    """One float32 array per (note, label) pair: a score per token of `notes[i]` (the token ids the
    model reads, after truncation: `token_spans` or `data.tokenize`), higher = more evidence for
    label index `labels[i]`. See the module docstring for the methods.

    `coder`: the ICDCoder (or a loaded `trained.Coder`), on CPU or CUDA (its parameters' device);
    `segment_length`, `fmt`: as in training; `pad_id`: the tokenizer's pad token; `ig_steps`:
    integrated gradients' Gauss–Legendre points (default IG_STEPS = 32: on the tiny demo model's
    12 validation pairs the completeness error, |Σ scores − (z(note) − z(baseline))| divided by
    |z(note) − z(baseline)|, had median 2e-3 / 5e-5 / 1.5e-6 and maximum 5e-2 / 3e-3 / 4e-6 at
    16 / 32 / 64 points); `batch_size`: pairs per forward pass (for
    integrated gradients, per each of its `ig_steps` passes; for occlusion, note variants per
    pass); `sentences`: occlusion's sentence index per token (`sentence_ids`); `reduce`: "l2" |
    "sum" over the embedding for the gradient methods; `normalize`: divide each pair's scores by
    their L1 norm; `dtype`: the autocast dtype (None: the weights' own)."""
    check_method(method)
    if reduce not in REDUCTIONS:
        raise IcdlibError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    model = _module(coder)
    if method in NEEDS_ATTENTION and not isinstance(model.head, LabelAttentionHead):
        raise IcdlibError(f"explanation method {method} needs head: label_attention (this model has a mean head)")
    if method == "occlusion" and sentences is None:
        raise ValueError("occlusion needs the sentence of every token (explain.sentence_ids)")
    labels = [int(x) for x in labels]
    if len(labels) != len(notes):
        raise ValueError(f"{len(notes)} notes but {len(labels)} labels: one label per note")
    notes = [np.asarray(n) for n in notes]
    out: list[np.ndarray | None] = [None] * len(notes)
    with _inference(model):
        if method == "occlusion":
            out = _occlusion_scores(coder, notes, labels, sentences, segment_length, fmt, pad_id, batch_size, dtype)
        elif method == "attention":
            first, which = _distinct(notes)
            wanted = [sorted({label for at, label in zip(which, labels) if at == k}) for k in range(len(first))]
            weights = []
            for start in range(0, len(first), batch_size):
                part = [notes[i] for i in first[start:start + batch_size]]
                weights += _attention_scores(model, part, wanted[start:start + batch_size], segment_length, fmt,
                                             pad_id, dtype)
            out = [weights[at][:, wanted[at].index(label)] for at, label in zip(which, labels)]
        else:
            order = np.argsort([len(n) for n in notes], kind="stable")  # similar lengths share a batch
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                scores = _gradient_scores(model, [notes[i] for i in idx], [labels[i] for i in idx], method,
                                          segment_length, fmt, pad_id, ig_steps, reduce, dtype)
                for i, s in zip(idx, scores):
                    out[i] = s
    out = [np.asarray(s, np.float32) for s in out]
    if normalize:
        out = [s / max(float(np.abs(s).sum()), np.finfo(np.float32).tiny) for s in out]
    return out


def token_spans(text: str, tokenizer, max_tokens: int, mode: str = "head") -> tuple[np.ndarray, np.ndarray]:
    """(token ids, (n, 2) int64 character offsets [begin, end) into `text`) of the tokens the
    model reads: the ids of `data.tokenize` (no special tokens, cut to `max_tokens` by `mode`:
    head | tail | head_tail), with the tokenizer's offset mapping."""
    if not getattr(tokenizer, "is_fast", False):
        raise IcdlibError("character offsets need a fast (Rust) tokenizer; this backbone's tokenizer is a slow one")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], np.int32)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    keep = cut(np.arange(len(ids)), max_tokens, mode)
    return ids[keep], offsets[keep]


def sentence_ids(text: str, offsets: np.ndarray, max_tokens: int = SENTENCE_TOKENS) -> np.ndarray:
    """The sentence of each token (int64, numbered from 0 in text order): sentences end after
    `.`, `!` or `?` followed by whitespace, and at every newline; a token belongs to the
    sentence its first character is in. A sentence of more than `max_tokens` tokens is cut into
    pieces of `max_tokens` (a text cleaned of punctuation has no other boundary)."""
    offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
    ends = np.asarray([m.end() for m in re.finditer(r"[.!?](?=\s)|\n", text)], np.int64)
    sentence = np.searchsorted(ends, offsets[:, 0], side="right")
    if not len(sentence):
        return sentence.astype(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(sentence)) + 1]
    rank = np.arange(len(sentence)) - np.repeat(starts, np.diff(np.r_[starts, len(sentence)]))
    piece = np.stack([sentence, rank // max_tokens], 1)
    return np.unique(piece, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def word_scores(text: str, offsets: np.ndarray, scores: np.ndarray, agg: str = "sum") -> pd.DataFrame:
    """Token scores summed (`agg="sum"`, as Edin et al. sum a word's pieces, HF:122-151) or
    maximised (`"max"`: occlusion, whose tokens carry their sentence's score) over whitespace-
    delimited words: one row per word holding a scored token, in text order: word, begin, end
    (offsets into `text`), score. A token's span is trimmed of whitespace first (byte-level BPE
    pieces carry their leading space); whitespace-only tokens belong to no word."""
    return word_tables(text, offsets, [scores], agg)[0]


def _word_starts(text: str) -> np.ndarray:
    return np.asarray([m.start() for m in re.finditer(r"\S+", text)], np.int64)


def word_index(text: str, offsets: np.ndarray) -> np.ndarray:
    """The whitespace-delimited word of each token (int64: the word's number in `text`), -1 for a
    whitespace-only token: a token belongs to the word its first non-whitespace character is in."""
    offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
    first = np.full(len(offsets), -1, np.int64)  # each token's first non-whitespace character
    for t, (b, e) in enumerate(offsets.tolist()):
        piece = text[b:e]
        if piece.strip():
            first[t] = b + len(piece) - len(piece.lstrip())
    out = np.full(len(offsets), -1, np.int64)
    out[first >= 0] = np.searchsorted(_word_starts(text), first[first >= 0], side="right") - 1
    return out


def word_tables(text: str, offsets: np.ndarray, scores: list[np.ndarray], agg: str = "sum") -> list[pd.DataFrame]:
    """`word_scores` of several score arrays over the same tokens (one per code), the words found once."""
    index = word_index(text, offsets)
    keep = index >= 0
    starts = _word_starts(text)
    used, where = np.unique(index[keep], return_inverse=True)
    begin = starts[used]
    end = np.asarray([re.match(r"\S+", text[b:]).end() + b for b in begin.tolist()], np.int64)
    words = [text[b:e] for b, e in zip(begin.tolist(), end.tolist())]
    tables = []
    for values in scores:
        values = np.asarray(values, np.float64)[keep]
        score = np.zeros(len(used)) if agg == "sum" else np.full(len(used), -np.inf)
        (np.add if agg == "sum" else np.maximum).at(score, where, values)
        tables.append(pd.DataFrame({"word": words, "begin": begin, "end": end, "score": score}))
    return tables


def top_spans(text: str, words: pd.DataFrame, n: int = 3, max_words: int = 12, ratio: float = 0.5) -> list[dict]:
    """Up to `n` evidence spans from a `word_scores` table, best first: the highest-scoring word
    not yet taken (a positive score), grown to the words on either side while each scores at
    least `ratio` × that word's score, is adjacent in `text` (only whitespace between) and the
    span holds at most `max_words` words. Each: begin, end (offsets into `text`), text, score
    (the sum of its words' scores)."""
    score = words["score"].to_numpy(np.float64)
    begin, end = words["begin"].to_numpy(), words["end"].to_numpy()
    taken = np.zeros(len(score), bool)

    def joins(i: int, j: int) -> bool:  # words i and j = i + 1 are neighbours in the text
        return not text[end[i]:begin[j]].strip()

    spans = []
    for peak in np.argsort(-score, kind="stable"):
        if len(spans) >= n or score[peak] <= 0:
            break
        if taken[peak]:
            continue
        lo = hi = int(peak)
        floor = ratio * score[peak]
        while (hi - lo + 1 < max_words and lo > 0 and not taken[lo - 1] and score[lo - 1] >= floor
               and joins(lo - 1, lo)):
            lo -= 1
        while (hi - lo + 1 < max_words and hi + 1 < len(score) and not taken[hi + 1] and score[hi + 1] >= floor
               and joins(hi, hi + 1)):
            hi += 1
        taken[lo:hi + 1] = True
        b, e = int(begin[lo]), int(end[hi])
        spans.append({"begin": b, "end": e, "text": text[b:e], "score": float(score[lo:hi + 1].sum())})
    return spans


POSITIVE, NEGATIVE = "255,140,0", "30,110,255"  # orange: for the code; blue: against it


def _shade(value: float, low: float, high: float) -> str:
    if value >= 0:
        alpha = value / high if high > 0 else 0.0
        return f"rgba({POSITIVE},{min(alpha, 1.0):.2f})"
    alpha = value / low if low < 0 else 0.0
    return f"rgba({NEGATIVE},{min(alpha, 1.0):.2f})"


def legend_html(low: float, high: float) -> str:
    """The colour scale of one example: its lowest and highest word score at the ends."""
    low, high = min(low, 0.0), max(high, 0.0)
    stops = "rgba(255,255,255,1), rgba(255,255,255,1)"
    if high > low:
        white = f"rgba(255,255,255,1) {100 * -low / (high - low):.0f}%"
        stops = (f"rgba({NEGATIVE},1), " if low < 0 else "") + f"{white}, rgba({POSITIVE},1)"
    return (f"<span style='font-size:0.85em'>word score {low:.3g} "
            f"<span style='display:inline-block;width:12em;height:0.8em;border:1px solid #999;"
            f"background:linear-gradient(to right, {stops})'></span> {high:.3g}</span>")


def words_html(text: str, words: pd.DataFrame, code: str, title: str, window: int | None = 80,
               caption: str = "") -> str:
    """One example as an HTML fragment: the code and its title, the colour legend, then the text
    around the highest-scoring word (`window` words; None: every scored word) with each word
    shaded by its score (orange for the code, blue against it) and the text between words as
    written. All text is escaped."""
    e = html.escape
    head = f"<p><b>{e(str(code))}</b> {e(str(title))}" + (f" — {e(caption)}" if caption else "") + "</p>"
    if words.empty:
        return head + "<p><i>no scored word</i></p>"
    score = words["score"].to_numpy(np.float64)
    lo, hi = 0, len(words)
    if window is not None and len(words) > window:
        peak = int(score.argmax())
        lo = max(0, min(peak - window // 2, len(words) - window))
        hi = lo + window
    shown = words.iloc[lo:hi]
    low, high = float(min(shown["score"].min(), 0.0)), float(max(shown["score"].max(), 0.0))
    parts = ["… " if lo > 0 else ""]
    previous = None
    for word, b, end, s in zip(shown["word"], shown["begin"], shown["end"], shown["score"]):
        if previous is not None:
            parts.append(e(text[previous:b]))
        parts.append(f"<span title='{s:.4g}' style='background:{_shade(float(s), low, high)}'>{e(word)}</span>")
        previous = end
    parts.append(" …" if hi < len(words) else "")
    body = "".join(parts)
    return (f"{head}<p>{legend_html(low, high)}</p>"
            f"<p style='white-space:pre-wrap;line-height:1.8;font-family:sans-serif'>{body}</p>")


def page_html(sections: list[str], heading: str) -> str:
    """A standalone HTML page of `words_html` fragments: no script, no external resource."""
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(heading) + "</title></head>"
            "<body style='max-width:60em;margin:auto;font-family:sans-serif'><h2>" + html.escape(heading) + "</h2>"
            + "<hr>".join(sections) + "</body></html>")


# ---------------------------------------------------------------- notebook 05's label-attention highlights


def token_attention(coder, tokenizer, text: str, label: int, max_tokens: int, segment_length: int,
                    fmt: SegmentFormat = PLAIN, mode: str = "head") -> pd.DataFrame:
    """One row per note token of `text` that the model reads (`max_tokens` of them, cut by `mode`):
    token, weight of label `label`'s attention. Segments are built as in training (`fmt`: BOS and
    instruction tokens around each); those format tokens are scored but not listed."""
    tokens = tokenize([text], tokenizer, max_tokens, mode=mode)
    batch = collate([(tokens.note(0), np.zeros(0, np.float32), 0)], segment_length, tokenizer.pad_token_id, fmt=fmt)
    model = coder.model if hasattr(coder, "model") else coder
    device = next(model.parameters()).device
    with torch.no_grad():
        states, mask = model.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        weights = model.head.attention(states.float(), mask)[0, :, label].cpu()
    segments = batch["attention_mask"][0].bool()  # (S, L)
    note = segments.clone()
    for k in range(note.shape[0]):  # drop each segment's prefix and suffix positions
        where = torch.nonzero(segments[k]).flatten()
        if len(where):
            note[k, where[:len(fmt.prefix)]] = False
            note[k, where[len(where) - len(fmt.suffix):]] = False
    pieces = tokenizer.convert_ids_to_tokens(tokens.note(0).tolist())
    return pd.DataFrame({"token": pieces, "weight": weights[note.reshape(-1)].numpy()})


def highlight_html(table: pd.DataFrame, title: str, window: int = 120):
    """Tokens around the most attended one, shaded by weight relative to the maximum."""
    from IPython.display import HTML

    peak = int(table["weight"].to_numpy().argmax())
    part = table.iloc[max(0, peak - window // 2): peak + window // 2]
    top = float(table["weight"].max()) or 1.0
    spans = "".join(f'<span style="background: rgba(255,140,0,{w / top:.2f})">{html.escape(t.lstrip("Ġ▁"))}</span> '
                    for t, w in zip(part["token"], part["weight"]))
    return HTML(f"<p><b>{html.escape(title)}</b></p><p style='line-height:1.8'>{spans}</p>")


def highlight(cfg: Config, notes: pd.DataFrame, y_true: np.ndarray, labels: pd.DataFrame, code: str = ""):
    """Highlights for `code` (default: the most frequent code of the split) on its first note."""
    from IPython.display import Markdown

    if cfg.share_safe_on:
        return Markdown("Attention highlights are off: `share_safe` is on, so this report shows no note text.")
    if cfg.head != "label_attention":
        return Markdown(f"Attention highlights need `head: label_attention` (this run uses `{cfg.head}`).")
    from icdlib.model import checkpoint
    from icdlib.model.inference import predict_dtype
    from icdlib.run.runfolder import Run

    cpu = torch.device("cpu")  # the model as `predict.load(..., device="cpu")` holds it
    model, tokenizer, manifest, _ = checkpoint.load(Run.of(cfg).checkpoint("best"), predict_dtype(cfg, cpu), device=cpu)
    fmt = checkpoint.input_format(manifest)
    codes = labels["code"].tolist()
    label = codes.index(code) if code else int(np.asarray(y_true).sum(0).argmax())
    row = int(np.flatnonzero(np.asarray(y_true)[:, label])[0])
    table = token_attention(model.eval(), tokenizer, notes["text"].iloc[row], label,
                            fmt.budget(cfg.segment_length, cfg.max_segments), cfg.segment_length, fmt=fmt,
                            mode=cfg.truncation)
    title = f"{codes[label]} {labels['short_title'].iloc[label]} — admission {notes['hadm_id'].iloc[row]}"
    return highlight_html(table, title)
