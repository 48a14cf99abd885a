"""Figures and summary tables for the notebooks.

Why this module exists: the notebooks narrate, and every figure they show is built here
from data already in memory, so the same plot looks the same in every notebook and run.
Each figure function takes DataFrames / arrays and returns a ``matplotlib.figure.Figure``
(8 x 4.5 in by default, titled, labelled axes, constrained layout). Nothing here writes files,
calls ``plt.show()`` or touches note text beyond counting words; the only file read is the
backbone's params file, whose values the parameter display compares a run with.

Every report opens with `header` (what made it: `provenance.collect`'s dict, and the parameters
that differ from the backbone's) and closes with `summary` (what the run shows, in sentences
generated from its numbers). No absolute path of the machine appears in either (`share_paths`).

Every table a report shows goes through `table` (`icdlib.report.tables.show`: no index, human column names,
rounded numbers, "–" with a footnote for a missing value). The functions here that compute a table
return its data (a DataFrame); metrics are fractions (0–1) in every table, as in metrics.json.

The figures are created with ``matplotlib.figure.Figure`` rather than ``pyplot``, so they
are not registered with pyplot's figure manager: returned as a cell's value, Jupyter's
inline backend renders each exactly once, and nothing accumulates in memory over a
long notebook. ``display(fig)`` or ``fig.savefig(...)`` work as usual.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from html import escape

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter

from icdlib.data.labels import kind_of
from icdlib.evaluation.names import MNTP_KEYS, SYSTEM_NAMES, model_name
from icdlib.report.tables import METRIC_NAMES
from icdlib.report.tables import show as table

__all__ = [
    "REFERENCE_RESULTS", "TABLE_METRICS",
    "label_frequency", "codes_per_admission", "note_lengths", "top_codes", "top_codes_plot",
    "kind_share", "split_balance", "unseen_in_train", "label_space_dropped", "token_lengths", "truncation",
    "history", "pr_curve",
    "per_code_vs_frequency", "code_differences", "ranked_codes_note", "frequency_buckets", "f1_by_frequency_bucket",
    "threshold_curve",
    "calibration", "metrics_table", "metrics_caption", "metrics_dashes", "metrics_styled", "reference_rows",
    "reference_note", "data_name",
    "recorded_data_name",
    "TABLE_NAMES", "Shown", "path_placeholders", "share_paths", "parameters", "provenance",
    "header", "summary", "table",
]

SIZE = (8.0, 4.5)
SPLITS = ("train", "val", "test")
KIND_COLORS = {"diagnosis": "tab:blue", "procedure": "tab:orange"}
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}

# Main metrics of the comparison table, in this order (metrics.compute keys), and their column
# names there. The two macro-F1s are different figures (`macro_f1_gap` says how far apart on a run):
# `f1_macro` is the mean per-label F1 over labels with a positive (Edin et al.), `f1_macro_caml`
# the F1 of macro-precision and macro-recall over all labels (CAML's code, also LAAT/MSMN/PLM-ICD).
TABLE_METRICS = ["auroc_macro", "auroc_micro", "auprc_macro", "auprc_micro", "f1_macro", "f1_macro_caml",
                 "f1_micro", "p_at_8", "p_at_15", "r_precision", "map"]
TABLE_NAMES = {k: METRIC_NAMES[k] for k in TABLE_METRICS}

# Published results, in percent, by the `benchmark` preset whose split and label space they were
# measured on; a run shows only its own benchmark's rows. MIMIC-III full = CAML's split (47,723
# train / 1,631 val / 3,372 test admissions, 8,922 codes); the published macro-F1 is CAML's
# definition, so it sits under `f1_macro_caml`. Metrics a paper does not report are absent (NaN).
REFERENCE_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "caml_full": {
        "CAML (Mullenbach et al. 2018, MIMIC-III full, CAML split)": {
            "auroc_macro": 89.5, "auroc_micro": 98.6, "f1_macro_caml": 8.8, "f1_micro": 53.9,
            "p_at_8": 70.9, "p_at_15": 56.1},
        "LAAT (Vu et al. 2020, MIMIC-III full, CAML split)": {
            "auroc_macro": 91.9, "auroc_micro": 98.8, "f1_macro_caml": 9.9, "f1_micro": 57.5,
            "p_at_8": 73.8, "p_at_15": 59.1},
        "MSMN (Yuan et al. 2022, MIMIC-III full, CAML split)": {
            "auroc_macro": 95.0, "auroc_micro": 99.2, "f1_macro_caml": 10.3, "f1_micro": 58.4,
            "p_at_8": 75.2, "p_at_15": 59.9},
        "PLM-ICD (Huang et al. 2022, MIMIC-III full, CAML split)": {
            "auroc_macro": 92.6, "auroc_micro": 98.9, "f1_macro_caml": 10.4, "f1_micro": 59.8,
            "p_at_8": 77.1, "p_at_15": 61.3},
    },
    # Edin et al. 2023, Table (MIMIC-IV ICD-10, their split file and >= 10 rule, test split, mean of their
    # runs): read from the Papers with Code listing of the paper, which gives these two rows only (R-precision
    # is its "R-Prec"); the macro-F1 is their mean per-label definition. No MIMIC-IV ICD-9 row was found in a
    # source at hand.
    "edin_mimic4_icd10": {
        "PLM-ICD (Edin et al. 2023, MIMIC-IV ICD-10, Edin split)": {
            "auroc_macro": 96.6, "auroc_micro": 99.2, "f1_macro": 21.1, "f1_micro": 58.5, "p_at_8": 69.9,
            "p_at_15": 55.0, "r_precision": 57.9, "map": 61.9},
        "LAAT (Edin et al. 2023, MIMIC-IV ICD-10, Edin split)": {
            "auroc_macro": 95.4, "auroc_micro": 99.0, "f1_macro": 20.3, "f1_micro": 57.9, "p_at_8": 68.9,
            "p_at_15": 54.3, "r_precision": 57.2, "map": 60.6},
    },
    "seed": {
        "LLM2Vec seed project (Llama-3, its own 8/9 validation split, all 18k dictionary codes, reported)": {
            "auroc_macro": 90.57, "auroc_micro": 98.08, "auprc_macro": 20.73, "auprc_micro": 47.41},
    },
}
BENCHMARK_NOTES = {
    "none": "No benchmark preset (benchmark: none): the run's split and label space are those of no paper, "
            "so no published reference rows are shown.",
    "caml_full": "Reference rows: results published on MIMIC-III full (CAML split, 8,922 codes); their macro-F1 "
                 "is CAML's definition.",
    "edin_mimic4_icd10": "Reference rows: Edin et al. (2023) on MIMIC-IV ICD-10 (their split and rare-code rule; "
                         "means of their runs, as listed by Papers with Code); their macro-F1 is the mean per label.",
    "edin_mimic4_icd9": "Benchmark edin_mimic4_icd9: Edin et al. (2023) published MIMIC-IV ICD-9 results, but no "
                        "source at hand gave their numbers, so no reference rows are shown.",
    "seed": "Reference row: what the seed project reported on its own validation split (HADM_ID ending in 8 or 9, "
            "no test set) with all ~18k dictionary codes.",
}
NO_REFERENCE_YET = "no published reference rows are recorded for this benchmark yet."
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


def reference_rows(benchmark: str = "none", synthetic: bool = False) -> dict[str, dict[str, float]]:
    """The published rows (percent) comparable with a run of `benchmark`: none on the synthetic
    twin, for `none`, or for a benchmark without recorded numbers."""
    return {} if synthetic else dict(REFERENCE_RESULTS.get(benchmark, {}))


def reference_note(benchmark: str = "none", synthetic: bool = False, dataset: str = "mimic3") -> str:
    """One sentence saying which reference rows the table shows for this run, and why."""
    if synthetic:
        return (f"This run is on the {data_name(dataset, True)}: no published numbers are comparable, so no "
                "reference rows are shown.")
    return BENCHMARK_NOTES.get(benchmark) or f"Benchmark {benchmark}: {NO_REFERENCE_YET}"


# --------------------------------------------------------------------------- helpers

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


def _quiet_tqdm_auto_without_ipywidgets() -> None:
    """Let `tqdm.auto` settle on its console bar without a warning in a kernel lacking ipywidgets.

    transformers and huggingface_hub import `tqdm.auto`, which in a Jupyter kernel looks for
    ipywidgets' IProgress and, not finding it, falls back to the console bar after a TqdmWarning
    ("IProgress not found ...") that every report then showed in red. That fallback is what a
    report wants (icdlib's own bars are off outside a terminal), so it is resolved here once with
    that one warning filtered. With ipywidgets installed, or outside a kernel, nothing changes."""
    if "ipykernel.zmqshell" not in sys.modules or "tqdm.autonotebook" in sys.modules:
        return
    try:
        from tqdm.notebook import IProgress
    except ImportError:
        return
    if IProgress is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")
            import tqdm.autonotebook  # noqa: F401


_quiet_tqdm_auto_without_ipywidgets()


def _figure(nrows: int = 1, ncols: int = 1, size=SIZE, **kwargs):
    """A pyplot-free Figure and its axes (a single Axes, or an array for several)."""
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kwargs)
    return fig, axes


def _n_codes(notes: pd.DataFrame) -> np.ndarray:
    return notes["codes"].map(len).to_numpy(dtype=np.int64)


def _n_words(notes: pd.DataFrame) -> np.ndarray:
    if "n_words" in notes:
        return notes["n_words"].to_numpy(dtype=np.int64)
    return notes["text"].str.split().str.len().fillna(0).to_numpy(dtype=np.int64)


def _plain_log_ticks(axis) -> None:
    """Label a log axis 1, 10, 100, 1,000 instead of 10^0, 2x10^0, ..."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _splits(notes: pd.DataFrame) -> list[str]:
    present = list(pd.unique(notes["split"]))
    return [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)


def _shorten(text: str, width: int = 45) -> str:
    text = str(text or "")
    return text if len(text) <= width else text[: width - 1] + "…"


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _flat(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel() != 0
    s = np.asarray(y_score).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score differ in size: {y.size} vs {s.size}")
    return y, s


# --------------------------------------------------------------------------- data

def label_frequency(labels: pd.DataFrame) -> Figure:
    """Long tail of the label space: code rank vs training admissions, log-log."""
    counts = np.sort(labels["n_train"].to_numpy(dtype=np.int64))[::-1]
    seen = counts[counts > 0]
    fig, ax = _figure()
    if seen.size:
        ranks = np.arange(1, seen.size + 1)
        ax.plot(ranks, seen, color="tab:blue", lw=1.8, label="codes with ≥1 training admission")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax.xaxis)
        _plain_log_ticks(ax.yaxis)
        for threshold, style in ((10, ":"), (100, "--")):
            share = (counts <= threshold).mean()
            ax.axhline(threshold, color="0.5", ls=style, lw=0.8)
            ax.text(1.05, threshold, f"{share:.0%} of codes have ≤ {threshold}", va="bottom",
                    fontsize=8, color="0.35")
        ax.legend(loc="upper right", fontsize=8)
    else:
        _empty(ax, "no code occurs in the training split")
    unseen = int((counts == 0).sum())
    note = f"; {unseen:,} with none not shown" if unseen else ""
    ax.set_title(f"Label frequency: {counts.size:,} codes, median {np.median(counts):g} "
                 f"training admissions{note}")
    ax.set_xlabel("Code rank (most frequent first, log scale)")
    ax.set_ylabel("Training admissions with the code (log scale)")
    return fig


def codes_per_admission(notes: pd.DataFrame) -> Figure:
    """Histogram of the number of codes per admission (all splits), with mean and median."""
    n = _n_codes(notes)
    fig, ax = _figure()
    if n.size:
        bins = np.arange(n.min(), n.max() + 2) - 0.5
        if bins.size > 81:
            bins = 80
        ax.hist(n, bins=bins, color="tab:blue", alpha=0.85)
        ax.axvline(n.mean(), color="black", lw=1.2, label=f"mean {n.mean():.1f}")
        ax.axvline(np.median(n), color="black", ls="--", lw=1.2, label=f"median {np.median(n):g}")
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no admissions")
    ax.set_title(f"Codes per admission ({n.size:,} admissions)")
    ax.set_xlabel("ICD codes assigned to the admission")
    ax.set_ylabel("Admissions")
    return fig


def note_lengths(notes: pd.DataFrame, token_counts=None) -> Figure:
    """Distribution of note length in words, and in tokens when `token_counts` is given.

    Args:
        notes: needs ``text`` (or a precomputed ``n_words`` column).
        token_counts: optional array of tokens per note (any length; e.g. the tokenizer's
            counts before truncation); adds a second panel.
    """
    panels = [("words", _n_words(notes))]
    if token_counts is not None:
        panels.append(("tokens", np.asarray(token_counts, dtype=np.int64).ravel()))
    fig, axes = _figure(1, len(panels))
    axes = np.atleast_1d(axes)
    for ax, (unit, values) in zip(axes, panels):
        if values.size:
            ax.hist(values, bins=60, color="tab:blue", alpha=0.85)
            median, p95 = np.median(values), np.percentile(values, 95)
            ax.axvline(median, color="black", lw=1.2, label=f"median {median:,.0f}")
            ax.axvline(p95, color="black", ls="--", lw=1.2, label=f"95th percentile {p95:,.0f}")
            ax.legend(fontsize=8)
        else:
            _empty(ax, "no notes")
        ax.set_title(f"Note length in {unit}" + ("" if len(panels) > 1 else f" ({len(notes):,} notes)"))
        ax.set_xlabel(f"{unit.capitalize()} per note")
        ax.set_ylabel("Notes")
    if len(panels) > 1:  # one title per figure: the panels' own say which unit
        fig.suptitle(f"Note lengths ({len(notes):,} notes)")
    return fig


def token_lengths(notes: pd.DataFrame, full_lengths, budget: int | None = None) -> Figure:
    """Tokens per note (before truncation) by split, with the budget the model reads (`max_segments`
    × each segment's body) as a vertical line.

    Args:
        notes: needs ``split``, one row per entry of `full_lengths`, in the same order.
        full_lengths: tokens per note (`data.tokenize(...).full_lengths`).
        budget: note tokens the model reads.
    """
    full = np.asarray(full_lengths, dtype=np.int64).ravel()
    split = notes["split"].to_numpy()
    fig, ax = _figure()
    if full.size:
        bins = np.histogram_bin_edges(full, bins=60)
        for name in _splits(notes):
            ax.hist(full[split == name], bins=bins, histtype="step", lw=1.5, color=SPLIT_COLORS.get(name),
                    density=True, label=f"{name} (median {np.median(full[split == name]):,.0f})")
        if budget:
            ax.axvline(budget, color="black", ls="--", lw=1.2, label=f"budget {budget:,} tokens")
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no notes")
    longer = f": {(full > budget).mean():.0%} longer than the budget" if budget and full.size else ""
    ax.set_title(f"Note length in tokens ({full.size:,} notes){longer}")
    ax.set_xlabel("Tokens per note (before truncation)")
    ax.set_ylabel("Share of the split's notes (density)")
    return fig


def truncation(stats: dict) -> pd.DataFrame:
    """`03_train/tokens.json` (`train.token_stats`) as a table: one row per split, shares as fractions
    (`share …` columns, which `table` shows in %)."""
    rows = {split: {"notes": s["notes"], "truncated notes": s["truncated_notes"],
                    "share truncated": s["share_truncated"], "tokens": s["tokens"],
                    "tokens kept": s["tokens_kept"], "share of tokens dropped": s["share_dropped"],
                    "median tokens": s["median_tokens"], "p90 tokens": s["p90_tokens"]}
            for split, s in stats.get("splits", {}).items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"split (budget {stats.get('max_note_tokens', 0):,} tokens, {stats.get('truncation', 'head')})"
    return table


def top_codes(labels: pd.DataFrame, n: int = 20, n_admissions: int | None = None) -> pd.DataFrame:
    """The `n` most frequent codes in train.

    Returns columns code, kind, short_title, n_train and, when the number of training
    admissions `n_admissions` is given, ``share`` = n_train / n_admissions (the fraction of
    training admissions carrying the code; the label table alone does not know that number).
    """
    table = labels.sort_values(["n_train", "code"], ascending=[False, True], kind="stable").head(n)
    table = table[["code", "kind", "short_title", "n_train"]].reset_index(drop=True)
    if n_admissions:
        table["share"] = table["n_train"] / float(n_admissions)
    return table


def top_codes_plot(labels: pd.DataFrame, n: int = 20, n_admissions: int | None = None) -> Figure:
    """Horizontal bars of the `n` most frequent training codes, titled, coloured by kind."""
    table = top_codes(labels, n, n_admissions)
    fig, ax = _figure(size=(8.0, max(4.5, 0.28 * len(table) + 1.2)))
    if len(table):
        names = [f"{c}  {_shorten(t)}" for c, t in zip(table["code"], table["short_title"])]
        colors = [KIND_COLORS.get(k, "0.5") for k in table["kind"]]
        y = np.arange(len(table))[::-1]
        ax.barh(y, table["n_train"], color=colors)
        ax.set_yticks(y, names, fontsize=8)
        for kind, color in KIND_COLORS.items():
            if (table["kind"] == kind).any():
                ax.bar(0, 0, color=color, label=kind)  # legend handle only
        ax.legend(fontsize=8, loc="lower right")
        if "share" in table:
            for yi, count, share in zip(y, table["n_train"], table["share"]):
                ax.text(count, yi, f" {share:.1%}", va="center", fontsize=7)
    else:
        _empty(ax, "no labels")
    ax.set_title(f"Top {len(table)} codes by training frequency")
    ax.set_xlabel("Training admissions with the code"
                  + (" (labels: share of training admissions)" if n_admissions else ""))
    return fig


def _assignments(notes: pd.DataFrame) -> pd.DataFrame:
    """One row per (admission, code): split, code."""
    exploded = notes[["split", "codes"]].reset_index(drop=True).explode("codes")
    exploded = exploded.dropna(subset=["codes"]).rename(columns={"codes": "code"})
    exploded.index.name = "admission"
    return exploded


def kind_share(notes: pd.DataFrame, labels: pd.DataFrame) -> Figure:
    """Share of diagnosis vs procedure codes among code assignments, per split (stacked bars).

    Kinds come from `labels`; codes outside the label space are classified by their form
    (procedures have two characters before the dot).
    """
    assignments = _assignments(notes)
    kinds = dict(zip(labels["code"], labels["kind"]))
    assignments["kind"] = [kinds.get(c) or kind_of(c) for c in assignments["code"]]
    table = pd.crosstab(assignments["split"], assignments["kind"], normalize="index")
    table = table.reindex(index=[s for s in _splits(notes) if s in table.index])
    counts = assignments["split"].value_counts()
    fig, ax = _figure(size=(8.0, 3.2))
    if len(table):
        left = np.zeros(len(table))
        y = np.arange(len(table))[::-1]
        for kind in [k for k in ("diagnosis", "procedure") if k in table] + \
                [k for k in table if k not in ("diagnosis", "procedure")]:
            share = table[kind].to_numpy()
            ax.barh(y, share, left=left, color=KIND_COLORS.get(kind, "0.5"), label=kind)
            for yi, l, s in zip(y, left, share):
                if s >= 0.04:
                    ax.text(l + s / 2, yi, f"{s:.1%}", ha="center", va="center", color="white", fontsize=9)
            left += share
        ax.set_yticks(y, [f"{s} ({counts.get(s, 0):,} codes)" for s in table.index])
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlim(0, 1)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, fontsize=8)
    else:
        _empty(ax, "no code assignments")
    ax.set_title("Diagnosis vs procedure share of code assignments")
    ax.set_xlabel("Share of code assignments")
    return fig


def split_balance(notes: pd.DataFrame, codes) -> Figure:
    """Fraction of admissions carrying each of `codes`, per split (grouped bars).

    A split that differs strongly from train for a frequent code hints at a split problem.
    """
    codes = list(codes)
    splits = _splits(notes)
    assignments = _assignments(notes)
    assignments = assignments[assignments["code"].isin(codes)].reset_index().drop_duplicates()
    sizes = notes["split"].value_counts()
    counts = pd.crosstab(assignments["code"], assignments["split"]).reindex(
        index=codes, columns=splits, fill_value=0)
    share = counts / sizes.reindex(splits).to_numpy()[None, :]
    fig, ax = _figure(size=(max(8.0, 0.45 * len(codes) + 2), 4.5))
    if codes and splits:
        width = 0.8 / len(splits)
        x = np.arange(len(codes))
        for i, split in enumerate(splits):
            ax.bar(x + (i - (len(splits) - 1) / 2) * width, share[split].to_numpy(), width,
                   color=SPLIT_COLORS.get(split, None), label=f"{split} (n={sizes.get(split, 0):,})")
        ax.set_xticks(x, codes, rotation=60, ha="right", fontsize=8)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no codes given")
    ax.set_title("Code frequency per split (share of the split's admissions)")
    ax.set_xlabel("ICD code")
    ax.set_ylabel("Admissions with the code")
    return fig


def unseen_in_train(notes: pd.DataFrame) -> pd.DataFrame:
    """For val and test: codes that never occur in train, and the assignments they affect.

    Returns one row per evaluation split with n_admissions, n_codes (distinct), n_unseen_codes,
    n_assignments, n_unseen_assignments, share_unseen_assignments and
    n_admissions_affected (admissions with at least one unseen code).
    """
    train_codes = set(_assignments(notes[notes["split"] == "train"])["code"])
    rows = []
    for split in [s for s in _splits(notes) if s != "train"]:
        part = notes[notes["split"] == split]
        assignments = _assignments(part)
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


def label_space_dropped(outside: pd.DataFrame, split: str, n_labels: int) -> Shown:
    """`analysis.outside_label_space`'s table (`outside`, shown by `table`), under the sentence it says for `split`
    (the split scored): how many code assignments the `n_labels`-code label space leaves out of
    the targets, so that recall is over the rest, and how many admissions keep no code at all."""
    row = outside.loc[split]
    out, total = int(row["n_positives_outside"]), int(row["n_positives"])
    if out == 0:
        text = f"In {split}, every code assignment is in the {n_labels:,}-code label space: recall is over all of them."
    else:
        text = (f"In {split}, {out:,} of the {total:,} code assignments ({100 * out / total:.1f}%) fall outside the "
                f"{n_labels:,}-code label space ({int(row['n_codes_outside']):,} of the split's "
                f"{int(row['n_codes']):,} distinct codes): they are not in the targets, so recall, F1 and the ranking "
                f"metrics are over the other {total - out:,}.")
    empty, n_admissions = int(row["n_admissions_without_label"]), int(row["n_admissions"])
    if empty:
        text += (f" {empty:,} of the {n_admissions:,} admissions {'has' if empty == 1 else 'have'} no code left in the "
                 f"label space (P@k, R-precision and MAP leave {'it' if empty == 1 else 'them'} out).")
    return Shown(text, html=f"<p>{_esc(text)}</p>" + table(outside).to_html())


# --------------------------------------------------------------------------- training

HISTORY_METRICS = ("map", "auroc_micro", "f1_micro")


def _loss_curve(ax, steps: pd.Series, loss: pd.Series, color: str, label: str, unit: str) -> None:
    """A loss against its step, with a moving mean over 1/25 of the points when there are many."""
    ax.plot(steps, loss, color=color, lw=1, alpha=0.5 if len(loss) > 50 else 1, label=label)
    if len(loss) > 50:
        window = max(5, len(loss) // 25)
        ax.plot(steps, loss.rolling(window, min_periods=1).mean(), color=color, lw=2,
                label=f"moving mean ({window} {unit})")
    ax.legend(fontsize=8)


def history(history: pd.DataFrame) -> Figure:
    """Two panels: training loss vs step; validation map / auroc_micro / f1_micro vs step."""
    fig, (left, right) = _figure(1, 2, size=(10.0, 4.5))
    if "train_loss" in history and history["train_loss"].notna().any():
        loss = history[["step", "train_loss"]].dropna()
        _loss_curve(left, loss["step"], loss["train_loss"], "tab:blue", "train loss", "logs")
    else:
        _empty(left, "no training loss logged")
    left.set_title("Training loss")
    left.set_xlabel("Optimizer step")
    left.set_ylabel("BCE loss")

    plotted = 0
    for metric in HISTORY_METRICS:
        column = f"val_{metric}"
        if column in history and history[column].notna().any():
            points = history[["step", column]].dropna()
            right.plot(points["step"], points[column], marker="o", ms=3, label=metric)
            plotted += 1
    if plotted:
        right.legend(fontsize=8)
        right.set_ylim(bottom=min(0.0, right.get_ylim()[0]))
    else:
        _empty(right, "no validation metrics logged")
    right.set_title("Validation metrics")
    right.set_xlabel("Optimizer step")
    right.set_ylabel("Metric value")
    fig.suptitle("Training history")
    return fig


NO_MNTP = "No MNTP stage in this run (`mntp_steps: 0`): fine-tuning started from the backbone as loaded."


def mntp_history(history: pd.DataFrame | None, arms: dict[str, pd.DataFrame] | None = None,
                 metric: str = "map") -> Figure | Shown:
    """Left: the MNTP loss (masked-token cross-entropy) against its step. Right, when the run
    fine-tuned with and without the stage (`mntp_compare`; `arms` from `train.mntp_arms`):
    validation `metric` of both against the fine-tuning step. `Shown` (one line) without MNTP."""
    if history is None or history.empty:
        return Shown(NO_MNTP, markdown=NO_MNTP)
    fig, (left, right) = _figure(1, 2, size=(10.0, 4.5))
    _loss_curve(left, history["step"], history["loss"], "tab:purple", "MNTP loss", "steps")
    left.set_title("MNTP on the train notes")
    left.set_xlabel("MNTP step")
    left.set_ylabel("cross-entropy (masked tokens)")
    column = f"val_{metric}"
    arms = [(name, h) for name, h in (arms or {}).items() if h is not None and column in h and h[column].notna().any()]
    for name, h in arms:
        right.plot(h["step"], h[column], marker="o", ms=3, label=name)
    if len(arms) == 2:
        right.legend(fontsize=8)
        right.set_title(f"Fine-tuning: validation {metric}")
        right.set_xlabel("Optimizer step")
        right.set_ylabel(metric)
    else:
        _empty(right, "no second fine-tuning to compare (mntp_compare: none)")
    fig.suptitle("MNTP stage")
    return fig


# --------------------------------------------------------------------------- evaluation

def _subsample_curve(x: np.ndarray, y: np.ndarray, max_points: int = 2000):
    """At most ~max_points points of a monotone curve, keeping both ends."""
    if x.size <= max_points:
        return x, y
    index = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
    return x[index], y[index]


def pr_curve(curves: dict) -> Figure:
    """Micro-averaged precision-recall curves of several systems on one axis.

    Args:
        curves: name -> (y_true, y_score), each (n_docs, n_labels); cells are pooled
            (flattened). The legend gives each curve's average precision (= micro AUPRC).
    """
    from sklearn.metrics import precision_recall_curve

    fig, ax = _figure(size=(7.0, 5.0))
    for name, (y_true, y_score) in curves.items():
        y, s = _flat(y_true, y_score)
        if not y.any():
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        ap = float(-np.sum(np.diff(recall) * precision[:-1]))
        r, p = _subsample_curve(recall, precision)
        ax.plot(r, p, lw=1.8, label=f"{name} (AP {ap:.3f})")
    if ax.lines:
        ax.legend(fontsize=8, loc="upper right")
    else:
        _empty(ax, "no positive labels")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Micro-averaged precision-recall")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.grid(alpha=0.3)
    return fig


def per_code_vs_frequency(per_code: pd.DataFrame) -> Figure:
    """Per-code AUPRC (left) and F1 (right) vs training frequency (log x), with binned means.

    `per_code` as from ``analysis.per_code`` (n_train, support, auprc, f1). Both panels show the same
    codes: those with a training admission and a positive in the evaluated split (`support`), where
    AUPRC is defined (F1 is also defined for a code predicted without a positive: 0, left out here
    as from the mean per-label macro-F1).
    """
    fig, axes = _figure(1, 2, size=(10.0, 4.5), sharex=True)
    shown = per_code[(per_code["n_train"] > 0) & (per_code["support"] > 0)]
    for ax, metric, title in ((axes[0], "auprc", "AUPRC"), (axes[1], "f1", "F1")):
        data = shown[shown[metric].notna()]
        if len(data):
            ax.scatter(data["n_train"], data[metric], s=8, alpha=0.35, color="tab:blue",
                       edgecolors="none", label="one code")
            edges = np.unique(np.geomspace(1, max(float(data["n_train"].max()), 2.0) * 1.0001, 13))
            which = np.clip(np.digitize(data["n_train"], edges) - 1, 0, edges.size - 2)
            means = data.groupby(which)[metric].mean()
            at = means.index.to_numpy()
            centres = np.sqrt(edges[at] * edges[at + 1])
            ax.plot(centres, means.to_numpy(), color="tab:red", marker="o", ms=4, lw=1.8,
                    label="mean per frequency bin")
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        else:
            _empty(ax, f"no codes with a defined {title}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Per-code {title} ({len(data):,} codes with a positive)")
        ax.set_xlabel("Training admissions with the code (log scale)")
        ax.set_ylabel(title)
    handles, names = max((ax.get_legend_handles_labels() for ax in axes), key=lambda h: len(h[0]))
    if handles:  # one legend for both panels, below them: dots fill every corner of the axes
        fig.legend(handles, names, fontsize=8, loc="outside lower center", ncol=2)
    fig.suptitle("Per-code performance vs training frequency")
    return fig


def code_differences(tables: dict[tuple[str, str], pd.DataFrame], n_named: int = 5) -> Figure:
    """Per code, model A's F1 (left) and AUPRC (right) against model B's, one row of panels per
    pair of runs (`tables`: (A, B) → ``compare.code_differences``). Codes without a positive in
    the split are left out; a dot's area grows with the code's support; the `n_named` codes whose
    metric differs most are named."""
    fig, axes = _figure(len(tables), 2, size=(10.0, 4.6 * len(tables)))
    axes = np.asarray(axes).reshape(len(tables), 2)
    for row, ((a, b), table) in enumerate(tables.items()):
        for ax, metric, title in ((axes[row][0], "f1", "F1"), (axes[row][1], "auprc", "AUPRC")):
            data = table[(table["support"] > 0) & table[f"{metric}_diff"].notna()]
            ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="equal")
            if len(data):
                size = 8 + 40 * np.sqrt(data["support"] / max(float(data["support"].max()), 1.0))
                ax.scatter(data[f"{metric}_b"], data[f"{metric}_a"], s=size, alpha=0.45, color="tab:blue",
                           edgecolors="none", label="one code (area: support)")
                named = data.reindex(data[f"{metric}_diff"].abs().sort_values(ascending=False).index[:n_named])
                placed: list = []  # names of nearby codes are stacked, not printed over each other
                for _, r in named.iterrows():
                    at = (r[f"{metric}_b"], r[f"{metric}_a"])
                    near = sum(abs(at[0] - x) < 0.15 and abs(at[1] - y) < 0.06 for x, y in placed)
                    placed.append(at)
                    down = -1 if at[1] > 0.9 else 1  # near the top: below the dot, inside the axes
                    ax.annotate(str(r["code"]), at, fontsize=7, textcoords="offset points",
                                xytext=(-4 if at[0] > 0.9 else 4, down * (3 + 9 * near) - (8 if down < 0 else 0)),
                                ha="right" if at[0] > 0.9 else "left")
                ax.legend(fontsize=8, loc="lower right")
            else:
                _empty(ax, f"no code with a positive and a defined {title}")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_aspect("equal")
            above = int((data[f"{metric}_diff"] > 0).sum())
            below = int((data[f"{metric}_diff"] < 0).sum())
            ax.set_title(f"Per-code {title}: {above:,} codes higher for {a}, {below:,} for {b}", fontsize=10)
            ax.set_xlabel(f"{title} of {b}")
            ax.set_ylabel(f"{title} of {a}")
            ax.grid(alpha=0.3)
    fig.suptitle("Per-code differences (above the diagonal: the run on the y axis does better on the code)")
    return fig


DEFAULT_BUCKETS = (0, 10, 50, 100, 500)  # right edges: (0], 1-10, 11-50, 51-100, 101-500, >500


def ranked_codes_note(per_code: pd.DataFrame, min_support: int, split: str) -> Shown:
    """The line above 05's worst and best codes: how many codes they are ranked among (those with at
    least `min_support` positives in `split`, `analysis.worst_codes`), of how many with a positive."""
    support = per_code["support"]
    n_ranked, n_positive = int((support >= min_support).sum()), int((support > 0).sum())
    if n_ranked < 2:
        most = int(support.max()) if len(support) else 0
        text = (f"No ranking: {n_ranked} of the {n_positive:,} codes with a positive in {split} "
                f"{'has' if n_ranked == 1 else 'have'} {min_support} or more (the most: {most}); "
                f"with fewer, one admission moves a code's F1 too far for a ranking to mean anything.")
    else:
        text = (f"Ranked among the {n_ranked:,} codes with at least {min_support} positives in {split} (of "
                f"{n_positive:,} with a positive), each table at most half of them: with fewer positives, one "
                f"admission moves a code's F1 too far for its rank to mean anything.")
    return Shown(text, markdown=text)


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


def f1_by_frequency_bucket(per_code: pd.DataFrame, edges=None) -> Figure:
    """Bar chart of mean per-code F1 per training-frequency bucket, code counts annotated."""
    table = frequency_buckets(per_code, edges)
    table = table[table["n_codes"] > 0]
    fig, ax = _figure()
    if len(table):
        x = np.arange(len(table))
        bars = ax.bar(x, table["mean_f1"], color="tab:blue")
        for bar, count in zip(bars, table["n_codes"]):
            ax.annotate(f"n={count:,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, table["bucket"])
        ax.set_ylim(0, max(0.05, float(table["mean_f1"].max()) * 1.15))
    else:
        _empty(ax, "no codes with a defined F1")
    ax.set_title("Mean per-code F1 by training frequency")
    ax.set_xlabel("Training admissions with the code")
    ax.set_ylabel("Mean F1 over codes")
    return fig


def threshold_curve(y_true, y_score, tuned: float) -> Figure:
    """Micro F1, precision and recall vs the decision threshold, tuned threshold marked.

    Lines: F1, precision, recall, the tuned threshold and 0.5 (five in all).
    """
    y, s = _flat(y_true, y_score)
    positives = np.sort(s[y])
    negatives = np.sort(s[~y])
    grid = np.union1d(np.linspace(0.0, 1.0, 401), [tuned, 0.5])
    tp = positives.size - np.searchsorted(positives, grid, side="left")
    fp = negatives.size - np.searchsorted(negatives, grid, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        recall = tp / positives.size if positives.size else np.full(grid.shape, np.nan)
        f1 = 2 * tp / np.maximum(tp + fp + positives.size, 1)
    at = int(np.searchsorted(grid, tuned))
    half = int(np.searchsorted(grid, 0.5))
    fig, ax = _figure()
    ax.plot(grid, f1, color="tab:blue", lw=2, label="micro F1")
    ax.plot(grid, precision, color="tab:green", lw=1, ls="--", label="micro precision")
    ax.plot(grid, recall, color="tab:orange", lw=1, ls="--", label="micro recall")
    ax.axvline(tuned, color="black", lw=1.2, label=f"tuned {tuned:.3f} (F1 {f1[at]:.3f})")
    ax.axvline(0.5, color="0.5", lw=1, ls=":", label=f"0.5 (F1 {f1[half]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Micro F1 vs decision threshold")
    ax.set_xlabel("Threshold (a code is predicted when its score ≥ threshold)")
    ax.set_ylabel("Micro-averaged value")
    fig.legend(fontsize=8, loc="outside lower center", ncol=3)  # below the axes: the curves fill all of them
    ax.grid(alpha=0.3)
    return fig


def calibration(y_true, y_score, bins: int = 10, strategy: str = "uniform") -> Figure:
    """Reliability diagram over all (document, code) cells, with a count panel.

    Args:
        bins: number of score bins.
        strategy: "uniform" (equal-width bins on [0, 1]) or "quantile" (equal-count bins;
            with thousands of codes most cells score near 0, so quantile bins crowd there).

    Top panel: observed frequency vs mean predicted score per bin, and the diagonal
    (two lines). Bottom panel: cells per bin (log scale).
    """
    y, s = _flat(y_true, y_score)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, bins + 1))) if s.size else np.array([0.0, 1.0])
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(edges.size - 2, 0))
    n_bins = max(edges.size - 1, 1)
    count = np.bincount(which, minlength=n_bins)
    mean_score = np.bincount(which, weights=s, minlength=n_bins)
    observed = np.bincount(which, weights=y, minlength=n_bins)
    filled = count > 0
    mean_score = mean_score[filled] / count[filled]
    observed = observed[filled] / count[filled]

    fig, (top, bottom) = _figure(2, 1, size=(6.5, 6.5), sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
    top.plot(mean_score, observed, color="tab:blue", marker="o", lw=1.8, label="model")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Observed frequency of the code")
    top.set_title(f"Calibration ({y.size:,} document-code cells, {strategy} bins)")
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    centres = (edges[:-1] + edges[1:]) / 2 if edges.size > 1 else np.array([0.5])
    widths = np.diff(edges) if edges.size > 1 else np.array([1.0])
    bottom.bar(centres[filled], count[filled], width=widths[filled] * 0.9, color="tab:blue")
    bottom.set_yscale("log")
    bottom.set_xlabel("Mean predicted score in the bin")
    bottom.set_ylabel("Cells (log)")
    return fig


# --------------------------------------------------------------------------- tables

def metrics_table(results: dict[str, dict], reference: bool = True, *, benchmark: str = "none",
                  synthetic: bool = False, names: bool = True) -> pd.DataFrame:
    """Main metrics (fractions, 0–1) of several systems, with the published ones of the run's benchmark.

    Args:
        results: system name (e.g. "icdlib test @tuned", "baseline test @0.5") -> a
            ``metrics.compute`` dict (fractions); missing metrics become NaN.
        reference: append the rows of `reference_rows(benchmark, synthetic)` below: only the
            published results measured on the same benchmark (none for ``none``, the twin, or a
            benchmark without recorded numbers), labelled with the paper and its split; their
            percentages (`REFERENCE_RESULTS`) divided by 100.
        benchmark: the run's ``benchmark`` preset.
        synthetic: the run is on the synthetic twin (never compared with published numbers).
        names: columns named ``TABLE_NAMES`` (which macro-F1 is which); else the metric keys.

    Returns:
        DataFrame indexed by system, columns ``TABLE_METRICS`` in that order.
    """
    rows = {name: {m: float(r[m]) if r.get(m) is not None else math.nan for m in TABLE_METRICS}
            for name, r in results.items()}
    if reference:
        for name, r in reference_rows(benchmark, synthetic).items():
            rows[name] = {m: float(r.get(m, math.nan)) / 100.0 for m in TABLE_METRICS}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=TABLE_METRICS, dtype=float)
    table.index.name = "system"
    if names:
        table = table.rename(columns=TABLE_NAMES)
    return table


