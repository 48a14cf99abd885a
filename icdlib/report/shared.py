"""What every notebook's report shares: the figure canvas and its small drawing helpers, the
header (provenance and parameters), the paths a report may show, and the sentences and tables
that more than one notebook's summary is made of.

Why this module exists: the notebooks narrate, and every figure they show is built from data
already in memory by the report module of that notebook (`preprocess` for 01, `label_stats` 02,
`train` 03, `evaluate` 04, `error_analysis` 05, `compare` 06); what those modules have in common
lives here, so the same plot looks the same in every notebook and run, and a notebook loads
only its own module and this one.

Each figure function takes DataFrames / arrays and returns a ``matplotlib.figure.Figure``
(8 x 4.5 in by default: `canvas`, titled, labelled axes, constrained layout). Nothing here writes
files, calls ``plt.show()`` or touches note text beyond counting words; the only file read is the
backbone's params file, whose values the parameter display compares a run with.

Every report opens with `header` (what made it: `provenance.collect`'s dict, and the parameters
that differ from the backbone's) and closes with its module's `summary` (what the run shows, in
sentences generated from its numbers, put together by `closing`). No absolute path of the machine
appears in either (`share_paths`).

Every table a report shows goes through `table` (`icdlib.report.tables.show`: no index, human
column names, rounded numbers, "–" with a footnote for a missing value). The functions that
compute a table return its data (a DataFrame); metrics are fractions (0–1) in every table, as in
metrics.json.

The figures are created with ``matplotlib.figure.Figure`` rather than ``pyplot``, so they are not
registered with pyplot's figure manager: returned as a cell's value, Jupyter's inline backend
renders each exactly once, and nothing accumulates in memory over a long notebook.
``display(fig)`` or ``fig.savefig(...)`` work as usual.
"""

from __future__ import annotations

import math
import os
import re
import sys
from html import escape

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from icdlib.report.tables import show as table

__all__ = [
    "SIZE", "SPLITS", "DATA_NAMES", "DEFAULT_BUCKETS", "data_name", "recorded_data_name",
    "canvas", "empty_panel", "plain_log_ticks", "splits_in", "codes_per_note", "words_per_note",
    "code_assignments", "unseen_in_train", "frequency_buckets",
    "Shown", "esc", "path_placeholders", "share_paths", "shown_value", "backbone_defaults", "parameters",
    "provenance", "header", "number", "decimals", "markdown_html", "data_sentences", "per_code_sentences",
    "closing", "table",
]

SIZE = (8.0, 4.5)
SPLITS = ("train", "val", "test")
DATA_NAMES = {"mimic3": "MIMIC-III", "mimic4_icd9": "MIMIC-IV (ICD-9)", "mimic4_icd10": "MIMIC-IV (ICD-10)"}


def data_name(dataset: str = "mimic3", synthetic: bool = False) -> str:
    """What a run codes, in words: `MIMIC-IV (ICD-10)`, or `synthetic MIMIC-III twin`."""
    name = DATA_NAMES[dataset]
    if not synthetic:
        return name
    base, _, version = name.partition(" ")
    return f"synthetic {base} twin{' ' + version if version else ''}"


def recorded_data_name(recorded: dict) -> str:
    """What a run codes, in words (`data_name`), from its record: `recorded` is the run's
    config.json as step 01 wrote it (`dataset`; `mimic_dir` empty means the synthetic twin).

    The terminal's headline and `reports/index.html` both name the data this way, so neither
    depends on what a later command (`icdlib run --only 04 05`) happened to repeat."""
    dataset = recorded.get("dataset") or "mimic3"
    return data_name(dataset if dataset in DATA_NAMES else "mimic3", not recorded.get("mimic_dir"))


# --------------------------------------------------------------------------- drawing

