"""icdlib.evaluation.analysis on small hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from icdlib.evaluation import analysis
from icdlib.report import error_analysis, evaluate as evaluate_report
from icdlib.data import labels as labelspace


def label_table(codes, n_train=None):
    return pd.DataFrame({
        "code": codes,
        "kind": [labelspace.kind_of(c) for c in codes],
        "short_title": [f"title {c}" for c in codes],
        "long_title": [f"long title {c}" for c in codes],
        "n_train": n_train if n_train is not None else list(range(len(codes), 0, -1)),
    })


def scores_from(pred):
    """Scores that predict exactly `pred` at threshold 0.5."""
    return np.where(np.asarray(pred) > 0, 0.9, 0.1)


# Confusion case: 6 codes, 5 documents (see the expected counts in the tests).
CODES = ["250.00", "250.01", "401.9", "428.0", "428.30", "428.31"]


def confusion_case():
    def row(codes):
        return [1.0 if c in codes else 0.0 for c in CODES]

    truth = [{"428.30"}, {"428.30", "250.01"}, {"428.31", "428.30"}, {"428.0"}, {"401.9"}]
    predicted = [{"428.0"}, {"428.0", "250.00"}, {"428.0", "428.30"}, {"428.30", "428.31"}, {"250.00"}]
    y = np.array([row(t) for t in truth])
    s = scores_from([row(p) for p in predicted])
    return y, s, label_table(CODES)


def test_category_confusions_hand_computed():
    y, s, labels = confusion_case()
    table = analysis.category_confusions(y, s, labels, 0.5)
    assert list(table.columns) == ["true_code", "predicted_code", "category", "count",
                                   "true_title", "predicted_title"]
    got = list(zip(table["true_code"], table["predicted_code"], table["category"], table["count"]))
    assert got == [
        ("428.30", "428.0", "428", 2),
        ("250.01", "250.00", "250", 1),
        ("428.0", "428.30", "428", 1),
        ("428.0", "428.31", "428", 1),
        ("428.31", "428.0", "428", 1),
    ]
    assert table.loc[0, "true_title"] == "title 428.30"
    assert table.loc[0, "predicted_title"] == "title 428.0"
    assert len(analysis.category_confusions(y, s, labels, 0.5, n=2)) == 2


def test_category_confusions_none():
    y, _, labels = confusion_case()
    table = analysis.category_confusions(y, scores_from(y), labels, 0.5)
    assert table.empty
    assert "true_code" in table.columns


def test_frequent_errors_hand_computed():
    y, s, labels = confusion_case()
    fp, fn = analysis.frequent_errors(y, s, labels, 0.5)
    assert list(fp.columns) == ["code", "title", "count", "n_predicted"]
    assert list(fn.columns) == ["code", "title", "count", "support"]
    assert list(zip(fp["code"], fp["count"], fp["n_predicted"])) == [
        ("428.0", 3, 3), ("250.00", 2, 2), ("428.30", 1, 2), ("428.31", 1, 1)]
    assert list(zip(fn["code"], fn["count"], fn["support"])) == [
        ("428.30", 2, 3), ("250.01", 1, 1), ("401.9", 1, 1), ("428.0", 1, 1), ("428.31", 1, 1)]
    fp2, fn2 = analysis.frequent_errors(y, s, labels, 0.5, n=1)
    assert len(fp2) == 1 and len(fn2) == 1


def test_category_level_3x4():
    codes = ["38.93", "401.9", "428.0", "428.30"]  # categories 38, 401, 428, 428
    labels = label_table(codes)

    def row(cs):
        return [1.0 if c in cs else 0.0 for c in codes]

    y = np.array([row({"428.30", "401.9"}), row({"428.0", "38.93"}), row({"401.9"})])
    pred = np.array([row({"428.0", "401.9"}), row({"428.0"}), row({"401.9", "38.93"})])
    table = analysis.category_level(y, scores_from(pred), labels, 0.5)
    assert list(table.index) == ["full code", "3-digit category"]
    full, cat = table.loc["full code"], table.loc["3-digit category"]
    # full codes: tp 3, fp 2, fn 2
    assert (full["tp"], full["fp"], full["fn"]) == (3, 2, 2)
    assert full["precision"] == pytest.approx(0.6)
    assert full["recall"] == pytest.approx(0.6)
    assert full["f1"] == pytest.approx(0.6)
    assert full["n_labels"] == 4
    # categories: d0 {428,401} vs {428,401}; d1 {428,38} vs {428}; d2 {401} vs {401,38}
    assert (cat["tp"], cat["fp"], cat["fn"]) == (4, 1, 1)
    assert cat["f1"] == pytest.approx(0.8)
    assert cat["n_labels"] == 3


def test_category_level_of_an_icd10_label_space_adds_block_and_chapter():
    codes = ["I50.1", "I50.9", "I10", "0DTJ4ZZ", "0DTJ0ZZ"]  # categories I50, I50, I10, 0DT, 0DT
    table_in = label_table(codes)
    assert table_in["kind"].tolist() == ["diagnosis"] * 3 + ["procedure"] * 2

    def row(cs):
        return [1.0 if c in cs else 0.0 for c in codes]

    # d0: I50.1 coded, I50.9 predicted (right category); d1: I10 coded, I50.9 predicted (right chapter
    # only); d2: 0DTJ4ZZ coded, 0DTJ0ZZ predicted (same root operation on the same body system)
    y = np.array([row({"I50.1"}), row({"I10"}), row({"0DTJ4ZZ"})])
    pred = np.array([row({"I50.9"}), row({"I50.9"}), row({"0DTJ0ZZ"})])
    table = analysis.category_level(y, scores_from(pred), table_in, 0.5)
    assert list(table.index) == ["full code", "3-character category", "ICD-10 block", "ICD-10 chapter"]
    got = {level: (r["n_labels"], r["tp"], r["fp"], r["fn"]) for level, r in table.iterrows()}
    assert got == {"full code": (5, 0, 3, 3), "3-character category": (3, 2, 1, 1), "ICD-10 block": (3, 2, 1, 1),
                   "ICD-10 chapter": (2, 3, 0, 0)}
    assert table.loc["ICD-10 chapter", "f1"] == pytest.approx(1.0)
    text = error_analysis.summary(levels=table).text
    assert "its 3-character category is right moves micro-F1 from 0.000 to 0.667" in text
    assert "At ICD-10 block level it is 0.667 and ICD-10 chapter level it is 1.000." in text


def test_icd9_activity_codes_are_not_a_mix():
    """Issue 22: a MIMIC-III label space with E030 (ICD-9 activity NEC, since 2009) and 00.14 stopped
    step 05 in `category_level`: 'the codes mix ICD-9 ('00.14') and ICD-10 ('E030')'."""
    codes = ["00.14", "E000.0", "E030", "401.9", "E849.7", "E849.0"]
    labels = label_table(codes)
    assert labels["kind"].tolist() == ["procedure"] + ["diagnosis"] * 5

    def row(cs):
        return [1.0 if c in cs else 0.0 for c in codes]

    # d0: E849.7 coded, E849.0 predicted (right category); d1: E030 and 00.14 right; d2: E000.0 missed
    y = np.array([row({"E849.7"}), row({"E030", "00.14"}), row({"E000.0", "401.9"})])
    pred = np.array([row({"E849.0"}), row({"E030", "00.14"}), row({"401.9"})])
    for dataset in ("mimic3", None):
        table = analysis.category_level(y, scores_from(pred), labels, 0.5, dataset=dataset)
        got = {level: (r["n_labels"], r["tp"], r["fp"], r["fn"]) for level, r in table.iterrows()}
        assert got == {"full code": (6, 3, 1, 2), "3-digit category": (5, 4, 0, 1)}
    confusions = analysis.category_confusions(y, scores_from(pred), labels, 0.5)
    assert confusions[["true_code", "predicted_code", "category", "count"]].values.tolist() == [
        ["E849.7", "E849.0", "E849", 1]]


def test_category_level_takes_the_version_from_the_dataset():
    """Forms that fit both versions (undotted E030, E8889) decide nothing; the run's dataset does."""
    codes = ["E030", "E8889"]
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="no code tells ICD-9 from ICD-10"):
        analysis.category_level(y, scores_from(y), label_table(codes), 0.5)
    table = analysis.category_level(y, scores_from(y), label_table(codes), 0.5, dataset="mimic4_icd9")
    assert list(table.index) == ["full code", "3-digit category"]
    cm = ["E03.0", "E03.9", "E11.9"]
    table = analysis.category_level(np.eye(3), scores_from(np.eye(3)), label_table(cm), 0.5, dataset="mimic4_icd10")
    assert table["n_labels"].tolist() == [3, 2, 2, 1]  # E03 and E11; thyroid and diabetes blocks; one chapter
    with pytest.raises(ValueError, match=r"^dataset must be one of mimic3, mimic4_icd9, mimic4_icd10; got 'x'$"):
        analysis.category_level(y, scores_from(y), label_table(codes), 0.5, dataset="x")


