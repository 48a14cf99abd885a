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
     "python -m icdlib run --backbone tiny --run k --only 01 02 03 04 05", pipeline.Interrupted),
])
def test_a_dead_or_interrupted_kernel_is_one_line(source, expected, error, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", notebook_dir(tmp_path, source))
    cfg = config.resolve("tiny", {"output_root": str(tmp_path / "out"), "run": "k"})
    with pytest.raises(error) as e:
        pipeline.execute("01_preprocess", cfg, {}, progress=False)
    text = str(e.value)
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
