"""Step 04's scoring without a run: both label sets in metrics.json, and which one the table compares."""

import json

import numpy as np
import pandas as pd
import pytest

from icdlib import evaluate, metrics, report
from icdlib.config import Config
from icdlib.evaluate import Evaluation, SplitScores
from test_metrics import TOY_S, TOY_Y

CODES = ["c0", "c1", "c2", "c3", "c4", "c5"]  # c4, c5: no positive in either split


def toy(benchmark: str = "none") -> Evaluation:
    """val: the toy of test_metrics plus an admission without a code; test: the toy."""
    val_y = np.vstack([TOY_Y, np.zeros(6, dtype=int)])
    val_s = np.vstack([TOY_S, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]])
    splits = {"val": SplitScores(pd.DataFrame({"hadm_id": range(5)}), val_y, val_s),
              "test": SplitScores(pd.DataFrame({"hadm_id": range(10, 14)}), TOY_Y, TOY_S)}
    return Evaluation(labels=pd.DataFrame({"code": CODES}), splits=splits, train=pd.DataFrame(),
                      cfg=Config(benchmark=benchmark))


def test_score_all_records_both_label_sets():
    ev = toy()
    results = evaluate.score_all(ev, ev.cfg)
    assert set(results) == {"threshold", "val", "val_edin", "val_tuned", "val_tuned_edin",
                            "test", "test_edin", "test_tuned", "test_tuned_edin"}
    # the threshold is tuned once, on every code of val (as Edin et al. tune theirs)
    assert results["threshold"] == metrics.tune_threshold(ev.splits["val"].y_true, ev.splits["val"].y_score)
    for split, s in ev.splits.items():
        for key, t in ((split, 0.5), (f"{split}_tuned", results["threshold"])):
            assert results[key] == metrics.compute(s.y_true, s.y_score, t)
            assert results[key + evaluate.EDIN] == metrics.compute(s.y_true, s.y_score, t, label_set="edin")
    test, edin = results["test"], results["test_edin"]
    assert (test["label_set"], test["n_labels"]) == ("every code of the label space", 6)
    assert (edin["label_set"], edin["n_labels"]) == (metrics.LABEL_SETS["edin"], 4)
    assert results["val_edin"]["n_docs"] == 4 and results["val"]["n_docs"] == 5
    # test_metrics works these out by hand: MAP 49/80 over every code, 119/144 over Edin's.
    assert test["map"] == pytest.approx(49 / 80) and edin["map"] == pytest.approx(119 / 144)
    written = json.loads(json.dumps(evaluate._jsonable(results)))  # what metrics.json holds
    assert written["test_edin"]["label_set"].startswith("codes with a positive in the split")


def test_baseline_and_comparison_are_scored_under_both_label_sets():
    ev = toy()
    evaluate.score_all(ev, ev.cfg)
    other = {split: np.clip(s.y_score[:, ::-1], 0, 1) for split, s in ev.splits.items()}
    base = evaluate.score_baseline(ev, other)
    assert set(base) == {"threshold", "val_tuned", "val_tuned_edin", "test_tuned", "test_tuned_edin"}
    arm = evaluate.score_comparison(ev, other, "without")
    assert {"test", "test_edin", "test_tuned", "test_tuned_edin"} <= set(arm)
    assert arm["test_tuned_edin"] == metrics.compute(TOY_Y, other["test"], arm["threshold"], label_set="edin")


@pytest.mark.parametrize("benchmark", sorted(evaluate.EDIN_BENCHMARKS))
def test_edin_benchmarks_compare_their_label_set(benchmark):
    ev = toy(benchmark)
    evaluate.score_all(ev, ev.cfg)
    evaluate.score_baseline(ev, {split: s.y_score for split, s in ev.splits.items()})
    rows = evaluate.systems(ev)
    assert all(m["label_set"] == metrics.LABEL_SETS["edin"] for m in rows.values())
    assert rows["icdlib test @0.5"] is ev.results["test_edin"]
    assert evaluate.compared(ev, "test") is ev.results["test_edin"]


@pytest.mark.parametrize("benchmark", ["none", "caml_full", "caml_50", "seed"])
def test_other_benchmarks_compare_every_code(benchmark):
    ev = toy(benchmark)
    evaluate.score_all(ev, ev.cfg)
    rows = evaluate.systems(ev)
    assert all(m["label_set"] == metrics.LABEL_SETS["all"] for m in rows.values())
    assert evaluate.compared(ev, "test") is ev.results["test"]


def test_caption_names_the_label_set_of_n_labels():
    ev = toy("edin_mimic4_icd10")
    evaluate.score_all(ev, ev.cfg)
    text = report.metrics_caption(evaluate.compared(ev, "test"), "test", "edin_mimic4_icd10")
    assert text.startswith("Split test · n_docs 4 · n_labels 4 (codes with a positive in the split, documents with "
                           "a positive (Edin et al.); AUROC over every code and document, as their code) · "
                           "n_labels_scored 4 ")
