"""icdlib.report's figures and tables (label_stats for 02, train 03, evaluate 04, and shared): figures build,
have the expected axes/lines and titles; tables are right."""

import ast
import io
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from icdlib.evaluation import analysis
from icdlib.report import evaluate as evaluate_report, label_stats, shared, train as train_report

CODES = ["38.93", "401.9", "428.0", "428.30", "96.04", "V58.61", "E888.9", "250.00"]


def make_data():
    """Small notes/labels tables and test-split predictions of two systems."""
    rng = np.random.default_rng(0)
    splits = ["train"] * 60 + ["val"] * 20 + ["test"] * 20
    weights = np.array([8, 30, 20, 5, 10, 3, 1, 12], dtype=float)
    code_lists = []
    for split in splits:
        k = int(rng.integers(1, 5))
        chosen = rng.choice(len(CODES), size=k, replace=False, p=weights / weights.sum())
        codes = sorted(CODES[i] for i in chosen)
        if split == "test" and rng.random() < 0.3:
            codes = sorted(codes + ["999.9"])  # a code never seen in train
        code_lists.append(codes)
    notes = pd.DataFrame({
        "hadm_id": np.arange(100, dtype=np.int64), "subject_id": np.arange(100, dtype=np.int64),
        "split": splits,
        "text": [" ".join(["word"] * int(rng.integers(50, 400))) for _ in splits],
        "codes": code_lists,
    })
    train = notes[notes["split"] == "train"]["codes"].explode().value_counts()
    labels = pd.DataFrame({
        "code": sorted(CODES),
        "kind": ["procedure" if len(c.split(".")[0]) == 2 else "diagnosis" for c in sorted(CODES)],
        "short_title": [f"Short title of {c}" for c in sorted(CODES)],
        "long_title": [f"Long title of {c}" for c in sorted(CODES)],
    })
    labels["n_train"] = [int(train.get(c, 0)) for c in labels["code"]]
    test = notes[notes["split"] == "test"]
    y = np.array([[1.0 if c in cs else 0.0 for c in labels["code"]] for cs in test["codes"]])
    score = np.clip(0.6 * y + 0.5 * rng.random(y.shape), 0, 1)
    baseline = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    return notes, labels, test, y, score, baseline


@pytest.fixture(scope="module")
def data():
    return make_data()


def check(fig, n_axes, title_contains=None):
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes
    titles = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
    assert any(titles), "figure has no title"
    if title_contains:
        assert any(title_contains.lower() in t.lower() for t in titles)
    for ax in fig.axes:
        if ax.get_xticks().size:  # panels that are not "no data" messages carry labels
            assert ax.get_xlabel() or ax.get_ylabel() or ax.get_yticklabels()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)  # renders (layout included) without error
    assert buffer.tell() > 500


def test_data_figures(data):
    notes, labels, *_ = data
    fig = label_stats.label_frequency(labels)
    check(fig, 1, "label frequency")
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    check(label_stats.codes_per_admission(notes), 1, "codes per admission")
    check(label_stats.note_lengths(notes), 1, "note length")
    check(label_stats.note_lengths(notes, token_counts=np.arange(len(notes)) * 3), 2, "tokens")
    check(label_stats.top_codes_plot(labels, n=5), 1, "top 5")
    check(label_stats.top_codes_plot(labels, n=5, n_admissions=60), 1)
    check(label_stats.kind_share(notes, labels), 1, "procedure")
    check(label_stats.split_balance(notes, ["401.9", "428.0"]), 1, "per split")
    fig = label_stats.split_balance(notes, ["401.9"])
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    expected = [notes.loc[notes["split"] == s, "codes"].map(lambda c: "401.9" in c).mean()
                for s in ("train", "val", "test")]
    np.testing.assert_allclose(heights, expected)


def test_top_codes_table(data):
    notes, labels, *_ = data
    table = label_stats.top_codes(labels, n=3, n_admissions=60)
    assert list(table.columns) == ["code", "kind", "short_title", "n_train", "share"]
    assert len(table) == 3
    assert table["n_train"].is_monotonic_decreasing
    assert table.loc[0, "code"] == labels.sort_values("n_train").iloc[-1]["code"]
    assert table.loc[0, "share"] == pytest.approx(table.loc[0, "n_train"] / 60)
    assert "share" not in label_stats.top_codes(labels, n=3).columns


