"""Model folders as icdlib wrote them before the move to transformers 5 (transformers 4.44.2, peft
0.17.1, llm2vec 0.2.3), for tests/test_old_folders.py: they must still load and score the same.

Run once with the icdlib of commit 94aac8d in its own environment (its `make setup`), from this
folder's parent's parent:

    git worktree add /tmp/icdlib-2024 94aac8d && cd /tmp/icdlib-2024 && make setup
    .venv/bin/python /path/to/icdlib/tests/pre_transformers5/make_folders.py /path/to/icdlib/tests/pre_transformers5

It trains a tiny model two ways (the whole backbone; LoRA on the tiny backbone) for two steps on a
small synthetic twin and keeps, per run, `03_train/best/` (the model folder), `03_train/backbone/`
(the tiny backbone the LoRA folder points to) and `03_train/manifest.json`, plus `scores.json`:
what the old stack's `predict` gives for a fixed note. Absolute paths inside them are rewritten to
a folder of another machine (`/elsewhere/outputs`): the model folders find their backbone by the
relative path they also record, as a moved run folder does.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

ELSEWHERE = "/elsewhere/outputs"
NOTE = "Discharge diagnosis: congestive heart failure, atrial fibrillation, acute kidney injury. Hypertension."
SIZE = {"synth_admissions": 120, "min_count": 3, "tiny_layers": 1, "tiny_hidden": 32, "tiny_heads": 2,
        "tiny_vocab": 300, "attention_dim": 8, "segment_length": 64, "max_segments": 2, "batch_size": 8,
        "eval_every": 2, "save_every": 2, "warmup_steps": 1, "max_steps": 2, "mntp_steps": 0,
        "mntp_compare": "none", "baseline": False, "lr": 1.0e-3}


def main(out: Path) -> None:
    from icdlib import config, predict, preprocess, train

    work = Path(tempfile.mkdtemp())
    scores = {}
    for mode in ("full", "lora"):
        cfg = config.load("tiny", params={**SIZE, "output_root": str(work), "run": mode, "train_backbone": mode})
        preprocess.run(cfg, progress=False)
        train.fit(cfg, progress=False)
        target = out / mode / "03_train"
        if target.parent.exists():
            shutil.rmtree(target.parent)
        target.mkdir(parents=True)
        for name in ("best", "backbone") if mode == "lora" else ("best",):
            shutil.copytree(cfg.run_dir / "03_train" / name, target / name)
        shutil.copy(cfg.run_dir / "03_train" / "manifest.json", target / "manifest.json")
        for path in target.rglob("*"):  # the folder arrives from another machine: its old paths do not exist here
            if path.suffix in (".json", ".md"):
                path.write_text(path.read_text().replace(str(work), ELSEWHERE))
        table = predict.load(target / "best", device="cpu").predict([NOTE], top_k=5)[0]
        scores[mode] = table[["code", "score"]].to_dict(orient="records")
    (out / "scores.json").write_text(json.dumps({"note": NOTE, "scores": scores}, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
