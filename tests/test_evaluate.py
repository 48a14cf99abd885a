"""Step 04's scoring without a run: both label sets in metrics.json, and which one the table compares."""

import json

import numpy as np
import pandas as pd
import pytest

from icdlib.evaluation import evaluate
from icdlib.measure import metrics, uncertainty
from icdlib.report import evaluate as evaluate_report
from icdlib.run.config import Config
from icdlib.run.errors import DataError
from icdlib.evaluation.evaluate import Evaluation, SplitScores
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
    assert rows[f"icdlib test @tuned {ev.results['threshold']:.3f}"] is ev.results["test_tuned_edin"]
    fixed = rows["icdlib test @0.5"]  # under the tuned row: only what the fixed threshold changes
    assert fixed == {k: ev.results["test_edin"][k] for k in (*metrics.THRESHOLD_KEYS, *evaluate.RECORD_KEYS)}
    assert evaluate.compared(ev, "test") is ev.results["test_edin"]


def test_each_metric_once_and_the_model_named_for_its_arm():
    """The fixed-threshold row holds only what the threshold changes (its intervals too); beside an MNTP arm
    the model is named for what it is."""
    ev = toy("none")
    evaluate.score_all(ev, ev.cfg)
    other = {split: s.y_score[:, ::-1].copy() for split, s in ev.splits.items()}
    evaluate.score_comparison(ev, other, "with")
    ev.results["test"]["ci95"] = {"f1_micro": [0.1, 0.2], "map": [0.3, 0.4]}
    rows = evaluate.systems(ev)
    t, arm = ev.results["threshold"], ev.results["with_mntp"]["threshold"]
    assert list(rows) == [f"icdlib without MNTP val @tuned {t:.3f}", "icdlib without MNTP val @0.5",
                          f"icdlib without MNTP test @tuned {t:.3f}", "icdlib without MNTP test @0.5",
                          f"icdlib with MNTP val @tuned {arm:.3f}", f"icdlib with MNTP test @tuned {arm:.3f}"]
    fixed = rows["icdlib without MNTP test @0.5"]
    assert "map" not in fixed and "auroc_micro" not in fixed and fixed["f1_micro"] == ev.results["test"]["f1_micro"]
    assert fixed["ci95"] == {"f1_micro": [0.1, 0.2]}
    table = evaluate_report.metrics_table(rows, names=False)
    assert table.loc["icdlib without MNTP test @0.5"].dropna().index.tolist() == ["f1_macro", "f1_macro_caml",
                                                                                  "f1_micro"]
    assert evaluate_report.metrics_dashes(rows) == ["in a fixed-threshold row (@0.5), a ranking metric, which the "
                                           "threshold does not change (the row above gives it)"]


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
    text = evaluate_report.metrics_caption(evaluate.compared(ev, "test"), "test", "edin_mimic4_icd10")
    assert text.startswith("Split test · n_docs 4 · n_labels 4 (codes with a positive in the split, documents with "
                           "a positive (Edin et al.); AUROC over every code and document, as their code) · "
                           "n_labels_scored 4 ")


# ---------------------------------------------------------------- the frequency prior and the intervals

N_TRAIN = [3, 2, 2, 1, 0, 0]  # train admissions per code, of 4


def with_references(benchmark: str = "none") -> Evaluation:
    """The toy scored as step 04 scores a run: the model, a baseline, the frequency prior and an MNTP arm."""
    ev = toy(benchmark)
    ev.labels = ev.labels.assign(n_train=N_TRAIN)
    ev.train = pd.DataFrame({"hadm_id": range(100, 104)})
    evaluate.score_all(ev, ev.cfg)
    evaluate.score_baseline(ev, {split: np.clip(s.y_score[:, ::-1], 0, 1) for split, s in ev.splits.items()})
    evaluate.score_prior(ev)
    evaluate.score_comparison(ev, {split: s.y_score ** 2 for split, s in ev.splits.items()}, "with")
    return ev


def same(a, b) -> bool:
    """Equal, nan meaning nan (what metrics.json writes as null)."""
    return evaluate._jsonable(a) == evaluate._jsonable(b)


def test_prior_scores_are_each_codes_share_of_the_train_admissions():
    scores = evaluate.prior_scores(np.array([3, 1, 0]), 4, 2)
    assert scores.dtype == np.float32 and scores.tolist() == [[0.75, 0.25, 0.0], [0.75, 0.25, 0.0]]
    with pytest.raises(DataError, match="the run's train split is empty"):
        evaluate.prior_scores(np.array([1]), 0, 2)


