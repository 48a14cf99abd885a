"""Notebook 05's report (`05_error_analysis`): where the model errs (the ranked codes' line, what
category-level scoring and the near misses say, in sentences) and its view of the explanation
methods: step 04's figures (metrics.json `explanations`) as tables and one figure per family of
metrics, and worked examples from the method that did best on validation, as highlighted words (or,
with `share_safe` on, offsets, codes and scores only).

The explanation part was `explanation_report`; it lives here so that notebook 05, like every
other, imports one report module."""

from __future__ import annotations

import numpy as np
import pandas as pd

from icdlib.measure import evidence_metrics as em
from icdlib.model import explain
from icdlib.report.shared import Shown, closing, decimals, header, per_code_sentences, table

__all__ = ["header", "table", "summary", "ranked_codes_note", "method_table", "counts_line", "family_figure",
           "examples", "spans_table", "highlights", "measured", "overview", "methods", "family", "worked_examples"]

UNITS = {"seconds_per_note": "Seconds per note"}
SHORT = {"attention": "label attention", "attingrad": "AttInGrad", "input_x_gradient": "input × gradient",
         "integrated_gradients": "integrated gradients", "occlusion": "sentence occlusion"}
TITLES = {"plausibility": "Plausibility: do the top-scored tokens lie in the code's evidence?",
          "faithfulness": "Faithfulness: does the model need the top-scored words?",
          "negation": "Negations: how often the top token is a negated or family-history mention"}


def _name(method: str) -> str:
    return SHORT.get(method, method)


def _methods(measured: dict) -> dict[str, dict]:
    return {_name(m): r for m, r in measured["methods"].items()}


def method_table(measured: dict) -> pd.DataFrame:
    """One row per method on the reported split: every metric with its 95% interval, the token
    threshold tuned on validation, the token F1 there, and the seconds each took per note."""
    out = em.table(_methods(measured), intervals=True)
    val = {_name(m): r.get("token_f1") for m, r in measured["val"].items()}
    out["Token F1 on validation"] = [val.get(m) for m in out.index]
    out[UNITS["seconds_per_note"]] = [r.get("seconds_per_note") for r in _methods(measured).values()]
    best = _name(measured.get("best_method") or "")
    out.index = [f"{m} (best on validation)" if m == best else m for m in out.index]
    out.index.name = "method"
    return out.reset_index()


def counts_line(measured: dict) -> str:
    """What the figures are over: notes and pairs of each split, the evidence, the IG steps."""
    n, p = measured["notes"], measured["pairs"]
    parts = [f"{split}: {p[split]:,} true-positive (admission, code) pairs on {n[split]:,} admissions"
             for split in n]
    return (f"Measured on {'; '.join(parts)} (the first {measured['explain_notes']:,} admissions of each split with "
            f"a true-positive code that has evidence, at the tuned threshold {measured['decision_threshold']:.3f}); "
            f"integrated gradients with {measured['ig_steps']} steps.")