def test_unseen_in_train():
    notes = pd.DataFrame({
        "split": ["train", "train", "val", "test", "test"],
        "codes": [["1.1", "2.2"], ["2.2"], ["1.1", "3.3"], ["3.3", "4.4", "1.1"], ["4.4"]],
    })
    table = shared.unseen_in_train(notes)
    assert list(table.index) == ["val", "test"]
    assert table.loc["val"].to_dict() == {
        "n_admissions": 1, "n_codes": 2, "n_unseen_codes": 1, "n_assignments": 2,
        "n_unseen_assignments": 1, "share_unseen_assignments": 0.5, "n_admissions_affected": 1}
    assert table.loc["test", "n_unseen_codes"] == 2
    assert table.loc["test", "n_unseen_assignments"] == 3
    assert table.loc["test", "n_admissions_affected"] == 2


def test_history():
    steps = np.arange(1, 121)
    history = pd.DataFrame({"step": steps, "epoch": steps // 60, "train_loss": 1 / steps, "lr": 1e-4,
                            "tokens_per_s": 1000.0})
    for metric in ["map", "auroc_micro", "f1_micro", "auprc_micro"]:
        history[f"val_{metric}"] = np.where(steps % 40 == 0, steps / 200, np.nan)
    fig = train_report.history(history)
    check(fig, 2, "training history")
    assert len(fig.axes[0].lines) == 2  # raw and moving mean (> 50 logs)
    assert len(fig.axes[1].lines) == 3  # map, auroc_micro, f1_micro
    fig = train_report.history(history.drop(columns=["val_map", "val_auroc_micro", "val_f1_micro"]))
    check(fig, 2)
    assert len(fig.axes[1].lines) == 0


def test_evaluation_figures(data):
    notes, labels, test, y, score, baseline = data
    fig = evaluate_report.pr_curve({"model": (y, score), "baseline": (y, baseline)})
    check(fig, 1, "precision-recall")
    assert len(fig.axes[0].lines) == 2
    assert "AP" in fig.axes[0].get_legend().get_texts()[0].get_text()
    fig = evaluate_report.threshold_curve(y, score, tuned=0.42)
    check(fig, 1, "threshold")
    assert len(fig.axes[0].lines) == 5
    fig = evaluate_report.calibration(y, score, bins=10)
    check(fig, 2, "calibration")
    assert len(fig.axes[0].lines) == 2
    check(evaluate_report.calibration(y, score, bins=5, strategy="quantile"), 2)
    per_code = analysis.per_code(y, score, labels, 0.5)
    fig = evaluate_report.per_code_vs_frequency(per_code)
    check(fig, 2, "training frequency")
    assert fig.axes[0].get_xscale() == "log"
    fig = evaluate_report.f1_by_frequency_bucket(per_code)
    check(fig, 1, "training frequency")
    assert len(fig.axes[0].patches) == len(shared.frequency_buckets(per_code).query("n_codes > 0"))


def test_one_title_per_figure_and_legends_clear_of_the_data(data):
    notes, labels, test, y, score, baseline = data
    fig = label_stats.note_lengths(notes)
    assert fig._suptitle is None and fig.axes[0].get_title() == "Note length in words (100 notes)"
    fig = evaluate_report.threshold_curve(y, score, tuned=0.42)
    fig.draw_without_rendering()  # lays the figure out (constrained layout) as saving it would
    renderer = fig._get_renderer()
    ax = fig.axes[0]
    assert ax.get_legend() is None and len(fig.legends) == 1  # the curves span the axes: the legend sits below
    assert fig.legends[0].get_window_extent(renderer).y1 <= ax.get_tightbbox(renderer).y0
    assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == ["micro F1", "micro precision", "micro recall"]


