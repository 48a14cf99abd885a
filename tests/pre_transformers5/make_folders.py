"""Model folders as icdlib wrote them before the move to transformers 5 (transformers 4.44.2, peft
0.17.1, llm2vec 0.2.3), for tests/test_old_folders.py: they must still load and score the same.

Run once with the icdlib of commit 94aac8d in its own environment (its `make setup`):

    git worktree add /tmp/icdlib-2024 94aac8d && cd /tmp/icdlib-2024 && make setup
    .venv/bin/python /path/to/icdlib/tests/pre_transformers5/make_folders.py /path/to/icdlib/tests/pre_transformers5

It trains a tiny model two ways (the whole backbone; LoRA on the tiny backbone) for two steps on a
small synthetic twin and keeps, per run, `03_train/best/` (the model folder), `03_train/backbone/`
(the tiny backbone the LoRA folder points to) and `03_train/manifest.json`: every file as that
stack wrote it, except the weights. No weights enter the repository: each `*.safetensors` file is
rewritten with values from hub_replica's counter-based generator (same names, shapes and dtypes,
listed in `weights.json`), the old stack's `predict` scores a fixed note with those (its top 40
codes, `scores.json`), and the weight files are deleted; `restore` writes the same bytes again wherever they are needed.
Absolute paths inside the folders are rewritten to a folder of another machine
(`/elsewhere/outputs`): the model folders find their backbone by the relative path they also
record, as a moved run folder does.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for hub_replica

ELSEWHERE = "/elsewhere/outputs"
NOTE = "Discharge diagnosis: congestive heart failure, atrial fibrillation, acute kidney injury. Hypertension."
SIZE = {"synth_admissions": 120, "min_count": 3, "tiny_layers": 1, "tiny_hidden": 32, "tiny_heads": 2,
        "tiny_vocab": 300, "attention_dim": 8, "segment_length": 64, "max_segments": 2, "batch_size": 8,
        "eval_every": 2, "save_every": 2, "warmup_steps": 1, "max_steps": 2, "mntp_steps": 0,
        "mntp_compare": "none", "baseline": False, "lr": 1.0e-3}


def describe(root: Path) -> dict:
    """{weight file relative to root: {tensor name: [shape, dtype]}} of every *.safetensors under root."""
    from safetensors import safe_open

    out = {}
    for path in sorted(Path(root).rglob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            out[path.relative_to(root).as_posix()] = {k: [list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()]
                                                      for k in sorted(f.keys())}
    return out


def restore(root: Path, weights: dict | None = None) -> None:
    """Write the weight files `weights.json` lists under root, values from hub_replica's generator."""
    import numpy as np

    import hub_replica

    weights = weights or json.loads((HERE / "weights.json").read_text())
    for rel, tensors in weights.items():
        values = {}
        for name, (shape, dtype) in tensors.items():
            assert dtype == "F32", f"{rel}:{name} is {dtype}; the tiny folders hold float32 only"
            values[name] = hub_replica.tensor_values(f"{rel}:{name}", tuple(shape), norm_offset=1.0).astype(np.float32)
        hub_replica.save_tensors(values, Path(root) / rel, {"format": "pt"})


def main(out: Path) -> None:
    from icdlib.run import config
    from icdlib import predict
    from icdlib import steps
    from icdlib.model import train

    work = Path(tempfile.mkdtemp())
    scores = {}
    for mode in ("full", "lora"):
        cfg = config.load("tiny", params={**SIZE, "output_root": str(work), "run": mode, "train_backbone": mode})
        steps.s01_preprocess(cfg, progress=False)
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
    weights = describe(out)
    (out / "weights.json").write_text(json.dumps(weights, indent=1) + "\n")
    restore(out, weights)
    for mode in ("full", "lora"):
        table = predict.load(out / mode / "03_train" / "best", device="cpu").predict([NOTE], top_k=40)[0]
        scores[mode] = table[["code", "score"]].to_dict(orient="records")
    (out / "scores.json").write_text(json.dumps({"note": NOTE, "scores": scores}, indent=1) + "\n")
    for rel in weights:
        (out / rel).unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
