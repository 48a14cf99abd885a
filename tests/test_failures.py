"""Every failure the CLI can hit is one line: a dead kernel, Ctrl-C, a foreign head."""

import json

import nbformat
import pytest
from safetensors.torch import save_file

from icdlib.model import checkpoint
from icdlib import cli, pipeline
from icdlib.run import config
from icdlib.run.errors import IcdlibError


def notebook_dir(tmp_path, source: str):
    """A notebooks folder whose 01_preprocess runs `source` after the usual parameters cell."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('backbone = "tiny"\nrun = ""\nmimic_dir = ""\nparams = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nb, folder / "01_preprocess.ipynb")
    return folder


@pytest.mark.parametrize("source, expected, error", [
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
     "01_preprocess: the notebook's kernel died (killed from outside, most often for running out of memory", pipeline.NotebookError),
    ("raise KeyboardInterrupt", "interrupted in 01_preprocess; the steps before it are complete. Resume with: "
     "python -m icdlib run --backbone tiny --run k --output-root {out} --only 01 02 03 04 05 -p max_steps=7",
     pipeline.Interrupted),
])
def test_a_dead_or_interrupted_kernel_is_one_line(source, expected, error, tmp_path, monkeypatch):
    """The resume line names the run's folder and, for 01, its own -p values (were left out)."""
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", notebook_dir(tmp_path, source))
    cfg = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "run": "k", "max_steps": 7})
    with pytest.raises(error) as e:
        pipeline.execute("01_preprocess", cfg, {}, progress=False)
    text = str(e.value)
    expected = expected.format(out=tmp_path / "out")
    assert "\n" not in text and text.startswith(expected), text
    resume = f"Resume with: python -m icdlib run --backbone tiny --run k --output-root {tmp_path / 'out'} --only 01 02 03 04 05 -p max_steps=7"
    assert text.endswith(resume), text  # a dead kernel gave no resume command
    assert (cfg.run_dir / "reports" / "01_preprocess.failed.ipynb").is_file()
    assert not list((cfg.run_dir / "reports").glob(".*running*"))


def test_ctrl_c_in_the_cli_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_synth", interrupted)
    assert cli.main(["synth", "--out", "x"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("icdlib: stopped: interrupted (synth)")


def test_a_foreign_head_is_one_line(tiny_backbone, tmp_path):
    import pandas as pd

    from icdlib.model import backbones
    from icdlib.model.models import ICDCoder

    cfg = config.resolve("tiny", {"train_backbone": "frozen", "attention_dim": 8})
    encoder, tokenizer = backbones.load(tiny_backbone)
    labels = pd.DataFrame({"code": ["401.9", "428.0"], "kind": ["diagnosis"] * 2, "short_title": ["a", "b"]})
    folder = checkpoint.save(tmp_path / "m", ICDCoder(encoder, 2, cfg.head, 8), cfg, labels, str(tiny_backbone), tokenizer)
    other = ICDCoder(encoder, 3, cfg.head, 8)  # a head over three labels, copied in by hand
    save_file({k: v.contiguous() for k, v in other.head.state_dict().items()}, folder / "head.safetensors")
    with pytest.raises(IcdlibError) as e:
        checkpoint.load(folder)
    text = str(e.value)
    assert "\n" not in text and "head.safetensors is not the head this folder describes" in text and "2 labels" in text
    (folder / "icdlib.json").write_text(json.dumps({"labels": ["401.9"]})[:-3])  # truncated
    with pytest.raises(IcdlibError, match="icdlib.json is damaged"):
        checkpoint.load(folder)


def test_the_printed_resume_line_continues_the_run(tmp_path, monkeypatch):
    """03 stopped mid-way in a run made with its own -p values (max_steps 6, batch 8, no MNTP): the
    line printed for Ctrl-C, run as printed from another folder, resumes 03 from last/ with those
    values and runs 04 and 05. Was: the line omitted the run's -p values and --output-root, and
    followed as printed it was refused (`set resume=false to start over`)."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from icdlib.model import train
    from test_train import kill_at_fifth_step, small_cfg

    cfg = small_cfg(tmp_path / "out", "cut", max_steps=6, save_every=3, baseline=False)
    kill_at_fifth_step(cfg, monkeypatch)
    line = pipeline.interrupted_line("03_train", cfg)
    command = line.split("Resume with: ", 1)[1]
    assert command == (f"python -m icdlib run --backbone tiny --run cut --output-root {tmp_path / 'out'} --only 03 04 05 "
                       f"-p resume=true")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=elsewhere, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    history = train.load_history(cfg.run_dir)
    assert history["step"].tolist() == [3, 6]
    assert json.loads((cfg.run_dir / "03_train/manifest.json").read_text())["params"]["batch_size"] == 8
    assert (cfg.run_dir / "04_evaluate/metrics.json").is_file() and (cfg.run_dir / "reports/05_error_analysis.html").is_file()


@pytest.mark.parametrize("dataset, expected", [
    ("mimic3", "mimic_dir {mimic} is not a folder (expected the MIMIC-III v1.4 files)"),
    ("mimic4_icd10", "mimic_dir {mimic} is not a folder (expected MIMIC-IV v2.2's hosp/ and MIMIC-IV-Note v2.2's note/)"),
])
def test_a_missing_mimic_dir_stops_before_any_kernel_and_leaves_nothing(dataset, expected, tmp_path, monkeypatch, capsys):
    """Was reported by 01's kernel after it started, leaving config.json, .lock and a failed notebook."""
    def no_kernel(*args, **kwargs):
        raise AssertionError("a notebook was started")

    monkeypatch.setattr(pipeline, "run_all", no_kernel)
    monkeypatch.chdir(tmp_path)
    mimic = tmp_path / "not-there"
    assert cli.main(["run", "--backbone", "tiny", "--run", "x", "--output-root", "out", "--mimic-dir", str(mimic),
                     "-p", f"dataset={dataset}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"icdlib: error: {expected.format(mimic=mimic)}"]
    assert list(tmp_path.iterdir()) == []


def test_the_kernel_s_own_stderr_goes_to_its_log_not_the_terminal(tmp_path, monkeypatch, capfd):
    """After Ctrl-C ipykernel could log a 17-line ZMQError on the terminal before the stopped line;
    what the kernel process writes to stderr goes to `reports/NN.kernel.log`, named when it died."""
    source = ("get_ipython().kernel.log.critical('the kernel speaks')\n"
              "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", notebook_dir(tmp_path, source))
    cfg = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "run": "k"})
    with pytest.raises(pipeline.NotebookError) as e:
        pipeline.execute("01_preprocess", cfg, {}, progress=False)
    log = cfg.run_dir / "reports" / "01_preprocess.kernel.log"
    assert f"01_preprocess.failed.ipynb, its log {log}. Resume with: " in str(e.value)
    assert "the kernel speaks" in log.read_text() and "the kernel speaks" not in capfd.readouterr().err


def test_ctrl_c_while_a_report_is_exported_names_the_step(tmp_path, monkeypatch):
    """Was the generic `interrupted (run) ... rerun the command`, without the resume command."""
    def exported(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "execute", lambda name, *a, **k: tmp_path / f"{name}.ipynb")
    monkeypatch.setattr(pipeline, "to_html", exported)
    cfg = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "run": "k"})
    with pytest.raises(pipeline.Interrupted) as e:
        pipeline.run_all(cfg, {}, progress=False)
    assert str(e.value) == (f"interrupted in 01_preprocess; the steps before it are complete. Resume with: python -m "
                            f"icdlib run --backbone tiny --run k --output-root {tmp_path / 'out'} --only 01 02 03 04 05")