def test_per_code_and_rankings():
    y, s, labels = confusion_case()
    table = analysis.per_code(y, s, labels, 0.5)
    assert list(table.columns) == analysis.PER_CODE_COLUMNS
    assert list(table["code"]) == CODES
    by_code = table.set_index("code")
    # 401.9: one positive, never predicted -> f1 0, recall 0, precision undefined
    assert by_code.loc["401.9", "support"] == 1
    assert by_code.loc["401.9", "f1"] == 0.0
    assert np.isnan(by_code.loc["401.9", "precision"])
    # 428.30: true in d0 d1 d2, predicted in d2 d3 -> tp 1, fp 1, fn 2 -> f1 2/5
    assert by_code.loc["428.30", "f1"] == pytest.approx(0.4)
    assert by_code.loc["428.30", "n_test"] == 3
    assert by_code.loc["428.30", "title"] == "title 428.30"
    # 250.00: no positive -> excluded from rankings with min_support=1
    worst = analysis.worst_codes(table, n=3, min_support=1)
    best = analysis.best_codes(table, n=10, min_support=1)
    assert "250.00" not in set(worst["code"]) | set(best["code"])
    assert list(worst["f1"]) == sorted(worst["f1"])
    assert list(best["f1"]) == sorted(best["f1"], reverse=True)
    assert best.loc[0, "code"] == "428.30"
    # 5 codes ranked: each table at most 2 of them, so no code is both best and worst
    assert len(worst) == len(best) == 2 and not set(worst["code"]) & set(best["code"])
    assert analysis.per_code(y, s, labels, 0.5, n_test=np.arange(6))["n_test"].tolist() == list(range(6))


