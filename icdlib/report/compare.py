"""Notebook 06's report (`06_compare`): the provenance line and the tables `icdlib.compare`
computes (through `table`), and the per-code figure of two runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icdlib.report.shared import canvas, empty_panel, provenance, table

__all__ = ["provenance", "table", "code_differences"]


def code_differences(tables: dict[tuple[str, str], pd.DataFrame], n_named: int = 5) -> Figure:
    """Per code, model A's F1 (left) and AUPRC (right) against model B's, one row of panels per
    pair of runs (`tables`: (A, B) → ``compare.code_differences``). Codes without a positive in
    the split are left out; a dot's area grows with the code's support; the `n_named` codes whose
    metric differs most are named."""
    fig, axes = canvas(len(tables), 2, size=(10.0, 4.6 * len(tables)))
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
                empty_panel(ax, f"no code with a positive and a defined {title}")
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
