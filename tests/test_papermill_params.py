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

from icdlib.run import config

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


def last_line(done: subprocess.CompletedProcess) -> str:
    """papermill's last line on stderr; nothing that looks like a crash may come before it."""
    assert done.returncode == 1
    *before, last = done.stderr.strip().splitlines()
    assert not [line for line in before if "Traceback" in line or "Error" in line or "error" in line], before
    return last


def test_an_unknown_papermill_parameter_stops_naming_the_closest_keys(tmp_path):
    """Was 63 lines (click's stack and the cell's) around the one line the README promises."""
    name = f"test-papermill-{uuid.uuid4().hex[:8]}"
    done = papermill("01_preprocess", tmp_path / "01.ipynb", "-p", "backbone", "tiny", "-p", "run", name,
                     "-p", "output_root", str(tmp_path / "out"), "-p", "epoch", "1")
    assert last_line(done) == ("icdlib: error: notebook parameter: unknown parameter 'epoch' (did you mean epochs?) "
                               "(cell In [3])")
    assert not (tmp_path / "out").exists() and not (config.OUTPUTS_DIR / name).exists()


def test_a_bad_value_from_papermill_stops_naming_the_key(tmp_path):
    done = papermill("01_preprocess", tmp_path / "01.ipynb", "-p", "backbone", "tiny",
                     "-p", "output_root", str(tmp_path / "out"), "-p", "batch_size", "-4")
    assert last_line(done) == "icdlib: error: override: batch_size must be at least 1, got -4 (cell In [3])"
    assert not (tmp_path / "out").exists()
    cells = json.loads((tmp_path / "01.ipynb").read_text())["cells"]  # papermill keeps the failed notebook
    errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [(e["ename"], e["traceback"]) for e in errors] == [
        ("ConfigError", ["icdlib: error: override: batch_size must be at least 1, got -4"])]


def test_the_card_command_on_a_new_run_stops_in_one_line_and_leaves_nothing(tmp_path):
    """`papermill notebooks/03_train.ipynb OUT -p backbone mistral` before 01, as a fresh clone's user
    types it (papermill's own log level): was 82 lines, two stacks before the cause, and it left
    `config.json` and `.lock` in a run folder 01 never made."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "papermill", "notebooks/03_train.ipynb", str(tmp_path / "03.ipynb"),
                           "-p", "backbone", "mistral", "-p", "params", json.dumps({"output_root": str(out)})],
                          cwd=ROOT, capture_output=True, text=True)
    assert last_line(done) == (f"icdlib: error: {out}/mistral/01_preprocess does not exist: run 01_preprocess "
                               f"for this run first (cell In [5])")
    assert not out.exists()