def test_rankings_need_min_support_positives_and_show_them():
    """Codes with fewer than MIN_SUPPORT positives are not ranked: one admission moves their F1 too far."""
    n_docs, supports = 40, [40, 30, 20, 12, 10, 9, 3, 1]  # codes c0..c7; c5-c7 below MIN_SUPPORT (10)
    y = np.zeros((n_docs, len(supports)))
    for j, k in enumerate(supports):
        y[:k, j] = 1
    hits = [40, 15, 20, 3, 10, 9, 3, 1]  # true positives of each code; c5-c7 perfect (F1 1)
    pred = np.zeros_like(y)
    for j, k in enumerate(hits):
        pred[:k, j] = 1
    codes = [f"V{j}" for j in range(len(supports))]
    table = analysis.per_code(y, scores_from(pred), label_table(codes, n_train=[100] * len(codes)), 0.5)
    assert analysis.MIN_SUPPORT == 10
    best, worst = analysis.best_codes(table), analysis.worst_codes(table)
    assert list(best.columns) == analysis.RANKED_COLUMNS
    assert best[["code", "support", "f1"]].values.tolist() == [["V0", 40, 1.0], ["V2", 20, 1.0]]  # 5 ranked: 2 each
    assert worst[["code", "support"]].values.tolist() == [["V3", 12], ["V1", 30]]  # F1 0.4, then 2/3
    assert worst["f1"].tolist() == pytest.approx([6 / 15, 30 / 45])
    # ties (F1 1, AUPRC 1) go to the code with more positives: V0 (40) before V7 (1)
    assert analysis.best_codes(table, n=3, min_support=1)["code"].tolist() == ["V0", "V2", "V4"]


