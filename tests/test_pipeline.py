"""The whole chain 01→05 through papermill (via `python -m icdlib run`) on the synthetic twin."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_PARAMS = ["synth_admissions=600"]


def icdlib(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "icdlib", *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    args = ["run", "--backbone", "tiny", "--run", "t", "--output-root", str(root), "--quiet"]
    for p in RUN_PARAMS:
        args += ["-p", p]
    done = icdlib(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "t", done.stdout


def test_run_folder_follows_the_contract(demo_run):
    run_dir, stdout = demo_run
    for rel in ("config.json", "01_preprocess/notes.parquet", "01_preprocess/labels.parquet", "03_train/history.csv",
                "03_train/predictions_val.npz", "03_train/predictions_test.npz", "03_train/best/icdlib.json",
                "03_train/best/head.safetensors", "03_train/last/trainer_state.pt", "04_evaluate/metrics.json",
                "04_evaluate/per_code.parquet"):
        assert (run_dir / rel).is_file(), rel
    notes = pd.read_parquet(run_dir / "01_preprocess/notes.parquet")
    assert list(notes.columns) == ["hadm_id", "subject_id", "split", "text", "codes"]
    assert set(notes["split"]) == {"train", "val", "test"}
    assert not notes.groupby("subject_id")["split"].nunique().gt(1).any()
    labels = pd.read_parquet(run_dir / "01_preprocess/labels.parquet")
    assert labels["code"].tolist() == sorted(labels["code"])
    assert json.loads((run_dir / "config.json").read_text())["synth_admissions"] == 600
    assert "reports in" in stdout and "test (synthetic twin): auroc_micro" in stdout


def test_reports_are_executed_and_exported(demo_run):
    run_dir, _ = demo_run
    reports = run_dir / "reports"
    for name in ("01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis"):
        html = (reports / f"{name}.html").read_text()
        assert (reports / f"{name}.ipynb").is_file()
        assert "Traceback" not in html
        if name in ("02_label_stats", "03_train", "04_evaluate"):
            assert html.count("data:image/png") >= 2, f"{name} shows no figures"
    assert "CAML (MIMIC-III full, published)" in (reports / "04_evaluate.html").read_text()
    assert not list(reports.glob("*.failed.ipynb"))


def test_the_tiny_model_learns_the_twin(demo_run):
    run_dir, _ = demo_run
    m = json.loads((run_dir / "04_evaluate/metrics.json").read_text())
    assert set(m) >= {"val", "test", "val_tuned", "test_tuned", "threshold", "baseline"}
    for split in ("val", "test"):
        assert m[split]["auroc_micro"] >= 0.8, m[split]
        assert m[split]["auroc_macro"] >= 0.6, m[split]  # per-code signal, not just code frequency
        assert m[split]["map"] > 0.2
    assert 0 < m["threshold"] < 1
    assert m["baseline"]["test_tuned"]["auroc_micro"] >= 0.8
    history = pd.read_csv(run_dir / "03_train/history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_predict_codes_a_new_note(demo_run, tmp_path):
    run_dir, _ = demo_run
    note = tmp_path / "note.txt"
    note.write_text("Discharge Diagnosis: congestive heart failure, atrial fibrillation, hypertension.\n")
    done = icdlib("predict", "--model", str(run_dir / "03_train/best"), "--text-file", str(note), "--top-k", "5", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert len(rows) == 5 and [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert {"code", "kind", "title", "score"} <= set(rows[0])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe broken")
    done = icdlib("predict", "--model", str(run_dir / "03_train/best"), "--text-file", str(bad))
    assert done.returncode == 2 and "is not UTF-8 text" in done.stderr


def test_papermill_card_usage_without_output_path(demo_run, tmp_path):
    """`papermill notebooks/0N.ipynb -p backbone tiny` with no output path writes into the run folder."""
    run_dir, _ = demo_run
    params = json.dumps({"params": {"output_root": str(run_dir.parent), "synth_admissions": 600}, "run": "t"})
    done = subprocess.run([sys.executable, "-m", "papermill", "notebooks/05_error_analysis.ipynb", "-p", "backbone",
                           "tiny", "-y", params], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "05.ipynb"
    done = subprocess.run([sys.executable, "-m", "papermill", "notebooks/05_error_analysis.ipynb", str(out), "-p",
                           "backbone", "tiny", "-y", params], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and out.is_file()


def test_bad_input_is_one_clear_line(tmp_path):
    done = icdlib("run", "--backbone", "nope", "--output-root", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unknown backbone 'nope'; choices:" in done.stderr and "llama3" in done.stderr
    done = icdlib("run", "--backbone", "tiny", "--output-root", str(tmp_path), "-p", "lr=5e-5")
    assert done.returncode == 2 and "lr must be float" in done.stderr
    done = icdlib("run", "--backbone", "tiny", "--output-root", str(tmp_path), "--mimic-dir", str(tmp_path / "none"),
                  "--quiet")
    assert done.returncode == 2 and "is not a folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tiny" / "01_preprocess").exists()