def test_per_code_panels_count_the_same_codes():
    """AUPRC needs a positive; F1 is also defined (0) for a code predicted without one: both panels and the
    buckets show the codes with a positive, so their counts agree."""
    per_code = pd.DataFrame({"code": list("abcde"), "n_train": [5, 50, 8, 30, 4], "support": [3, 1, 0, 2, 0],
                             "auprc": [0.5, 0.9, np.nan, 0.2, np.nan], "f1": [0.4, 1.0, 0.0, 0.0, np.nan]})
    fig = evaluate_report.per_code_vs_frequency(per_code)
    assert [ax.get_title() for ax in fig.axes] == ["Per-code AUPRC (3 codes with a positive)",
                                                  "Per-code F1 (3 codes with a positive)"]
    assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, below the panels
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["one code", "mean per frequency bin"]
    buckets = shared.frequency_buckets(per_code, edges=[10])
    assert buckets[["bucket", "n_codes"]].values.tolist() == [["1-10", 1], [">10", 2]]
    assert buckets["mean_f1"].tolist() == pytest.approx([0.4, 0.5])  # c (F1 0, no positive) left out


def test_paired_rows_name_the_model_for_its_arm():
    d = {"map": {"diff": 0.1, "lo": 0.05, "hi": 0.15}}
    paired = {"model - prior": d, "model - with_mntp": d}
    assert list(evaluate_report.paired_table(paired).index) == ["icdlib without MNTP − frequency prior",
                                                                "icdlib without MNTP − icdlib with MNTP"]
    assert evaluate_report.model_name({"without_mntp": {}, "prior": {}}) == "icdlib with MNTP"
    assert evaluate_report.model_name({"prior": {}}) == "icdlib"


def test_pr_curve_subsamples_large_arrays():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 400)) < 0.02).astype(float)
    s = rng.random(y.shape)
    fig = evaluate_report.pr_curve({"random": (y, s)})
    assert len(fig.axes[0].lines[0].get_xdata()) <= 2000


def test_frequency_buckets():
    per_code = pd.DataFrame({
        "n_train": [0, 3, 8, 30, 70, 700, 900],
        "f1": [np.nan, 0.1, 0.3, 0.4, 0.5, 0.8, 0.6],
        "auprc": [np.nan, 0.2, 0.2, 0.5, 0.6, 0.9, 0.7],
    })
    table = shared.frequency_buckets(per_code)
    assert table["bucket"].tolist() == ["0", "1-10", "11-50", "51-100", ">500"]  # 101-500 empty
    assert table["n_codes"].tolist() == [0, 2, 1, 1, 2]
    assert table.loc[1, "mean_f1"] == pytest.approx(0.2)
    assert table.loc[4, "mean_f1"] == pytest.approx(0.7)
    # small data: buckets adapt to the quartiles of n_train
    small = pd.DataFrame({"n_train": [1, 2, 3, 4, 5, 6, 7, 8], "f1": np.linspace(0, 1, 8), "auprc": 0.5})
    adapted = shared.frequency_buckets(small)
    assert len(adapted) >= 3
    assert adapted["n_codes"].sum() == 8


def test_metrics_table():
    result = {"auroc_macro": 0.9, "auroc_micro": 0.98, "auprc_macro": 0.2, "auprc_micro": 0.5,
              "f1_macro": 0.08, "f1_macro_caml": 0.065, "f1_micro": 0.55, "p_at_8": 0.7, "p_at_15": 0.55,
              "r_precision": 0.58, "map": 0.6, "n_docs": 10}
    systems = {"icdlib test @tuned": result, "baseline test @0.5": {"f1_micro": 0.4}}
    table = evaluate_report.metrics_table(systems, benchmark="caml_full", names=False)
    assert list(table.columns) == evaluate_report.TABLE_METRICS
    assert table.loc["icdlib test @tuned", "auroc_micro"] == pytest.approx(0.98)  # fractions, as metrics.json
    assert table.loc["icdlib test @tuned", "map"] == pytest.approx(0.60)
    assert table.loc["icdlib test @tuned", "r_precision"] == pytest.approx(0.58)
    assert evaluate_report.TABLE_METRICS[-3:] == ["p_at_15", "r_precision", "map"]
    assert table.loc["icdlib test @tuned", "f1_macro"] == pytest.approx(0.08)
    assert table.loc["icdlib test @tuned", "f1_macro_caml"] == pytest.approx(0.065)
    assert np.isnan(table.loc["baseline test @0.5", "auroc_micro"])
    caml = "CAML (Mullenbach et al. 2018, MIMIC-III full, CAML split)"
    plm = "PLM-ICD (Huang et al. 2022, MIMIC-III full, CAML split)"
    # published percentages divided by 100
    assert table.loc[caml, "f1_micro"] == pytest.approx(0.539) and table.loc[plm, "p_at_15"] == pytest.approx(0.613)
    # published macro-F1 is CAML's definition: under f1_macro_caml, the Edin cell empty
    for name, value in zip(evaluate_report.REFERENCE_RESULTS["caml_full"], (0.088, 0.099, 0.103, 0.104)):
        assert table.loc[name, "f1_macro_caml"] == pytest.approx(value) and np.isnan(table.loc[name, "f1_macro"]), name
        assert np.isnan(table.loc[name, "r_precision"]), name  # none of the four papers reports it
    assert len(table) == 2 + 4
    assert list(table.index[:2]) == ["icdlib test @tuned", "baseline test @0.5"]
    assert len(evaluate_report.metrics_table({"x": result}, reference=False, benchmark="caml_full")) == 1
    named = evaluate_report.metrics_table(systems)  # the notebook's table: columns that say which macro-F1 is which
    assert list(named.columns) == [evaluate_report.TABLE_NAMES[m] for m in evaluate_report.TABLE_METRICS]
    assert named.loc["icdlib test @tuned", "F1 macro (mean per label, Edin)"] == pytest.approx(0.08)
    assert named.loc["icdlib test @tuned", "F1 macro (CAML: of macro-P and macro-R)"] == pytest.approx(0.065)
    assert named.loc["icdlib test @tuned", "R-precision"] == pytest.approx(0.58)