def _render_figures_in_notebooks() -> None:
    """Make Jupyter show a returned Figure as a PNG (pyplot-free figures get no formatter otherwise)."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        select_figure_formats(shell, {"png"}, dpi=110)


_render_figures_in_notebooks()


def canvas(nrows: int = 1, ncols: int = 1, size=SIZE, **kwargs):
    """A pyplot-free Figure and its axes (a single Axes, or an array for several)."""
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kwargs)
    return fig, axes


def codes_per_note(notes: pd.DataFrame) -> np.ndarray:
    """The number of codes of each admission (int64, in `notes`' order)."""
    return notes["codes"].map(len).to_numpy(dtype=np.int64)


def words_per_note(notes: pd.DataFrame) -> np.ndarray:
    """Whitespace-delimited words of each note (int64): its `n_words` column when step 01 wrote one."""
    if "n_words" in notes:
        return notes["n_words"].to_numpy(dtype=np.int64)
    return notes["text"].str.split().str.len().fillna(0).to_numpy(dtype=np.int64)


def plain_log_ticks(axis) -> None:
    """Label a log axis 1, 10, 100, 1,000 instead of 10^0, 2x10^0, ..."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def splits_in(notes: pd.DataFrame) -> list[str]:
    """The splits `notes` holds: train, val, test first (those present), any other after, sorted."""
    present = list(pd.unique(notes["split"]))
    return [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)


def empty_panel(ax, message: str) -> None:
    """An axes with nothing to draw says why (`message`, grey, centred) instead of staying blank."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- tables more than one report reads

def code_assignments(notes: pd.DataFrame) -> pd.DataFrame:
    """One row per (admission, code): split, code."""
    exploded = notes[["split", "codes"]].reset_index(drop=True).explode("codes")
    exploded = exploded.dropna(subset=["codes"]).rename(columns={"codes": "code"})
    exploded.index.name = "admission"
    return exploded


def unseen_in_train(notes: pd.DataFrame) -> pd.DataFrame:
    """For val and test: codes that never occur in train, and the assignments they affect.

    Returns one row per evaluation split with n_admissions, n_codes (distinct), n_unseen_codes,
    n_assignments, n_unseen_assignments, share_unseen_assignments and
    n_admissions_affected (admissions with at least one unseen code).
    """
    train_codes = set(code_assignments(notes[notes["split"] == "train"])["code"])
    rows = []
    for split in [s for s in splits_in(notes) if s != "train"]:
        part = notes[notes["split"] == split]
        assignments = code_assignments(part)
        unseen = ~assignments["code"].isin(train_codes)
        rows.append({
            "split": split,
            "n_admissions": len(part),
            "n_codes": int(assignments["code"].nunique()),
            "n_unseen_codes": int(assignments.loc[unseen, "code"].nunique()),
            "n_assignments": len(assignments),
            "n_unseen_assignments": int(unseen.sum()),
            "share_unseen_assignments": float(unseen.mean()) if len(assignments) else float("nan"),
            "n_admissions_affected": int(assignments.index[unseen.to_numpy()].nunique()),
        })
    columns = ["split", "n_admissions", "n_codes", "n_unseen_codes", "n_assignments",
               "n_unseen_assignments", "share_unseen_assignments", "n_admissions_affected"]
    return pd.DataFrame(rows, columns=columns).set_index("split")


DEFAULT_BUCKETS = (0, 10, 50, 100, 500)  # right edges: (0], 1-10, 11-50, 51-100, 101-500, >500


def frequency_buckets(per_code: pd.DataFrame, edges=None) -> pd.DataFrame:
    """Per-code metrics averaged per training-frequency bucket.

    Buckets: 0 (never in train), 1-10, 11-50, 51-100, 101-500, >500 by default. When fewer
    than three default buckets hold codes (small data), the edges adapt to the quartiles of
    n_train instead. Empty buckets are skipped.

    Returns columns bucket, n_codes (codes in the bucket with a positive in the split, by `support`,
    as `per_code_vs_frequency` and the mean per-label macro-F1 count them; with a defined F1 when
    `per_code` has no `support`), mean_f1, mean_auprc (over those codes), min_n_train, max_n_train,
    in bucket order.
    """
    n_train = per_code["n_train"].to_numpy(dtype=np.int64)
    if edges is None:
        edges = list(DEFAULT_BUCKETS)
        occupied = np.unique(np.searchsorted(edges, n_train[n_train > 0], side="left"))
        if occupied.size < 3 and (n_train > 0).any():
            q = np.quantile(n_train[n_train > 0], [0.25, 0.5, 0.75])
            edges = sorted({0, *np.floor(q).astype(int).tolist()})
    edges = sorted(set(int(e) for e in edges) | {0})
    index = np.searchsorted(edges, n_train, side="left")  # n <= edges[0]=0 -> 0; (e_{i-1}, e_i] -> i

    def name(i: int) -> str:
        if i == 0:
            return "0"
        if i == len(edges):
            return f">{edges[-1]}"
        lo, hi = edges[i - 1] + 1, edges[i]
        return str(hi) if lo == hi else f"{lo}-{hi}"

    rows = []
    for i in range(len(edges) + 1):
        members = per_code[index == i]
        if not len(members):
            continue
        scored = members[members["support"] > 0] if "support" in members else members[members["f1"].notna()]
        f1 = scored["f1"].dropna()
        rows.append({
            "bucket": name(i), "n_codes": int(f1.size),
            "mean_f1": float(f1.mean()) if f1.size else float("nan"),
            "mean_auprc": float(scored["auprc"].mean()) if "auprc" in scored and len(scored) else float("nan"),
            "min_n_train": int(members["n_train"].min()), "max_n_train": int(members["n_train"].max()),
        })
    return pd.DataFrame(rows, columns=["bucket", "n_codes", "mean_f1", "mean_auprc",
                                       "min_n_train", "max_n_train"])


# --------------------------------------------------------------------------- around the figures
# The header (provenance and parameters) and the closing summary of every report. They return
# `Shown` objects: HTML (or Markdown) for the notebook, plain text for the terminal and for the
# text/plain copy an .ipynb keeps. Paths of the machine never appear in them (`share_paths`).

class Shown:
    """A block of a report: `html` and/or `markdown` for Jupyter, `text` for everything else."""

    def __init__(self, text: str, html: str | None = None, markdown: str | None = None):
        self.text, self.html, self.markdown = text, html, markdown

    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str | None:
        return self.markdown

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def esc(value) -> str:
    """`value` as text safe inside HTML (quotes too: it may sit in an attribute)."""
    return escape(str(value), quote=True)


def path_placeholders(cfg) -> list[tuple[str, str]]:
    """(absolute path, placeholder) pairs for a run, the longest path first: the run folder is
    `<run>`, then `<mimic_dir>`, `<split_dir>`, `<output_root>`, the checkout `<repo>`, the Python
    environment `<python>`, the home folder `~` and the working directory `<cwd>`."""
    from icdlib.run.config import OUTPUTS_DIR, REPO_ROOT

    pairs = [(cfg.run_dir, "<run>"), (cfg.mimic_dir, "<mimic_dir>"), (cfg.split_dir, "<split_dir>"),
             (cfg.output_root or OUTPUTS_DIR, "<output_root>"), (REPO_ROOT, "<repo>"), (sys.prefix, "<python>"),
             (sys.base_prefix, "<python>"), (os.path.expanduser("~"), "~"), (os.getcwd(), "<cwd>")]
    out = {}
    for path, placeholder in pairs:
        if not path:
            continue
        for variant in {os.path.abspath(str(path)), os.path.realpath(str(path))}:
            if variant.count(os.sep) >= 2 or len(variant.rstrip(os.sep)) > 2:  # never "/" itself
                out.setdefault(variant.rstrip(os.sep), placeholder)
    return sorted(out.items(), key=lambda p: -len(p[0]))


def share_paths(text: str, cfg, pairs: list[tuple[str, str]] | None = None) -> str:
    """`text` with every absolute path of the machine that `path_placeholders` knows replaced by
    its placeholder (`/data/outputs/llama3/03_train/best` → `<run>/03_train/best`). Only whole
    path components are replaced: `/tmp/run` does not touch `/tmp/runs`."""
    for path, placeholder in pairs if pairs is not None else path_placeholders(cfg):
        if path in text:
            text = re.sub(re.escape(path) + r"(?![\w.-])", lambda _: placeholder, text)
    return text


PATH_KEYS = {"output_root": "<output_root>", "mimic_dir": "<mimic_dir>", "split_dir": "<split_dir>"}


def shown_value(key: str, value, cfg) -> str:
    """A parameter's value as a report shows it: the path parameters as their placeholder, a list in
    brackets, any other path through `share_paths` (a folder outside every known place: its name only)."""
    if isinstance(value, str) and value and key in PATH_KEYS:
        return PATH_KEYS[key]
    if isinstance(value, list):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    text = repr(value)
    if isinstance(value, str) and value.startswith(("/", "~")):
        text = repr(share_paths(value, cfg))
        if text.startswith("'/"):  # a folder outside every known place: its name only
            text = repr("…/" + os.path.basename(value.rstrip("/")))
    return text


def backbone_defaults(cfg) -> tuple[dict, str]:
    """The values a run of `cfg.backbone` has without overrides (`params/<backbone>.yaml` over the
    Config defaults), and what to call them; the Config defaults alone when the file is gone."""
    from icdlib.run import config

    try:
        return config.resolve(cfg.backbone, {}).to_dict(), f"params/{cfg.backbone}.yaml + defaults"
    except Exception:  # noqa: BLE001 - a missing or since-changed params file: compare with the defaults
        return {**config.Config().to_dict(), "backbone": cfg.backbone}, "defaults"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th style='text-align:left'>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'><code>{esc(c)}</code></td>" if i else
                                    f"<td style='text-align:left'>{esc(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def parameters(cfg) -> Shown:
    """The run's parameters as the difference from its backbone's defaults, all of them one click
    away (an HTML `<details>`). Paths are shown as `<run>/…`, `<mimic_dir>`, …, never absolute."""
    defaults, source = backbone_defaults(cfg)
    values = cfg.to_dict()
    changed = [k for k, v in values.items() if k in defaults and v != defaults[k]]
    changed += [k for k in values if k not in defaults]
    rows = [[k, shown_value(k, values[k], cfg), shown_value(k, defaults.get(k, ""), cfg)] for k in changed]
    everything = [[k, shown_value(k, v, cfg)] for k, v in values.items()]
    what = (f"{len(changed)} of {len(values)} parameters differ from {source}" if changed
            else f"all {len(values)} parameters are those of {source}")
    html = (f"<p><b>Parameters</b>: {esc(what)}.</p>"
            + (_table(["parameter", "this run", source], rows) if rows else "")
            + f"<details><summary>All {len(values)} parameters</summary>"
            + _table(["parameter", "value"], everything) + "</details>")
    text = f"Parameters: {what}.\n" + "".join(f"  {k} = {v} ({source}: {d})\n" for k, v, d in rows)
    return Shown(text.rstrip("\n"), html=html)


def _provenance_rows(info: dict) -> list[tuple[str, str]]:
    commit = info.get("commit")
    if commit:
        code = f"commit {commit[:12]}" + (" with uncommitted changes" if info.get("dirty") else
                                          "" if info.get("dirty") is False else " (state unknown)")
    else:
        code = "not a git checkout (commit unknown)"
    v = info.get("versions", {})
    software = " · ".join(f"{k} {v[k] or 'not installed'}" for k in v)
    rows = [("code", code), ("software", software),
            ("device", " · ".join(x for x in (info.get("device"), info.get("platform")) if x)),
            ("date", str(info.get("date", "")).replace("T", " ").replace("+00:00", " UTC"))]
    data = info.get("data") or {}
    if data:
        rows.append(("data", " · ".join(f"{k} {h or 'not written yet'}" for k, h in data.items())))
    return rows


def provenance(info: dict) -> Shown:
    """`provenance.collect`'s dict as a small table: commit (and whether the checkout was
    modified), software versions, device, date and the data's content hashes."""
    rows = _provenance_rows(info)
    html = "<table>" + "".join(f"<tr><th style='text-align:left'>{esc(k)}</th>"
                               f"<td style='text-align:left'>{esc(v)}</td></tr>" for k, v in rows) + "</table>"
    return Shown("\n".join(f"{k}: {v}" for k, v in rows), html=html)


def header(cfg, info: dict) -> Shown:
    """The top of every report: what run this is, what made it (`provenance`), and its parameters."""
    what = (f"Run <code>{esc(cfg.run_name)}</code> · backbone <code>{esc(cfg.backbone)}</code> · "
            + (data_name(cfg.dataset, True) if cfg.synthetic else
               f"{data_name(cfg.dataset)} from <code>&lt;mimic_dir&gt;</code>")
            + (" · share-safe (no note text)" if cfg.share_safe_on else ""))
    prov, params = provenance(info), parameters(cfg)
    html = f"<div class='icdlib-header'><p>{what}</p>{prov.html}{params.html}</div>"
    plain = f"Run {cfg.run_name} · backbone {cfg.backbone}\n{prov.text}\n{params.text}"
    return Shown(plain, html=html)


# --------------------------------------------------------------------------- what the run shows

def number(value) -> float | None:
    """`value` as a float, or None when it is missing, not a number or NaN (metrics.json's undefined)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def decimals(value, digits: int = 3) -> str:
    """`value` with `digits` decimals, "n/a" when it is not a number (`number`)."""
    value = number(value)
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_html(markdown: str) -> str:
    """The little Markdown `summary` writes (paragraphs, `###` headings, **bold**, `code`) as HTML."""
    blocks = []
    for block in markdown.strip().split("\n\n"):
        text = esc(block.strip())
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
        if text.startswith("### "):
            blocks.append(f"<h3>{text[4:]}</h3>")
        else:
            blocks.append(f"<p>{text}</p>")
    return "\n".join(blocks)


def data_sentences(notes: pd.DataFrame, labels: pd.DataFrame | None) -> list[str]:
    """What a run's data is (01 and 02 close with it): admissions per split, codes per admission,
    note length; with `labels`, the label space's long tail and the share of test codes unseen in train."""
    sizes = notes["split"].value_counts()
    n_codes = codes_per_note(notes)
    parts = [f"{len(notes):,} admissions ("
             + ", ".join(f"{s} {int(sizes.get(s, 0)):,}" for s in splits_in(notes)) + ")"]
    text = (f"The run's data: {parts[0]}, with a median of {np.median(n_codes):g} codes per admission "
            f"(mean {n_codes.mean():.1f}) and notes of a median {np.median(words_per_note(notes)):,.0f} words.")
    sentences = [text]
    if labels is not None and len(labels):
        n_train = labels["n_train"].to_numpy()
        sentences.append(f"The label space holds {len(labels):,} codes; {np.mean(n_train <= 10):.0%} of them occur in "
                         f"at most 10 training admissions, so per-code (macro) metrics rest on few examples.")
        unseen = unseen_in_train(notes)
        if len(unseen):
            split = "test" if "test" in unseen.index else unseen.index[0]
            row = unseen.loc[split]
            sentences.append(f"In {split}, {decimals(row['share_unseen_assignments'] * 100, 1)}% of code assignments "
                             f"are codes never seen in training ({int(row['n_unseen_codes']):,} distinct codes): no "
                             f"model trained on this split can predict them.")
    return sentences


def per_code_sentences(per_code: pd.DataFrame) -> list[str]:
    """What per_code.parquet shows (04 and 05 close with it): the codes with a positive never predicted
    right, and the mean F1 of the rarest and the most frequent training-frequency bucket."""
    if "f1" not in per_code or "support" not in per_code:
        return []
    f1 = per_code.loc[per_code["support"] > 0, "f1"].fillna(0.0)
    if not len(f1):
        return []
    buckets = frequency_buckets(per_code)
    buckets = buckets[buckets["n_codes"] > 0]
    text = (f"Of the {len(f1):,} codes with a positive in the evaluated split, {int((f1 == 0).sum()):,} are never "
            f"predicted right (F1 0).")
    if len(buckets) > 1:
        lo, hi = buckets.iloc[0], buckets.iloc[-1]
        text += (f" Mean per-code F1 is {decimals(lo['mean_f1'])} for codes with {lo['bucket']} training admissions "
                 f"and {decimals(hi['mean_f1'])} for those with {hi['bucket']}.")
    return [text]


def closing(paragraphs: list[str]) -> Shown:
    """"What this run shows": a report's closing block from the paragraphs its `summary` wrote
    (Markdown: `###` heading, **bold**, `code`), as Markdown and HTML for the notebook and plain
    text for the terminal; "Nothing to summarise yet." without a paragraph."""
    markdown = "### What this run shows\n\n" + "\n\n".join(paragraphs or ["Nothing to summarise yet."])
    return Shown(markdown.replace("### ", "").replace("**", "").replace("`", ""), html=markdown_html(markdown),
                 markdown=markdown)
