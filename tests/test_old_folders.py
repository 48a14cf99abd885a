"""Model folders written before the move to transformers 5 still score as they did, or say which
versions wrote them.

tests/pre_transformers5/ holds two folders made by icdlib at commit 94aac8d on transformers 4.44.2,
peft 0.17.1 and llm2vec 0.2.3 (make_folders.py says how): a tiny model trained whole
(`backbone/` saved by llm2vec's LlamaBiModel) and one trained with LoRA on its tiny backbone, with
what that stack's `predict` gave for one note. Their weight files are not in the repository:
`make_folders.restore` writes them (the values that stack scored with) into a copy.
"""

import json
import shutil
from pathlib import Path

import pytest

from icdlib import cli, predict
from icdlib.model import train
from pre_transformers5.make_folders import restore

OLD = Path(__file__).resolve().parent / "pre_transformers5"


def copy(mode: str, tmp_path: Path) -> Path:
    """The old runs' 03_train/ in a folder of their own, their weight files written there."""
    shutil.copytree(OLD, tmp_path / "old", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    restore(tmp_path / "old")
    return tmp_path / "old" / mode / "03_train" / "best"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_an_old_model_folder_scores_as_it_did(mode, tmp_path):
    recorded = json.loads((OLD / "scores.json").read_text())
    best = copy(mode, tmp_path)
    manifest = json.loads((best / "icdlib.json").read_text())
    assert "versions" not in manifest and "architecture" not in manifest["backbone"]  # written before the move
    step = json.loads((best.parent / "manifest.json").read_text())
    assert step["versions"]["transformers"] == "4.44.2" and step["versions"]["llm2vec"] == "0.2.3"
    table = predict.load(best, device="cpu").predict([recorded["note"]], top_k=40)[0]
    expected = recorded["scores"][mode]
    assert table["code"].tolist() == [r["code"] for r in expected]
    assert table["score"].tolist() == pytest.approx([r["score"] for r in expected], abs=1e-5)


def test_an_old_folder_that_does_not_fit_names_the_versions_that_wrote_it(tmp_path, capsys):
    best = copy("lora", tmp_path)
    adapter = best / "adapter" / "adapter_config.json"
    values = json.loads(adapter.read_text())
    values["r"] = values["r"] * 2  # the weights no longer fit the adapter this config describes
    adapter.write_text(json.dumps(values))
    (tmp_path / "note.txt").write_text("congestive heart failure")
    code = cli.main(["predict", "--model", str(best), "--text-file", str(tmp_path / "note.txt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"model folder {best} was written with transformers 4.44.2, peft 0.17.1, llm2vec 0.2.3" in err
    assert "does not load with transformers 5." in err and "retrain it, or load it in the environment that wrote it" in err


def test_resuming_a_run_written_before_the_move_says_why_it_cannot(tmp_path):
    """A run's last/ from transformers 4.44.2 holds a tiny backbone's key that today's stack cannot
    match (the key counts the versions that built it): one line with both stacks, not 'parameters changed'."""
    from dataclasses import replace

    from icdlib.run.errors import IcdlibError
    from test_train import small_cfg

    cfg = small_cfg(tmp_path, "old", max_steps=2, eval_every=2, save_every=2)
    train.fit(cfg, progress=False)
    last = cfg.run_dir / "03_train/last"
    manifest = json.loads((last / "icdlib.json").read_text())
    manifest["backbone"]["cache_key"] = "built-by-transformers-4.44.2"
    del manifest["versions"]
    (last / "icdlib.json").write_text(json.dumps(manifest))
    step = cfg.run_dir / "03_train/manifest.json"
    record = json.loads(step.read_text())
    record["versions"] = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.44.2", "peft": "0.17.1",
                          "llm2vec": "0.2.3", "icdlib": "0.1.0"}
    step.write_text(json.dumps(record))
    with pytest.raises(IcdlibError) as e:
        train.fit(replace(cfg, max_steps=4, resume=True), progress=False)
    text = str(e.value)
    assert "\n" not in text
    assert "was written with transformers 4.44.2, peft 0.17.1, llm2vec 0.2.3, torch 2.13.0+cpu" in text
    assert "built anew for transformers 5." in text and "set resume=false to start over" in text
