"""The label space: which codes a model scores, in a fixed, sorted order.

`observed` keeps the codes of the train split (the default), `all` every dictionary code as the
original project did, `top50` CAML's fixed list; `min_count` drops codes seen fewer times in
train (Edin et al.'s clean split uses 10). The order is sorted by code, so a resumed or
re-evaluated run always scores against the same mapping.

A benchmark preset passes its own `counts` (admissions per code) for `observed` and `min_count`:
`caml_full` those of train, val and test together (`all_counts`: CAML's label set, so a val/test
code unseen in train is a label that counts as a miss), `edin_clean` those of the whole dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from icdlib.run.errors import DataError

LABEL_COLUMNS = ["code", "kind", "short_title", "long_title", "n_train"]


def train_counts(notes: pd.DataFrame) -> pd.Series:
    """Admissions per code in the train split."""
    codes = notes.loc[notes["split"] == "train", "codes"].explode().dropna()
    return codes.value_counts()


def all_counts(notes: pd.DataFrame) -> pd.Series:
    """Admissions per code over every split (each admission's codes are unique)."""
    return notes["codes"].explode().dropna().value_counts()


def read_code_list(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"top50_file {str(path)!r} does not exist (expected one dotted ICD-9 code a line)")
    codes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not codes:
        raise DataError(f"{path.name}: no codes in the file")
    return codes


def build(notes: pd.DataFrame, dictionary: pd.DataFrame, kinds: dict[str, str], rule: str,
          min_count: int = 1, top50_file: str = "", counts: pd.Series | None = None) -> pd.DataFrame:
    """The label table (LABEL_COLUMNS), one row per label, sorted by code.

    `kinds` maps every code seen in the data to diagnosis/procedure (codes absent from the
    dictionaries keep empty titles but still count). `counts` (admissions per code; default:
    train's) decides which codes `observed` keeps and which `min_count` drops; `n_train` is
    always train's count.
    """
    train = train_counts(notes)
    counts = train if counts is None else counts[counts > 0]
    if rule == "observed":
        codes = counts.index
    elif rule == "all":
        codes = pd.Index(dictionary["code"]).union(pd.Index(list(kinds)))
    elif rule == "top50":
        codes = pd.Index(read_code_list(top50_file))
    else:
        raise DataError(f"labels must be observed, all or top50; got {rule!r}")
    seen = counts.reindex(codes, fill_value=0).astype("int64")
    if min_count > 1:
        codes = codes[seen.to_numpy() >= min_count]
    codes = sorted(set(codes))
    if not codes:
        raise DataError(f"the label space is empty (labels={rule}, min_count={min_count})")
    titles = dictionary.set_index("code")
    table = pd.DataFrame({"code": codes})
    listed = titles["kind"].reindex(codes).fillna("").to_numpy(dtype=object)
    table["kind"] = [k or kinds.get(c) or kind_of(c) for k, c in zip(listed, codes)]
    table["short_title"] = titles["short_title"].reindex(codes).fillna("").to_numpy()
    table["long_title"] = titles["long_title"].reindex(codes).fillna("").to_numpy()
    table["n_train"] = train.reindex(codes, fill_value=0).astype("int64").to_numpy()
    return table[LABEL_COLUMNS]


def kind_of(code: str) -> str:
    """Dotted ICD-9 procedures have two characters before the dot, diagnoses three or four;
    ICD-10-PCS procedures are 7 characters, undotted (ICD-10-CM dots after three)."""
    head = code.split(".")[0]
    return "procedure" if len(head) in (2, 7) else "diagnosis"


def multi_hot(code_lists, label_codes: list[str]) -> np.ndarray:
    """(n_docs, n_labels) float32 targets; codes outside the label space are ignored."""
    index = {c: i for i, c in enumerate(label_codes)}
    y = np.zeros((len(code_lists), len(label_codes)), dtype=np.float32)
    for row, codes in enumerate(code_lists):
        cols = [index[c] for c in codes if c in index]
        y[row, cols] = 1.0
    return y
