"""Runs compared side by side (`icdlib.compare`, `python -m icdlib compare`, notebook 06_compare).

Two tiny runs on one twin, through the step functions: run `a` (conftest's `done`, built once for
the suite, copied here), and `b`, a copy of `a` fine-tuned again with another learning rate (same
data, same test admissions).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icdlib import compare, pipeline, steps
from icdlib.run import config
from icdlib.evaluation import evaluate
from icdlib.measure import metrics, uncertainty
from icdlib.run.errors import DataError
from test_run_record import FAST

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(done, tmp_path_factory):
    """(output root, Config of a, Config of b): a is conftest's finished run `done` (FAST at lr 1e-3,
    tiny.yaml's) copied into the output root as a; b is a's data fine-tuned at lr 3e-3 instead."""
    assert {k: getattr(done, k) for k in (*FAST, "lr")} == {**FAST, "lr": 1.0e-3}
    root = tmp_path_factory.mktemp("compare") / "out"
    shutil.copytree(done.run_dir, root / "a", ignore=shutil.ignore_patterns("reports"))  # as the steps left it
    a = dataclasses.replace(done, **config.located(done, root / "a"))
    shutil.copytree(a.run_dir, root / "b")
    b = dataclasses.replace(a, run="b", lr=3.0e-3)
    steps.s03_train(b, progress=False)
    steps.s04_evaluate(b)
    return root, a, b


def side(name, codes=("401.9", "428.0"), truth=None, **cfg):
    """A run as `mismatch` sees it, made by hand."""
    truth = truth if truth is not None else {1: ("401.9",), 2: ("428.0",), 3: ("401.9", "428.0")}
    return compare.Side(name=name, cfg=config.Config(**cfg), metrics={"threshold": 0.5}, codes=list(codes),
                        truth=pd.Series(truth), split="test")


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("b, line", [
    (side("b", benchmark="caml_full"), "cannot compare runs a and b: benchmark differs (a: none, b: caml_full)"),
    (side("b", dataset="mimic4_icd10"), "cannot compare runs a and b: dataset differs (a: mimic3, b: mimic4_icd10)"),
    (side("b", split="seed"), "cannot compare runs a and b: split differs (a: patient, b: seed)"),
    (side("b", codes=("401.9", "428.0", "584.9")),
     "cannot compare runs a and b: their label spaces differ (01_preprocess/labels.parquet: 2 codes in a, 3 in b; "
     "1 in one only, e.g. 584.9 only in b)"),
    (side("b", codes=("401.9", "V58.61")),
     "cannot compare runs a and b: their label spaces differ (01_preprocess/labels.parquet: 2 codes in a, 2 in b; "
     "2 in one only, e.g. 428.0 only in a)"),
    (side("b", truth={1: ("401.9",), 2: ("428.0",), 4: ("428.0",)}),
     "cannot compare runs a and b: their test admissions differ (03_train/predictions_test.npz: 3 in a, 3 in b; "
     "2 in one only, e.g. hadm_id 3 only in a)"),
    (side("b", truth={1: ("401.9",), 2: ("428.0",), 3: ("401.9",)}),
     "cannot compare runs a and b: the codes of their test admissions differ (01_preprocess/notes.parquet: 1 of 3 "
     "admissions, e.g. hadm_id 3)"),
    (side("b", truth={3: ("401.9", "428.0"), 1: ("401.9",), 2: ("428.0",)}, lr=3.0e-3), ""),  # order, lr: comparable
])
def test_runs_that_differ_are_refused_naming_the_difference(b, line):
    assert compare.mismatch(side("a"), b) == line


def test_runs_are_found_by_name_or_folder_and_refused_in_one_line(runs, tmp_path, monkeypatch):
    root, a, _ = runs
    monkeypatch.chdir(tmp_path)
    assert compare.run_folder("a", str(root)) == a.run_dir
    assert compare.run_folder(os.path.relpath(a.run_dir)) == a.run_dir  # a relative path, from anywhere
    with pytest.raises(DataError) as e:
        compare.run_folder("nope", str(root))
    assert str(e.value) == (f"no run nope: neither {root / 'nope'} nor nope is a run folder (holding config.json); "
                            f"name a run under --output-root, or give its folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"^run folder \./empty holds no config.json \(step 01 has not run there\)$"):
        compare.run_folder("./empty")
    with pytest.raises(DataError) as e:
        compare.open_runs(["a", str(a.run_dir)], str(root))
    assert str(e.value) == f"a and {a.run_dir} name the same run folder ({a.run_dir}): compare two runs"
    with pytest.raises(DataError, match=r"^a and a name the same run folder"):
        compare.open_runs(["a", "a"], str(root))
    with pytest.raises(DataError, match=r"^compare needs at least two runs, got 1"):
        compare.open_runs(["a"], str(root))


def test_a_run_without_metrics_of_its_current_model_is_refused_with_the_command(runs, tmp_path):
    root, a, _ = runs
    shutil.copytree(a.run_dir, tmp_path / "c")
    (tmp_path / "c" / "04_evaluate" / "metrics.json").unlink()
    with pytest.raises(DataError) as e:
        compare.open_runs([str(a.run_dir), str(tmp_path / "c")])
    assert str(e.value) == (f"cannot compare run c: no metrics of its current model (04_evaluate has not run for this "
                            f"run): run python -m icdlib run --backbone tiny --run c --output-root {tmp_path} --only 04")


def test_what_the_runs_recorded_is_compared_before_anything_else_is_read(runs, tmp_path):
    """d records another split (its config.json) and has no metrics: the split is named."""
    root, a, _ = runs
    shutil.copytree(a.run_dir, tmp_path / "d")
    recorded = json.loads((tmp_path / "d" / "config.json").read_text())
    (tmp_path / "d" / "config.json").write_text(json.dumps({**recorded, "split": "seed"}))
    (tmp_path / "d" / "04_evaluate" / "metrics.json").unlink()
    with pytest.raises(DataError) as e:
        compare.open_runs([str(a.run_dir), str(tmp_path / "d")])
    assert str(e.value) == "cannot compare runs a and d: split differs (a: patient, d: seed)"


def test_runs_with_another_label_space_are_refused_through_the_cli(runs, tmp_path):
    """c: a's twin preprocessed again with min_count 1 (a: 3), then trained and scored."""
    root, a, _ = runs
    shutil.copytree(a.run_dir, tmp_path / "c")
    c = dataclasses.replace(a, output_root=str(tmp_path), run="c", min_count=1)
    steps.s01_preprocess(c, progress=False)
    steps.s03_train(c, progress=False)
    steps.s04_evaluate(c)
    codes = {name: pd.read_parquet(run / "01_preprocess" / "labels.parquet")["code"].tolist()
             for name, run in (("a", a.run_dir), ("c", c.run_dir))}
    only = sorted(set(codes["c"]) - set(codes["a"]))
    assert only and not set(codes["a"]) - set(codes["c"])
    done = subprocess.run([sys.executable, "-m", "icdlib", "compare", str(a.run_dir), "c", "--output-root",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"icdlib: error: cannot compare runs a and c: their label spaces differ (01_preprocess/labels.parquet: "
        f"{len(codes['a'])} codes in a, {len(codes['c'])} in c; {len(only)} in one only, e.g. {only[0]} only in c)"]
    assert not (tmp_path / "comparisons").exists()


# ---------------------------------------------------------------- the numbers

def test_the_paired_result_is_uncertainty_paired_on_the_runs_predictions(runs):
    root, a, b = runs
    result = compare.score(compare.load(["a", "b"], str(root)), resamples=200, seed=3)
    ev = {r.run: evaluate.load(r) for r in (a, b)}
    y = ev["a"].splits["test"].y_true
    thresholds = {r: json.loads((root / r / "04_evaluate" / "metrics.json").read_text())["threshold"] for r in "ab"}
    scores = {r: ev[r].splits["test"].y_score for r in "ab"}
    expected = uncertainty.paired(y, scores["a"], scores["b"], thresholds["a"], thresholds["b"], n_resamples=200,
                                  seed=3, label_set="all")
    (pair,) = result["paired"]
    assert (pair["a"], pair["b"]) == ("a", "b") and set(pair["metrics"]) == set(uncertainty.INTERVAL_METRICS)
    for m, d in expected.items():
        for key in ("diff", "lo", "hi"):
            want = None if np.isnan(d[key]) else d[key]
            assert pair["metrics"][m][key] == pytest.approx(want), (m, key)
        assert pair["metrics"][m]["verdict"] == {1: "a better", -1: "b better", 0: ""}[uncertainty.excludes_zero(d)]
    for r in "ab":  # each run's figures: 04's own at its tuned threshold, with uncertainty's intervals
        spans = uncertainty.intervals(y, scores[r], thresholds[r], n_resamples=200, seed=3)
        tuned = json.loads((root / r / "04_evaluate" / "metrics.json").read_text())["test_tuned"]
        for m, (lo, hi) in spans.items():
            got = result["metrics"][r][m]
            assert got["value"] == pytest.approx(tuned[m]), (r, m)
            assert (got["lo"], got["hi"]) == ((None, None) if np.isnan(lo) else (pytest.approx(lo), pytest.approx(hi)))
    assert result["scored"] == {"split": "test", "n_docs": y.shape[0], "n_labels": y.shape[1], "label_set": "all",
                                "label_set_text": metrics.LABEL_SETS["all"], "resamples": 200, "seed": 3,
                                "level": 0.95}


# A toy of 4 admissions and 2 codes, worked by hand. Model A at threshold 0.5, model B at 0.65.
Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
A = np.array([[0.9, 0.2], [0.4, 0.7], [0.3, 0.6], [0.1, 0.8]])
B = np.array([[0.6, 0.1], [0.7, 0.2], [0.2, 0.9], [0.3, 0.3]])
LABELS = pd.DataFrame({"code": ["401.9", "428.0"], "short_title": ["Hypertension NOS", "CHF NOS"], "n_train": [7, 5]})


def test_per_code_differences_on_a_toy_equal_a_hand_computation():
    table = compare.code_differences(Y, A, B, 0.5, 0.65, LABELS)
    # 401.9: A predicts docs 0 (TP); B predicts doc 1 (FP). AUPRC: A ranks P N P N, B N P N P.
    # 428.0: A predicts docs 1, 2 (TP), 3 (FP); B predicts doc 2 (TP). AUPRC: A ranks N P P N, B P N P N.
    f1_a, f1_b = [2 / 3, 4 / 5], [0.0, 2 / 3]
    auprc_a, auprc_b = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2], [(1 / 2 + 2 / 4) / 2, (1 + 2 / 3) / 2]
    assert table["code"].tolist() == ["401.9", "428.0"] and table["support"].tolist() == [2, 2]
    assert table["f1_a"].tolist() == pytest.approx(f1_a) and table["f1_b"].tolist() == pytest.approx(f1_b)
    assert table["f1_diff"].tolist() == pytest.approx([2 / 3, 2 / 15])
    assert table["auprc_a"].tolist() == pytest.approx(auprc_a) and table["auprc_b"].tolist() == pytest.approx(auprc_b)
    assert table["auprc_diff"].tolist() == pytest.approx([1 / 3, -1 / 4])
    assert compare.largest(table, "auprc")["code"].tolist() == ["401.9", "428.0"]  # |1/3| > |-1/4|
    assert compare.largest(table, "f1", min_support=3).empty


