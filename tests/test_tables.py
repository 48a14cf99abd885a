"""icdlib.report.tables: the one style every report's tables share, on small exact cases."""

import numpy as np
import pandas as pd
import pytest

from icdlib.data import preprocess
from icdlib.report import shared
from icdlib.report import tables


@pytest.mark.parametrize("value, kwargs, shown", [
    (0.365419, {}, "0.365"), (1.153846, {}, "1.154"), (3917.9116, {}, "3,918"), (12.0, {"large": True}, "12"),
    (2e-05, {}, "2.0e-05"), (0.0, {}, "0.000"), (1234567, {}, "1,234,567"), (np.int64(7), {}, "7"),
    (0.3846, {"percent": True}, "38.5%"), (float("nan"), {}, "–"), (None, {}, "–"), (pd.NA, {}, "–"),
    (True, {}, "yes"), (np.bool_(False), {}, "no"), (100535, {"fmt": "{}"}, "100535"),
    (["401.9", "428.0"], {}, "401.9, 428.0"), ("Injection or infusion of oxazolidinone class", {}, "Injection or "
                                                "infusion of oxazolidinone class"),
])
def test_cell(value, kwargs, shown):
    assert tables.cell(value, **kwargs) == shown


def test_index_names_duplicates_and_missing_values():
    per_code = pd.DataFrame({"code": ["401.9", "038.9"], "n_train": [37, 9], "n_test": [6, 2], "support": [6, 2],
                             "f1": [0.545455, 0.0], "precision": [0.375, float("nan")],
                             "tokens_per_s": [3917.9116, 12.5]})
    shown = shared.table(per_code)  # notebooks call it report.table: every report module has it
    assert isinstance(shown, tables.Table)
    # the 0, 1 index dropped; n_test equals support: shown once; human names
    assert list(shown.frame.columns) == ["code", "train admissions", "positives", "F1", "precision", "tokens/s"]
    assert shown.frame.values.tolist() == [["401.9", "37", "6", "0.545", "0.375", "3,918"],
                                           ["038.9", "9", "2", "0.000", "–", "12"]]  # a column reaching 100: 0 decimals
    assert shown.notes == ["–: precision is undefined for a code the model never predicts."]
    html = shown.to_html()
    assert "row_heading" not in html and "NaN" not in html and "–: precision is undefined" in html
    assert 'class="data row1 col4" >–</td>' in html
    # twins that differ are both shown
    assert "admissions with the code" in tables.show(per_code.assign(n_test=[7, 2])).frame.columns


def test_a_named_index_becomes_a_column_and_attrs_say_how_a_table_reads():
    index = pd.Index(["full code", "category"], name="level")
    levels = pd.DataFrame({"n_labels": [38, 30], "f1": [0.389, 0.412]}, index=index)
    levels.attrs.update(caption="Micro F1 by level", names={"f1": "micro-F1"}, columns=["level", "f1"])
    shown = tables.show(levels)
    assert shown.caption == "Micro F1 by level" and list(shown.frame.columns) == ["level", "micro-F1"]
    assert shown.frame["level"].tolist() == ["full code", "category"]
    assert str(shown).splitlines()[0] == "Micro F1 by level"
    assert tables.show(levels, caption="other").caption == "other"
    one_seed = shared.Shown("One seed: no spread.")
    assert tables.show(one_seed) is one_seed  # not a table: shown as it is


def test_text_cells_with_a_dash_get_the_footnote_and_bold_cells():
    table = pd.DataFrame({"F1 micro": ["+0.031 [+0.012, +0.050]", "–"]}, index=pd.Index(["a", "b"], name="difference"))
    bold = pd.DataFrame({"F1 micro": [True, False]}, index=table.index)
    shown = tables.show(table, bold=bold, missing="no interval")
    assert shown.notes == ["–: no interval."]
    html = shown.to_html()
    assert html.count("font-weight: bold") == 1 and "difference" in html


def test_the_stats_table_holds_counts_only():
    stats = {"reused from cache": False, "DIAGNOSES_ICD rows": 1374, preprocess.SEED_SHARE: 0.0, "labels": 38}
    table = preprocess.stats_table(stats)
    assert table.to_dict("list") == {"what": ["DIAGNOSES_ICD rows", "labels"], "count": [1374, 38]}
    assert table.attrs["caption"] == "Built from the source tables (not reused from the cache)."
    shown = shared.table(table)
    assert shown.frame.values.tolist() == [["DIAGNOSES_ICD rows", "1,374"], ["labels", "38"]]
    assert preprocess.stats_table({"reused from cache": True}).attrs["caption"].startswith("Reused from the cache")


def test_ids_keep_their_digits_and_long_labels_are_never_cut():
    sample = pd.DataFrame({"hadm_id": [100535], "subject_id": [84789], "title": ["x" * 300]})
    shown = tables.show(sample)
    assert shown.frame.values.tolist() == [["100535", "84789", "x" * 300]]
    assert list(shown.frame.columns) == ["HADM_ID", "SUBJECT_ID", "title"]
    assert "x" * 300 in shown.to_html() and "x" * 300 in str(shown)
    spans = tables.show(pd.DataFrame({"Admission": [100492], "Begin": [1980], "Score": [13.527]}))  # 05's span table
    assert spans.frame.values.tolist() == [["100492", "1,980", "13.527"]]


def test_a_footnote_ends_once_and_shows_code():
    shown = tables.show(pd.DataFrame({"f1": [float("nan")]}), missing="a ranking metric in the `@0.5` row.")
    assert shown.notes == ["–: a ranking metric in the `@0.5` row."]
    assert "<code>@0.5</code> row.</p>" in shown.to_html()


def test_names_that_are_data_stay_as_they_are():
    assert tables.column_name("n_unseen_codes") == "codes unseen in train"
    assert tables.column_name("val_auroc_micro") == "val AUROC micro"
    assert tables.column_name("some_new_key") == "some new key"
    assert tables.column_name("final_root/r") == "final_root/r" and tables.column_name("% truncated") == "% truncated"
    runs = pd.DataFrame({"demo_lr3": ["0.5 [0.4, 0.6]"]}, index=pd.Index(["MAP"], name="metric"))
    runs.attrs["names"] = {"demo_lr3": "demo_lr3"}  # compare.metrics_table's: a run's name as it is
    assert list(tables.show(runs).frame.columns) == ["metric", "demo_lr3"]
    empty = pd.DataFrame({"a": []})
    empty.attrs["empty"] = "No parameter differs between the runs."
    assert tables.show(empty).notes == ["No parameter differs between the runs."]
