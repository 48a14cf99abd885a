"""A trained model folder (`03_train/best/`) loaded to code new notes: `load` and its `Coder`.

Here, in the model layer, so that step 04's explanations and their report load a run's model
without reaching up to the command line; `icdlib.predict` is the public entry point (it re-exports
`load` and `Coder`, and holds the CLI's lines and pages). Not `models.ICDCoder`, the network: a
`Coder` wraps one with its tokenizer, labels, threshold and the run's preprocessing.

    coder = icdlib.predict.load("outputs/tiny/03_train/best")
    coder.predict(["Discharge Diagnosis: CHF, afib ..."], top_k=15)[0]   # code, kind, title, score, assigned

A code is `assigned` when its score reaches `coder.threshold`: the one the run's 04_evaluate tuned on
validation for this model folder (`run_threshold`; `coder.threshold_source` says which), or
`load(..., threshold=t)`; without either (a folder moved out of its run, a run 04 has not scored) the
run's fixed `threshold` (0.5 unless set), and `threshold_source` says why.

The text goes through the preprocessing of training (same cleaning, tokenizer, segmenting);
batched, on the GPU when there is one. A text that is empty, or only whitespace and NUL bytes,
is refused in one line (`IcdlibError`: "text 0 is empty: nothing to code").

Truncation: the model reads `coder.max_tokens` tokens of a note —
`max_segments` segments of `segment_length` tokens less the segment format's own tokens (BOS,
instruction) — and drops the rest: which ones is the run's `truncation` (`coder.truncation_mode`,
from the model folder's config: `head` keeps the start, `tail` the end, `head_tail` both halves,
as in training). Every table `predict` returns says how much of its note was
read, in `table.attrs`:

    table.attrs   # {"tokens": 3210, "kept_tokens": 1024, "truncated_tokens": 2186}

`coder.truncation(texts)` gives the same counts as a DataFrame (one row per text) without
running the model; `load(..., max_segments=N)` reads up to N segments instead of the training
value (the label attention takes any number; memory grows with it). The CLI prints one line to
stderr when a note was truncated.

Evidence: `coder.predict(texts, evidence=True)` adds a column `evidence` to every table, per code
a list of its top spans in the text as given (before the run's text cleaning), best first:

    {"begin": 412, "end": 437, "text": "atrial fibrillation with RVR", "score": 0.31}

found by an explanation method of `icdlib.model.explain` (`evidence_method`; default `attingrad`,
Edin et al. 2024's AttInGrad, with a label-attention head, `input_x_gradient` with a mean
head). `coder.explain(text, codes)` gives the scores of every word read, and `icdlib.predict.evidence_page`
renders them as a standalone HTML page (`predict --evidence-html FILE`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from icdlib.data.preprocess import CLEANERS, cleaned_origins
from icdlib.model import checkpoint
from icdlib.model import explain as explaining
from icdlib.model.encoding import Tokenized, cut, tokenize
from icdlib.model.inference import Env, compute_dtype, pick_device, predict_dtype, score
from icdlib.model.models import LabelAttentionHead
from icdlib.run.config import absolute_paths
from icdlib.run.errors import IcdlibError


TRUNCATION = ("tokens", "kept_tokens", "truncated_tokens")
EVIDENCE_SPANS = 3  # spans per code


class Coder:
    """A loaded model: `predict(texts)` returns one DataFrame of codes per text, best first."""

    def __init__(self, model_dir: Path, device: str = "auto", batch_size: int = 8, model_path: str = "",
                 base_model_path: str = "", max_segments: int | None = None, threshold: float | None = None):
        if max_segments is not None and (isinstance(max_segments, bool) or not isinstance(max_segments, int)
                                         or max_segments < 1):
            raise IcdlibError(f"max_segments must be a positive integer, got {max_segments!r}")
        self.env = Env(pick_device(device))
        probe = checkpoint.read_manifest(model_dir)
        self.cfg = checkpoint.Config(**{k: v for k, v in probe["config"].items() if k in checkpoint.Config.__dataclass_fields__})
        self.model, self.tokenizer, manifest, _ = checkpoint.load(
            model_dir, predict_dtype(self.cfg, self.env.device), **absolute_paths(
                {"model_path": model_path, "base_model_path": base_model_path}), device=self.env.device)
        self.model.to(self.env.device).eval()
        self.fmt = checkpoint.input_format(manifest)
        self.labels = pd.DataFrame({"code": manifest["labels"], "kind": manifest["kinds"], "title": manifest["titles"]})
        self.batch_size = batch_size
        self.max_segments = max_segments or self.cfg.max_segments
        self.max_tokens = self.fmt.budget(self.cfg.segment_length, self.max_segments)
        self.truncation_mode = self.cfg.truncation  # head | tail | head_tail, as the model was trained
        self.threshold, self.threshold_source = decision_threshold(model_dir, self.cfg.threshold, threshold)

    def _tokens(self, texts: list[str]) -> tuple[Tokenized, pd.DataFrame]:
        """The notes' tokens as the model reads them (cut to max_tokens by the run's truncation mode),
        and the truncation table."""
        texts = [_checked(t, i) for i, t in enumerate(texts)]
        if self.cfg.text_cleaning in CLEANERS:  # as step 01 cleaned the training notes
            texts = CLEANERS[self.cfg.text_cleaning](texts)
        whole = tokenize(texts, self.tokenizer, sys.maxsize)
        lengths = whole.lengths()
        kept = np.minimum(lengths, self.max_tokens)
        counts = pd.DataFrame({"tokens": lengths, "kept_tokens": kept, "truncated_tokens": lengths - kept})
        if not counts["truncated_tokens"].any():
            return whole, counts
        ids = [cut(whole.note(i), self.max_tokens, self.truncation_mode) for i in range(len(whole))]
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        return Tokenized(ids=np.concatenate(ids).astype(np.int32), offsets=offsets, full_lengths=lengths), counts

    def truncation(self, texts: list[str] | str) -> pd.DataFrame:
        """Per text (one row each): `tokens` in the note, `kept_tokens` the model reads (max_tokens
        of them, chosen by `truncation_mode`), `truncated_tokens` dropped (from its end for `head`,
        its start for `tail`, its middle for `head_tail`). Tokenises only; no model pass."""
        return self._tokens([texts] if isinstance(texts, str) else list(texts))[1]

    def scores(self, texts: list[str]) -> np.ndarray:
        """(n_texts, n_labels) probabilities."""
        return self._scores(list(texts))[0]

    def _scores(self, texts: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
        tokens, counts = self._tokens(texts)
        return score(self.model, tokens, self.cfg, self.env, self.tokenizer.pad_token_id, self.batch_size,
                     fmt=self.fmt), counts

    def predict(self, texts: list[str] | str, top_k: int | None = None, threshold: float | None = None,
                evidence: bool = False, evidence_method: str | None = None,
                evidence_spans: int = EVIDENCE_SPANS) -> list[pd.DataFrame]:
        """Per text: code, kind, title, score sorted by score, and `assigned` (score >= `self.threshold`);
        cut to top_k and/or score >= threshold. With `evidence`, a column `evidence`: per code its top
        `evidence_spans` spans (begin, end, text, score; offsets into the text as given), by
        `evidence_method` (see `explain`).

        Each table's `.attrs` holds `tokens`, `kept_tokens` and `truncated_tokens` of its note."""
        if isinstance(texts, str):
            texts = [texts]
        out = []
        scores, counts = self._scores(list(texts))
        for row, (_, count) in zip(scores, counts.iterrows()):
            table = self.labels.assign(score=row, assigned=row >= self.threshold)
            table = table.sort_values("score", ascending=False, kind="stable")
            if threshold is not None:
                table = table[table["score"] >= threshold]
            if top_k is not None:
                table = table.head(top_k)
            table = table.reset_index(drop=True)
            table.attrs = {k: int(count[k]) for k in TRUNCATION}
            out.append(table)
        if evidence:
            for text, table in zip(texts, out):
                words = self.explain(text, table["code"].tolist(), evidence_method)
                table["evidence"] = evidence_column(text, words, evidence_spans)
        return out

    def evidence_method(self, method: str | None = None) -> str:
        """`method`, or the default: `attingrad` (Edin et al. 2024's most plausible method on MDACE,
        one backward pass per code) with a label-attention head, `input_x_gradient` with a mean head."""
        if method is not None:
            return explaining.check_method(method)
        return "attingrad" if isinstance(self.model.head, LabelAttentionHead) else "input_x_gradient"

    def explain(self, text: str, codes: list[str], method: str | None = None,
                ig_steps: int = explaining.IG_STEPS) -> list[pd.DataFrame]:
        """Per code of `codes`, the score of every word the model reads in `text` (word, begin, end,
        score: offsets into `text` as given, before the run's text cleaning), by `method` (one of
        `explain.METHODS`; default `evidence_method()`): token scores summed over each word's
        pieces (occlusion: its sentence's score)."""
        method = self.evidence_method(method)
        text = _checked(text, 0)
        known = {c: i for i, c in enumerate(self.labels["code"])}
        missing = [c for c in codes if c not in known]
        if missing:
            raise IcdlibError(f"code {missing[0]} is not one of this model's {len(known):,} codes")
        cleaned = self.cfg.text_cleaning in CLEANERS  # as _tokens cleans it; offsets are carried back
        read = CLEANERS[self.cfg.text_cleaning]([text])[0] if cleaned else text
        ids, offsets = explaining.token_spans(read, self.tokenizer, self.max_tokens, self.truncation_mode)
        if cleaned:
            offsets = _through(offsets, cleaned_origins(text, self.cfg.text_cleaning))
        sentences = explaining.sentence_ids(text, offsets)
        scores = explaining.token_scores(
            self.model, [ids] * len(codes), [known[c] for c in codes], method, self.cfg.segment_length, self.fmt,
            pad_id=self.tokenizer.pad_token_id, ig_steps=ig_steps, batch_size=self.batch_size,
            sentences=[sentences] * len(codes), dtype=compute_dtype(self.cfg, self.env.device))
        return explaining.word_tables(text, offsets, scores, "max" if method == "occlusion" else "sum")