def macro_f1_gap(m: dict, split: str) -> Shown:
    """How far apart the two macro-F1s are on this run (`m`: a split's metrics at the tuned
    threshold): the ratio measured here, not a figure from elsewhere. Edin et al. (2023) found the
    corrected (CAML) one about twice the per-label mean on MIMIC-III full; how far depends on the
    label space and the model."""
    mean, caml = m.get("f1_macro"), m.get("f1_macro_caml")
    if mean is None or caml is None or not math.isfinite(mean) or not math.isfinite(caml):
        text = f"On {split}, one of the two macro-F1s is undefined (no label with a positive, or no prediction)."
    elif mean == 0:
        text = f"On {split}: F1 macro (CAML) {caml:.3f}, F1 macro (mean per label) 0.000."
    else:
        text = (f"On {split} at the tuned threshold: F1 macro (CAML) {caml:.3f} against F1 macro (mean per "
                f"label) {mean:.3f}, a ratio of {caml / mean:.2f}.")
    return Shown(text, markdown=text)


ONE_SEED = ("One seed: no spread. Train several (`python -m icdlib run ... --seeds 0 1 2`, or `-p seeds=[0,1,2]`) "
            "to see how much the metrics move with the seed alone.")
# Under the table only when there is one (a sentence in the notebook would explain a table one seed never shows).
SEEDS_HOW = ("How to read it: one row per training seed, then the mean ± the sample standard deviation across the "
             "seeds (as Edin et al. report theirs). The seed changes only what fine-tuning draws at random (the "
             "head's and LoRA's initial weights, the order of the training notes, dropout): a difference between two "
             "systems smaller than about twice this sd may be the seed's, not the method's.")