def test_ranked_codes_note_says_among_how_many():
    per_code = pd.DataFrame({"support": [12, 10, 9, 1, 0]})
    assert error_analysis.ranked_codes_note(per_code, 10, "test").markdown == (
        "Ranked among the 2 codes with at least 10 positives in test (of 4 with a positive), each table at most "
        "half of them: with fewer positives, one admission moves a code's F1 too far for its rank to mean anything.")
    assert error_analysis.ranked_codes_note(per_code, 11, "val").markdown.startswith(
        "No ranking: 1 of the 4 codes with a positive in val has 11 or more (the most: 12); ")


def test_errors_by_n_codes_and_length():
    y, s, _ = confusion_case()
    notes = pd.DataFrame({
        "text": ["a b", "a b c d", "a b c d e f", "a b c d e f g h", "a"],
        "codes": [["428.30"], ["428.30", "250.01"], ["428.31", "428.30"], ["428.0"], ["401.9", "V58.61", "E888.9"]],
    })
    table = analysis.errors_by(notes, y, s, 0.5, by="n_codes", bins=5)
    assert table["n_docs"].sum() == 5
    # per-document: d0 tp0 fp1 fn1; d1 tp0 fp2 fn2; d2 tp1 fp1 fn1; d3 tp0 fp2 fn1; d4 tp0 fp1 fn1
    one_code = table[table["max"] == 1].iloc[0]
    assert one_code["n_docs"] == 2  # d0 and d3
    assert one_code["mean_errors"] == pytest.approx((2 + 3) / 2)
    assert one_code["micro_f1"] == 0.0
    length = analysis.errors_by(notes, y, s, 0.5, by="length", bins=5)
    assert length["n_docs"].tolist() == [1, 1, 1, 1, 1]
    assert length["min"].tolist() == [1, 2, 4, 6, 8]
    assert length.loc[3, "mean_doc_f1"] == pytest.approx(2 / 4)  # 6 words: d2
    with pytest.raises(ValueError):
        analysis.errors_by(notes, y, s, 0.5, by="colour")


def test_vectorised_at_scale_is_fast():
    rng = np.random.default_rng(0)
    n_docs, n_labels = 400, 2000
    codes = [f"{100 + i // 10}.{i % 10}" for i in range(n_labels)]
    labels = label_table(codes, n_train=rng.integers(0, 100, n_labels).tolist())
    y = (rng.random((n_docs, n_labels)) < 0.01).astype(float)
    s = np.clip(y * 0.4 + rng.random((n_docs, n_labels)) * 0.6, 0, 1)
    table = analysis.category_confusions(y, s, labels, 0.5, n=5)
    assert len(table) == 5 and (table["count"] >= 1).all()
    level = analysis.category_level(y, s, labels, 0.5)
    assert level.loc["3-digit category", "n_labels"] == 200


# Near misses: 6 codes in 3 categories (428: 428.0, 428.30, 428.9; 401: 401.9; 38: 38.91, 38.93), 7 documents.
NEAR_CODES = ["428.0", "428.30", "428.9", "401.9", "38.91", "38.93"]
NEAR_CASE = [  # (true, predicted) -> the outcome of each missed true code
    ({"428.30", "401.9"}, {"428.0", "401.9"}),  # 428.30: near miss (428.0 wrong)
    ({"428.0", "428.30"}, {"428.0"}),  # 428.30: category through another true code (428.0, right)
    ({"38.93"}, {"401.9"}),  # 38.93: category not predicted (401.9 is a wrong guess elsewhere)
    ({"38.91", "38.93", "428.0"}, {"38.93", "428.30"}),  # 38.91: through 38.93 (right); 428.0: near (428.30)
    ({"401.9"}, set()),  # 401.9: not predicted
    ({"38.91"}, {"38.93"}),  # 38.91: near miss
    ({"428.0", "428.30"}, {"428.0", "428.9"}),  # 428.30: a wrong (428.9) and a right (428.0) sibling: near miss
]


