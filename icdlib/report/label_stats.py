"""Notebook 02's report (`02_label_stats`): the label space and the notes, as figures (the long
tail, codes per admission, note lengths in words and tokens, the top codes, diagnosis vs procedure,
split balance) and tables (the top codes, codes unseen in train)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from icdlib.data.labels import kind_of
from icdlib.report.shared import (Shown, canvas, closing, code_assignments, codes_per_note, data_sentences,
                                  empty_panel, header, plain_log_ticks, splits_in, table, unseen_in_train,
                                  words_per_note)

__all__ = ["header", "table", "summary", "label_frequency", "codes_per_admission", "note_lengths", "token_lengths",
           "top_codes", "top_codes_plot", "kind_share", "split_balance", "unseen_in_train"]

KIND_COLORS = {"diagnosis": "tab:blue", "procedure": "tab:orange"}
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def _shorten(text: str, width: int = 45) -> str:
    text = str(text or "")
    return text if len(text) <= width else text[: width - 1] + "…"


def label_frequency(labels: pd.DataFrame) -> Figure:
    """Long tail of the label space: code rank vs training admissions, log-log."""
    counts = np.sort(labels["n_train"].to_numpy(dtype=np.int64))[::-1]
    seen = counts[counts > 0]
    fig, ax = canvas()
    if seen.size:
        ranks = np.arange(1, seen.size + 1)
        ax.plot(ranks, seen, color="tab:blue", lw=1.8, label="codes with ≥1 training admission")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
        for threshold, style in ((10, ":"), (100, "--")):
            share = (counts <= threshold).mean()
            ax.axhline(threshold, color="0.5", ls=style, lw=0.8)
            ax.text(1.05, threshold, f"{share:.0%} of codes have ≤ {threshold}", va="bottom",
                    fontsize=8, color="0.35")
        ax.legend(loc="upper right", fontsize=8)
    else:
        empty_panel(ax, "no code occurs in the training split")
    unseen = int((counts == 0).sum())
    note = f"; {unseen:,} with none not shown" if unseen else ""
    ax.set_title(f"Label frequency: {counts.size:,} codes, median {np.median(counts):g} "
                 f"training admissions{note}")
    ax.set_xlabel("Code rank (most frequent first, log scale)")
    ax.set_ylabel("Training admissions with the code (log scale)")
    return fig


def codes_per_admission(notes: pd.DataFrame) -> Figure:
    """Histogram of the number of codes per admission (all splits), with mean and median."""
    n = codes_per_note(notes)
    fig, ax = canvas()
    if n.size:
        bins = np.arange(n.min(), n.max() + 2) - 0.5
        if bins.size > 81:
            bins = 80
        ax.hist(n, bins=bins, color="tab:blue", alpha=0.85)
        ax.axvline(n.mean(), color="black", lw=1.2, label=f"mean {n.mean():.1f}")
        ax.axvline(np.median(n), color="black", ls="--", lw=1.2, label=f"median {np.median(n):g}")
        ax.legend(fontsize=8)
    else:
        empty_panel(ax, "no admissions")
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
    panels = [("words", words_per_note(notes))]
    if token_counts is not None:
        panels.append(("tokens", np.asarray(token_counts, dtype=np.int64).ravel()))
    fig, axes = canvas(1, len(panels))
    axes = np.atleast_1d(axes)
    for ax, (unit, values) in zip(axes, panels):
        if values.size:
            ax.hist(values, bins=60, color="tab:blue", alpha=0.85)
            median, p95 = np.median(values), np.percentile(values, 95)
            ax.axvline(median, color="black", lw=1.2, label=f"median {median:,.0f}")
            ax.axvline(p95, color="black", ls="--", lw=1.2, label=f"95th percentile {p95:,.0f}")
            ax.legend(fontsize=8)
        else:
            empty_panel(ax, "no notes")
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
    fig, ax = canvas()
    if full.size:
        bins = np.histogram_bin_edges(full, bins=60)
        for name in splits_in(notes):
            ax.hist(full[split == name], bins=bins, histtype="step", lw=1.5, color=SPLIT_COLORS.get(name),
                    density=True, label=f"{name} (median {np.median(full[split == name]):,.0f})")
        if budget:
            ax.axvline(budget, color="black", ls="--", lw=1.2, label=f"budget {budget:,} tokens")
        ax.legend(fontsize=8)
    else:
        empty_panel(ax, "no notes")
    longer = f": {(full > budget).mean():.0%} longer than the budget" if budget and full.size else ""
    ax.set_title(f"Note length in tokens ({full.size:,} notes){longer}")
    ax.set_xlabel("Tokens per note (before truncation)")
    ax.set_ylabel("Share of the split's notes (density)")
    return fig


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
    fig, ax = canvas(size=(8.0, max(4.5, 0.28 * len(table) + 1.2)))
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
        empty_panel(ax, "no labels")
    ax.set_title(f"Top {len(table)} codes by training frequency")
    ax.set_xlabel("Training admissions with the code"
                  + (" (labels: share of training admissions)" if n_admissions else ""))
    return fig


def kind_share(notes: pd.DataFrame, labels: pd.DataFrame) -> Figure:
    """Share of diagnosis vs procedure codes among code assignments, per split (stacked bars).

    Kinds come from `labels`; codes outside the label space are classified by their form
    (procedures have two characters before the dot).
    """
    assignments = code_assignments(notes)
    kinds = dict(zip(labels["code"], labels["kind"]))
    assignments["kind"] = [kinds.get(c) or kind_of(c) for c in assignments["code"]]
    table = pd.crosstab(assignments["split"], assignments["kind"], normalize="index")
    table = table.reindex(index=[s for s in splits_in(notes) if s in table.index])
    counts = assignments["split"].value_counts()
    fig, ax = canvas(size=(8.0, 3.2))
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
        empty_panel(ax, "no code assignments")
    ax.set_title("Diagnosis vs procedure share of code assignments")
    ax.set_xlabel("Share of code assignments")
    return fig


def split_balance(notes: pd.DataFrame, codes) -> Figure:
    """Fraction of admissions carrying each of `codes`, per split (grouped bars).

    A split that differs strongly from train for a frequent code hints at a split problem.
    """
    codes = list(codes)
    splits = splits_in(notes)
    assignments = code_assignments(notes)
    assignments = assignments[assignments["code"].isin(codes)].reset_index().drop_duplicates()
    sizes = notes["split"].value_counts()
    counts = pd.crosstab(assignments["code"], assignments["split"]).reindex(
        index=codes, columns=splits, fill_value=0)
    share = counts / sizes.reindex(splits).to_numpy()[None, :]
    fig, ax = canvas(size=(max(8.0, 0.45 * len(codes) + 2), 4.5))
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
        empty_panel(ax, "no codes given")
    ax.set_title("Code frequency per split (share of the split's admissions)")
    ax.set_xlabel("ICD code")
    ax.set_ylabel("Admissions with the code")
    return fig


def summary(*, notes: pd.DataFrame, labels: pd.DataFrame | None = None) -> Shown:
    """"What this run shows" about the data and the label space (`data_sentences`)."""
    return closing([" ".join(data_sentences(notes, labels))])