def seed_spread_table(results: dict, key: str = "test_tuned") -> pd.DataFrame | Shown:
    """The metrics of every training seed (metrics.json's `seeds`) under `key` (`test_tuned`,
    `test_tuned_edin`, ...), as text with 3 decimals (fractions), one row per seed (the first is the run's
    model), then their `mean ± sd` (`seed_spread`: sample sd, ddof=1, as Edin et al. report; `(n=k)`
    where a metric is defined for k seeds only). A Shown saying there is no spread with fewer than
    two seeds."""
    seeds = results.get("seeds") or {}
    if len(seeds) < 2:
        return Shown(ONE_SEED, markdown=ONE_SEED)

    def cell(value) -> str:
        value = _num(value)
        return "–" if value is None else f"{value:.3f}"

    def spread(s: dict | None) -> str:
        if not s or s.get("mean") is None:
            return "–"
        sd = "–" if s.get("sd") is None else f"{s['sd']:.3f}"
        return f"{s['mean']:.3f} ± {sd}" + (f" (n={s['n']})" if s["n"] < len(seeds) else "")

    rows = {f"seed {seed}" + (" (the model)" if i == 0 else ""): [cell(r[key].get(m)) for m in TABLE_METRICS]
            for i, (seed, r) in enumerate(seeds.items())}
    rows[f"mean ± sd ({len(seeds)} seeds)"] = [spread(results["seed_spread"][key].get(m)) for m in TABLE_METRICS]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[TABLE_NAMES[m] for m in TABLE_METRICS])
    table.index.name = "seed"
    table.attrs["missing"] = "the metric is not defined for this seed (in metrics.json, or on this label set)"
    table.attrs["note"] = SEEDS_HOW
    return table


