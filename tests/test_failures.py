"""Every failure the CLI can hit is one line: a dead kernel, Ctrl-C, a foreign head."""

import json

import nbformat
import pytest
from safetensors.torch import save_file

from icdlib import checkpoint, cli, config, pipeline
from icdlib.errors import IcdlibError


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

    from icdlib import backbones
    from icdlib.models import ICDCoder

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

    from icdlib import train
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
