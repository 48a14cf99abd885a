"""Step 04's measure of the explanation methods against known evidence, for notebook 05.

For the model's true-positive codes on validation and on the reported split (test), every method of
`icdlib.model.explain` scores the tokens the model reads; `icdlib.measure.evidence_metrics` compares those scores
with the run's evidence spans (`01_preprocess/evidence.parquet`: what the twin wrote, or MDACE's
coder annotations): plausibility (token precision, recall and F1 at a threshold tuned per method on
validation, recall@k, AUPRC), faithfulness (comprehensiveness and sufficiency: the code's
probability after deleting / keeping only the top-scored words) and the share of pairs whose
top-scored token lies in a negated or family-history mention. Explaining is a model pass (up to
`ig_steps` of them, and a hundred perturbed copies of the note for faithfulness) per pair, so it
runs on the first `explain_notes` admissions (in `hadm_id` order) of each split that have a
true-positive code with evidence: that number is in metrics.json beside the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icdlib.measure import evidence_metrics as em
from icdlib.model import explain
from icdlib.run.progress import duration

EVIDENCE_KINDS = ("evidence",)
NOT_EVIDENCE = ("negated", "family")  # mentions of codes the admission does not have


@dataclass
class Pairs:
    """(note, code) pairs of one split, each with the tokens the model reads and masks over them."""

    hadm_ids: list[int] = field(default_factory=list)  # one per note
    texts: list[str] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)  # per note: the token ids the model reads
    offsets: list[np.ndarray] = field(default_factory=list)  # per note: (n, 2) character offsets
    note: list[int] = field(default_factory=list)  # per pair: index into the notes above
    label: list[int] = field(default_factory=list)  # per pair: label index
    evidence: list[np.ndarray] = field(default_factory=list)  # per pair: 0/1 over the note's tokens
    negated: list[np.ndarray] = field(default_factory=list)  # per pair: 0/1, negated/family mentions

    def __len__(self) -> int:
        return len(self.label)


def overlap(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """0/1 per token: whether its characters [begin, end) overlap any of `spans` ((m, 2) [begin, end))."""
    offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
    spans = np.asarray(spans, np.int64).reshape(-1, 2)
    if not len(spans) or not len(offsets):
        return np.zeros(len(offsets), np.int8)
    hit = (offsets[:, None, 0] < spans[None, :, 1]) & (offsets[:, None, 1] > spans[None, :, 0])
    return hit.any(1).astype(np.int8)


def true_positive_pairs(notes: pd.DataFrame, y_true: np.ndarray, y_score: np.ndarray, threshold: float,
                        labels: pd.DataFrame, evidence: pd.DataFrame, max_notes: int) -> list[tuple[int, int]]:
    """(row of `notes`, label index) of the model's true positives whose code has an evidence span in
    that admission, on the first `max_notes` admissions (in `hadm_id` order) that have any."""
    index = {c: i for i, c in enumerate(labels["code"].tolist())}
    spans = evidence[evidence["kind"].isin(EVIDENCE_KINDS)]
    with_evidence = {(int(h), index[c]) for h, c in zip(spans["hadm_id"], spans["code"]) if c in index}
    rows = {int(h): i for i, h in enumerate(notes["hadm_id"].tolist())}
    hit = np.asarray(y_true).astype(bool) & (np.asarray(y_score) >= threshold)
    out: list[tuple[int, int]] = []
    taken = 0
    for hadm in sorted(rows):
        if taken >= max_notes:
            break
        row = rows[hadm]
        found = [(row, int(j)) for j in np.flatnonzero(hit[row]) if (hadm, int(j)) in with_evidence]
        if found:
            out += found
            taken += 1
    return out


def build_pairs(coder, notes: pd.DataFrame, pairs: list[tuple[int, int]], labels: pd.DataFrame,
                evidence: pd.DataFrame) -> Pairs:
    """The tokens the model reads of each note of `pairs`, with the evidence mask of each pair's code
    and the mask of every negated or family-history mention in its note."""
    out = Pairs()
    codes = labels["code"].tolist()
    by_note = {h: g for h, g in evidence.groupby("hadm_id")}
    where: dict[int, int] = {}
    for row, label in pairs:
        if row not in where:
            text = notes["text"].iloc[row]
            ids, offsets = explain.token_spans(text, coder.tokenizer, coder.max_tokens, coder.truncation_mode)
            where[row] = len(out.texts)
            out.hadm_ids.append(int(notes["hadm_id"].iloc[row]))
            out.texts.append(text)
            out.tokens.append(ids)
            out.offsets.append(offsets)
        k = where[row]
        spans = by_note.get(out.hadm_ids[k], evidence.iloc[:0])
        own = spans[(spans["code"] == codes[label]) & spans["kind"].isin(EVIDENCE_KINDS)]
        other = spans[spans["kind"].isin(NOT_EVIDENCE)]
        out.note.append(k)
        out.label.append(label)
        out.evidence.append(overlap(out.offsets[k], own[["begin", "end"]].to_numpy()))
        out.negated.append(overlap(out.offsets[k], other[["begin", "end"]].to_numpy()))
    return out


def groups(pairs: Pairs) -> list[np.ndarray]:
    """Per pair, the word of each token (faithfulness perturbs whole words, as Edin et al.); a
    whitespace-only token is a word of its own."""
    words = []
    for k in range(len(pairs.texts)):
        w = explain.word_index(pairs.texts[k], pairs.offsets[k])
        alone = w < 0
        w[alone] = w.max(initial=-1) + 1 + np.arange(int(alone.sum()))
        words.append(w)
    return [words[k] for k in pairs.note]


def score_method(coder, pairs: Pairs, method: str, ig_steps: int, batch_size: int) -> tuple[list[np.ndarray], float]:
    """`method`'s token scores of every pair, and the seconds it took per note."""
    started = time.perf_counter()
    sentences = [explain.sentence_ids(pairs.texts[k], pairs.offsets[k]) for k in pairs.note] \
        if method == "occlusion" else None
    scores = explain.token_scores(coder, [pairs.tokens[k] for k in pairs.note], pairs.label, method,
                                  coder.cfg.segment_length, fmt=coder.fmt, pad_id=_pad(coder), ig_steps=ig_steps,
                                  batch_size=batch_size, sentences=sentences)
    return scores, (time.perf_counter() - started) / max(len(pairs.texts), 1)


