"""What the systems step 04 scores are called, in every table, summary and terminal line.

Here, beside step 04 that writes them (metrics.json's top-level keys: the model, `baseline`, `prior`
and an MNTP arm), so that `evaluate` names its rows without importing the reports above it, and the
reports take the same names from here.
"""

from __future__ import annotations

from icdlib.run.runfolder import MNTP_ARMS

SYSTEM_NAMES = {"model": "icdlib", "baseline": "TF-IDF low-rank baseline", "prior": "frequency prior",
                "without_mntp": "icdlib without MNTP", "with_mntp": "icdlib with MNTP"}
MNTP_KEYS = tuple(MNTP_ARMS.values())  # ("without_mntp", "with_mntp"): the other arm's metrics.json key


def model_name(systems) -> str:
    """The model's name beside the other arm of an MNTP comparison, for what it is: `icdlib without MNTP`
    when the arm is `with_mntp`, `icdlib with MNTP` when it is `without_mntp`, `icdlib` without an arm.
    `systems`: the keys present (metrics.json's top level, or the systems of its `paired`)."""
    arm = next((k for k in MNTP_KEYS if k in systems), None)
    return SYSTEM_NAMES[MNTP_KEYS[1 - MNTP_KEYS.index(arm)]] if arm else SYSTEM_NAMES["model"]