def test_the_prior_is_scored_like_the_baseline():
    ev = with_references()
    prior = ev.results["prior"]
    assert set(prior) == {"threshold", "val_tuned", "val_tuned_edin", "test_tuned", "test_tuned_edin"}
    share = np.array(N_TRAIN) / 4
    assert ev.prior["test"].tolist() == [share.tolist()] * 4
    assert prior["threshold"] == metrics.tune_threshold(ev.splits["val"].y_true, np.tile(share, (5, 1)))
    assert prior["test_tuned"] == metrics.compute(TOY_Y, np.tile(share, (4, 1)), prior["threshold"])
    # By hand: 8 positives, 16 negatives; c0's 2 positives (0.75) beat 14 negatives and tie 2, c1/c2's 4
    # (0.5) beat 10 and tie 4, c3's 2 (0.25) beat 8 and tie 2: (2*15 + 4*12 + 2*9) / (8*16) = 96/128.
    assert prior["test_tuned"]["auroc_micro"] == pytest.approx(0.75)
    assert prior["test_tuned"]["auroc_macro"] == pytest.approx(0.5)  # one score per code: no ranking within it
    rows = evaluate.systems(ev)
    assert rows[f"frequency prior test @tuned {prior['threshold']:.3f}"] is prior["test_tuned"]
    assert rows[f"TF-IDF low-rank baseline test @tuned {ev.results['baseline']['threshold']:.3f}"] is \
        ev.results["baseline"]["test_tuned"]


def test_intervals_and_paired_differences_in_metrics_json():
    ev = with_references()
    record = evaluate.score_intervals(ev, 200)
    assert record == {"resamples": 200, "level": 0.95, "seed": 0, "split": "test", "label_set": "all", "suffix": ""}
    r, tuned = ev.results, ev.results["threshold"]
    assert r["bootstrap"] is record
    carriers = {"model @0.5": r["test"], "model @tuned": r["test_tuned"], "baseline": r["baseline"]["test_tuned"],
                "prior": r["prior"]["test_tuned"], "with_mntp": r["with_mntp"]["test_tuned"]}
    for name, m in carriers.items():
        assert set(m["ci95"]) == set(uncertainty.INTERVAL_METRICS), name
        for key in ("auroc_micro", "auprc_micro", "f1_micro", "map", "p_at_5", "r_precision"):
            lo, hi = m["ci95"][key]
            assert lo <= m[key] <= hi, (name, key)
    # the intervals are uncertainty's, on the same fixed draws for every system
    how = {"n_resamples": 200, "seed": evaluate.BOOTSTRAP_SEED}
    assert same(r["test_tuned"]["ci95"], uncertainty.intervals(TOY_Y, TOY_S, tuned, **how))
    assert same(r["test"]["ci95"], uncertainty.intervals(TOY_Y, TOY_S, 0.5, **how))
    assert same(r["prior"]["test_tuned"]["ci95"],
                uncertainty.intervals(TOY_Y, ev.prior["test"], r["prior"]["threshold"], **how))
    # only the reported split, under the label set the table compares
    assert not any("ci95" in m for m in (r["val"], r["val_tuned"], r["test_edin"], r["test_tuned_edin"],
                                         r["baseline"]["val_tuned"], r["with_mntp"]["test"]))
    assert set(r["paired"]) == {"model - baseline", "model - prior", "model - with_mntp"}
    for key in ("baseline", "prior", "with_mntp"):
        for metric, d in r["paired"][f"model - {key}"].items():
            expected = r["test_tuned"][metric] - r[key]["test_tuned"][metric]
            assert d["diff"] == pytest.approx(expected, nan_ok=True), (key, metric)
    assert same(r["paired"]["model - baseline"],
                uncertainty.paired(TOY_Y, TOY_S, ev.baseline["test"], tuned, r["baseline"]["threshold"], **how))
    written = json.loads(json.dumps(evaluate._jsonable(r)))  # what metrics.json holds: lists, nan as null
    assert written["test_tuned"]["ci95"]["map"] == list(r["test_tuned"]["ci95"]["map"])
    assert written["test_tuned"]["ci95"]["auroc_macro"] == [None, None]  # undefined on a resample of 4 documents
    assert written["bootstrap"]["resamples"] == 200


def test_intervals_follow_the_compared_label_set():
    ev = with_references("edin_mimic4_icd10")
    evaluate.score_intervals(ev, 50)
    r = ev.results
    assert (r["bootstrap"]["label_set"], r["bootstrap"]["suffix"]) == ("edin", "_edin")
    assert "ci95" in r["test_tuned_edin"] and "ci95" in r["prior"]["test_tuned_edin"] and "ci95" not in r["test_tuned"]
    assert same(r["test_tuned_edin"]["ci95"],
                uncertainty.intervals(TOY_Y, TOY_S, r["threshold"], n_resamples=50, seed=0, label_set="edin"))
    assert r["paired"]["model - prior"]["map"]["diff"] == pytest.approx(
        r["test_tuned_edin"]["map"] - r["prior"]["test_tuned_edin"]["map"])


def test_no_intervals_when_bootstrap_is_0():
    ev = with_references()
    assert evaluate.score_intervals(ev, 0)["resamples"] == 0
    assert "paired" not in ev.results and not any("ci95" in m for m in evaluate.systems(ev).values())


def test_jsonable_writes_intervals_as_lists():
    assert evaluate._jsonable({"ci95": {"map": (np.float64(0.25), float("nan"))}}) == {"ci95": {"map": [0.25, None]}}