def test_disagreements_on_a_toy_equal_a_hand_computation():
    counts, codes = compare.disagreements(Y, A, B, 0.5, 0.65, LABELS)
    # only A: (0, 401.9) true, (1, 428.0) true, (3, 428.0) false; only B: (1, 401.9) false; both: (2, 428.0)
    assert counts == {"n_docs": 4, "both": 1, "only_a": 3, "only_a_true": 2, "only_b": 1, "only_b_true": 0,
                      "admissions": 3}
    assert codes[["code", "support", "only_a", "only_a_true", "only_b", "only_b_true"]].values.tolist() == [
        ["401.9", 2, 1, 1, 1, 0], ["428.0", 2, 2, 1, 0, 0]]


# ---------------------------------------------------------------- the command, end to end

def test_compare_writes_a_shareable_report_and_the_output_root_index(runs, tmp_path):
    """From another working directory: run a given as a relative path, b by name under a relative
    --output-root."""
    root, a, b = runs
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    rel_root = os.path.relpath(root, cwd)
    done = subprocess.run([sys.executable, "-m", "icdlib", "compare", f"{rel_root}/a", "b", "--output-root", rel_root,
                           "--resamples", "100", "--quiet"], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = root / "comparisons" / "a_vs_b"
    assert sorted(p.name for p in folder.iterdir()) == ["06_compare.html", "06_compare.ipynb", "comparison.json"]
    result = json.loads((folder / "comparison.json").read_text())
    assert [r["name"] for r in result["runs"]] == ["a", "b"] and result["scored"]["resamples"] == 100
    assert f"[icdlib] {result['summary'][0]}" in done.stdout.splitlines()
    page = (folder / "06_compare.html").read_text()
    assert page.count("How to read it") == 6 and page.count('src="data:image/png') == 1
    assert "Traceback" not in page and "Warning" not in page
    nb = json.loads((folder / "06_compare.ipynb").read_text())
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
        for output in cell["outputs"]:
            assert output["output_type"] != "error" and output.get("name") != "stderr", output
    index = (root / "index.html").read_text()
    assert "href='a/reports/index.html'" not in index  # a and b were made without reports: no link to none
    assert ">a</td>" in index and ">b</td>" in index and "href='comparisons/a_vs_b/06_compare.html'" in index
    assert result["summary"][0] in index
    for text in (page, json.dumps(nb), (folder / "comparison.json").read_text(), index):
        for path in (str(tmp_path), str(root), str(ROOT), os.path.expanduser("~"), "/tmp/"):
            assert path not in text
    assert "&lt;output_root&gt;/a" in page  # the injected parameters, as placeholders


def test_the_output_root_index_links_runs_with_reports(runs, tmp_path):
    root, a, _ = runs
    shutil.copytree(a.run_dir, tmp_path / "x")
    pipeline.write_index(dataclasses.replace(a, output_root=str(tmp_path), run="x"))
    (tmp_path / "not-a-run").mkdir()
    page = pipeline.write_root_index(tmp_path).read_text()
    assert "href='x/reports/index.html'" in page and "not-a-run" not in page
    assert "1 run · 0 comparisons" in page and "None yet: <code>python -m icdlib compare RUN_A RUN_B</code>" in page