def test_r_precision_column_shows_a_dash_where_a_paper_does_not_report_it():
    result = {"r_precision": 0.5812, "f1_micro": 0.5}
    html = evaluate_report.metrics_styled({"icdlib test @tuned": result}, {"n_docs": 3}, "test", "caml_full").to_html()
    header = re.findall(r'<th [^>]*class="col_heading[^"]*"[^>]*>([^<]*)</th>', html)
    assert header[0] == "system" and header[-3:] == ["P@15", "R-precision", "MAP"]  # the system: a column, no index
    assert "row_heading" not in html
    rows = {cells[0]: cells for cells in (re.findall(r'<td [^>]*>([^<]*)</td>', row)
                                          for row in re.findall(r"<tr>(.*?)</tr>", html, re.S)) if cells}
    at = header.index("R-precision")
    assert rows["icdlib test @tuned"][at] == "0.581"
    assert [rows[name][at] for name in evaluate_report.REFERENCE_RESULTS["caml_full"]] == ["–"] * 4
    assert "–: a published paper does not report the metric." in html  # the dash's footnote
    edin = evaluate_report.metrics_table({"x": result}, benchmark="edin_mimic4_icd10", names=False)
    assert edin["r_precision"].tolist() == pytest.approx([0.5812, 0.579, 0.572])  # Edin et al.'s R-Prec (PwC)


@pytest.mark.parametrize("benchmark, synthetic, n_rows", [
    ("caml_full", False, 4), ("seed", False, 1), ("none", False, 0), ("caml_50", False, 0),
    ("edin_clean", False, 0), ("caml_full", True, 0), ("seed", True, 0), ("edin_mimic4_icd10", False, 2),
    ("edin_mimic4_icd9", False, 0), ("edin_mimic4_icd10", True, 0)])
