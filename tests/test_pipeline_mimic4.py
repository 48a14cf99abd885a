"""The whole chain 01→05 through papermill (`python -m icdlib run -p dataset=mimic4_icd10`) on the
synthetic MIMIC-IV twin, generated in the run folder: ICD-10-CM and ICD-10-PCS labels with their
titles, 02's plots, 04's metrics, 05's chapter and block levels, and predict's ICD-10 titles."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icdlib.data import icd10
from icdlib.measure import metrics
from icdlib.data.labels import multi_hot

ROOT = Path(__file__).resolve().parent.parent
SIZE = {"dataset": "mimic4_icd10", "synth_admissions": 400, "mntp_steps": 0, "mntp_compare": "none", "epochs": 6}


def icdlib(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "icdlib", *args], cwd=ROOT, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs4")
    done = icdlib("run", "--backbone", "tiny", "--run", "m4", "--output-root", str(root), "--quiet",
                  *[a for k, v in SIZE.items() for a in ("-p", f"{k}={v}")])
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "m4"


def html(run_dir, step):
    return (run_dir / "reports" / f"{step}.html").read_text(encoding="utf-8")


def test_step01_reads_the_mimic4_twin_as_physionet_ships_it(run4):
    twin = run4 / "synthetic_mimic4"
    assert (twin / "note" / "discharge.csv.gz").is_file() and (twin / "hosp" / "diagnoses_icd.csv.gz").is_file()
    stats = json.loads((run4 / "01_preprocess" / "stats.json").read_text())
    assert stats["diagnoses_icd rows of ICD-9 (the other dataset)"] > 0  # the twin holds both versions
    assert stats["train admissions"] > 200 and stats["val admissions"] > 20 and stats["test admissions"] > 20
    labels = pd.read_parquet(run4 / "01_preprocess" / "labels.parquet")
    codes = labels["code"].tolist()
    assert icd10.is_icd10(codes)
    pcs = labels[labels["kind"] == "procedure"]["code"]
    assert len(pcs) > 0 and pcs.str.fullmatch(r"[0-9A-HJ-NP-Z]{7}").all()
    cm = labels[labels["kind"] == "diagnosis"]["code"]
    assert cm.str.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?").all()
    assert (labels["long_title"] != "").mean() >= 0.95  # the twin's dictionaries: ICD-10-CM and PCS titles
    page = html(run4, "01_preprocess")
    assert "MIMIC-IV ICD-10 (Edin et al.): expected" in page and "CAML full" not in page
    assert "synthetic MIMIC-IV twin (ICD-10)" in page


def test_the_tiny_model_learns_the_mimic4_twin(run4):
    m = json.loads((run4 / "04_evaluate" / "metrics.json").read_text())
    notes = pd.read_parquet(run4 / "01_preprocess" / "notes.parquet")
    labels = pd.read_parquet(run4 / "01_preprocess" / "labels.parquet")
    share = labels["n_train"].to_numpy() / (notes["split"] == "train").sum()
    part = notes[notes["split"] == "test"]
    y = multi_hot([list(c) for c in part["codes"]], labels["code"].tolist())
    prior = metrics.compute(y, np.tile(share, (len(part), 1)))
    assert m["test"]["auroc_micro"] >= 0.75, m["test"]
    assert m["test"]["map"] >= prior["map"] + 0.05, (m["test"]["map"], prior["map"])


def test_reports_speak_icd10(run4):
    labels = pd.read_parquet(run4 / "01_preprocess" / "labels.parquet")
    top = labels.nlargest(1, "n_train").iloc[0]
    page02 = html(run4, "02_label_stats")
    assert top["code"] in page02 and top["long_title"][:30].replace("&", "&amp;") in page02  # 02's top-codes table
    page = html(run4, "05_error_analysis")
    assert "ICD-10 chapter" in page and "ICD-10 block" in page and "3-character category" in page
    assert "At ICD-10 block level it is" in page
    assert "synthetic MIMIC-IV twin (ICD-10)" in html(run4, "04_evaluate")


def test_predict_gives_icd10_codes_and_titles(run4, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("Discharge Diagnosis: sepsis, acute kidney injury, hypertension.\n")
    done = icdlib("predict", "--model", str(run4 / "03_train" / "best"), "--text-file", str(note), "--top-k", "10",
                  "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    labels = pd.read_parquet(run4 / "01_preprocess" / "labels.parquet").set_index("code")
    assert len(rows) == 10 and icd10.is_icd10([r["code"] for r in rows])
    assert all(r["title"] == labels.loc[r["code"], "long_title"] for r in rows)
