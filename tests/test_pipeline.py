"""The whole chain 01→05 through papermill (via `python -m icdlib run`) on the synthetic twin."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_packaging import make_run_command

from icdlib.measure import metrics
from icdlib.data.labels import multi_hot

ROOT = Path(__file__).resolve().parent.parent


def icdlib(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "icdlib", *args], cwd=cwd, capture_output=True, text=True, env=env)


CANARIES = [f"zqxcanary{i}vwk" for i in range(7)]


def demo_params() -> list[str]:
    """The `-p KEY=VALUE` arguments of `make demo` (the Makefile's DEMO_PARAMS)."""
    args = make_run_command("demo")
    return [arg for i, flag in enumerate(args[:-1]) if flag == "-p" for arg in (flag, args[i + 1])]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One whole run on a twin written to its own folder, as a user's MIMIC-III folder would be:
    with `mimic_dir` set, share_safe is on by default. Each discharge summary carries a canary.
    `make demo`'s run (one fine-tuning: the model every test here reads; tiny.yaml's MNTP stage and
    comparison arm, a second fine-tuning, run through the same notebooks in test_reports' small_run)."""
    from icdlib.twin import synth

    root = tmp_path_factory.mktemp("outputs")
    mimic = synth.generate(root / "mimic", admissions=600, seed=0, short=True, progress=False, canaries=CANARIES)
    args = ["run", "--backbone", "tiny", "--run", "t", "--output-root", str(root), "--quiet",
            "--mimic-dir", str(mimic["NOTEEVENTS"].parent), *demo_params()]
    done = icdlib(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "t", done.stdout + done.stderr


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
    assert json.loads((run_dir / "config.json").read_text())["mimic_dir"].endswith("mimic")
    assert "reports in" in stdout and "test (MIMIC-III): 95% bootstrap intervals; micro-F1 at each system's threshold" \
        " tuned on val" in stdout
    assert re.search(r"\n  icdlib(?: without MNTP)? +micro-AUROC 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]  MAP 0\.\d{3} \[", stdout)


def test_reports_are_executed_and_exported(demo_run):
    run_dir, _ = demo_run
    reports = run_dir / "reports"
    for name in ("01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis"):
        html = (reports / f"{name}.html").read_text()
        assert (reports / f"{name}.ipynb").is_file()
        assert "Traceback" not in html
        if name in ("02_label_stats", "03_train", "04_evaluate"):
            assert html.count("data:image/png") >= 2, f"{name} shows no figures"
    evaluated = (reports / "04_evaluate.html").read_text()  # benchmark none: no published rows beside it
    assert "no published reference rows are shown" in evaluated
    assert not any(f"{paper} (" in evaluated for paper in ("CAML", "LAAT", "MSMN", "PLM-ICD"))
    # a twin in its own folder is read as real data: no evidence spans (evidence: auto), so none measured
    assert "Not measured: this run has no evidence spans" in (reports / "05_error_analysis.html").read_text()
    assert not (run_dir / "01_preprocess/evidence.parquet").exists()
    assert not list(reports.glob("*.failed.ipynb"))


def test_the_tiny_model_learns_the_twin(demo_run):
    """Clearly better than a random scorer everywhere, and better than scoring every note with the
    codes' training frequencies (the prior) on what needs per-note evidence: macro AUROC and MAP."""
    run_dir, _ = demo_run
    m = json.loads((run_dir / "04_evaluate/metrics.json").read_text())
    assert set(m) >= {"val", "test", "val_tuned", "test_tuned", "threshold", "baseline"}
    notes = pd.read_parquet(run_dir / "01_preprocess/notes.parquet")
    labels = pd.read_parquet(run_dir / "01_preprocess/labels.parquet")
    share = labels["n_train"].to_numpy() / (notes["split"] == "train").sum()
    for split in ("val", "test"):
        part = notes[notes["split"] == split]
        y = multi_hot([list(c) for c in part["codes"]], labels["code"].tolist())
        prior = metrics.compute(y, np.tile(share, (len(part), 1)))
        assert prior["auroc_macro"] == pytest.approx(0.5)
        assert m[split]["auroc_micro"] >= 0.75, m[split]
        assert m[split]["auroc_macro"] >= 0.6, m[split]
        assert m[split]["map"] >= prior["map"] + 0.05, (m[split]["map"], prior["map"])
    assert 0 < m["threshold"] < 1
    assert m["val_tuned"]["f1_micro"] >= m["val"]["f1_micro"]
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
    assert {"code", "kind", "title", "score", "assigned"} <= set(rows[0])
    tuned = json.loads((run_dir / "04_evaluate/metrics.json").read_text())["threshold"]  # 04 scored this best/
    assert [r["assigned"] for r in rows] == [r["score"] >= tuned for r in rows] and "assigned at" not in done.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe broken")
    done = icdlib("predict", "--model", str(run_dir / "03_train/best"), "--text-file", str(bad))
    assert done.returncode == 2 and "is not UTF-8 text" in done.stderr


def test_papermill_card_usage_without_output_path(demo_run, tmp_path):
    """`papermill notebooks/0N.ipynb -p backbone tiny` with no output path writes into the run folder."""
    run_dir, _ = demo_run
    params = json.dumps({"params": {"output_root": str(run_dir.parent)}, "run": "t",
                         "mimic_dir": str(run_dir.parent / "mimic")})
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


def test_share_safe_reports_hold_no_note_text(demo_run):
    """No canary and no run of 5 words of any note appears in any report or in the run's terminal
    output. Runs that also occur in an ICD-9 title are not note text (the twin writes titles
    into notes, and the reports name codes by title)."""
    run_dir, terminal = demo_run
    words = lambda text: re.findall(r"[a-z]+", text.lower())  # noqa: E731
    windows = lambda ws: {" ".join(ws[i:i + 5]) for i in range(len(ws) - 4)}  # noqa: E731
    notes = pd.read_parquet(run_dir / "01_preprocess/notes.parquet")
    note_windows = set().union(*(windows(words(t)) for t in notes["text"]))
    mimic = run_dir.parent / "mimic"
    titles = " | ".join(" ".join(words(t)) for k in ("DIAGNOSES", "PROCEDURES") for col in ("SHORT_TITLE", "LONG_TITLE")
                        for t in pd.read_csv(mimic / f"D_ICD_{k}.csv", dtype=str)[col].fillna(""))
    assert sum(c in " ".join(notes["text"]) for c in CANARIES) == len(CANARIES)
    outputs = {p: p.read_text(errors="replace") for p in (run_dir / "reports").iterdir() if p.is_file()}
    outputs["terminal"] = terminal
    assert len(outputs) >= 11
    for name, text in outputs.items():
        assert not [c for c in CANARIES if c in text], f"canary in {name}"
        leaked = [w for w in windows(words(text)) & note_windows if w not in titles]
        assert not leaked, f"note text in {name}: {leaked[:3]}"


def test_predict_api_refuses_bad_input(demo_run, tmp_path):
    import shutil

    from icdlib import predict
    from icdlib.run.errors import IcdlibError

    run_dir, _ = demo_run
    coder = predict.load(run_dir / "03_train/best", device="cpu")
    tables = coder.predict(["Acute kidney injury and hypertension.", "Septic shock."], threshold=0.0)
    assert len(tables) == 2 and len(tables[0]) == len(coder.labels)
    assert list(tables[0].columns) == ["code", "kind", "title", "score", "assigned"]
    with pytest.raises(IcdlibError, match="text 1 is empty"):
        coder.predict(["fine", "   "])
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "03_train/best", broken)
    (broken / "head.safetensors").unlink()
    with pytest.raises(IcdlibError, match="lacks head.safetensors"):
        predict.load(broken)
    with pytest.raises(IcdlibError, match="not an icdlib model folder"):
        predict.load(tmp_path)
