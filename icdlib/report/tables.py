"""One table style for every report.

Why this module exists: the functions that compute a table (`analysis`, the report modules,
`compare`, `mntp`, `preprocess`) return plain DataFrames, which tests check value by value; a report
shows them through `show` (notebooks: `report.table`, in every notebook's report module), so every
table of every report reads alike:

- numbers rounded to what they support: counts with thousands separators, other numbers with 3
  decimals (100 and more without decimals, a learning rate as 2.0e-05), shares (`share…` columns,
  or `percent=`) as one decimal of %; metrics stay fractions (0–1), as metrics.json holds them;
- human column names (`COLUMN_NAMES`; `n_unseen_assignments` → "assignments of unseen codes");
- no index column: a named index becomes the first column, a 0, 1, 2, … one is dropped;
- full labels: no cell is cut (a DataFrame's own HTML cuts at 50 characters with "..."), long
  text wraps;
- yes/no for booleans, never True/False among counts; identifiers (`…_id`) without separators;
- a column equal to another shown once (`SAME_AS`: per-code `n_test` is `support` on test);
- a missing value as "–" with a footnote saying why (`MISSING_WHY`, or `missing=`).

A function that computes a table can say how it reads in the DataFrame's `attrs` (pandas' own
metadata dict): `caption`, `note`, `missing` (why a "–"), `names` (its column names), `columns`
(those to show) and `empty` (what to say without a row); `show` takes them, so a notebook cell
stays `report.table(analysis.errors_by(...))`.

Built on pandas' Styler (`hide(axis="index")`, `format(escape=...)`, table styles, a caption) rather
than great_tables: pandas is already a dependency, the Styler renders in Jupyter, in nbconvert's
HTML and in the .ipynb alike, and its jinja2 comes with the notebook stack. The formatting itself
is ours (`cell`), so the terminal's text (`Table.__repr__`) shows the same strings as the HTML.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from html import escape

import numpy as np
import pandas as pd

__all__ = ["MISSING", "METRIC_NAMES", "COLUMN_NAMES", "MISSING_WHY", "Table", "show", "cell", "column_name"]

MISSING = "–"

# The metrics' names in every table (metrics.compute keys; `report.evaluate.TABLE_NAMES` for 04's). The two
# macro-F1s are different figures: `f1_macro` the mean per-label F1 over labels with a positive (Edin et al.),
# `f1_macro_caml` the F1 of macro-precision and macro-recall over all labels (CAML's code).
METRIC_NAMES = {"auroc_macro": "AUROC macro", "auroc_micro": "AUROC micro", "auprc_macro": "AUPRC macro",
                "auprc_micro": "AUPRC micro", "f1_macro": "F1 macro (mean per label, Edin)",
                "f1_macro_caml": "F1 macro (CAML: of macro-P and macro-R)", "f1_micro": "F1 micro",
                "p_at_5": "P@5", "p_at_8": "P@8", "p_at_15": "P@15", "r_precision": "R-precision", "map": "MAP",
                "precision_micro": "precision micro", "recall_micro": "recall micro", "exact_match": "exact match"}

# Column keys of icdlib's tables → what a report calls them.
COLUMN_NAMES = {
    # per code (analysis.per_code), frequent errors, confusions
    "code": "code", "title": "title", "short_title": "title", "long_title": "full title", "kind": "kind",
    "n_train": "train admissions", "n_test": "admissions with the code", "support": "positives",
    "auroc": "AUROC", "auprc": "AUPRC", "f1": "F1", "n_predicted": "predicted",
    "true_code": "true code", "predicted_code": "predicted code", "true_title": "true code's title",
    "predicted_title": "predicted code's title", "category": "category",
    # coarser levels and near misses
    "n_labels": "labels", "tp": "true positives", "fp": "false positives", "fn": "false negatives",
    "share": "share", "outcome": "outcome", "level": "level",
    # errors by note length / number of codes
    "bin": "bin", "n_docs": "admissions", "mean_doc_f1": "mean F1 per admission", "micro_f1": "micro-F1",
    "mean_fp": "false positives per admission", "mean_fn": "false negatives per admission",
    "mean_errors": "errors per admission",
    # codes never seen in train (report.shared.unseen_in_train), the label space (analysis.outside_label_space)
    "split": "split", "n_admissions": "admissions", "n_codes": "codes", "n_unseen_codes": "codes unseen in train",
    "n_assignments": "code assignments", "n_unseen_assignments": "assignments of unseen codes",
    "share_unseen_assignments": "share of assignments unseen",
    "n_admissions_affected": "admissions with an unseen code",
    "n_codes_outside": "codes outside the label space", "n_positives": "code assignments",
    "n_positives_outside": "assignments outside the label space",
    "share_positives_outside": "share of assignments outside",
    "n_admissions_without_label": "admissions left without a code",
    # admissions (01's sample)
    "hadm_id": "HADM_ID", "subject_id": "SUBJECT_ID", "codes": "codes",
    # training history, MNTP cost
    "step": "step", "epoch": "epoch", "train_loss": "train loss", "lr": "learning rate", "tokens_per_s": "tokens/s",
    "elapsed_s": "time (s)", "steps": "steps", "tokens": "tokens", "wall_s": "wall time (s)",
    "share_of_fine_tuning": "share of the fine-tuning's time", "phase": "phase",
    **METRIC_NAMES,
}

# Why a column can hold no value: the footnote under a table where it shows "–".
MISSING_WHY = {
    "auroc": "AUROC is undefined for a code without a positive or without a negative in the split",
    "auprc": "AUPRC is undefined for a code without a positive in the split",
    "f1": "F1 is undefined for a code without a positive in the split and never predicted",
    "precision": "precision is undefined for a code the model never predicts",
    "recall": "recall is undefined for a code without a positive in the split",
    "mean_doc_f1": "the mean F1 per admission leaves out admissions with no code true and none predicted",
    "micro_f1": "micro-F1 is undefined where nothing is true and nothing predicted",
    "share": "a share is undefined when there is nothing to divide by",
    "wall_s": "the wall time was not recorded (a run written by an older icdlib)",
    "share_of_fine_tuning": "the wall time was not recorded (a run written by an older icdlib)",
    "steps": "not recorded (a run written by an older icdlib)",
    "tokens": "not recorded (a run written by an older icdlib)",
}
for _key, _name in METRIC_NAMES.items():
    MISSING_WHY.setdefault(_key, f"{_name} is not defined for this row (a published paper does not report it, "
                                 "or the split leaves it undefined)")

# A column shown only when it differs from its twin: (dropped, kept).
SAME_AS = (("n_test", "support"),)
CODE = re.compile(r"`([^`]+)`")  # `name` in a note: shown as code
# Columns with their own format.
FORMATS = {"lr": "{:.1e}", "wall_s": "{:,.1f}", "elapsed_s": "{:,.1f}"}
TABLE_CSS = [
    {"selector": "", "props": "border-collapse: collapse; margin: 0.4em 0 1em 0; font-size: 0.92em"},
    {"selector": "caption", "props": "caption-side: top; text-align: left; padding: 0 0 0.4em 0; color: #333"},
    {"selector": "th", "props": "text-align: left; vertical-align: bottom; padding: 0.3em 0.6em; "
                                "border-bottom: 1px solid #888; white-space: normal; max-width: 14em"},
    {"selector": "td", "props": "text-align: left; vertical-align: top; padding: 0.25em 0.6em; "
                                "white-space: normal; max-width: 32em; overflow-wrap: break-word"},
    {"selector": "tbody tr:nth-child(even)", "props": "background: #f6f6f6"},
]


def column_name(key) -> str:
    """What a table calls column `key`: `COLUMN_NAMES`, `val_<metric>` as "val <metric name>", a
    snake_case key with spaces for underscores, else the key as it is (a run's name, a name in words)."""
    key = str(key)
    if key in COLUMN_NAMES:
        return COLUMN_NAMES[key]
    for prefix in ("val_", "test_"):
        if key.startswith(prefix) and key[len(prefix):] in METRIC_NAMES:
            return f"{prefix[:-1]} {METRIC_NAMES[key[len(prefix):]]}"
    return key.replace("_", " ") if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", key) else key


def _is_share(key) -> bool:
    return str(key).startswith("share")


def cell(value, percent: bool = False, fmt: str | None = None, large: bool = False) -> str:
    """One value as every table shows it: "–" when missing, yes/no for a boolean, a count with thousands
    separators, a share (`percent`) as one decimal of %, 100 and more (or any number of a `large`
    column, one reaching 100) without decimals, a nonzero below 0.001 as 1.2e-05, else 3 decimals; text
    as it is."""
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return fmt.format(int(value)) if fmt else f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return MISSING
        if fmt:
            return fmt.format(value)
        if percent:
            return f"{value:.1%}"
        size = abs(value)
        if size >= 100 or large:
            return f"{value:,.0f}"
        if 0 < size < 0.001:
            return f"{value:.1e}"
        return f"{value:.3f}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _without_index(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its index as leading columns when it says something (named, or not 0, 1, 2, …)."""
    index = df.index
    plain = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None
    if plain:
        return df.reset_index(drop=True)
    names = [n if n is not None else "" for n in index.names]
    out = df.copy()
    out.index = index.set_names(names)
    return out.reset_index()


def _missing(value) -> bool:
    """No value: None, NA, NaN, or a "–" a function already wrote into a text cell."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, str) and value == MISSING):
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and not math.isfinite(value)


def _note_html(note: str) -> str:
    return CODE.sub(r"<code>\g<1></code>", escape(note))


class Table:
    """A table as a report shows it: `frame` (strings, human column names, no index), `caption` above,
    `notes` (footnotes) below, `bold` cells; HTML (pandas' Styler) for Jupyter, text for everything else."""

    def __init__(self, frame: pd.DataFrame, caption: str = "", notes: list[str] | None = None,
                 numeric: list[int] | None = None, bold: np.ndarray | None = None):
        self.frame, self.caption, self.notes = frame, caption, list(notes or [])
        self.numeric = list(numeric or [])
        self.bold = bold if bold is not None else np.zeros(frame.shape, dtype=bool)

    def styler(self):
        """The pandas Styler of `frame`: no index, escaped text, left-aligned text and right-aligned numbers,
        long text wrapped; a stable id (a hash of the content), so a rerun writes the same HTML."""
        uuid = hashlib.sha1(self.frame.to_json().encode() + self.caption.encode()).hexdigest()[:10]
        styler = self.frame.style.hide(axis="index").format(escape="html").set_uuid(uuid)
        styler = styler.set_table_styles(TABLE_CSS)
        numeric = [self.frame.columns[i] for i in self.numeric]
        if numeric:
            styler = styler.set_table_styles({c: [{"selector": "td", "props": "text-align: right; white-space: nowrap"},
                                                  {"selector": "th", "props": "text-align: right"}]
                                              for c in numeric}, overwrite=False)
        if self.bold.any():
            css = np.where(self.bold, "font-weight: bold", "")
            styler = styler.apply(lambda _: pd.DataFrame(css, index=self.frame.index, columns=self.frame.columns),
                                  axis=None)
        if self.caption:
            styler = styler.set_caption(self.caption)
        return styler

    def to_html(self) -> str:
        """The Styler's table, then the notes (`code` in backticks shown as code)."""
        notes = "".join(f"<p class='table-note' style='font-size:0.85em;color:#555;margin:-0.6em 0 1em 0'>"
                        f"{_note_html(n)}</p>" for n in self.notes)
        return self.styler().to_html() + notes

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        text = self.frame.to_string(index=False) if len(self.frame.columns) else "(no columns)"
        return "\n".join(([self.caption] if self.caption else []) + [text] + self.notes)

    __str__ = __repr__


ID_COLUMNS = {"admission", "patient", "note"}  # display names of identifier columns (05's span table)


def _is_id(key) -> bool:
    """An identifier column (`…_id`, or one named for what it identifies): its digits without separators."""
    return str(key).lower().endswith("_id") or str(key).lower() in ID_COLUMNS


def show(df, *, caption: str = "", note: str = "", names: dict | None = None, percent=(),
         missing: str = "", columns=None, bold: pd.DataFrame | None = None, empty: str = "No rows."):
    """`df` as a report shows it (`Table`; see the module's rules); anything that is not a DataFrame
    (a `report.Shown` saying why there is no table) is returned as it is.

    Args:
        caption: a line above the table (what it holds, its unit); default `df.attrs["caption"]`, so
            a function that computes a table can say what it holds.
        note: a footnote under it; default `df.attrs["note"]`.
        names: column names over `df.attrs["names"]` and `COLUMN_NAMES` (a key of `df`, or of its
            index, → a name).
        percent: columns shown as one decimal of % (besides those whose key starts with `share`).
        missing: why a value is missing, for the "–" footnote; default `df.attrs["missing"]`, else
            `MISSING_WHY` of the columns that have one.
        columns: the columns to show, in this order (keys of `df` or of its index); default
            `df.attrs["columns"]`, else all.
        bold: booleans shaped as `df` (same index and columns): the cells shown in bold.
        empty: what to say when `df` has no row; default `df.attrs["empty"]`, else "No rows.".
    """
    if not isinstance(df, pd.DataFrame):
        return df
    caption = caption or df.attrs.get("caption", "")
    note = note or df.attrs.get("note", "")
    missing = missing or df.attrs.get("missing", "")
    empty = df.attrs.get("empty", empty)
    names = {**df.attrs.get("names", {}), **(names or {})}
    columns = columns if columns is not None else df.attrs.get("columns")
    frame = _without_index(df)
    marked = None if bold is None else _without_index(bold.reindex(index=df.index, columns=df.columns)
                                                      .fillna(False).astype(bool))
    for dropped, kept in SAME_AS:
        if dropped in frame and kept in frame and frame[dropped].equals(frame[kept]):
            frame = frame.drop(columns=dropped)
    if columns is not None:
        frame = frame[[c for c in columns if c in frame]]
    keys = list(frame.columns)
    percent = set(percent)
    shown, numeric, absent = {}, [], []
    for i, key in enumerate(keys):
        values = frame.iloc[:, i].tolist()
        fmt = FORMATS.get(str(key)) or ("{}" if _is_id(key) else None)  # ids: no 1,234
        large = any(isinstance(v, numbers.Real) and not _missing(v) and abs(float(v)) >= 100 for v in values)
        shown[i] = [cell(v, percent=_is_share(key) or key in percent, fmt=fmt, large=large) for v in values]
        if any(_missing(v) for v in values):
            absent.append(key)
        kinds = [v for v in values if not _missing(v)]
        column = frame.iloc[:, i]
        typed = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        if typed or kinds and all(isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_)) for v in kinds):
            numeric.append(i)
    labels = []
    for k in keys:  # two keys of one name (n_docs and n_admissions: "admissions") keep their keys
        label = (names or {}).get(k) or column_name(k)
        labels.append(label if label not in labels else str(k).replace("_", " "))
    out = pd.DataFrame({j: shown[j] for j in range(len(keys))})
    out.columns = labels
    notes = []
    if absent:
        why = missing or "; ".join(dict.fromkeys(MISSING_WHY[str(k)] for k in absent if str(k) in MISSING_WHY))
        why = why or "no value for this row"
        notes.append(f"{MISSING}: {why}" + ("" if why.endswith(".") else "."))
    if note:
        notes.append(note)
    if not len(out):
        notes.insert(0, empty)
    flags = None
    if marked is not None:
        flags = marked.reindex(columns=keys).fillna(False).astype(bool).to_numpy()
    return Table(out, caption, notes, numeric, flags)
