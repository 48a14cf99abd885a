"""What the label-attention head reads for one code: token highlights for notebook 05.

Only for reports that may show note text: with `share_safe` on (the default for real MIMIC-III)
the highlights are replaced by a one-line notice, so no note text reaches a shared report.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import torch

from icdlib.config import Config
from icdlib.data import PLAIN, SegmentFormat, collate, tokenize


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
    from icdlib import predict
    from icdlib.runfolder import Run

    coder = predict.load(Run.of(cfg).checkpoint("best"), device="cpu")
    codes = labels["code"].tolist()
    label = codes.index(code) if code else int(np.asarray(y_true).sum(0).argmax())
    row = int(np.flatnonzero(np.asarray(y_true)[:, label])[0])
    table = token_attention(coder, coder.tokenizer, notes["text"].iloc[row], label, coder.max_tokens,
                            cfg.segment_length, fmt=coder.fmt, mode=coder.truncation_mode)
    title = f"{codes[label]} {labels['short_title'].iloc[label]} — admission {notes['hadm_id'].iloc[row]}"
    return highlight_html(table, title)
