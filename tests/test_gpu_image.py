"""A GPU training image as it comes: torch, transformers, peft, pandas and scikit-learn, no Jupyter stack.

`python -m icdlib train`, `predict` and `bench gpu` must run there, on a run folder prepared
elsewhere. Each runs here in a Python whose packages are this venv's minus the notebook stack
(papermill, Jupyter, nbconvert, IPython) and the plotting libraries the reports use: a folder of
links to every other installed package, the interpreter started with `-S` so that the venv's
own site-packages is not on the path.
"""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from icdlib.run import config
from icdlib import steps

ROOT = Path(__file__).resolve().parent.parent
ABSENT = {"papermill", "nbformat", "nbconvert", "nbclient", "jupyter_client", "jupyter_core", "jupyter_server",
          "jupyter_server_terminals", "jupyter_lsp", "jupyterlab", "jupyterlab_server", "jupytext", "jupyter",
          "ipykernel", "ipython", "ipython_pygments_lexers", "matplotlib", "seaborn", "mpl_toolkits", "notebook_shim"}
SIZE = {"synth_admissions": 120, "min_count": 3, "benchmark": "none", "segment_length": 64, "max_segments": 2,
        "attention_dim": 16, "batch_size": 8, "grad_accum": 1, "warmup_steps": 1, "max_steps": 2, "eval_every": 2,
        "save_every": 2, "mntp_steps": 0, "mntp_compare": "none", "baseline": False}


def _top_name(entry: Path) -> str:
    """The import or distribution name an entry of site-packages belongs to (`IPython`, `ipython-9.1.dist-info`)."""
    name = entry.name
    for suffix in (".dist-info", ".egg-info", ".py", ".pth"):
        name = name.removesuffix(suffix)
    return name.split("-")[0].lower()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict:
    """The environment of a subprocess that sees every installed package except ABSENT."""
    view = tmp_path_factory.mktemp("image") / "site-packages"
    view.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if _top_name(entry) not in ABSENT and not entry.name.startswith("__"):
            (view / entry.name).symlink_to(entry)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(view)]), "PYTHONWARNINGS": "ignore",
            "HF_HUB_OFFLINE": "1"}


def icdlib(image: dict, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", "-m", "icdlib", *args], cwd=cwd, env=image, capture_output=True,
                          text=True, timeout=600)


def test_the_image_lacks_the_notebook_stack(image, tmp_path):
    done = subprocess.run([sys.executable, "-S", "-c", "import torch, transformers, peft, pandas, sklearn, icdlib\n"
                           "for m in ('papermill', 'nbconvert', 'jupyter_client', 'IPython', 'matplotlib'):\n"
                           "    try:\n        __import__(m)\n    except ImportError:\n        continue\n"
                           "    raise SystemExit(m + ' is importable')"], cwd=tmp_path, env=image, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout


@pytest.mark.end_to_end(seconds=45)
def test_train_predict_and_bench_gpu_run_without_jupyter(image, tmp_path):
    cfg = config.resolve("tiny", {**SIZE, "output_root": str(tmp_path / "out"), "run": "r"})
    config.save(cfg)
    steps.s01_preprocess(cfg, progress=False)  # step 01, as the notebooks run it elsewhere

    done = icdlib(image, "train", "r", "--output-root", "out", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    best = tmp_path / "out/r/03_train/best"
    assert (best / "head.safetensors").is_file() and (tmp_path / "out/r/03_train/predictions_test.npz").is_file()

    (tmp_path / "note.txt").write_text("Discharge diagnosis: congestive heart failure, atrial fibrillation.")
    done = icdlib(image, "predict", "--model", "out/r/03_train/best", "--text-file", "note.txt", "--json",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.lstrip().startswith("[")

    done = icdlib(image, "bench", "gpu", "--scale", "smoke", "--repeats", "1", "--warmup", "0", "--quiet",
                  "--out", str(tmp_path / "gpu.json"), "--markdown", str(tmp_path / "gpu.md"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "gpu.json").is_file()


def test_the_notebooks_say_what_they_need_in_one_line(image, tmp_path):
    done = icdlib(image, "run", "--backbone", "tiny", "--output-root", "out", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "running the notebooks needs papermill, nbformat" in lines[0] and "pip install -e '.[notebooks]'" in lines[0]
    assert not (tmp_path / "out").exists()