def test_reference_rows_only_for_the_runs_own_benchmark(benchmark, synthetic, n_rows):
    table = evaluate_report.metrics_table({"icdlib test @tuned": {"f1_micro": 0.5}}, benchmark=benchmark,
                                          synthetic=synthetic, names=False)
    refs = list(table.index[1:])
    assert len(refs) == n_rows and refs == list(evaluate_report.reference_rows(benchmark, synthetic))
    if benchmark == "caml_full" and n_rows:
        assert all(name.endswith("MIMIC-III full, CAML split)") for name in refs)
        assert [name.split(" (")[0] for name in refs] == ["CAML", "LAAT", "MSMN", "PLM-ICD"]
    if benchmark == "seed" and n_rows:
        assert "LLM2Vec seed project" in refs[0] and table.loc[refs[0], "auprc_micro"] == pytest.approx(0.4741)
        assert table.loc[refs[0], ["f1_micro", "f1_macro", "f1_macro_caml"]].isna().all()
    if benchmark == "edin_mimic4_icd10" and n_rows:
        assert [name.split(" (")[0] for name in refs] == ["PLM-ICD", "LAAT"]
        assert all(name.endswith("(Edin et al. 2023, MIMIC-IV ICD-10, Edin split)") for name in refs)
        assert table.loc[refs[0], ["f1_micro", "f1_macro", "map"]].tolist() == pytest.approx([0.585, 0.211, 0.619])
        assert table.loc[refs, "f1_macro_caml"].isna().all()  # their macro-F1 is the mean per label
    note = evaluate_report.reference_note(benchmark, synthetic)
    if benchmark == "edin_mimic4_icd9" and not synthetic:
        assert "no source at hand gave their numbers" in note
    if synthetic and benchmark.startswith("edin_mimic4"):
        assert "synthetic MIMIC-IV twin (ICD-10)" in evaluate_report.reference_note(benchmark, True, "mimic4_icd10")
    if synthetic:
        assert "synthetic" in note and "no reference rows" in note
    elif benchmark in ("caml_50", "edin_clean"):
        assert note.endswith("no published reference rows are recorded for this benchmark yet.")
    elif benchmark == "none":
        assert "no published reference rows" in note


def test_metrics_caption_states_split_and_counts():
    m = {"n_docs": 3372, "n_labels": 8922, "n_labels_scored": 4075, "f1_micro": 0.5}
    text = evaluate_report.metrics_caption(m, "test", "caml_full")
    assert text.startswith("Split test · n_docs 3,372 · n_labels 8,922 · n_labels_scored 4,075 "
                           "(labels with a positive and a negative in test) · benchmark caml_full.")
    assert evaluate_report.reference_note("caml_full") in text
    assert "n_docs n/a" in evaluate_report.metrics_caption({}, "val")
    styled = evaluate_report.metrics_styled({"icdlib test @tuned": m}, m, "test", "caml_full")
    html = styled.to_html()
    assert "n_labels_scored 4,075" in html and "<caption>" in html
    assert "F1 macro (CAML: of macro-P and macro-R)" in html and "PLM-ICD (Huang et al. 2022" in html
    assert "–" in html  # the published rows' empty Edin macro-F1 cell


def test_caption_counts_are_those_metrics_compute_returns():
    # 3 documents x 3 labels: l0 in every document (no negative), l1 in one, l2 in none -> 1 scored
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]])
    s = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.3], [0.6, 0.4, 0.2]])
    from icdlib.measure import metrics

    m = metrics.compute(y, s)
    assert (m["n_docs"], m["n_labels"], m["n_labels_scored"]) == (3, 3, 1)
    assert "n_docs 3 · n_labels 3 (every code of the label space) · n_labels_scored 1 " in \
        evaluate_report.metrics_caption(m, "val", "seed")
    edin = metrics.compute(y, s, label_set="edin")  # l2 has no positive: Edin et al. rank l0 and l1 only
    assert f"n_docs 3 · n_labels 2 ({metrics.LABEL_SETS['edin']}) · n_labels_scored 1 " in \
        evaluate_report.metrics_caption(edin, "val", "edin_clean")


# ---------------------------------------------------------------- provenance in metrics.json
# `done` (tests/conftest.py): one small 01 → 03 → 04 run, built once for the suite.