def _pad(coder) -> int:
    pad = coder.tokenizer.pad_token_id
    return int(pad if pad is not None else 0)


def faithfulness(coder, pairs: Pairs, scores: list[np.ndarray], words: list[np.ndarray], batch_size: int,
                 step: int = em.STEP) -> dict:
    """Comprehensiveness and sufficiency of every pair: the removed words' tokens get the pad token;
    `step` words more are removed at each of the up to 100 / `step` perturbations (Edin et al.: 2)."""
    pad = _pad(coder)

    def score_fn(i: int, keep: np.ndarray) -> np.ndarray:
        ids = pairs.tokens[pairs.note[i]]
        variants = [np.where(row, ids, pad).astype(ids.dtype) for row in keep]
        z = explain.logits(coder, variants, coder.cfg.segment_length, fmt=coder.fmt, pad_id=pad,
                           batch_size=batch_size)[:, pairs.label[i]]
        return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))

    return em.faithfulness(scores, score_fn, groups=words, step=step)


def measure(coder, split_pairs: dict[str, Pairs], methods: tuple[str, ...], ig_steps: int, resamples: int,
            seed: int = 0, batch_size: int = 8, step: int = em.STEP, progress=None) -> dict:
    """Every method on every split's pairs: validation tunes each method's token threshold and picks
    the best method (highest token F1 there); the reported split (the last of `split_pairs`) gets the
    figures with bootstrap intervals. JSON-ready."""
    names = list(split_pairs)
    reported, tuning = names[-1], names[0]
    out = {"methods": {}, "val": {}, "ig_steps": ig_steps, "faithfulness_step": step, "split": reported,
           "notes": {s: len(p.texts) for s, p in split_pairs.items()},
           "pairs": {s: len(p) for s, p in split_pairs.items()}}
    word_groups = {s: groups(p) for s, p in split_pairs.items()}
    for i, method in enumerate(methods):
        if progress:
            progress(i, method, f"{tuning}: scoring {len(split_pairs[tuning]):,} pairs")
        val = split_pairs[tuning]
        val_scores, _ = score_method(coder, val, method, ig_steps, batch_size)
        threshold = em.tune_threshold(val_scores, val.evidence)
        out["val"][method] = em.evaluate_method(val_scores, val.evidence, [val.hadm_ids[k] for k in val.note],
                                                threshold, negated=val.negated, n_resamples=0)
        test = split_pairs[reported]
        if progress:
            progress(i, method, f"{reported}: scoring {len(test):,} pairs")
        scores, seconds = score_method(coder, test, method, ig_steps, batch_size)
        if progress:
            progress(i, method, f"{reported}: faithfulness")
        faithful = faithfulness(coder, test, scores, word_groups[reported], batch_size, step)
        result = em.evaluate_method(scores, test.evidence, [test.hadm_ids[k] for k in test.note], threshold,
                                    negated=test.negated, faithful=faithful, n_resamples=resamples, seed=seed)
        result["seconds_per_note"] = seconds
        out["methods"][method] = result
    f1 = {m: out["val"][m]["token_f1"] for m in methods if out["val"][m]["token_f1"] is not None}
    out["best_method"] = max(f1, key=f1.get) if f1 else None
    return out


