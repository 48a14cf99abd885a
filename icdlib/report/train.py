"""Notebook 03's report (`03_train`): the training history, the MNTP stage, what truncation
dropped, and what the training shows in sentences."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from icdlib.report.shared import Shown, canvas, closing, decimals, empty_panel, header, number, table

__all__ = ["header", "table", "summary", "history", "mntp_history", "mntp_stage", "truncation", "NO_MNTP"]


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
    fig, (left, right) = canvas(1, 2, size=(10.0, 4.5))
    if "train_loss" in history and history["train_loss"].notna().any():
        loss = history[["step", "train_loss"]].dropna()
        _loss_curve(left, loss["step"], loss["train_loss"], "tab:blue", "train loss", "logs")
    else:
        empty_panel(left, "no training loss logged")
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
        empty_panel(right, "no validation metrics logged")
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
    fig, (left, right) = canvas(1, 2, size=(10.0, 4.5))
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
        empty_panel(right, "no second fine-tuning to compare (mntp_compare: none)")
    fig.suptitle("MNTP stage")
    return fig


MNTP_READING = (
    "*How to read it:* left, the MNTP loss (cross-entropy of each masked token predicted from the position "
    "before it) against the MNTP step: it should fall well below where it starts. Right, the validation metric "
    "of the two fine-tunings, with and without the stage, on the same split, labels, budget, initial weights and "
    "batch order: the gap is what MNTP buys (or costs) this backbone with this seed (one seed: a small gap may be "
    "noise); 04 scores both on test.")
COST_READING = (
    "*How to read it:* what the MNTP arm costs on top of fine-tuning, from the run's histories: one row per phase "
    "with its optimizer steps, the tokens it read (MNTP: chunks × `mntp_length`; fine-tuning: the notes' tokens "
    "without padding) and its wall time in seconds (fine-tuning's validations included); \"share of the "
    "fine-tuning's time\" divides each phase's time by that of the fine-tuning after MNTP. A stage reused from an "
    "earlier run shows the time it took then.")


def mntp_stage(history: pd.DataFrame | None, arms: dict[str, pd.DataFrame] | None, cost: pd.DataFrame,
               metric: str = "map") -> None:
    """03's MNTP section as the run holds it: without a stage one line, nothing else (no figure, no empty
    cost table, no sentence about either); with one, the figure and the cost table (`mntp.cost`), each
    followed by its reading sentence."""
    from IPython.display import Markdown, display

    from icdlib.model.mntp import cost_text

    if history is None or history.empty:
        display(Shown(NO_MNTP, markdown=NO_MNTP))
        return
    display(mntp_history(history, arms, metric), Markdown(MNTP_READING))
    display(Markdown(cost_text(cost)), table(cost), Markdown(COST_READING))


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


def _history_sentences(history: pd.DataFrame, metric: str) -> list[str]:
    column = f"val_{metric}"
    if history is None or not len(history) or column not in history:
        return ["No evaluation was logged (`history.csv` is empty)."]
    values = history[column].astype(float)
    last = history.iloc[-1]
    out = [f"Training ran {int(last['step']):,} optimizer steps ({decimals(last.get('epoch'), 1)} epochs) with "
           f"{len(history)} evaluation{'s' if len(history) != 1 else ''} on the validation split, at "
           f"{number(history['tokens_per_s'].iloc[-1]) or 0:,.0f} training tokens/s."]
    if values.notna().any():
        best = history.loc[values.idxmax()]
        where = ("at the last evaluation: it was still improving, so more steps may help"
                 if int(best["step"]) == int(last["step"]) and len(history) > 1 else
                 f"at step {int(best['step']):,}; later evaluations did not improve on it" if len(history) > 1 else
                 "at the only evaluation")
        out.append(f"The best validation {metric}, {decimals(best[column])}, came {where}; `best/` holds that "
                   f"checkpoint and step 04 scores it.")
    loss = history["train_loss"].astype(float)
    if len(loss) > 1:
        trend = "fell" if loss.iloc[-1] < loss.iloc[0] else "did not fall"
        out.append(f"The training loss {trend} from {decimals(loss.iloc[0])} to {decimals(loss.iloc[-1])}.")
    return out


def summary(*, history: pd.DataFrame | None = None, metric: str = "map") -> Shown:
    """"What this run shows" after training: `history` (history.csv) the steps, the best validation
    `metric` and where it came, and the training loss."""
    return closing([" ".join(_history_sentences(history, metric))] if history is not None else [])