def family_figure(measured: dict, family: str):
    """One figure for one family of metrics (plausibility, faithfulness, negation): a bar per method
    and metric, with its 95% interval."""
    import matplotlib.pyplot as plt

    methods = _methods(measured)
    k = next(iter(methods.values())).get("k", em.RECALL_K) if methods else em.RECALL_K
    keys = [m for m in em.FAMILIES[family] if any(em.key(m, k) in r for r in methods.values())]
    fig, ax = plt.subplots(figsize=(9.0, 3.8))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(keys))
    low = 0.0
    for i, (name, r) in enumerate(methods.items()):
        values = np.array([np.nan if r.get(em.key(m, k)) is None else r[em.key(m, k)] for m in keys], float)
        bounds = [(r.get("ci95") or {}).get(em.key(m, k)) or (None, None) for m in keys]
        lo = np.array([np.nan if b[0] is None else v - b[0] for v, b in zip(values, bounds)], float)
        hi = np.array([np.nan if b[1] is None else b[1] - v for v, b in zip(values, bounds)], float)
        low = min(low, float(np.nanmin(np.r_[values - np.nan_to_num(lo), 0.0])))
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, label=name,
                      yerr=np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)]), capsize=2)
        if len(keys) == 1:  # one metric a method: its value written on it (a share of 0 draws no bar)
            ax.bar_label(bars, labels=["–" if np.isnan(v) else f"{v:.2f}" for v in values], padding=2, fontsize=8)
    ax.axhline(0, color="#444", linewidth=0.8)
    ax.set_xticks(x, [em.NAMES[m].format(k=k) for m in keys])
    ax.set_ylim(min(low * 1.1, 0.0), 1.0)
    ax.set_title(TITLES[family], fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(methods), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def examples(coder, notes: pd.DataFrame, labels: pd.DataFrame, pairs: list[tuple[int, int]], method: str,
             ig_steps: int, n_spans: int = 3) -> list[dict]:
    """`method`'s explanation of each (row of `notes`, label) pair: the word scores of the code by
    the loaded `model.trained.Coder`'s own `explain` (those `predict --evidence` gives), and its top
    `n_spans` spans (offsets into the note's text, and their text). `labels` is the run's label
    table, whose row `label` names the code."""
    out = []
    for row, label in pairs:
        text, code = notes["text"].iloc[row], labels["code"].iloc[label]
        words = coder.explain(text, [code], method, ig_steps=ig_steps)[0]
        out.append({"hadm_id": int(notes["hadm_id"].iloc[row]), "code": code,
                    "title": labels["short_title"].iloc[label], "text": text, "words": words,
                    "spans": explain.top_spans(text, words, n=n_spans)})
    return out


def spans_table(found: list[dict], share_safe: bool) -> pd.DataFrame:
    """The top spans of each example: admission, code, offsets, score and (unless `share_safe`) text."""
    rows = [{"Admission": e["hadm_id"], "Code": e["code"], "Rank": i + 1, "Begin": s["begin"], "End": s["end"],
             "Score": s["score"], **({} if share_safe else {"Text": s["text"]})}
            for e in found for i, s in enumerate(e["spans"])]
    return pd.DataFrame(rows)


def highlights(found: list[dict], method: str):
    """The examples' words shaded by `method`'s scores, each with its code, title and colour legend."""
    from IPython.display import HTML

    name = _name(method)
    return HTML("<hr>".join(explain.words_html(e["text"], e["words"], e["code"], e["title"],
                                               caption=f"admission {e['hadm_id']}, {name}") for e in found))


READING = {
    "table": (
        "*How to read it:* one row per method, on the reported split's true-positive codes. Token precision, "
        "recall and F1 compare the tokens a method scores above its threshold (tuned on validation for token F1, "
        "on each pair's scores divided by their sum) with the tokens of the code's evidence spans; recall@k is the "
        "share of evidence tokens among each pair's k top-scored tokens; token AUPRC sweeps the threshold. "
        "Comprehensiveness is the drop of the code's probability when the top-scored words are deleted (higher: "
        "the method found what the model used), sufficiency the drop when only they are kept (lower is better). "
        "The last metric is the share of pairs whose top-scored token lies in a negated or family-history "
        "mention (\"no evidence of pneumonia\"): pointing there is wrong. Brackets: 95% intervals over "
        "resampled admissions; a dash: not defined for this run."),
    "plausibility": (
        "*How to read it:* does each method point where the evidence is? Taller is better for every bar; "
        "whiskers are 95% intervals over resampled admissions. A method whose bars sit near the others' "
        "intervals is not reliably different from them."),
    "faithfulness": (
        "*How to read it:* does each method point at what the model used? Comprehensiveness (left group) should "
        "be high: deleting a faithful method's top words lowers the code's probability; sufficiency (right "
        "group) should be low: its top words alone keep the probability. A plausible method that is not "
        "faithful highlights the evidence without the model relying on it."),
    "negation": (
        "*How to read it:* the share of true-positive pairs whose top-scored token is in a negated or "
        "family-history mention (of any condition) rather than in the code's evidence; lower is better. Over "
        "the pairs whose note has such a mention."),
}


def measured(ev) -> dict | None:
    """Step 04's explanation figures, or None when it did not measure them."""
    return ev.results.get("explanations")


def overview(ev):
    """One line: what the figures are over, or why there are none."""
    from IPython.display import Markdown

    found = measured(ev)
    if found is None:
        return Markdown("Not measured: this run has no evidence spans (`01_preprocess/evidence.parquet`: the twin "
                        "writes its own; on MIMIC-III `-p evidence=mdace -p evidence_dir=...`) or `explain_notes` "
                        "is 0.")
    return Markdown(counts_line(found))


def methods(ev):
    """The method table with its reading guide (nothing when not measured)."""
    from IPython.display import Markdown, display

    found = measured(ev)
    if found is not None:
        display(table(method_table(found), missing="not defined on this run: no pair had what the metric "
                            "needs (a negated or family-history mention in its note, say)"), Markdown(READING["table"]))


def family(ev, name: str):
    """One family's figure with its reading guide (nothing when not measured)."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    found = measured(ev)
    if found is not None:
        fig = family_figure(found, name)
        display(fig, Markdown(READING[name]))
        plt.close(fig)


def worked_examples(cfg, ev, split: str, n: int = 3):
    """The method that did best on validation, on the first `n` admissions of `split` with a
    true-positive code that has evidence (one code each): its top spans as a table (offsets, code,
    score; the text too unless `share_safe`), then the highlighted words (not with `share_safe`)."""
    from IPython.display import Markdown, display

    from icdlib.evaluation import explanations
    from icdlib.model import trained
    from icdlib.run.runfolder import Run

    found = measured(ev)
    if found is None or not found.get("best_method"):
        return
    run, method = Run.of(cfg), found["best_method"]
    coder = trained.load(run.checkpoint("best"), device=cfg.device)
    s = ev.splits[split]
    chosen = explanations.true_positive_pairs(s.notes, s.y_true, s.y_score, float(ev.results["threshold"]),
                                              ev.labels, pd.read_parquet(run.evidence), n)
    first = []  # one code per admission (its pairs are consecutive)
    for row, label in chosen:
        if not first or first[-1][0] != row:
            first.append((row, label))
    found_examples = examples(coder, s.notes, ev.labels, first, method, cfg.ig_steps)
    name = _name(method)
    display(Markdown(f"Method: **{name}**, the highest token F1 on validation."),
            table(spans_table(found_examples, cfg.share_safe_on)),
            Markdown("*How to read it:* the three highest-scoring spans of words for one true-positive code per "
                     "admission, best first: character offsets into the admission's text in `notes.parquet`, and "
                     "the span's score (the sum of its words' scores)."
                     + ("" if cfg.share_safe_on else " The text is what the highlights below shade.")))
    if cfg.share_safe_on:
        display(Markdown("Highlights are off: `share_safe` is on, so this report shows no note text."))
        return
    display(highlights(found_examples, method),
            Markdown("*How to read it:* each word shaded by its score for the code named above it (orange: "
                     "for the code, darker is stronger; blue: against it), on the scale of the legend; the "
                     "window is centred on the highest-scoring word."))


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


def _level_sentences(levels: pd.DataFrame | None, near: pd.DataFrame | None = None) -> list[str]:
    """What category-level scoring gives, and (`near`: `analysis.near_misses`) what the model predicted
    in the category of each true code it missed. The rise of micro-F1 from codes to categories is
    not read as near misses: merging codes raises it by itself."""
    out = []
    category = next((name for name in ("3-digit category", "3-character category")
                     if levels is not None and name in levels.index), None)
    if category is not None and "full code" in levels.index:
        out.append(f"Counting a prediction right when its {category} is right moves micro-F1 from "
                   f"{decimals(levels.loc['full code', 'f1'])} to {decimals(levels.loc[category, 'f1'])}.")
        coarser = [name for name in ("ICD-10 block", "ICD-10 chapter") if name in levels.index]
        if coarser:
            out.append("At " + " and ".join(f"{name} level it is {decimals(levels.loc[name, 'f1'])}"
                                            for name in coarser) + ".")
    if near is not None and int(near["n"].sum()):
        near_share, through, none = (f"{100 * v:.0f}%" for v in near["share"])  # analysis.NEAR_MISS_OUTCOMES
        out.append(f"Of the {int(near['n'].sum()):,} true codes the model missed at the tuned threshold, "
                   f"{near_share} are near misses (a wrong code of the same {category or 'category'} predicted for "
                   f"that admission), {through} had their category predicted only through other true codes, and "
                   f"{none} had no code of their category predicted.")
    return out


def summary(*, per_code: pd.DataFrame | None = None, levels: pd.DataFrame | None = None,
            near_misses: pd.DataFrame | None = None) -> Shown:
    """"What this run shows" about the errors: `per_code` (per_code.parquet) codes never right and the
    frequency gradient; `levels` (`analysis.category_level`) micro-F1 at the category (and ICD-10 block,
    chapter) level; `near_misses` (`analysis.near_misses`) the share of missed true codes that are near
    misses. Numbers are shown with 3 decimals."""
    paragraphs = []
    if per_code is not None or levels is not None or near_misses is not None:
        sentences = (per_code_sentences(per_code) if per_code is not None else []) + \
            _level_sentences(levels, near_misses)
        paragraphs += [" ".join(sentences)] if sentences else []
    return closing(paragraphs)
