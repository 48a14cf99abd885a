"""Decoders that transformers 4.44 could not load, as encoders: Qwen3 and Gemma 3 (MedGemma's text model).

Each runs the README's offline recipe for a plain decoder, 01→05, with its own params file
(`params/qwen3.yaml`, `params/medgemma.yaml`): a toy replica of the base's hub layout
(tests/hub_replica.py) copied to `../models`, HF_HUB_OFFLINE=1 and an empty HF cache, every path
relative to a working directory of its own; domain MNTP turns the base into an encoder and
writes its -mntp adapter, then fine-tuning, evaluation and error analysis. Sizes are overridden for
the CPU (and MedGemma's 4-bit load, CUDA only, becomes a native one).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

import hub_replica
from conftest import OFFLINE_SIZE
from icdlib.model import backbones
from icdlib.twin import synth
from icdlib.model.bidirectional import is_bidirectional

CASES = {
    "qwen3": {"family": "qwen3", "folder": "Qwen3-8B-Base", "class": "Qwen3Model", "bos": False},
    "medgemma": {"family": "gemma3", "folder": "medgemma-27b-text-it", "class": "Gemma3TextModel", "bos": True},
}
MNTP = {"mntp_steps": 2, "mntp_length": 32, "mntp_batch_size": 4, "mntp_lr": 1.0e-3}


@pytest.mark.end_to_end(seconds=140)
@pytest.mark.parametrize("backbone", list(CASES))
def test_runs_01_to_05_offline_from_another_folder(backbone, tmp_path):
    case = CASES[backbone]
    replica = hub_replica.build(tmp_path / "hub", case["family"])
    models = tmp_path / "models"
    shutil.copytree(replica.base, models / case["folder"])
    work = tmp_path / "work"
    synth.generate(work / "mimic", admissions=OFFLINE_SIZE["synth_admissions"], seed=0, short=True, progress=False)
    size = {**OFFLINE_SIZE, **MNTP, "base_model_path": f"../models/{case['folder']}", "load_in": "native",
            "precision": "auto", "batch_size": 4, "benchmark": "none", "split": "patient"}
    args = [sys.executable, "-m", "icdlib", "run", "--backbone", backbone, "--run", "r", "--output-root", "out",
            "--mimic-dir", "mimic", "--quiet", *[a for k, v in size.items() for a in ("-p", f"{k}={v}")]]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")}
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    run = work / "out" / "r"
    for name in ("01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis"):
        assert (run / "reports" / f"{name}.html").is_file()
        cells = json.loads((run / "reports" / f"{name}.ipynb").read_text())["cells"]
        stderr = ["".join(o["text"]) for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
        assert not stderr, f"{name} writes to stderr: {stderr[0][:300]}"
    metrics = json.loads((run / "04_evaluate/metrics.json").read_text())
    assert metrics["test"]["n_docs"] > 0 and 0 <= metrics["test"]["auroc_micro"] <= 1
    saved = json.loads((run / "config.json").read_text())
    assert saved["base_model_path"] == str(models / case["folder"]) and saved["segment_bos"] == case["bos"]
    # the MNTP stage made the base an encoder and wrote its -mntp adapter, which loads on the base
    adapter = json.loads((run / "03_train/mntp/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(models / case["folder"])
    encoder, tokenizer = backbones.load(run / "03_train/mntp", base_model_path=str(models / case["folder"]))
    assert type(encoder).__name__ == case["class"] and is_bidirectional(encoder)
    record = json.loads((run / "03_train/best/icdlib.json").read_text())["backbone"]
    prefix = record["input_format"]["prefix"]
    assert prefix == ([tokenizer.bos_token_id] if case["bos"] else [])

    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "note.txt").write_text("Discharge Diagnosis: congestive heart failure, atrial fibrillation.")
    done = subprocess.run([sys.executable, "-m", "icdlib", "predict", "--model", "../work/out/r/03_train/best",
                           "--text-file", "note.txt", "--json"], cwd=other, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert len(rows) == 15 and all(0 <= r["score"] <= 1 for r in rows)
