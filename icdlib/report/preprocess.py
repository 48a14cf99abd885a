"""Notebook 01's report (`01_preprocess`): the header, the tables step 01 computes (through
`table`), and what the run's data shows with the fingerprints of what the step wrote."""

from __future__ import annotations

import pandas as pd

from icdlib.report.shared import Shown, closing, data_sentences, header, table

__all__ = ["header", "table", "summary"]


def summary(*, notes: pd.DataFrame | None = None, labels: pd.DataFrame | None = None,
            data: dict | None = None) -> Shown:
    """"What this run shows" after step 01: `notes`/`labels` (step 01's tables) the data and the
    label space (`data_sentences`); `data` ({file: hash}) the fingerprints of the files written."""
    paragraphs = []
    if notes is not None:
        paragraphs.append(" ".join(data_sentences(notes, labels)))
    if data:
        paragraphs.append("Content hashes (sha256, first 12 digits) of what this step wrote: "
                          + ", ".join(f"`{k}` {h or 'missing'}" for k, h in data.items()) + ".")
    return closing(paragraphs)