def methods_for(head: str) -> tuple[str, ...]:
    """The methods a model can be explained by: the attention ones need the label-attention head."""
    return explain.METHODS if head == "label_attention" else \
        tuple(m for m in explain.METHODS if m not in explain.NEEDS_ATTENTION)


def stage_lines(say, n_methods: int):
    """`measure`'s progress callback: one line a stage through `say` (`progress.Lines`), with a rough
    time left (the mean time per method so far; integrated gradients and occlusion take longer)."""
    t0 = time.perf_counter()

    def tell(done: int, method: str, stage: str) -> None:
        elapsed = time.perf_counter() - t0
        left = f", about {duration(elapsed / done * (n_methods - done))} left" if done else ""
        say(f"explanations: {method} ({done + 1}/{n_methods}), {stage}; {duration(elapsed)} so far{left}")

    return tell


def for_run(cfg, ev, run, splits: tuple[str, ...], seed: int = 0, say=None) -> dict | None:
    """Step 04's explanation figures (metrics.json `explanations`), or None when the run has no
    evidence spans (`01_preprocess/evidence.parquet`) or `explain_notes` is 0."""
    if not cfg.explain_notes or not run.evidence.is_file():
        return None
    from icdlib.model import trained

    evidence = pd.read_parquet(run.evidence)
    coder = trained.load(run.checkpoint("best"), device=cfg.device)
    threshold = float(ev.results["threshold"])
    split_pairs = {}
    for split in splits:
        s = ev.splits[split]
        chosen = true_positive_pairs(s.notes, s.y_true, s.y_score, threshold, ev.labels, evidence, cfg.explain_notes)
        split_pairs[split] = build_pairs(coder, s.notes, chosen, ev.labels, evidence)
    methods = methods_for(cfg.head)
    out = measure(coder, split_pairs, methods, cfg.ig_steps, cfg.bootstrap, seed=seed, step=cfg.faithfulness_step,
                  progress=stage_lines(say, len(methods)) if say else None)
    out.update(explain_notes=cfg.explain_notes, decision_threshold=threshold)
    return out
