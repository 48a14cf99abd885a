"""papermill parameters: the card's `papermill notebooks/03_train.ipynb OUT -p backbone tiny -p run X`,
and any key of `Config` as `-p KEY VALUE`, on a 60-admission twin (notebooks 01 and 03 only)."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from icdlib import config

ROOT = Path(__file__).resolve().parent.parent
SMALL_DATA = ["-p", "synth_admissions", "60", "-p", "min_count", "2"]  # 49 train admissions, ~100 codes


def papermill(notebook: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """The README's command, run from the repository root (the kernel runs in papermill's cwd)."""
    return subprocess.run([sys.executable, "-m", "papermill", f"notebooks/{notebook}.ipynb", str(out), *args,
                           "--log-level", "ERROR"], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_x(tmp_path_factory):
    """Run `X` in the repository's own outputs/ (the card's command names no output root), its
    step 01 done by papermill on a small twin; removed afterwards."""
    name = f"test-papermill-{uuid.uuid4().hex[:8]}"
    created_outputs = not config.OUTPUTS_DIR.exists()
    run_dir = config.OUTPUTS_DIR / name
    tmp = tmp_path_factory.mktemp("papermill")
    try:
        done = papermill("01_preprocess", tmp / "01.ipynb", "-p", "backbone", "tiny", "-p", "run", name, *SMALL_DATA)
        assert done.returncode == 0, done.stderr[-3000:]
        yield name, run_dir, tmp
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if created_outputs:
            try:
                config.OUTPUTS_DIR.rmdir()
            except OSError:  # another test's run is in it
                pass


def recorded(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def test_step_01_records_its_papermill_parameters(run_x):
    name, run_dir, _ = run_x
    record = recorded(run_dir)
    assert (record["run"], record["synth_admissions"], record["min_count"]) == (name, 60, 2)
    notes = pd.read_parquet(run_dir / "01_preprocess/notes.parquet")
    assert 40 <= len(notes) <= 60  # the twin drops a few, as MIMIC-III does


def test_the_card_command_trains_with_the_params_file(run_x):
    """`papermill notebooks/03_train.ipynb OUT.ipynb -p backbone tiny -p run X`, nothing else: trains
    params/tiny.yaml's epochs in outputs/X/03_train and leaves 01's record as it was."""
    name, run_dir, tmp = run_x
    before = (run_dir / "config.json").read_bytes()
    out = tmp / "03_card.ipynb"
    done = papermill("03_train", out, "-p", "backbone", "tiny", "-p", "run", name)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file()
    epochs = yaml.safe_load((ROOT / "params/tiny.yaml").read_text())["epochs"]
    history = pd.read_csv(run_dir / "03_train/history.csv")
    assert epochs > 1 and history["epoch"].iloc[-1] == pytest.approx(epochs)
    assert (run_dir / "03_train/predictions_test.npz").is_file()
    assert (run_dir / "config.json").read_bytes() == before  # still synth_admissions 60, as the data
    assert recorded(run_dir)["synth_admissions"] == 60


def test_any_config_key_is_a_papermill_parameter(run_x):
    """`-p epochs 1` (and a float, a bool given as text) reach the training: one epoch, recorded in
    the model folder; config.json still holds 01's parameters."""
    name, run_dir, tmp = run_x
    before = (run_dir / "config.json").read_bytes()
    done = papermill("03_train", tmp / "03_epochs.ipynb", "-p", "backbone", "tiny", "-p", "run", name,
                     "-p", "epochs", "1", "-p", "head_lr", "0.02", "-p", "baseline", "false")
    assert done.returncode == 0, done.stderr[-3000:]
    history = pd.read_csv(run_dir / "03_train/history.csv")
    assert history["epoch"].iloc[-1] == pytest.approx(1.0)
    assert history["epoch"].max() == pytest.approx(1.0)
    used = json.loads((run_dir / "03_train/best/icdlib.json").read_text())["config"]
    assert (used["epochs"], used["head_lr"], used["baseline"]) == (1, 0.02, False)
    assert (run_dir / "config.json").read_bytes() == before
    assert recorded(run_dir)["epochs"] == yaml.safe_load((ROOT / "params/tiny.yaml").read_text())["epochs"] > 1


def test_an_unknown_papermill_parameter_stops_naming_the_closest_keys(tmp_path):
    name = f"test-papermill-{uuid.uuid4().hex[:8]}"
    done = papermill("01_preprocess", tmp_path / "01.ipynb", "-p", "backbone", "tiny", "-p", "run", name,
                     "-p", "output_root", str(tmp_path / "out"), "-p", "epoch", "1")
    assert done.returncode != 0
    assert "ConfigError: notebook parameter: unknown parameter 'epoch' (did you mean epochs" in done.stderr
    assert not (tmp_path / "out").exists() and not (config.OUTPUTS_DIR / name).exists()


def test_a_bad_value_from_papermill_stops_naming_the_key(tmp_path):
    done = papermill("01_preprocess", tmp_path / "01.ipynb", "-p", "backbone", "tiny",
                     "-p", "output_root", str(tmp_path / "out"), "-p", "batch_size", "-4")
    assert done.returncode != 0
    assert "ConfigError: override: batch_size must be at least 1, got -4" in done.stderr
    assert not (tmp_path / "out").exists()
    assert os.path.isfile(tmp_path / "01.ipynb")  # papermill keeps the failed notebook, as always