def metrics_caption(m: dict, split: str, benchmark: str = "none", synthetic: bool = False,
                    dataset: str = "mimic3") -> str:
    """The line above the metrics table: the split scored, `n_docs`, `n_labels` with the label set
    they were ranked over (`label_set`, when `m` records it), `n_labels_scored` (labels with a
    positive and a negative there, those the macro AUROC/AUPRC average over), the benchmark and
    which reference rows are shown (`reference_note`)."""
    def count(key):
        value = _num(m.get(key))
        return "n/a" if value is None else f"{int(value):,}"

    label_set = f" ({m['label_set']})" if m.get("label_set") else ""
    return (f"Split {split} · n_docs {count('n_docs')} · n_labels {count('n_labels')}{label_set} · n_labels_scored "
            f"{count('n_labels_scored')} (labels with a positive and a negative in {split}) · benchmark "
            f"{benchmark}{' (synthetic twin)' if synthetic else ''}. {reference_note(benchmark, synthetic, dataset)}")


def metrics_dashes(results: dict[str, dict], benchmark: str = "none", synthetic: bool = False) -> list[str]:
    """What a dash means in the rows `metrics_table` shows, one clause per kind of row that has one:
    a fixed-threshold row (`evaluate.at_threshold`: only the metrics the threshold changes) and the
    published rows (a metric the paper does not report)."""
    from icdlib.measure.metrics import THRESHOLD_KEYS

    ranking = [k for k in TABLE_METRICS if k not in THRESHOLD_KEYS]
    out = []
    fixed = [name for name, r in results.items() if r and all(k not in r for k in ranking)]
    if fixed:
        out.append(f"in a fixed-threshold row (@{fixed[0].split('@')[-1]}), a ranking metric, which the "
                   "threshold does not change (the row above gives it)")
    if reference_rows(benchmark, synthetic):
        out.append("a published paper does not report the metric")
    return out