def _through(offsets: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Token offsets into a cleaned text → into the text it was cleaned from (`origins`: each
    cleaned character's position there, -1 for the spaces the cleaning put in); a token on those
    spaces only becomes an empty span."""
    out = np.zeros_like(offsets)
    for t, (b, e) in enumerate(offsets):
        inside = origins[b:e][origins[b:e] >= 0]
        out[t] = (inside[0], inside[-1] + 1) if len(inside) else (0, 0)
    return out


def evidence_column(text: str, words: list[pd.DataFrame], n: int = EVIDENCE_SPANS) -> list[list[dict]]:
    """Per code, its top `n` evidence spans (`explain.top_spans`) from its word scores."""
    return [explaining.top_spans(text, w, n) for w in words]


def run_threshold(model_dir: Path) -> tuple[float | None, str]:
    """The threshold the run's 04_evaluate tuned on validation for the model folder `model_dir` (the
    run's `03_train/best/`, an MNTP arm's or a further seed's `03_train/<variant>/best/`), and "";
    or None and why not, as a phrase (the folder is not in a run, 04 has not scored it as it is now)."""
    from icdlib.run import record
    from icdlib.run.runfolder import MNTP_ARMS, Run

    model_dir = Path(os.path.abspath(model_dir))
    step, variant = model_dir.parent, ""
    if step.name != Run.step_name("03"):
        step, variant = step.parent, step.name
    if model_dir.name != "best" or step.name != Run.step_name("03"):
        return None, f"{model_dir} is not a run's 03_train/best/"
    run = Run(step.parent)
    metrics, why = record.scored_metrics(run, model_dir)
    if why:
        return None, why
    if variant in MNTP_ARMS.values():
        metrics = metrics.get(variant, {})
    elif variant:
        metrics = metrics.get("seeds", {}).get(variant.removeprefix("seed_"), {})
    if not isinstance(metrics.get("threshold"), (int, float)):
        return None, f"{run.rel(run.metrics)} holds no tuned threshold for {run.rel(model_dir)}"
    return float(metrics["threshold"]), ""


def decision_threshold(model_dir: Path, fixed: float, given: float | None = None) -> tuple[float, str]:
    """(threshold, where it comes from): `given`, else the run's tuned one (`run_threshold`), else
    the run's `fixed` threshold with why the tuned one is not there."""
    if given is not None:
        return float(given), "given"
    tuned, why = run_threshold(model_dir)
    if tuned is not None:
        return tuned, "tuned on validation by the run's 04_evaluate"
    return float(fixed), f"the run's fixed threshold: no tuned one ({why})"


def _checked(text, i: int) -> str:
    if not isinstance(text, str):
        raise IcdlibError(f"text {i} is a {type(text).__name__}, expected str")
    if is_blank(text):
        raise IcdlibError(f"text {i} is empty: nothing to code")
    return text


def is_blank(text: str) -> bool:
    """No text to code: empty, or only whitespace and NUL bytes."""
    return not text.replace("\x00", "").strip()  # NUL bytes are not text either (a zeroed-out file)


def load(model_dir: str | Path, device: str = "auto", batch_size: int = 8, model_path: str = "",
         base_model_path: str = "", max_segments: int | None = None, threshold: float | None = None) -> Coder:
    """A model folder ready to code notes; `model_path` / `base_model_path` say where its backbone is
    when the run folder moved away from it (local folders or hub names); `max_segments` overrides
    how many segments of a note are read (default: as trained); `threshold` decides which codes are
    assigned (default: the run's tuned one, see the module docstring)."""
    return Coder(Path(model_dir), device, batch_size, model_path, base_model_path, max_segments, threshold)