def test_metrics_json_written_by_evaluate_run_carries_provenance(done):
    import datetime as dt
    import json
    import subprocess

    from icdlib import pipeline
    from icdlib.run.provenance import PACKAGE_ROOT, file_hash
    from icdlib.run.runfolder import Run

    run = Run.of(done)
    m = json.loads(run.metrics.read_text())
    info = m["provenance"]
    assert set(info) >= {"commit", "dirty", "date", "versions", "device", "platform", "data"}
    assert set(info["versions"]) >= {"python", "torch", "transformers", "peft", "tokenizers"}
    assert info["versions"]["torch"] and info["versions"]["python"]
    assert info["device"].startswith(("cpu", "cuda", "mps"))
    assert dt.datetime.fromisoformat(info["date"]).tzinfo is not None
    assert info["data"] == {"01_preprocess/notes.parquet": file_hash(run.notes),
                            "01_preprocess/labels.parquet": file_hash(run.labels)}
    assert all(info["data"].values())
    head = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert info["commit"] == head.stdout.strip() and isinstance(info["dirty"], bool)
    # what reads metrics.json takes the new key in its stride
    assert pipeline.headline(done).startswith("test (synthetic MIMIC-III twin): 95% bootstrap intervals; ")
    assert "On the test split" in evaluate_report.summary(metrics=m, synthetic=True).text
    assert "On the test split" in pipeline.write_index(done).read_text()
    assert "provenance" not in json.dumps(m["test"]) and set(m["test"]) >= {"n_docs", "n_labels", "n_labels_scored"}
    # 04's table cell on this run (synthetic twin: no reference rows, the caption says why)
    from icdlib.evaluation import evaluate

    ev = evaluate.read(done)
    assert ev.results == m
    html = evaluate_report.metrics_styled(evaluate.systems(ev), ev.results["test"], "test", ev.cfg.benchmark,
                                          ev.cfg.synthetic).to_html()
    assert f"n_docs {m['test']['n_docs']:,} · n_labels {m['test']['n_labels']:,}" in html
    assert "synthetic MIMIC-III twin" in html and "CAML split" not in html and "seed project" not in html


def test_the_two_macro_f1s_are_compared_on_the_run_not_by_a_quoted_figure():
    """04 said "about 20% apart on MIMIC-III full", backed by no number (Edin et al. found about 2x)."""
    shown = evaluate_report.macro_f1_gap({"f1_macro": 0.25, "f1_macro_caml": 0.5176}, "test")
    assert str(shown) == ("On test at the tuned threshold: F1 macro (CAML) 0.518 against F1 macro (mean per label) "
                          "0.250, a ratio of 2.07.")
    assert "undefined" in str(evaluate_report.macro_f1_gap({"f1_macro": float("nan"), "f1_macro_caml": 0.1}, "val"))


def test_a_notebooks_report_module_loads_no_other_notebooks():
    """`icdlib.report` itself is a docstring; importing one notebook's report module loads `shared`
    and `tables` with it, never another notebook's module."""
    root = Path(__file__).resolve().parent.parent
    package = ast.parse((root / "icdlib" / "report" / "__init__.py").read_text()).body
    assert len(package) == 1 and isinstance(package[0], ast.Expr) and isinstance(package[0].value.value, str)
    code = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('icdlib.report'))))")
    for name in ("preprocess", "label_stats", "train", "evaluate", "error_analysis", "compare"):
        done = subprocess.run([sys.executable, "-c", code, f"icdlib.report.{name}"], cwd=root, capture_output=True,
                              text=True, check=True)
        assert done.stdout.split() == sorted(["icdlib.report", f"icdlib.report.{name}", "icdlib.report.shared",
                                              "icdlib.report.tables"])


def test_mntp_section_says_only_what_the_run_holds(monkeypatch):
    """03's MNTP section: without a stage one line and nothing about a figure or a cost table it does not
    show (the demo's 03 once read 'How to read it: left, the MNTP loss' under no figure, then an empty
    table); with a stage the figure and the table, each with its sentence."""
    import IPython.display

    from icdlib.model import mntp

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects: shown.extend(objects))
    text = lambda o: getattr(o, "data", None) or getattr(o, "markdown", None) or ""  # noqa: E731

    train_report.mntp_stage(None, {}, mntp.cost(None, {}, None), "map")
    assert [text(o) for o in shown] == [train_report.NO_MNTP]

    shown.clear()
    stage = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.5, 2.0], "tokens": [64, 64, 64], "wall_s": [1.0, 1.0, 1.0]})
    tuned = pd.DataFrame({"step": [10, 20], "loss": [0.2, 0.1], "val_map": [0.3, 0.4], "wall_s": [2.0, 2.0]})
    cost = mntp.cost(stage, {"with MNTP": tuned}, tuned)
    train_report.mntp_stage(stage, {"with MNTP": tuned}, cost, "map")
    kinds = [type(o).__name__ for o in shown]
    assert kinds[0] == "Figure" and [text(o) for o in shown[1:]] == [
        train_report.MNTP_READING, mntp.cost_text(cost), "", train_report.COST_READING]
    assert "phase" in shown[3]._repr_html_() and len(cost) >= 2
