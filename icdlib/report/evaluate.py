"""Notebook 04's report (`04_evaluate`): the metrics of the model beside the reference systems and
the published rows of the run's benchmark, with 95% bootstrap intervals and paired differences;
the seeds' spread; the figures of the scores (precision-recall, per code against training
frequency, F1 by frequency bucket, the threshold, calibration); and what the run shows.

The terminal's headline and reports/index.html say the same through `headline_lines`,
`systems_html` and `summary`, so one threshold convention holds everywhere."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icdlib.evaluation.names import MNTP_KEYS, SYSTEM_NAMES, model_name
from icdlib.report.shared import (Shown, canvas, closing, data_name, decimals, empty_panel, esc, frequency_buckets,
                                  header, number, per_code_sentences, plain_log_ticks, table)
from icdlib.report.tables import METRIC_NAMES

__all__ = [
    "REFERENCE_RESULTS", "TABLE_METRICS", "TABLE_NAMES", "SUMMARY_METRICS", "INDEX_METRICS", "header", "table",
    "summary", "reference_rows", "reference_note", "label_space_dropped", "pr_curve", "per_code_vs_frequency",
    "frequency_buckets", "f1_by_frequency_bucket", "threshold_curve", "calibration", "metrics_table",
    "macro_f1_gap", "seed_spread_table", "metrics_caption", "metrics_dashes", "metrics_styled",
    "SYSTEM_NAMES", "model_name", "headline_keys", "interval_table", "paired_table", "paired_styled",
    "headline_lines", "systems_html",
]


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
    return Shown(text, html=f"<p>{esc(text)}</p>" + table(outside).to_html())


def _flat(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel() != 0
    s = np.asarray(y_score).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score differ in size: {y.size} vs {s.size}")
    return y, s


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

    fig, ax = canvas(size=(7.0, 5.0))
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
        empty_panel(ax, "no positive labels")
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
    fig, axes = canvas(1, 2, size=(10.0, 4.5), sharex=True)
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
            plain_log_ticks(ax.xaxis)
        else:
            empty_panel(ax, f"no codes with a defined {title}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Per-code {title} ({len(data):,} codes with a positive)")
        ax.set_xlabel("Training admissions with the code (log scale)")
        ax.set_ylabel(title)
    handles, names = max((ax.get_legend_handles_labels() for ax in axes), key=lambda h: len(h[0]))
    if handles:  # one legend for both panels, below them: dots fill every corner of the axes
        fig.legend(handles, names, fontsize=8, loc="outside lower center", ncol=2)
    fig.suptitle("Per-code performance vs training frequency")
    return fig


def f1_by_frequency_bucket(per_code: pd.DataFrame, edges=None) -> Figure:
    """Bar chart of mean per-code F1 per training-frequency bucket, code counts annotated."""
    table = frequency_buckets(per_code, edges)
    table = table[table["n_codes"] > 0]
    fig, ax = canvas()
    if len(table):
        x = np.arange(len(table))
        bars = ax.bar(x, table["mean_f1"], color="tab:blue")
        for bar, count in zip(bars, table["n_codes"]):
            ax.annotate(f"n={count:,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, table["bucket"])
        ax.set_ylim(0, max(0.05, float(table["mean_f1"].max()) * 1.15))
    else:
        empty_panel(ax, "no codes with a defined F1")
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
    fig, ax = canvas()
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

    fig, (top, bottom) = canvas(2, 1, size=(6.5, 6.5), sharex=True, height_ratios=[3, 1])
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
        value = number(value)
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
        value = number(m.get(key))
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


# --------------------------------------------------------------------------- what the run shows


# threshold-free metrics, then micro-F1 at each system's tuned threshold: (key, name)
SUMMARY_METRICS = (("auroc_micro", "micro-AUROC"), ("auroc_macro", "macro-AUROC"), ("auprc_micro", "micro-AUPRC"),
                   ("map", "MAP"), ("p_at_8", "P@8"), ("f1_micro", "micro-F1"))

# The index's headline table: SUMMARY_METRICS in the columns' order and with the names of 04's table.
INDEX_METRICS = tuple((k, TABLE_NAMES[k]) for k in TABLE_METRICS if k in dict(SUMMARY_METRICS))


def _metric_sentences(metrics: dict, synthetic: bool, dataset: str = "mimic3") -> list[str]:
    split, x = headline_keys(metrics)
    m, model = metrics.get(split + x) or {}, _model(metrics, split, x)
    threshold = number(metrics.get("threshold"))
    label_set = ", Edin et al.'s label set" if x == "_edin" else ""
    out = [f"On the {split} split ({int(m.get('n_docs', 0)):,} admissions, {int(m.get('n_labels', 0)):,} labels"
           f"{label_set}) the model reaches micro-AUROC {_with_ci(model, 'auroc_micro')} (macro "
           f"{_with_ci(model, 'auroc_macro')}), micro-AUPRC {_with_ci(model, 'auprc_micro')}, MAP "
           f"{_with_ci(model, 'map')} and P@8 {_with_ci(model, 'p_at_8')}; at the threshold tuned on validation "
           f"({decimals(threshold)}) micro-F1 is {_with_ci(model, 'f1_micro')}.", _interval_note(metrics)]
    fixed = number(m.get("f1_micro"))
    if fixed is not None and number(model.get("f1_micro")) is not None and fixed < 0.5 * number(model["f1_micro"]):
        out.append(f"At the fixed threshold {decimals(m.get('threshold'), 2)} micro-F1 is only {decimals(fixed)}: "
                   f"the scores are not calibrated to 0.5, so read the tuned rows.")
    paired = metrics.get("paired") or {}
    for key in _reference_keys(metrics):
        other = (metrics.get(key) or {}).get(f"{split}_tuned{x}")
        versus = ", ".join(f"{name} {_with_ci(other, k)}" for k, name in SUMMARY_METRICS
                           if number(other.get(k)) is not None)
        out.append(f"{SYSTEM_DESCRIPTIONS[key]} reaches {versus}: {_verdict(paired.get(f'model - {key}'))}.")
    arm = next((key for key in MNTP_KEYS if key in _reference_keys(metrics)), None)
    if arm:
        out.append(_mntp_sentence(metrics, arm))
    if synthetic:
        out.append(f"This run is on the {data_name(dataset, True)}: its numbers show that the pipeline works end "
                   f"to end, not how well the model codes {data_name(dataset).split(' ')[0]}, and are not comparable "
                   "to published results.")
    return out


def summary(*, metrics: dict | None = None, per_code: pd.DataFrame | None = None, synthetic: bool = True,
            dataset: str = "mimic3") -> Shown:
    """"What this run shows" after step 04, in Markdown sentences generated from its numbers:
    `metrics` (metrics.json) the headline split with 95% intervals beside the frequency prior, the
    TF-IDF low-rank baseline and the MNTP arm, saying better or worse only where the interval of the
    difference excludes 0, and what MNTP did; `per_code` (per_code.parquet) codes never right and the
    frequency gradient; `synthetic` and `dataset` name what was coded (`data_name`). Numbers are shown
    with 3 decimals."""
    paragraphs = []
    if metrics:
        paragraphs.append(" ".join(_metric_sentences(metrics, synthetic, dataset)))
    sentences = per_code_sentences(per_code) if per_code is not None else []
    paragraphs += [" ".join(sentences)] if sentences else []
    return closing(paragraphs)


# --------------------------------------------------------------------------- the systems, with uncertainty
# Step 04 scores the model beside reference systems (metrics.json keys) and bootstraps 95% intervals
# (`icdlib.evaluation.evaluate` documents the schema: `ci95` in each headline metrics dict, `paired` for the model
# minus each other system, `bootstrap` for how). Every place that reports them (04's tables and
# summary, the terminal's headline, reports/index.html) goes through the functions below, so one
# threshold convention holds everywhere: each system's micro-F1 at its own threshold tuned on val.

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
    return None if number(lo) is None or number(hi) is None else (float(lo), float(hi))


def _with_ci(m: dict, key: str, digits: int = 3, scale: float = 1.0) -> str:
    """`0.820 [0.801, 0.838]`: the value and, when 04 bootstrapped it, its 95% interval."""
    value, ci = number((m or {}).get(key)), _ci(m, key)
    text = "n/a" if value is None else f"{scale * value:.{digits}f}"
    return text if ci is None or value is None else f"{text} [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"


def _signed(d: dict, digits: int = 3, scale: float = 1.0) -> str:
    """`+0.031 [0.012, 0.050]`: a paired difference and its 95% interval."""
    diff, lo, hi = (number(d.get(k)) for k in ("diff", "lo", "hi"))
    text = "n/a" if diff is None else f"{scale * diff:+.{digits}f}"
    return text if lo is None or hi is None else f"{text} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def _sign(d: dict | None) -> int:
    """+1 when the interval of a difference lies above 0, -1 below, 0 when it holds 0 or is undefined."""
    if not d or number(d.get("lo")) is None or number(d.get("hi")) is None:
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
    flip = {k: (None if number(d.get(k)) is None else 0.0 - float(d[k])) for k in ("diff", "lo", "hi")}
    return {"diff": flip["diff"], "lo": flip["hi"], "hi": flip["lo"]}


def _mntp_sentence(metrics: dict, arm: str) -> str:
    """One sentence on what the MNTP stage did: fine-tuning with it minus without it, with the paired
    intervals when 04 bootstrapped them, else the point differences and why no more can be said."""
    split, x = headline_keys(metrics)
    diffs = (metrics.get("paired") or {}).get(f"model - {arm}")
    if not diffs:
        model, other = _model(metrics, split, x), metrics[arm][f"{split}_tuned{x}"]
        diffs = {k: {"diff": number(model.get(k)) - number(other.get(k))} for k, _ in MNTP_METRICS
                 if number(model.get(k)) is not None and number(other.get(k)) is not None}
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
    head = "".join(f"<th colspan='2'>{esc(name)}</th>" for _, name in INDEX_METRICS)

    def cells(m: dict, k: str) -> str:
        ci = _ci(m, k)
        value = "–" if number(m.get(k)) is None else decimals(m.get(k))
        return f"<td>{value}</td><td class='ci'>" + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + "</td>"

    body = ["<tr><td>" + esc(name) + "</td>" + "".join(cells(m, k) for k, _ in INDEX_METRICS) + "</tr>"
            for name, m in rows]
    missing = any(number(m.get(k)) is None for _, m in rows for k, _ in INDEX_METRICS)
    body = "".join(body[:1] + list(under_model) + body[1:])
    note = ("Brackets: 95% bootstrap intervals over the admissions of the split." if metrics.get("paired") else
            f"{_capital(NO_INTERVALS)}.")
    note += " –: the metric is undefined on this split (no code with a positive and a negative)." if missing else ""
    return (f"<table><thead><tr><th>system</th>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p class='sub'>{esc(note)}</p>")