def metrics_styled(results: dict[str, dict], m: dict, split: str, benchmark: str = "none", synthetic: bool = False,
                   dataset: str = "mimic3"):
    """`metrics_table` for a notebook (`table`: 3 decimals, "–" where a system has no value, with its
    footnote), `metrics_caption(m, split, ...)` as its caption (`m`: the metrics of the split scored)."""
    return table(metrics_table(results, benchmark=benchmark, synthetic=synthetic),
                 caption=metrics_caption(m, split, benchmark, synthetic, dataset),
                 missing="; ".join(metrics_dashes(results, benchmark, synthetic)))


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


def _esc(value) -> str:
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


def _shown_value(key: str, value, cfg) -> str:
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
    head = "".join(f"<th style='text-align:left'>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'><code>{_esc(c)}</code></td>" if i else
                                    f"<td style='text-align:left'>{_esc(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def parameters(cfg) -> Shown:
    """The run's parameters as the difference from its backbone's defaults, all of them one click
    away (an HTML `<details>`). Paths are shown as `<run>/…`, `<mimic_dir>`, …, never absolute."""
    defaults, source = backbone_defaults(cfg)
    values = cfg.to_dict()
    changed = [k for k, v in values.items() if k in defaults and v != defaults[k]]
    changed += [k for k in values if k not in defaults]
    rows = [[k, _shown_value(k, values[k], cfg), _shown_value(k, defaults.get(k, ""), cfg)] for k in changed]
    everything = [[k, _shown_value(k, v, cfg)] for k, v in values.items()]
    what = (f"{len(changed)} of {len(values)} parameters differ from {source}" if changed
            else f"all {len(values)} parameters are those of {source}")
    html = (f"<p><b>Parameters</b>: {_esc(what)}.</p>"
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
    html = "<table>" + "".join(f"<tr><th style='text-align:left'>{_esc(k)}</th>"
                               f"<td style='text-align:left'>{_esc(v)}</td></tr>" for k, v in rows) + "</table>"
    return Shown("\n".join(f"{k}: {v}" for k, v in rows), html=html)


def header(cfg, info: dict) -> Shown:
    """The top of every report: what run this is, what made it (`provenance`), and its parameters."""
    what = (f"Run <code>{_esc(cfg.run_name)}</code> · backbone <code>{_esc(cfg.backbone)}</code> · "
            + (data_name(cfg.dataset, True) if cfg.synthetic else
               f"{data_name(cfg.dataset)} from <code>&lt;mimic_dir&gt;</code>")
            + (" · share-safe (no note text)" if cfg.share_safe_on else ""))
    prov, params = provenance(info), parameters(cfg)
    html = f"<div class='icdlib-header'><p>{what}</p>{prov.html}{params.html}</div>"
    plain = f"Run {cfg.run_name} · backbone {cfg.backbone}\n{prov.text}\n{params.text}"
    return Shown(plain, html=html)


# --------------------------------------------------------------------------- what the run shows

# threshold-free metrics, then micro-F1 at each system's tuned threshold: (key, name)
SUMMARY_METRICS = (("auroc_micro", "micro-AUROC"), ("auroc_macro", "macro-AUROC"), ("auprc_micro", "micro-AUPRC"),
                   ("map", "MAP"), ("p_at_8", "P@8"), ("f1_micro", "micro-F1"))
# The index's headline table: SUMMARY_METRICS in the columns' order and with the names of 04's table.
INDEX_METRICS = tuple((k, TABLE_NAMES[k]) for k in TABLE_METRICS if k in dict(SUMMARY_METRICS))


def _num(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _f(value, digits: int = 3) -> str:
    value = _num(value)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown_html(markdown: str) -> str:
    """The little Markdown `summary` writes (paragraphs, `###` headings, **bold**, `code`) as HTML."""
    blocks = []
    for block in markdown.strip().split("\n\n"):
        text = _esc(block.strip())
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
        if text.startswith("### "):
            blocks.append(f"<h3>{text[4:]}</h3>")
        else:
            blocks.append(f"<p>{text}</p>")
    return "\n".join(blocks)


def _data_sentences(notes: pd.DataFrame, labels: pd.DataFrame | None) -> list[str]:
    sizes = notes["split"].value_counts()
    n_codes = _n_codes(notes)
    parts = [f"{len(notes):,} admissions (" + ", ".join(f"{s} {int(sizes.get(s, 0)):,}" for s in _splits(notes)) + ")"]
    text = (f"The run's data: {parts[0]}, with a median of {np.median(n_codes):g} codes per admission "
            f"(mean {n_codes.mean():.1f}) and notes of a median {np.median(_n_words(notes)):,.0f} words.")
    sentences = [text]
    if labels is not None and len(labels):
        n_train = labels["n_train"].to_numpy()
        sentences.append(f"The label space holds {len(labels):,} codes; {np.mean(n_train <= 10):.0%} of them occur in "
                         f"at most 10 training admissions, so per-code (macro) metrics rest on few examples.")
        unseen = unseen_in_train(notes)
        if len(unseen):
            split = "test" if "test" in unseen.index else unseen.index[0]
            row = unseen.loc[split]
            sentences.append(f"In {split}, {_f(row['share_unseen_assignments'] * 100, 1)}% of code assignments are "
                             f"codes never seen in training ({int(row['n_unseen_codes']):,} distinct codes): no "
                             f"model trained on this split can predict them.")
    return sentences


def _history_sentences(history: pd.DataFrame, metric: str) -> list[str]:
    column = f"val_{metric}"
    if history is None or not len(history) or column not in history:
        return ["No evaluation was logged (`history.csv` is empty)."]
    values = history[column].astype(float)
    last = history.iloc[-1]
    out = [f"Training ran {int(last['step']):,} optimizer steps ({_f(last.get('epoch'), 1)} epochs) with "
           f"{len(history)} evaluation{'s' if len(history) != 1 else ''} on the validation split, at "
           f"{_num(history['tokens_per_s'].iloc[-1]) or 0:,.0f} training tokens/s."]
    if values.notna().any():
        best = history.loc[values.idxmax()]
        where = ("at the last evaluation: it was still improving, so more steps may help"
                 if int(best["step"]) == int(last["step"]) and len(history) > 1 else
                 f"at step {int(best['step']):,}; later evaluations did not improve on it" if len(history) > 1 else
                 "at the only evaluation")
        out.append(f"The best validation {metric}, {_f(best[column])}, came {where}; `best/` holds that checkpoint "
                   f"and step 04 scores it.")
    loss = history["train_loss"].astype(float)
    if len(loss) > 1:
        trend = "fell" if loss.iloc[-1] < loss.iloc[0] else "did not fall"
        out.append(f"The training loss {trend} from {_f(loss.iloc[0])} to {_f(loss.iloc[-1])}.")
    return out


def _metric_sentences(metrics: dict, synthetic: bool, dataset: str = "mimic3") -> list[str]:
    split, x = headline_keys(metrics)
    m, model = metrics.get(split + x) or {}, _model(metrics, split, x)
    threshold = _num(metrics.get("threshold"))
    label_set = ", Edin et al.'s label set" if x == "_edin" else ""
    out = [f"On the {split} split ({int(m.get('n_docs', 0)):,} admissions, {int(m.get('n_labels', 0)):,} labels"
           f"{label_set}) the model reaches micro-AUROC {_with_ci(model, 'auroc_micro')} (macro "
           f"{_with_ci(model, 'auroc_macro')}), micro-AUPRC {_with_ci(model, 'auprc_micro')}, MAP "
           f"{_with_ci(model, 'map')} and P@8 {_with_ci(model, 'p_at_8')}; at the threshold tuned on validation "
           f"({_f(threshold)}) micro-F1 is {_with_ci(model, 'f1_micro')}.", _interval_note(metrics)]
    fixed = _num(m.get("f1_micro"))
    if fixed is not None and _num(model.get("f1_micro")) is not None and fixed < 0.5 * _num(model["f1_micro"]):
        out.append(f"At the fixed threshold {_f(m.get('threshold'), 2)} micro-F1 is only {_f(fixed)}: the scores "
                   f"are not calibrated to 0.5, so read the tuned rows.")
    paired = metrics.get("paired") or {}
    for key in _reference_keys(metrics):
        other = (metrics.get(key) or {}).get(f"{split}_tuned{x}")
        versus = ", ".join(f"{name} {_with_ci(other, k)}" for k, name in SUMMARY_METRICS
                           if _num(other.get(k)) is not None)
        out.append(f"{SYSTEM_DESCRIPTIONS[key]} reaches {versus}: {_verdict(paired.get(f'model - {key}'))}.")
    arm = next((key for key in MNTP_KEYS if key in _reference_keys(metrics)), None)
    if arm:
        out.append(_mntp_sentence(metrics, arm))
    if synthetic:
        out.append(f"This run is on the {data_name(dataset, True)}: its numbers show that the pipeline works end "
                   f"to end, not how well the model codes {data_name(dataset).split(' ')[0]}, and are not comparable "
                   "to published results.")
    return out


def _per_code_sentences(per_code: pd.DataFrame) -> list[str]:
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
        text += (f" Mean per-code F1 is {_f(lo['mean_f1'])} for codes with {lo['bucket']} training admissions and "
                 f"{_f(hi['mean_f1'])} for those with {hi['bucket']}.")
    return [text]


def _level_sentences(levels: pd.DataFrame | None, near: pd.DataFrame | None = None) -> list[str]:
    """What category-level scoring gives, and (`near`: `analysis.near_misses`) what the model predicted
    in the category of each true code it missed. The rise of micro-F1 from codes to categories is
    not read as near misses: merging codes raises it by itself."""
    out = []
    category = next((name for name in ("3-digit category", "3-character category")
                     if levels is not None and name in levels.index), None)
    if category is not None and "full code" in levels.index:
        out.append(f"Counting a prediction right when its {category} is right moves micro-F1 from "
                   f"{_f(levels.loc['full code', 'f1'])} to {_f(levels.loc[category, 'f1'])}.")
        coarser = [name for name in ("ICD-10 block", "ICD-10 chapter") if name in levels.index]
        if coarser:
            out.append("At " + " and ".join(f"{name} level it is {_f(levels.loc[name, 'f1'])}" for name in coarser)
                       + ".")
    if near is not None and int(near["n"].sum()):
        near_share, through, none = (f"{100 * v:.0f}%" for v in near["share"])  # analysis.NEAR_MISS_OUTCOMES
        out.append(f"Of the {int(near['n'].sum()):,} true codes the model missed at the tuned threshold, "
                   f"{near_share} are near misses (a wrong code of the same {category or 'category'} predicted for "
                   f"that admission), {through} had their category predicted only through other true codes, and "
                   f"{none} had no code of their category predicted.")
    return out


def summary(*, metrics: dict | None = None, history: pd.DataFrame | None = None, notes: pd.DataFrame | None = None,
            labels: pd.DataFrame | None = None, per_code: pd.DataFrame | None = None, metric: str = "map",
            synthetic: bool = True, data: dict | None = None, levels: pd.DataFrame | None = None,
            dataset: str = "mimic3", near_misses: pd.DataFrame | None = None) -> Shown:
    """"What this run shows": Markdown sentences generated from the run's numbers.

    Each argument given adds its paragraph: `notes`/`labels` (step 01's tables) the data and the
    label space; `history` (history.csv) the training, best validation `metric` and loss;
    `metrics` (metrics.json) the headline split with 95% intervals beside the frequency prior, the
    TF-IDF low-rank baseline and the MNTP arm, saying better or worse only where the interval of the
    difference excludes 0, and what MNTP did; `per_code` (per_code.parquet) codes never right and the
    frequency gradient; `levels` (`analysis.category_level`) micro-F1 at the category (and ICD-10 block,
    chapter) level; `near_misses` (`analysis.near_misses`) the share of missed true codes that are near misses;
    `data` ({file: hash}) the fingerprints of the files written; `synthetic` and `dataset` name what was
    coded (`data_name`). Numbers are shown with 3 decimals."""
    paragraphs = []
    if notes is not None:
        paragraphs.append(" ".join(_data_sentences(notes, labels)))
    if history is not None:
        paragraphs.append(" ".join(_history_sentences(history, metric)))
    if metrics:
        paragraphs.append(" ".join(_metric_sentences(metrics, synthetic, dataset)))
    if per_code is not None or levels is not None or near_misses is not None:
        sentences = (_per_code_sentences(per_code) if per_code is not None else []) + \
            _level_sentences(levels, near_misses)
        paragraphs += [" ".join(sentences)] if sentences else []
    if data:
        paragraphs.append("Content hashes (sha256, first 12 digits) of what this step wrote: "
                          + ", ".join(f"`{k}` {h or 'missing'}" for k, h in data.items()) + ".")
    markdown = "### What this run shows\n\n" + "\n\n".join(paragraphs or ["Nothing to summarise yet."])
    return Shown(markdown.replace("### ", "").replace("**", "").replace("`", ""), html=_markdown_html(markdown),
                 markdown=markdown)


# --------------------------------------------------------------------------- the systems, with uncertainty
# Step 04 scores the model beside reference systems (metrics.json keys) and bootstraps 95% intervals
# (`icdlib.evaluation.evaluate` documents the schema: `ci95` in each headline metrics dict, `paired` for the model
# minus each other system, `bootstrap` for how). Every place that reports them (04's tables and
# summary, the terminal's headline, reports/index.html) goes through the functions below, so one
# threshold convention holds everywhere: each system's micro-F1 at its own threshold tuned on val.

__all__ += ["SYSTEM_NAMES", "model_name", "interval_table", "paired_table", "paired_styled", "headline_lines",
            "systems_html"]

SYSTEM_DESCRIPTIONS = {
    "prior": "The frequency prior (every admission scored with each code's share of the train admissions)",
    "baseline": "The TF-IDF low-rank baseline (a low-rank linear model on TF-IDF word unigrams and hashed bigrams, "
                "trained with SGD on the same split and labels)",
    "without_mntp": "The other arm of the MNTP comparison (the same fine-tuning without the MNTP stage)",
    "with_mntp": "The other arm of the MNTP comparison (the same fine-tuning after the MNTP stage)",
}
REFERENCE_ORDER = ("prior", "baseline", *MNTP_KEYS)
HEADLINE_METRICS = (("auroc_micro", "micro-AUROC"), ("map", "MAP"), ("f1_micro", "micro-F1"))
MNTP_METRICS = HEADLINE_METRICS
NO_INTERVALS = "there are no intervals (bootstrap=0, or a metrics.json from an older icdlib)"


def headline_keys(metrics: dict) -> tuple[str, str]:
    """The reported split and the key suffix of the label set its intervals were computed on
    (metrics.json's `bootstrap` record; "" for a metrics.json without one)."""
    split = "test" if metrics.get("test") else "val"
    return split, (metrics.get("bootstrap") or {}).get("suffix", "")


def _model(metrics: dict, split: str, x: str) -> dict:
    """The model's metrics at its tuned threshold (ranking metrics do not depend on it)."""
    return metrics.get(f"{split}_tuned{x}") or metrics.get(split + x) or {}


def _reference_keys(metrics: dict) -> list[str]:
    split, x = headline_keys(metrics)
    return [k for k in REFERENCE_ORDER if (metrics.get(k) or {}).get(f"{split}_tuned{x}")]


def _ci(m: dict, key: str) -> tuple[float, float] | None:
    lo, hi = ((m or {}).get("ci95") or {}).get(key) or (None, None)
    return None if _num(lo) is None or _num(hi) is None else (float(lo), float(hi))


def _with_ci(m: dict, key: str, digits: int = 3, scale: float = 1.0) -> str:
    """`0.820 [0.801, 0.838]`: the value and, when 04 bootstrapped it, its 95% interval."""
    value, ci = _num((m or {}).get(key)), _ci(m, key)
    text = "n/a" if value is None else f"{scale * value:.{digits}f}"
    return text if ci is None or value is None else f"{text} [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"


def _signed(d: dict, digits: int = 3, scale: float = 1.0) -> str:
    """`+0.031 [0.012, 0.050]`: a paired difference and its 95% interval."""
    diff, lo, hi = (_num(d.get(k)) for k in ("diff", "lo", "hi"))
    text = "n/a" if diff is None else f"{scale * diff:+.{digits}f}"
    return text if lo is None or hi is None else f"{text} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def _sign(d: dict | None) -> int:
    """+1 when the interval of a difference lies above 0, -1 below, 0 when it holds 0 or is undefined."""
    if not d or _num(d.get("lo")) is None or _num(d.get("hi")) is None:
        return 0
    from icdlib.measure.uncertainty import excludes_zero

    return excludes_zero(d)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _interval_note(metrics: dict) -> str:
    record = metrics.get("bootstrap") or {}
    if not metrics.get("paired"):
        return f"{_capital(NO_INTERVALS)}: no difference below is called a win or a loss."
    split, _ = headline_keys(metrics)
    return (f"In brackets: 95% bootstrap intervals ({int(record.get('resamples', 0)):,} resamples of the {split} "
            f"admissions); micro-F1 is at each system's own threshold tuned on validation throughout.")


def _verdict(diffs: dict | None) -> str:
    """The model against another system on SUMMARY_METRICS, from their paired bootstrap (`model - x`):
    a metric counts as better or worse only where the 95% interval of the difference excludes 0."""
    if not diffs:
        return f"no verdict can be made, as {NO_INTERVALS} and a difference without one cannot be told from noise"
    signs = [(name, _sign(diffs.get(k))) for k, name in SUMMARY_METRICS if k in diffs]
    better = [name for name, s in signs if s > 0]
    worse = [name for name, s in signs if s < 0]
    unclear = [name for name, s in signs if s == 0]
    n = len(signs)
    if not better and not worse:
        return f"**no clear difference on any of the {n} metrics** (every 95% interval of the difference holds 0)"
    if len(better) == n or len(worse) == n:
        return (f"**the model is {'better' if better else 'worse'} on all {n} metrics** (every 95% interval of the "
                f"difference excludes 0)")
    clear = " and ".join(f"{what} on {_listing(names)}" for what, names in (("better", better), ("worse", worse))
                         if names)
    tail = f"; no clear difference on {_listing(unclear)}" if unclear else ""
    return f"**the model is {clear}** (the 95% interval of the difference excludes 0){tail}"


def _mntp_effect(d: dict, arm: str) -> dict:
    """`model - arm` turned into with-MNTP minus without-MNTP (the model is the arm's opposite)."""
    if arm == "without_mntp":
        return d
    flip = {k: (None if _num(d.get(k)) is None else 0.0 - float(d[k])) for k in ("diff", "lo", "hi")}
    return {"diff": flip["diff"], "lo": flip["hi"], "hi": flip["lo"]}


def _mntp_sentence(metrics: dict, arm: str) -> str:
    """One sentence on what the MNTP stage did: fine-tuning with it minus without it, with the paired
    intervals when 04 bootstrapped them, else the point differences and why no more can be said."""
    split, x = headline_keys(metrics)
    diffs = (metrics.get("paired") or {}).get(f"model - {arm}")
    if not diffs:
        model, other = _model(metrics, split, x), metrics[arm][f"{split}_tuned{x}"]
        diffs = {k: {"diff": _num(model.get(k)) - _num(other.get(k))} for k, _ in MNTP_METRICS
                 if _num(model.get(k)) is not None and _num(other.get(k)) is not None}
    effects = {k: _mntp_effect(diffs[k], arm) for k, _ in MNTP_METRICS if k in diffs}
    changes = _listing([f"{name} by {_signed(effects[k])}" for k, name in MNTP_METRICS if k in effects] or ["nothing"])
    if not metrics.get("paired"):
        return (f"What MNTP did: fine-tuning after the MNTP stage instead of without it changed {changes}; "
                f"{NO_INTERVALS}, so whether that is more than noise cannot be told.")
    clear = [name for k, name in MNTP_METRICS if k in effects and _sign(effects[k])]
    verdict = (f"the interval excludes 0 for {_listing(clear)}" if clear else
               "every interval holds 0, so no effect is shown")
    return (f"What MNTP did: fine-tuning after the MNTP stage instead of without it changed {changes} (95% "
            f"intervals; {verdict}; one training run per arm, so the intervals cover the test admissions, not "
            f"training seeds).")


def interval_table(results: dict[str, dict]) -> pd.DataFrame:
    """The rows of `results` (system → metrics dict, as for `metrics_table`) that carry 95% intervals,
    as text: `0.691 [0.661, 0.718]` (3 decimals), `–` for a metric without one."""
    rows = {name: {TABLE_NAMES.get(k, k): _with_ci(m, k) if _ci(m, k) else "–" for k in TABLE_METRICS}
            for name, m in results.items() if m.get("ci95")}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[TABLE_NAMES.get(k, k) for k in TABLE_METRICS])
    table.index.name = "system"
    table.attrs["missing"] = "the metric has no interval (undefined on some resample: a code set without a positive)"
    return table


def _paired_name(key: str, model: str) -> str:
    other = key.removeprefix("model - ")
    return f"{model} − {SYSTEM_NAMES.get(other, other)}"


def _paired_model(paired: dict) -> str:
    return model_name([key.removeprefix("model - ") for key in paired or {}])


def paired_table(paired: dict) -> pd.DataFrame:
    """metrics.json's `paired` as text: `+0.031 [+0.012, +0.050]` per metric (the model at its tuned
    threshold minus the other system at its own, 3 decimals), `–` where a metric has none."""
    model = _paired_model(paired)
    rows = {_paired_name(key, model): {TABLE_NAMES.get(k, k): _signed(d[k]) if k in d else "–"
                                for k in TABLE_METRICS} for key, d in (paired or {}).items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[TABLE_NAMES.get(k, k) for k in TABLE_METRICS])
    table.index.name = "difference"
    return table


def paired_styled(metrics: dict):
    """`paired_table` for a notebook, the differences whose interval excludes 0 in bold, or one line
    saying there are none (`NO_INTERVALS`)."""
    paired = metrics.get("paired") or {}
    if not paired:
        text = f"{_capital(NO_INTERVALS)}: no paired differences to show."
        return Shown(text, markdown=text)
    differences = paired_table(paired)
    bold = pd.DataFrame(False, index=differences.index, columns=differences.columns)
    for key, d in paired.items():
        for k in TABLE_METRICS:
            if k in d and _sign(d[k]):
                bold.loc[_paired_name(key, _paired_model(paired)), TABLE_NAMES.get(k, k)] = True
    split, _ = headline_keys(metrics)
    return table(differences, bold=bold,
                 caption=f"Paired differences on {split} (model − other system, same unit as the metrics), with 95% "
                         f"bootstrap intervals; bold: the interval excludes 0",
                 missing="the metric has no paired interval (undefined on some resample)")


def headline_lines(metrics: dict) -> list[str]:
    """The terminal's headline after `icdlib run`: what the lines say, then one line per system (the model,
    the frequency prior, the baseline, the MNTP arm) with 95% intervals, then what MNTP did."""
    split, x = headline_keys(metrics)
    rows = [(model_name(metrics), _model(metrics, split, x))]
    rows += [(SYSTEM_NAMES[k], metrics[k][f"{split}_tuned{x}"]) for k in _reference_keys(metrics)]
    arm = next((k for k in MNTP_KEYS if k in _reference_keys(metrics)), None)
    diffs = (metrics.get("paired") or {}).get(f"model - {arm}") if arm else None
    mntp = "MNTP: with − without"
    width = max([len(name) for name, _ in rows] + ([len(mntp)] if diffs else []))
    what = "95% bootstrap intervals" if metrics.get("paired") else "no intervals (bootstrap=0 or an older metrics.json)"
    lines = [f"{what}; micro-F1 at each system's threshold tuned on val"]
    lines += [f"  {name:<{width}}  " + "  ".join(f"{label} {_with_ci(m, k)}" for k, label in HEADLINE_METRICS)
              for name, m in rows]
    if diffs:
        lines.append(f"  {mntp:<{width}}  " + "  ".join(
            f"{label} {_signed(_mntp_effect(diffs[k], arm))}" for k, label in MNTP_METRICS if k in diffs))
    return lines


def systems_html(metrics: dict, under_model: list[str] = ()) -> str:
    """The headline table of reports/index.html: each system's SUMMARY_METRICS (fractions, in 04's column
    order and names: INDEX_METRICS) on the reported split at its own tuned threshold, each value followed
    by its 95% interval when 04 bootstrapped it;
    `under_model`: rows (HTML) placed right under the model's (the seeds' mean ± sd)."""
    split, x = headline_keys(metrics)
    rows = [(f"{model_name(metrics)} ({split}, tuned threshold)", _model(metrics, split, x))]
    rows += [(f"{SYSTEM_NAMES[k]} ({split}, tuned threshold)", metrics[k][f"{split}_tuned{x}"])
             for k in _reference_keys(metrics)]
    head = "".join(f"<th colspan='2'>{_esc(name)}</th>" for _, name in INDEX_METRICS)

    def cells(m: dict, k: str) -> str:
        ci = _ci(m, k)
        value = "–" if _num(m.get(k)) is None else _f(m.get(k))
        return f"<td>{value}</td><td class='ci'>" + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + "</td>"

    body = ["<tr><td>" + _esc(name) + "</td>" + "".join(cells(m, k) for k, _ in INDEX_METRICS) + "</tr>"
            for name, m in rows]
    missing = any(_num(m.get(k)) is None for _, m in rows for k, _ in INDEX_METRICS)
    body = "".join(body[:1] + list(under_model) + body[1:])
    note = ("Brackets: 95% bootstrap intervals over the admissions of the split." if metrics.get("paired") else
            f"{_capital(NO_INTERVALS)}.")
    note += " –: the metric is undefined on this split (no code with a positive and a negative)." if missing else ""
    return (f"<table><thead><tr><th>system</th>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p class='sub'>{_esc(note)}</p>")