def near_case():
    def row(cs):
        return [1.0 if c in cs else 0.0 for c in NEAR_CODES]

    y = np.array([row(t) for t, _ in NEAR_CASE])
    return y, scores_from(np.array([row(p) for _, p in NEAR_CASE])), label_table(NEAR_CODES)


def test_near_misses_sorts_every_missed_true_code_by_what_its_category_got():
    y, scores, labels = near_case()
    table = analysis.near_misses(y, scores, labels, 0.5)
    assert list(table.index) == analysis.NEAR_MISS_OUTCOMES
    assert table["n"].tolist() == [4, 2, 2]  # 8 false negatives
    assert table["share"].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert int(table["n"].sum()) == analysis.category_level(y, scores, labels, 0.5).loc["full code", "fn"]
    nothing_missed = analysis.near_misses(y, np.where(y > 0, 0.9, 0.1), labels, 0.5)
    assert nothing_missed["n"].tolist() == [0, 0, 0] and nothing_missed["share"].isna().all()


def test_summary_states_near_misses_measured_not_inferred():
    y, scores, labels = near_case()
    levels = analysis.category_level(y, scores, labels, 0.5)
    near = analysis.near_misses(y, scores, labels, 0.5)
    text = error_analysis.summary(levels=levels, near_misses=near).text
    full, cat = levels.loc["full code", "f1"], levels.loc["3-digit category", "f1"]
    assert f"its 3-digit category is right moves micro-F1 from {full:.3f} to {cat:.3f}." in text
    assert ("Of the 8 true codes the model missed at the tuned threshold, 50% are near misses (a wrong code of the "
            "same 3-digit category predicted for that admission), 25% had their category predicted only through "
            "other true codes, and 25% had no code of their category predicted.") in text
    assert "many errors" not in error_analysis.summary(levels=levels).text  # no inference from the F1 gain alone


def test_outside_label_space_counts_what_the_targets_drop():
    notes = pd.DataFrame({"split": ["train", "train", "test", "test", "test"],
                          "codes": [["401.9", "428.0"], ["V15.82"], ["401.9", "584.9", "V15.82"], ["584.9"],
                                    ["428.0", "401.9"]]})
    table = analysis.outside_label_space(notes, label_table(["401.9", "428.0"]))
    assert list(table.index) == ["train", "test"] and list(table.columns) == analysis.OUTSIDE_COLUMNS
    assert table.loc["test"].tolist() == [3, 4, 2, 6, 3, 0.5, 1]  # 584.9 twice and V15.82 out; [584.9]: none left
    assert table.loc["train"].tolist() == [2, 3, 1, 3, 1, pytest.approx(1 / 3), 1]
    text = evaluate_report.label_space_dropped(table, "test", n_labels=2).text
    assert text == ("In test, 3 of the 6 code assignments (50.0%) fall outside the 2-code label space (2 of the "
                    "split's 4 distinct codes): they are not in the targets, so recall, F1 and the ranking metrics are "
                    "over the other 3. 1 of the 3 admissions has no code left in the label space (P@k, R-precision and "
                    "MAP leave it out).")
    html = evaluate_report.label_space_dropped(table, "test", n_labels=2).html
    assert html.startswith("<p>In test, 3 of the 6 code assignments (50.0%)") and ">50.0%</td>" in html
    inside = analysis.outside_label_space(notes, label_table(["401.9", "428.0", "584.9", "V15.82"]))
    assert evaluate_report.label_space_dropped(inside, "test", n_labels=4).text == (
        "In test, every code assignment is in the 4-code label space: recall is over all of them.")
